"""The explicit method: materialise the matrix once, factorise it, solve by substitution.

The inverse keeps the matrix and its factor (2 n² entries, as many as the factorisation itself
needs): each solve reports its residuals ``‖b − Ax‖`` with one product by the matrix. With
``residuals=False`` it keeps the factor only and reports none (NaN): that product costs about
as much as the two triangular solves, which callers who never read the report need not pay.

Symmetric matrices are tried with Cholesky, first in their own dtype, then in float64. A symmetric
matrix that is still not positive definite falls back to LU with a
[`NegativeCurvatureWarning`][linop.errors.NegativeCurvatureWarning] (it is indefinite) when it is
non-singular.

A matrix that is singular to working precision (a pivot below ``10 eps`` of the largest, ``eps``
of the operator's dtype; ``1 eps`` for half precision, which is factorised in float32) is
decomposed instead (``eigh``, or an SVD if not symmetric) and solved by its pseudo-inverse: a
right-hand side in its range (relative residual of the minimum-norm solution at most ``√eps``)
gets the minimum-norm solution, with a ``NegativeCurvatureWarning``; one outside it raises
[`SingularOperatorError`][linop.errors.SingularOperatorError] suggesting a shift ``λ``. Softmax
models with an unpenalised bias are the common case: their Hessian has an exact null space (the
same shift of every logit changes nothing), and per-example gradients are orthogonal to it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from linop._checks import non_negative, positive_int
from linop._tensor import finite
from linop._warn import warn
from linop.errors import NegativeCurvatureWarning, NonFiniteError, SingularOperatorError
from linop.inverse.base import SolveInfo, SolverOptions, StopReason, Strategy, register
from linop.operator import DEFAULT_DENSE_BUDGET_BYTES

__all__ = ["ExplicitOptions", "ExplicitStrategy"]


@dataclass(frozen=True)
class ExplicitOptions(SolverOptions):
    """Options of ``method="explicit"``.

    Attributes:
        max_bytes: the memory budget of ``to_dense``.
        force: skip the memory guard.
        chunk_size: identity columns per batched product while materialising (default: all).
        residuals: report each solve's relative residuals ``‖b − Ax‖ / ‖b‖`` (one product with
            the matrix, which is kept for it); False reports NaN and keeps only the factor. A
            singular matrix's minimum-norm solves compute them whatever this says: they decide
            whether the right-hand side is in the range.
    """

    method = "explicit"
    max_bytes: int = DEFAULT_DENSE_BUDGET_BYTES
    force: bool = False
    chunk_size: int | None = None
    residuals: bool = True

    def validate(self) -> None:
        non_negative("max_bytes", self.max_bytes)
        positive_int("chunk_size", self.chunk_size)


@register
class ExplicitStrategy(Strategy):
    """Materialise, factorise once, solve by substitution; options:
    [`ExplicitOptions`][linop.ExplicitOptions]."""

    name = "explicit"
    Options = ExplicitOptions
    options: ExplicitOptions

    def _setup(self) -> int:
        A = self.operator
        o = self.options
        M = A.to_dense(force=o.force, max_bytes=o.max_bytes, chunk_size=o.chunk_size)
        if not finite(M):
            raise NonFiniteError(
                f"the matrix of {A!r} has NaN or infinite entries: it cannot be factorised"
            )
        half = M.dtype in (torch.float16, torch.bfloat16)
        if half:  # factorisations need float32 or float64
            M = M.float()
        # singular means singular at the operator's own precision, whatever the factor's dtype;
        # a half-precision matrix is factorised in float32, where a singular one's pivots fall
        # near float32's eps, far below half's: eps itself is then a safe margin, and 10 eps
        # would call condition numbers of 13 (bfloat16) singular
        self.eps = (1 if half else 10) * torch.finfo(A.dtype).eps
        self.tol = torch.finfo(A.dtype).eps ** 0.5  # the residual of a consistent system
        if A.tags.symmetric:  # Cholesky (and eigh) read the lower triangle only
            for dtype in dict.fromkeys([M.dtype, torch.float64]):
                Md = M.to(dtype)  # one copy for the retry in float64, kept for the residuals
                L, info = torch.linalg.cholesky_ex(Md)
                if int(info) == 0:
                    # success can be rounding luck on a singular matrix: judge the pivots at the
                    # operator's precision (a positive definite one has them above the threshold)
                    pivots = L.diagonal().square()
                    if float(pivots.min()) <= self.eps * float(pivots.max()):
                        return self._pseudo_inverse(M, "a pivot of Cholesky is zero")
                    self.kind, self.factor = "cholesky", L
                    self.matrix = Md if o.residuals else None
                    return A.shape[1]
            if A.tags.psd:
                return self._pseudo_inverse(M, "Cholesky failed on a positive semi-definite matrix")
        if A.tags.symmetric:  # LU reads both triangles: make them agree
            M = M.to(torch.float64)
            M = (M + M.mT) / 2
        LU, pivots, info = torch.linalg.lu_factor_ex(M)
        diag = LU.diagonal().abs()
        if int(info) != 0 or float(diag.min()) <= self.eps * float(diag.max()):
            return self._pseudo_inverse(M, "a zero pivot in LU")
        self.kind, self.factor, self.pivots = "lu", LU, pivots
        self.matrix = M if o.residuals else None
        if A.tags.symmetric:
            warn(
                "the symmetric matrix is not positive definite (Cholesky failed); solved by LU. "
                "For a Hessian, this means negative curvature: consider a shift lam > 0",
                NegativeCurvatureWarning,
            )
        return A.shape[1]

    def _pseudo_inverse(self, M: torch.Tensor, why: str) -> int:
        """Decompose a matrix singular to working precision for minimum-norm solves:
        ``M⁺ = W diag(1/s) Uᵀ`` over the singular values (or ``|eigenvalues|``) above
        ``eps · max``."""
        M64 = M.to(torch.float64)
        if self.operator.tags.symmetric:
            M64 = (M64 + M64.mT) / 2
            values, U = torch.linalg.eigh(M64)
            keep = values.abs() > self.eps * float(values.abs().max())
            W, U, s = U[:, keep], U[:, keep], values[keep]
        else:
            U, values, Wh = torch.linalg.svd(M64)
            keep = values > self.eps * float(values.max())
            W, U, s = Wh[keep].mT, U[:, keep], values[keep]
        self.kind, self.why, self.matrix = "pseudo-inverse", why, M64
        self.factor, self.left, self.inv_values = W, U, 1 / s
        return self.operator.shape[1]

    def _singular(self, residual: float) -> SingularOperatorError:
        n = self.operator.shape[0]
        return SingularOperatorError(
            f"the {n}x{n} matrix is singular ({self.why} to working precision; rank "
            f"{self.factor.shape[1]} of {n}) and the right-hand side is not in its range "
            f"(relative residual of the least-squares solution {residual:.2e}); regularise it, "
            f"e.g. (A + lam * IdentityOperator.like(A)).inverse(method='explicit') with lam > 0 "
            f"(try 1e-3 times the largest eigenvalue)"
        )

    def solve(self, B: torch.Tensor) -> tuple[torch.Tensor, SolveInfo]:
        F = self.factor
        Bf = B.to(F.dtype)
        if self.kind == "cholesky":  # two triangular solves: a quarter faster than cholesky_solve
            Y = torch.linalg.solve_triangular(F, Bf, upper=False)
            X = torch.linalg.solve_triangular(F.mT, Y, upper=True)
        elif self.kind == "lu":
            X = torch.linalg.lu_solve(F, self.pivots, Bf)
        else:  # the minimum-norm solution
            X = F @ (self.inv_values.unsqueeze(1) * (self.left.mT @ Bf))
        k = B.shape[1]
        if self.matrix is None:  # residuals=False: none computed
            relative = torch.full((k,), float("nan"))
        else:  # one product with the matrix
            norms = Bf.norm(dim=0).clamp_min(torch.finfo(F.dtype).tiny)
            relative = (Bf - self.matrix @ X).norm(dim=0) / norms
        if self.kind == "pseudo-inverse":
            worst = float(relative.max()) if relative.numel() else 0.0
            if worst > self.tol:
                raise self._singular(worst)
            warn(
                f"the matrix is singular ({self.why} to working precision; rank "
                f"{F.shape[1]} of {F.shape[0]}), but the right-hand sides lie in its range "
                f"(relative residual {worst:.1e}): returned the minimum-norm solution. A shift "
                f"lam > 0 makes the system regular",
                NegativeCurvatureWarning,
            )
        info = SolveInfo(
            method=self.name,
            iterations=torch.zeros(k, dtype=torch.long),
            residuals=relative.to(B.dtype).cpu(),
            converged=torch.ones(k, dtype=torch.bool),
            reasons=[StopReason.DIRECT] * k,
            extra={"factorization": self.kind},
        )
        return X.to(B.dtype), info
