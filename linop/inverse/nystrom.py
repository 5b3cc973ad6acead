"""The Nyström inverse: a randomized Nyström approximation ``Â = U Λ Uᵀ`` of the psd ``H``
([`linop.nystrom`][linop.nystrom], kept in ``H``'s cache), then the exact inverse of ``Â + λI``:

    (Â + λI)⁻¹ = U (Λ + λ)⁻¹ Uᵀ + (I − UUᵀ) / λ

Its error is that of the approximation: about ``λ_{r+1}(H) / λ`` relative, so it is accurate
when the spectrum of ``H`` falls below ``λ`` within the rank, and otherwise a fast, rough answer
(as the Arnoldi inverse) — or a preconditioner for CG, where it pays off most
(``preconditioner="nystrom"``, see
[`nystrom_preconditioner`][linop.inverse.preconditioners.nystrom_preconditioner]).

**The rank.** ``rank=None`` (the default) grows the sketch from 16 columns, doubling, until its
smallest eigenvalue ``λ̂_r`` falls to ``tol · λ`` (the inverse) or ``10 λ`` (the preconditioner)
or the rank reaches ``max_rank``. With ``λ̂_r ≤ τλ``, the approximation error ``‖H − Â‖`` is
typically of the order of ``λ̂_r``: the inverse is then about ``τ``-accurate, and the
preconditioned operator has a condition number of about ``1 + 2τ`` (Frangella, Tropp and Udell,
2023), so CG converges in a handful of iterations. Products spent on the sketch are reused by
every larger rank, every ``λ`` and every right-hand side.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from linop._checks import finite_number, positive_int
from linop._checks import seed as check_seed
from linop.algebra import split_shift
from linop.errors import SingularOperatorError
from linop.inverse.base import SolveInfo, SolverOptions, StopReason, Strategy, register
from linop.nystrom import adaptive_nystrom

__all__ = ["NystromOptions", "NystromStrategy"]


@dataclass(frozen=True)
class NystromOptions(SolverOptions):
    """Options of ``method="nystrom"``.

    Attributes:
        rank: columns of the sketch (operator products), or None to choose it: grow it
            (16, 32, 64, ...) until the smallest approximate eigenvalue is at most ``tol · λ``,
            or ``max_rank``.
        tol: the adaptive rule's target, relative to ``λ`` (about the relative accuracy of the
            inverse).
        max_rank: the largest rank the adaptive rule reaches.
        seed: seed of the random test matrix.
    """

    method = "nystrom"
    rank: int | None = None
    tol: float = 1e-2
    max_rank: int = 1024
    seed: int = 0

    def validate(self) -> None:
        positive_int("rank", self.rank)
        positive_int("max_rank", self.max_rank, allow_none=False)
        if finite_number("tol", self.tol) <= 0:
            raise ValueError(f"tol must be positive, got {self.tol!r}")
        check_seed(self.seed)


@register
class NystromStrategy(Strategy):
    """The exact inverse of a Nyström approximation plus the shift; options:
    [`NystromOptions`][linop.inverse.nystrom.NystromOptions]."""

    name = "nystrom"
    Options = NystromOptions
    options: NystromOptions

    def _setup(self) -> int:
        o = self.options
        base, self.shift = split_shift(self.operator)
        n = base.shape[0]
        self.low, products = adaptive_nystrom(self.operator, o.rank, o.tol, o.max_rank, o.seed)
        complete = self.low.rank >= n
        d = self.low.values
        if not complete and self.shift <= 0:
            raise ValueError(
                f"the Nyström inverse of rank {self.low.rank} < n = {n} inverts (I − UUᵀ) by "
                f"the shift λ, and A has none: use A = H + λI with λ > 0, or rank = n"
            )
        if not bool((d > 0).all()):
            raise SingularOperatorError(
                "the Nyström approximation of A has zero eigenvalues and A has no shift: it is "
                "singular; add a shift λ > 0"
            )
        self.inv_values = 1 / d
        self.complete = complete
        return products

    def solve(self, B: torch.Tensor) -> tuple[torch.Tensor, SolveInfo]:
        U = self.low.vectors
        C = U.mT @ B
        X = U @ (self.inv_values.unsqueeze(1) * C)
        if not self.complete:
            X = X + (B - U @ C) / self.shift
        info = SolveInfo.unchecked(self.name, B.shape[1], self.low.rank, StopReason.LOW_RANK)
        info.extra["rank"] = self.low.rank
        return X, info
