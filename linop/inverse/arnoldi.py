"""The Arnoldi inverse: the top eigenpairs of ``A`` (Lanczos, [`linop.lanczos`][linop.lanczos], kept
in the operator's cache), then ``A⁻¹ ≈ V (Λ + λ)⁻¹ Vᵀ``.

Handling of small and negative eigenvalues (never NaN): eigenpairs with
``|θ + λ| ≤ cutoff · max|θ + λ|`` are dropped (a pseudo-inverse on the resolved subspace) with a
[`NegativeCurvatureWarning`][linop.errors.NegativeCurvatureWarning]; negative ``θ + λ`` beyond the
cutoff are inverted as they are (the exact inverse on their eigenvector) with the same warning.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from linop._checks import non_negative, positive_int
from linop._checks import seed as check_seed
from linop._warn import warn
from linop.algebra import split_shift
from linop.errors import NegativeCurvatureWarning
from linop.inverse.base import SolveInfo, SolverOptions, StopReason, Strategy, register
from linop.lanczos import eigh

__all__ = ["ArnoldiOptions", "ArnoldiStrategy"]


def _reciprocals(d: torch.Tensor, cutoff: float, what: str) -> torch.Tensor:
    """``1 / (θ + λ)`` with the documented handling of small and negative values: zero where
    dropped."""
    big = float(d.abs().max()) if d.numel() else 0.0
    small = d.abs() <= cutoff * big
    negative = (d < 0) & ~small
    if bool(small.any()) or bool(negative.any()):
        warn(
            f"{what}: {int(small.sum())} eigenvalue(s) θ + λ within {cutoff:g}·max|θ + λ| of zero "
            f"were dropped and {int(negative.sum())} negative one(s) inverted as they are; the "
            f"operator is not positive definite on its top eigenspace. "
            f"A larger shift λ avoids this",
            NegativeCurvatureWarning,
        )
    return torch.where(small, torch.zeros_like(d), 1 / torch.where(small, torch.ones_like(d), d))


@dataclass(frozen=True)
class ArnoldiOptions(SolverOptions):
    """Options of ``method="arnoldi"``.

    Attributes:
        rank: eigenpairs kept.
        maxiter: Lanczos steps (default ``max(2 rank, rank + 20)``).
        seed: seed of the Lanczos start vector.
        tol: Lanczos breakdown threshold (see [`linop.lanczos.lanczos`][linop.lanczos.lanczos]).
        which: ``"LM"`` (largest ``|θ + λ|``) or ``"LA"`` (largest ``θ + λ``).
        cutoff: relative size below which ``θ + λ`` is dropped.
        complement: add ``(I − VVᵀ)/λ`` for the unresolved subspace (needs ``λ > 0``).
    """

    method = "arnoldi"
    rank: int = 50
    maxiter: int | None = None
    seed: int = 0
    tol: float | None = None
    which: str = "LM"
    cutoff: float = 1e-6
    complement: bool = False

    def validate(self) -> None:
        positive_int("rank", self.rank, allow_none=False)
        positive_int("maxiter", self.maxiter)
        non_negative("cutoff", self.cutoff)
        check_seed(self.seed)
        if self.tol is not None:
            non_negative("tol", self.tol)
        if self.which not in ("LM", "LA"):
            raise ValueError(f"which must be 'LM' or 'LA', got {self.which!r}")


@register
class ArnoldiStrategy(Strategy):
    """The low-rank inverse from Lanczos eigenpairs; options:
    [`ArnoldiOptions`][linop.ArnoldiOptions]."""

    name = "arnoldi"
    Options = ArnoldiOptions
    options: ArnoldiOptions

    def _setup(self) -> int:
        o = self.options
        self.shift = split_shift(self.operator)[1]
        if o.complement and self.shift <= 0:
            raise ValueError("complement=True needs a shift λ > 0: it adds (I − VVᵀ)/λ")
        rank = min(o.rank, self.operator.shape[0])
        self.low, hvps = eigh(
            self.operator, rank, maxiter=o.maxiter, seed=o.seed, tol=o.tol, which=o.which
        )
        self.inv_values = _reciprocals(self.low.values, o.cutoff, "arnoldi inverse")
        return hvps

    def solve(self, B: torch.Tensor) -> tuple[torch.Tensor, SolveInfo]:
        V = self.low.vectors
        C = V.mT @ B
        X = V @ (self.inv_values.unsqueeze(1) * C)
        if self.options.complement:
            X = X + (B - V @ C) / self.shift
        return X, SolveInfo.unchecked(self.name, B.shape[1], self.low.rank, StopReason.LOW_RANK)
