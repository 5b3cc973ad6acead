"""Batched, preconditioned conjugate gradient in which every column stops on its own.

A column stops when ``‖b − A x‖ ≤ max(rtol · ‖b‖, atol)`` (scipy's semantics), when it meets
non-positive curvature ``pᵀ A p ≤ 0`` (the operator is not positive definite along ``p``; the last
iterate is kept and a :class:`~linop.errors.NegativeCurvatureWarning` is issued), or at
``maxiter`` (a :class:`~linop.errors.ConvergenceWarning`). Nothing becomes NaN: a column whose
residual reaches exactly zero is simply done.

Stopped columns are frozen on the device by masks; every ``check_every`` iterations the active set
is read on the host (one sync) and the products shrink to the still-active columns.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from linop._warn import warn

from linop.errors import ConvergenceWarning, NegativeCurvatureWarning, ShapeMismatchError
from linop.inverse import SolveInfo, Strategy, register
from linop.operator import LinearOperator

Preconditioner = Callable[[torch.Tensor], torch.Tensor]


def _as_preconditioner(M: Any, A: LinearOperator, options: dict[str, Any]) -> tuple[Preconditioner | None, int]:
    """The preconditioner as a function on ``(n, k)`` tensors, and the products it cost."""
    if M is None:
        return None, 0
    if isinstance(M, str):
        if M != "arnoldi":
            raise ValueError(f"unknown preconditioner {M!r}; use 'arnoldi', an operator or a callable")
        from linop.inverse.arnoldi import deflation_preconditioner

        return deflation_preconditioner(A, options)
    if isinstance(M, LinearOperator):
        if M.shape != A.shape:
            raise ShapeMismatchError(f"the preconditioner {M!r} does not match {A!r}")
        A._check_compatible(M, "with the preconditioner")
        return M._matmat, 0
    if callable(M):
        return M, 0
    raise TypeError(f"preconditioner must be None, 'arnoldi', a LinearOperator or a callable, got {M!r}")


@register
class CGStrategy(Strategy):
    """Options: ``rtol`` (1e-5), ``atol`` (0), ``maxiter`` (default ``10 n``), ``x0`` (initial
    guess, ``(n,)`` or ``(n, k)``), ``preconditioner`` (an operator or callable approximating
    ``A⁻¹``, or ``"arnoldi"`` for deflation by the top ``rank`` eigenpairs — ``rank``,
    ``arnoldi_maxiter`` and ``seed`` pass to :meth:`~linop.LinearOperator.eigh`),
    ``check_every`` (iterations between host checks of convergence; default 1 on CPU, 10 on
    GPUs), ``progress`` (a progress bar), ``indefinite`` (False: stop a column at non-positive
    curvature, the documented behaviour; True: go on through negative curvature, as plain CG
    does on a symmetric indefinite matrix, stopping only at zero curvature — the iterates are
    then the Galerkin solutions of the Krylov spaces, with no guarantee of convergence)."""

    name = "cg"
    defaults = {
        "rtol": 1e-5,
        "atol": 0.0,
        "maxiter": None,
        "x0": None,
        "preconditioner": None,
        "rank": 20,
        "arnoldi_maxiter": None,
        "seed": 0,
        "check_every": None,
        "progress": False,
        "indefinite": False,
    }

    def _setup(self) -> int:
        o = self.options
        if o["rtol"] < 0 or o["atol"] < 0:
            raise ValueError(f"rtol and atol must be non-negative, got {o['rtol']}, {o['atol']}")
        self.M, hvps = _as_preconditioner(o["preconditioner"], self.operator, o)
        return hvps

    def solve(self, B: torch.Tensor) -> tuple[torch.Tensor, SolveInfo]:
        A, o = self.operator, self.options
        n, k = B.shape
        maxiter = o["maxiter"] if o["maxiter"] is not None else 10 * n
        every = o["check_every"] or (1 if B.device.type == "cpu" else 10)
        hvps = 0
        X = self._initial(B)
        if o["x0"] is not None:
            R = B - A._matmat(X)
            hvps += k
        else:
            R = B.clone()
        bnorm = B.norm(dim=0)
        threshold = torch.clamp(o["rtol"] * bnorm, min=o["atol"])
        Z = self.M(R) if self.M else R
        P = Z.clone()
        rz = (R * Z).sum(0)
        live = R.norm(dim=0) > threshold  # device mask of columns still iterating
        curvature = torch.zeros(k, dtype=torch.bool, device=B.device)
        # the largest Rayleigh quotient pᵀAp/pᵀp seen per column: curvature below eps^1.5 times it
        # is zero to working precision (a singular operator: there it is ~eps² times it, and a
        # step would overflow), while a positive definite one resolvable in the dtype stays above
        top = torch.zeros(k, dtype=B.dtype, device=B.device)
        eps = torch.finfo(B.dtype).eps ** 1.5
        iters = torch.zeros(k, dtype=torch.long, device=B.device)
        active = torch.nonzero(live).flatten().tolist()

        from tqdm.auto import tqdm

        bar = tqdm(total=maxiter, desc="CG", disable=not o["progress"], leave=False)
        it = 0
        while active and it < maxiter:
            idx = torch.tensor(active, device=B.device)
            for _ in range(min(every, maxiter - it)):
                P_a = P.index_select(1, idx)
                AP = A._matmat(P_a)
                hvps += len(active)
                pAp = (P_a * AP).sum(0)
                pp = (P_a * P_a).sum(0)
                rq = torch.nan_to_num(pAp / pp.clamp_min(torch.finfo(pp.dtype).tiny)).abs()
                top[idx] = torch.maximum(top[idx], rq)
                on = live[idx]
                curv = pAp.abs() if o["indefinite"] else pAp
                bad = on & ~(curv > eps * top[idx] * pp)  # non-positive (or non-finite) curvature
                curvature[idx] |= bad
                on = on & ~bad
                alpha = torch.where(on, rz[idx] / torch.where(on, pAp, 1), 0)
                X[:, idx] += alpha * P_a
                R_a = R.index_select(1, idx) - alpha * AP
                R[:, idx] = R_a
                iters[idx] += on.long()
                done = R_a.norm(dim=0) <= threshold[idx]
                on = on & ~done
                live[idx] = on
                Z_a = self.M(R_a) if self.M else R_a
                rz_new = (R_a * Z_a).sum(0)
                beta = torch.where(on, rz_new / torch.where(on, rz[idx], 1), 0)
                P[:, idx] = Z_a + beta * P_a
                rz[idx] = torch.where(on, rz_new, rz[idx])
                it += 1
            bar.update(min(every, bar.total - bar.n))
            active = torch.nonzero(live).flatten().tolist()
        bar.close()
        recursive = R.norm(dim=0)
        R = B - A._matmat(X)  # the true residual: rounding makes the recursive one drift
        return X, self._info(R, recursive, bnorm, threshold, iters, curvature, hvps + k)

    def _initial(self, B: torch.Tensor) -> torch.Tensor:
        x0 = self.options["x0"]
        if x0 is None:
            return torch.zeros_like(B)
        self.operator._check_tensor(x0, "x0")
        X = x0.unsqueeze(1) if x0.ndim == 1 else x0
        if X.shape[0] != B.shape[0] or X.shape[1] not in (1, B.shape[1]):
            raise ShapeMismatchError(f"x0 of shape {tuple(x0.shape)} does not match b of shape {tuple(B.shape)}")
        return X.expand_as(B).clone()

    def _info(self, R, recursive, bnorm, threshold, iters, curvature, hvps) -> SolveInfo:  # noqa: ANN001
        rnorm = R.norm(dim=0)
        converged = (rnorm <= threshold) & ~curvature
        drifted = (recursive <= threshold) & ~converged & ~curvature
        residuals = rnorm / torch.where(bnorm > 0, bnorm, 1)
        reasons = []
        for conv, curv, drift in zip(converged.tolist(), curvature.tolist(), drifted.tolist()):
            if curv and self.options["indefinite"]:
                reasons.append("zero curvature pᵀAp = 0 (to working precision): the operator is "
                               "singular along p")
            elif curv:
                reasons.append("non-positive curvature pᵀAp ≤ 0 (to working precision): the operator "
                               "is not positive definite")
            elif conv:
                reasons.append("converged")
            elif drift:
                reasons.append(f"attainable accuracy reached: the recursive residual met the "
                               f"tolerance but the true one did not ({R.dtype} rounding)")
            else:
                reasons.append("maxiter reached")
        n_curv, n_slow = int(curvature.sum()), sum(r == "maxiter reached" for r in reasons)
        n_drift = int(drifted.sum())
        if n_drift:
            warn(
                f"CG reached the tolerance in its recursive residual but not in the true residual "
                f"‖b − Ax‖ in {n_drift} of {len(reasons)} column(s) (max relative residual "
                f"{float(residuals[drifted].max()):.2e}): rounding in {R.dtype} limits the "
                f"accuracy. Use float64, a looser rtol, or a shift",
                ConvergenceWarning,
            )
        if n_curv:
            warn(
                f"CG met non-positive curvature in {n_curv} of {len(reasons)} column(s) and "
                f"stopped them at their last iterate; the operator is not positive definite. "
                f"Add a shift (A + lam * I) with lam > 0, or use method='explicit'",
                NegativeCurvatureWarning,
            )
        if n_slow:
            warn(
                f"CG did not reach the tolerance in {n_slow} of {len(reasons)} column(s) within "
                f"maxiter; max relative residual {float(residuals.max()):.2e}. Raise maxiter, "
                f"add a shift, or use preconditioner='arnoldi'",
                ConvergenceWarning,
            )
        return SolveInfo(
            method=self.name,
            iterations=iters.cpu(),
            residuals=residuals.cpu(),
            converged=converged.cpu(),
            reasons=reasons,
            hvps=hvps,
        )
