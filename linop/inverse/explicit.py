"""The explicit method: materialise the matrix once, factorise it, solve by substitution.

Symmetric matrices are tried with Cholesky, first in their own dtype, then in float64. A symmetric
matrix that is still not positive definite falls back to LU with a
:class:`~linop.errors.NegativeCurvatureWarning` (it is indefinite) when it is non-singular; a
singular matrix raises :class:`~linop.errors.SingularOperatorError` suggesting a shift ``λ``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from linop._warn import warn
from linop.errors import NegativeCurvatureWarning, SingularOperatorError
from linop.inverse.base import (
    SolveInfo,
    SolverOptions,
    StopReason,
    Strategy,
    non_negative,
    positive_int,
    register,
)
from linop.operator import DEFAULT_DENSE_BUDGET_BYTES

__all__ = ["ExplicitOptions", "ExplicitStrategy"]


def _singular(M: torch.Tensor, kind: str) -> SingularOperatorError:
    return SingularOperatorError(
        f"the {M.shape[0]}x{M.shape[0]} matrix is singular ({kind}); regularise it, e.g. "
        f"(A + lam * IdentityOperator.like(A)).inverse(method='explicit') with lam > 0 "
        f"(try 1e-3 times the largest eigenvalue)"
    )


@dataclass(frozen=True)
class ExplicitOptions(SolverOptions):
    """Options of ``method="explicit"``.

    Attributes:
        max_bytes: the memory budget of ``to_dense``.
        force: skip the memory guard.
        chunk_size: identity columns per batched product while materialising (default: all).
    """

    method = "explicit"
    max_bytes: int = DEFAULT_DENSE_BUDGET_BYTES
    force: bool = False
    chunk_size: int | None = None

    def validate(self) -> None:
        non_negative("max_bytes", self.max_bytes)
        positive_int("chunk_size", self.chunk_size)


@register
class ExplicitStrategy(Strategy):
    """Materialise, factorise once, solve by substitution; options: :class:`ExplicitOptions`."""

    name = "explicit"
    Options = ExplicitOptions
    options: ExplicitOptions

    def _setup(self) -> int:
        A = self.operator
        o = self.options
        M = A.to_dense(force=o.force, max_bytes=o.max_bytes, chunk_size=o.chunk_size)
        if M.dtype in (torch.float16, torch.bfloat16):  # factorisations need float32 or float64
            M = M.float()
        # singular means singular at the operator's own precision, whatever the factor's dtype
        self.eps = 10 * torch.finfo(A.dtype).eps
        if A.tags.symmetric:
            M = (M + M.mT) / 2
            for dtype in dict.fromkeys([M.dtype, torch.float64]):
                L, info = torch.linalg.cholesky_ex(M.to(dtype))
                if int(info) == 0:
                    # success can be rounding luck on a singular matrix: judge the pivots at the
                    # operator's precision (a positive definite one has them above 10 eps)
                    pivots = L.diagonal().square()
                    if float(pivots.min()) <= self.eps * float(pivots.max()):
                        raise _singular(M, "a pivot of Cholesky is zero to working precision")
                    self.kind, self.factor = "cholesky", L
                    return A.shape[1]
            if A.tags.psd:
                raise _singular(M, "Cholesky failed on a matrix tagged positive semi-definite")
        self._lu(M.to(torch.float64) if A.tags.symmetric else M)
        if A.tags.symmetric:
            warn(
                "the symmetric matrix is not positive definite (Cholesky failed); solved by LU. "
                "For a Hessian, this means negative curvature: consider a shift lam > 0",
                NegativeCurvatureWarning,
            )
        return A.shape[1]

    def _lu(self, M: torch.Tensor) -> None:
        LU, pivots, info = torch.linalg.lu_factor_ex(M)
        diag = LU.diagonal().abs()
        if int(info) != 0 or float(diag.min()) <= self.eps * float(diag.max()):
            raise _singular(M, "a zero pivot in LU")
        self.kind, self.factor, self.pivots, self.matrix = "lu", LU, pivots, M
        return None

    def solve(self, B: torch.Tensor) -> tuple[torch.Tensor, SolveInfo]:
        F = self.factor
        Bf = B.to(F.dtype)
        if self.kind == "cholesky":
            X = torch.cholesky_solve(Bf, F)
            AX = F @ (F.mT @ X)
        else:
            X = torch.linalg.lu_solve(F, self.pivots, Bf)
            AX = self.matrix @ X
        norms = Bf.norm(dim=0).clamp_min(torch.finfo(F.dtype).tiny)
        residuals = ((Bf - AX).norm(dim=0) / norms).to(B.dtype)
        k = B.shape[1]
        info = SolveInfo(
            method=self.name,
            iterations=torch.zeros(k, dtype=torch.long),
            residuals=residuals.cpu(),
            converged=torch.ones(k, dtype=torch.bool),
            reasons=[StopReason.DIRECT] * k,
            extra={"factorization": self.kind},
        )
        return X.to(B.dtype), info
