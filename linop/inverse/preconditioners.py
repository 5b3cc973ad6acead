"""Preconditioners for CG, as operators: a preconditioner ``M ≈ A⁻¹`` is a symmetric positive
definite [`LinearOperator`][linop.LinearOperator] like any other.

[`deflation_preconditioner`][linop.inverse.preconditioners.deflation_preconditioner] builds ``M``
from the top Lanczos eigenpairs of ``A``, and
[`nystrom_preconditioner`][linop.inverse.preconditioners.nystrom_preconditioner] from a randomized
Nyström approximation of a psd ``A`` (both kept in the operator's cache, so a λ sweep reuses
them); [`as_preconditioner`][linop.inverse.preconditioners.as_preconditioner] turns what the CG
option ``preconditioner`` accepts (an operator, a callable, or a name: ``"arnoldi"``,
``"nystrom"``) into one.

Which to use: Lanczos resolves the top eigenpairs accurately but its steps are sequential (one
product each); the Nyström sketch applies the operator to all its columns at once (one batched
product, fast on a GPU or with vmapped Hessian-vector products) and chooses its rank itself, but
needs a positive semi-definite operator.

Example:
    >>> import torch
    >>> from linop import DiagonalOperator
    >>> from linop.inverse.preconditioners import deflation_preconditioner
    >>> A = DiagonalOperator(torch.tensor([100.0, 10.0, 1.0, 0.5], dtype=torch.float64))
    >>> M, products = deflation_preconditioner(A, rank=2, maxiter=4)
    >>> x = torch.tensor([1.0, 1.0, 0.0, 0.0], dtype=torch.float64)   # in the top eigenspace
    >>> torch.allclose(M @ (A @ x), x), products
    (True, 4)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from linop.algebra import RegularizedOperator
from linop.errors import ShapeMismatchError
from linop.lanczos import eigh
from linop.nystrom import adaptive_nystrom
from linop.operator import LinearOperator
from linop.structured import LowRankOperator
from linop.tags import Tags

__all__ = [
    "PRECONDITIONERS",
    "as_preconditioner",
    "deflation_preconditioner",
    "nystrom_preconditioner",
    "spectral_preconditioner",
]


def spectral_preconditioner(low: LowRankOperator, what: str) -> LinearOperator:
    """``M = V D⁻¹ Vᵀ + (I − VVᵀ)/σ`` from approximate top eigenpairs ``(D, V)`` of a positive
    definite ``A`` (``D`` includes ``A``'s shift), with ``σ`` the smallest of ``D``: the operator
    ``V diag(1/D − 1/σ) Vᵀ + I/σ``, a low-rank term plus a shift. It maps the resolved
    eigenvalues to one and leaves the rest below one, so CG sees the condition number of the
    unresolved spectrum.

    Raises:
        ValueError: if some ``D`` is not positive (add a shift).
    """
    d = low.values
    if d.numel() == 0 or not bool((d > 0).all()):
        raise ValueError(
            f"{what} needs a positive definite operator, but some of its top eigenvalues θ + λ "
            f"are not positive; add a shift λ > 0"
        )
    sigma = float(d.min())
    M = RegularizedOperator(LowRankOperator(low.vectors, 1 / d - 1 / sigma), 1 / sigma)
    return M.with_tags(psd=True)  # its eigenvalues are 1/d and 1/σ, all positive


def deflation_preconditioner(
    A: LinearOperator, rank: int | None = 20, maxiter: int | None = None, seed: int = 0
) -> tuple[LinearOperator, int]:
    """The deflation preconditioner
    (see [`spectral_preconditioner`][linop.inverse.preconditioners.spectral_preconditioner]) from
    the top ``rank`` Lanczos eigenpairs ``(θ + λ, V)`` of a symmetric positive definite ``A``
    (``H`` or ``H + λI``; ``rank=None`` is 20), and the products it cost (0 when the eigenpairs
    were cached).

    Raises:
        ValueError: if a resolved ``θ + λ`` is not positive (add a shift).
    """
    rank = 20 if rank is None else rank
    low, hvps = eigh(A, min(rank, A.shape[0]), maxiter=maxiter, seed=seed, which="LA")
    return spectral_preconditioner(low, "preconditioner='arnoldi'"), hvps


def nystrom_preconditioner(
    A: LinearOperator, rank: int | None = None, maxiter: int | None = None, seed: int = 0
) -> tuple[LinearOperator, int]:
    """The Nyström preconditioner of Frangella, Tropp and Udell (2023), up to a scale CG
    ignores: [`spectral_preconditioner`][linop.inverse.preconditioners.spectral_preconditioner]
    from a randomized Nyström approximation ``U (Λ + λ) Uᵀ`` of a psd ``A = H + λI``
    ([`linop.nystrom`][linop.nystrom]), and the products it cost. ``maxiter`` is unused (the
    signature of every named preconditioner).

    ``rank=None`` chooses the rank: the sketch grows (16, 32, …, at most 1024 columns) until
    its smallest eigenvalue ``λ̂_r`` is at most ``10 λ``, which bounds the preconditioned
    condition number by about ``1 + 2 · 10`` when the approximation error is of the order of
    ``λ̂_r``, as it is for decaying spectra.

    Example:
        >>> import torch
        >>> from linop import DiagonalOperator, IdentityOperator
        >>> from linop.inverse.preconditioners import nystrom_preconditioner
        >>> H = DiagonalOperator(torch.tensor([100.0, 10.0, 1.0, 0.1], dtype=torch.float64))
        >>> M, products = nystrom_preconditioner(H + 0.1 * IdentityOperator.like(H), rank=4)
        >>> x = torch.tensor([1.0, 1.0, 1.0, 1.0], dtype=torch.float64)
        >>> torch.allclose(M @ (H @ x + 0.1 * x), x), products
        (True, 4)
    """
    low, products = adaptive_nystrom(A, rank, NYSTROM_PRECONDITIONER_TOL, 1024, seed)
    keep = low.values > 0  # approximate eigenvalues clipped to 0 carry no information
    low = LowRankOperator(low.vectors[:, keep], low.values[keep])
    return spectral_preconditioner(low, "preconditioner='nystrom'"), products


#: The adaptive rule's target for the Nyström preconditioner: ``λ̂_r ≤ 10 λ``.
NYSTROM_PRECONDITIONER_TOL = 10.0


class _CallablePreconditioner(LinearOperator):
    """A function on ``(n, k)`` tensors, trusted to be symmetric positive definite."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], like: LinearOperator) -> None:
        super().__init__(like.shape, like.dtype, like.device, Tags(psd=True))
        self.fn = fn

    def _matmat(self, X: torch.Tensor) -> torch.Tensor:
        return self.fn(X)


#: The named preconditioners: a name -> a function ``(A, rank, maxiter, seed) -> (M, products)``.
PRECONDITIONERS: dict[str, Callable[..., tuple[LinearOperator, int]]] = {
    "arnoldi": deflation_preconditioner,
    "nystrom": nystrom_preconditioner,
}


def as_preconditioner(
    M: Any, A: LinearOperator, rank: int | None, maxiter: int | None, seed: int
) -> tuple[LinearOperator | None, int]:
    """The CG option ``preconditioner`` as an operator, and the products building it cost.

    ``M`` may be None, an operator of ``A``'s shape, dtype and device, a callable on ``(n, k)``
    tensors, or a name in `PRECONDITIONERS` (built with ``rank``, ``maxiter``, ``seed``).
    """
    if M is None:
        return None, 0
    if isinstance(M, str):
        return PRECONDITIONERS[M](A, rank, maxiter, seed)
    if isinstance(M, LinearOperator):
        if M.shape != A.shape:
            raise ShapeMismatchError(f"the preconditioner {M!r} does not match {A!r}")
        A._check_compatible(M, "with the preconditioner")
        return M, 0
    return _CallablePreconditioner(M, A), 0
