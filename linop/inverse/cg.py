"""Batched, preconditioned conjugate gradient in which every column stops on its own.

A column stops when ``‖b − A x‖ ≤ max(rtol · ‖b‖, atol)`` (scipy's semantics), when it meets
non-positive curvature ``pᵀ A p ≤ 0`` (the operator is not positive definite along ``p``; the last
iterate is kept and a [`NegativeCurvatureWarning`][linop.errors.NegativeCurvatureWarning] is
issued), or at ``maxiter`` (a [`ConvergenceWarning`][linop.errors.ConvergenceWarning]). Nothing
becomes NaN: a column whose residual reaches exactly zero is simply done.

Stopped columns are frozen on the device by masks; every ``check_every`` iterations the active set
is read on the host (one sync) and, when it has changed, the state is compacted so the products
shrink to the still-active columns.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from linop._checks import integer, non_negative, positive_int
from linop._checks import seed as check_seed
from linop._tensor import by_columns
from linop._warn import warn
from linop.errors import (
    AttainableAccuracyWarning,
    ConvergenceWarning,
    NegativeCurvatureWarning,
    NonFiniteError,
    ShapeMismatchError,
)
from linop.inverse.base import SolveInfo, SolverOptions, StopReason, Strategy, register
from linop.inverse.block_cg import block_cg
from linop.inverse.preconditioners import PRECONDITIONERS, as_preconditioner
from linop.operator import LinearOperator

__all__ = ["CGOptions", "CGStrategy"]


@dataclass(frozen=True)
class CGOptions(SolverOptions):
    """Options of ``method="cg"``.

    Attributes:
        rtol: relative tolerance: a column stops at ``‖b − Ax‖ ≤ max(rtol‖b‖, atol)``.
        atol: absolute tolerance.
        maxiter: iterations per column (default ``10 n``); 0 returns the initial guess.
        x0: initial guess, ``(n,)`` or ``(n, k)`` (default zeros), or a function of the
            right-hand sides ``B`` ``(n, k)`` returning one (``lambda B: B`` starts from ``b``).
        preconditioner: ``M ≈ A⁻¹``: a symmetric positive definite operator of ``A``'s shape,
            dtype and device, a callable on ``(n, k)`` tensors, ``"arnoldi"`` (deflation by
            the top ``rank`` Lanczos eigenpairs, see
            [`deflation_preconditioner`][linop.inverse.preconditioners.deflation_preconditioner])
            or ``"nystrom"`` (a randomized Nyström approximation of a psd ``A = H + λI``, see
            [`nystrom_preconditioner`][linop.inverse.preconditioners.nystrom_preconditioner]).
        rank: eigenpairs of a named preconditioner (None: 20 for ``"arnoldi"``; for
            ``"nystrom"``, chosen by its adaptive rule).
        arnoldi_maxiter: Lanczos steps of a named preconditioner (default as ``eigh``).
        seed: seed of a named preconditioner's Lanczos start.
        check_every: iterations between host checks of convergence (default 1 on CPU, 10 on
            GPUs).
        progress: show a progress bar.
        indefinite: False: stop a column at non-positive curvature, the documented behaviour;
            True: go on through negative curvature, as plain CG does on a symmetric indefinite
            matrix, stopping only at zero curvature (the iterates are then the Galerkin solutions
            of the Krylov spaces, with no guarantee of convergence).
        block: block CG (`linop.inverse.block_cg`): one Krylov space shared by all the columns
            of a product, so many related right-hand sides need far fewer products in all;
            each iteration applies the operator to as many directions as columns still
            iterate. With one column it is plain CG.
        true_residual: judge and report each column by its true residual ``‖b − Ax‖``,
            computed at the end (one more product per column): the recursive residual CG
            updates drifts from it by rounding. False reports the recursive residual and
            saves that product, for callers that do not read ``info`` (short fixed-budget
            solves such as dattri's).
    """

    method = "cg"
    rtol: float = 1e-5
    atol: float = 0.0
    maxiter: int | None = None
    x0: torch.Tensor | Callable[[torch.Tensor], torch.Tensor] | None = None
    preconditioner: Any = None
    rank: int | None = None
    arnoldi_maxiter: int | None = None
    seed: int = 0
    check_every: int | None = None
    progress: bool = False
    indefinite: bool = False
    block: bool = False
    true_residual: bool = True

    def validate(self) -> None:
        non_negative("rtol", self.rtol)
        non_negative("atol", self.atol)
        if self.maxiter is not None:
            integer("maxiter", self.maxiter, 0)
        check_seed(self.seed)
        positive_int("rank", self.rank)
        positive_int("arnoldi_maxiter", self.arnoldi_maxiter)
        positive_int("check_every", self.check_every)
        if not (self.x0 is None or isinstance(self.x0, torch.Tensor) or callable(self.x0)):
            raise TypeError(
                f"x0 must be a torch.Tensor, a callable or None, got {type(self.x0).__name__}"
            )
        M = self.preconditioner
        if isinstance(M, str) and M not in PRECONDITIONERS:
            raise ValueError(
                f"unknown preconditioner {M!r}; use {', '.join(map(repr, PRECONDITIONERS))}, an "
                f"operator or a callable"
            )
        if not (M is None or isinstance(M, (str, LinearOperator)) or callable(M)):
            raise TypeError(
                f"preconditioner must be None, a name ({', '.join(map(repr, PRECONDITIONERS))}), a "
                f"LinearOperator or a callable, got {M!r}"
            )


def vecdot(X: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    """The inner products of the columns of ``X`` and ``Y`` ``(n, k)``, in one operation."""
    return torch.linalg.vecdot(X, Y, dim=0)


@register
class CGStrategy(Strategy):
    """Batched, preconditioned conjugate gradient; options: [`CGOptions`][linop.CGOptions]."""

    name = "cg"
    Options = CGOptions
    options: CGOptions

    def _setup(self) -> int:
        o = self.options
        self.M, hvps = as_preconditioner(
            o.preconditioner, self.operator, o.rank, o.arnoldi_maxiter, o.seed
        )
        return hvps

    def solve(self, B: torch.Tensor) -> tuple[torch.Tensor, SolveInfo]:
        A, o = self.operator, self.options
        n, k = B.shape
        maxiter = o.maxiter if o.maxiter is not None else 10 * n
        every = o.check_every or (1 if B.device.type == "cpu" else 10)
        M = self.M._matmat if self.M is not None else None
        hvps = 0
        X = self._initial(B)
        if o.x0 is not None:
            R = B - A._matmat(X)
            hvps += k
        else:
            R = B.clone()
        bnorm = B.norm(dim=0)
        threshold = torch.clamp(o.rtol * bnorm, min=o.atol)
        # below eps·‖b‖ the recursive residual is rounding noise (it may go on shrinking into
        # underflow, where pᵀAp reads 0): the column has reached the attainable accuracy
        floor = torch.finfo(B.dtype).eps * bnorm
        if o.block:
            X, R, iters, curvature, more = block_cg(
                A, R, X, M, threshold, floor, maxiter, o.indefinite, o.progress
            )
            return X, self._info(B, X, R, bnorm, threshold, floor, iters, curvature, hvps + more)
        # The columns still iterating are kept compact (``cols``: their indices in ``B``), each
        # one contiguous in memory, so each iteration works on whole tensors; a column that stops
        # inside a stretch of ``every`` iterations is frozen by the mask ``on``, and the state is
        # written back and compacted only when the active set is read on the host and has
        # changed. An iteration is kept to few tensor operations (fused updates, one reduction
        # per inner product): with 50 columns of 650 entries each costs 5-40 µs on a CPU, as
        # much as a cheap product.
        lim = threshold.maximum(floor)
        cols = torch.nonzero(R.norm(dim=0) > lim).flatten()
        m = cols.numel()
        Xa, Ra = (by_columns(t if m == k else t[:, cols]) for t in (X, R))
        Pa = M(Ra) if M else Ra.clone()
        rz = vecdot(Ra, Pa)
        li = lim[cols]
        on = torch.ones(m, dtype=torch.bool, device=B.device)
        # ``top``: the largest Rayleigh quotient |pᵀAp|/pᵀp seen per column (NaN or infinite
        # once a product was not finite). Curvature below eps^1.5 times it is zero to working
        # precision (a singular operator: there it is ~eps² times it, and a step would overflow),
        # while a positive definite one resolvable in the dtype stays above (in float32 at least:
        # half-precision pᵀp underflows long before the iteration is done, so the quotients are
        # taken in float32).
        acc = torch.promote_types(B.dtype, torch.float32)
        half = acc != B.dtype
        tiny = torch.finfo(acc).tiny
        top = torch.zeros(m, dtype=acc, device=B.device)
        eps = torch.finfo(B.dtype).eps ** 1.5
        iters = torch.zeros(k, dtype=torch.long, device=B.device)
        curvature = torch.zeros(k, dtype=torch.bool, device=B.device)
        it_a = torch.zeros(m, dtype=torch.long, device=B.device)
        curv_a = torch.zeros(m, dtype=torch.bool, device=B.device)

        def store(cols: torch.Tensor, *parts: torch.Tensor) -> None:
            """The compact state written back into the columns ``cols`` of the full one."""
            for full, part in zip((X, R), parts[:2], strict=True):
                if part is not full:  # all columns of a column-major state: the same tensor
                    full[:, cols] = part
            iters[cols], curvature[cols] = parts[2:]

        bar = tqdm(total=maxiter, desc="CG", disable=not o.progress, leave=False)
        it = 0
        while m and it < maxiter:
            for _ in range(min(every, maxiter - it)):
                AP = A._matmat(Pa)
                hvps += m
                Pc, APc = (Pa.to(acc), AP.to(acc)) if half else (Pa, AP)
                pAp = vecdot(Pc, APc)
                rq = pAp / vecdot(Pc, Pc).clamp_min(tiny)  # the Rayleigh quotient pᵀAp / pᵀp
                size = rq.abs()
                top = torch.maximum(top, size)
                bad = on & ~((size if o.indefinite else rq) > eps * top)  # or not finite
                curv_a |= bad
                on &= ~bad
                alpha = torch.where(on, rz / pAp, 0)  # pAp ≠ 0 where on
                alpha = alpha.to(B.dtype) if half else alpha
                Xa = torch.addcmul(Xa, Pa, alpha)
                Ra = torch.addcmul(Ra, AP, alpha, value=-1)
                it_a += on
                Za = M(Ra) if M else Ra
                rz_new = vecdot(Ra, Za)
                on &= (rz_new.sqrt() if M is None else Ra.norm(dim=0)) > li
                beta = torch.where(on, rz_new / torch.where(on, rz, 1), 0)
                Pa = torch.addcmul(Za, Pa, beta)
                rz = rz_new
                it += 1
            bar.update(min(every, bar.total - bar.n))
            # one host read: the active columns and the largest quotient (NaN: not finite)
            state = torch.cat([on.to(acc), top.max().reshape(1)]).tolist()
            if not math.isfinite(state[-1]):
                raise NonFiniteError(
                    f"CG met NaN or infinite values in {int((~torch.isfinite(top)).sum())} "
                    f"column(s): the products of {A!r} (or its preconditioner) are not finite"
                )
            if not all(state[:-1]):  # columns stopped: write them back, go on with the rest
                store(cols, Xa, Ra, it_a, curv_a)
                keep = on.nonzero().flatten()
                cols, m = cols[keep], keep.numel()
                Xa, Ra, Pa = (by_columns(t[:, keep]) for t in (Xa, Ra, Pa))
                rz, li, on, top, it_a, curv_a = (t[keep] for t in (rz, li, on, top, it_a, curv_a))
        store(cols, Xa, Ra, it_a, curv_a)
        bar.close()
        return X, self._info(B, X, R, bnorm, threshold, floor, iters, curvature, hvps)

    def _initial(self, B: torch.Tensor) -> torch.Tensor:
        x0 = self.options.x0
        if x0 is None:
            return torch.zeros_like(B)
        if callable(x0):
            x0 = x0(B)
        self.operator._check_tensor(x0, "x0")
        if not bool(torch.isfinite(x0).all()):
            raise NonFiniteError("the initial guess x0 has NaN or infinite entries")
        X = x0.unsqueeze(1) if x0.ndim == 1 else x0
        if X.shape[0] != B.shape[0] or X.shape[1] not in (1, B.shape[1]):
            raise ShapeMismatchError(
                f"x0 of shape {tuple(x0.shape)} does not match b of shape {tuple(B.shape)}"
            )
        return X.expand_as(B).clone()

    def _info(
        self,
        B: torch.Tensor,
        X: torch.Tensor,
        R: torch.Tensor,
        bnorm: torch.Tensor,
        threshold: torch.Tensor,
        floor: torch.Tensor,
        iters: torch.Tensor,
        curvature: torch.Tensor,
        hvps: int,
    ) -> SolveInfo:
        """The report of a solve from its recursive residuals ``R``; with ``true_residual`` the
        true residual ``B − AX`` is computed here (one more product per column): rounding makes
        the recursive one drift."""
        recursive = rnorm = R.norm(dim=0)
        if self.options.true_residual:
            R = B - self.operator._matmat(X)
            hvps += B.shape[1]
            rnorm = R.norm(dim=0)
        converged = (rnorm <= threshold) & ~curvature
        drifted = (recursive <= threshold.maximum(floor)) & ~converged & ~curvature
        residuals = rnorm / torch.where(bnorm > 0, bnorm, 1)
        curved = (
            StopReason.ZERO_CURVATURE if self.options.indefinite else StopReason.NEGATIVE_CURVATURE
        )

        def reason(conv: bool, curv: bool, drift: bool) -> StopReason:
            if curv:
                return curved
            if conv:
                return StopReason.CONVERGED
            return StopReason.ATTAINABLE_ACCURACY if drift else StopReason.MAXITER

        flags = zip(converged.tolist(), curvature.tolist(), drifted.tolist(), strict=True)
        reasons = [reason(*f) for f in flags]
        k, n_curv, n_drift = len(reasons), int(curvature.sum()), int(drifted.sum())
        n_slow = reasons.count(StopReason.MAXITER)
        if n_drift:
            warn(
                f"CG stopped at the accuracy that rounding in {R.dtype} allows, above the "
                f"tolerance, in {n_drift} of {k} column(s): its recursive residual met the "
                f"tolerance (or fell to rounding level) but the true residual ‖b − Ax‖ did not "
                f"(max relative residual {float(residuals[drifted].max()):.2e}). Use float64, a "
                f"looser rtol, or a shift",
                AttainableAccuracyWarning,
            )
        if n_curv:
            what = "zero" if self.options.indefinite else "non-positive"
            warn(
                f"CG met {what} curvature in {n_curv} of {k} column(s) and stopped them at their "
                f"last iterate; the operator is not positive definite. Add a shift "
                f"(A + lam * I) with lam > 0, or use method='explicit'",
                NegativeCurvatureWarning,
            )
        if n_slow:
            warn(
                f"CG did not reach the tolerance in {n_slow} of {k} column(s) within maxiter; max "
                f"relative residual {float(residuals.max()):.2e}. Raise maxiter, add a shift, or "
                f"use preconditioner='arnoldi'",
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
