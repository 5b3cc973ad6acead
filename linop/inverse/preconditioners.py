"""Preconditioners for CG, as operators: a preconditioner ``M ≈ A⁻¹`` is a symmetric positive
definite [`LinearOperator`][linop.LinearOperator] like any other.

[`deflation_preconditioner`][linop.inverse.preconditioners.deflation_preconditioner] builds ``M``
from the top eigenpairs of ``A`` (kept in the operator's cache, so a λ sweep reuses them);
[`as_preconditioner`][linop.inverse.preconditioners.as_preconditioner] turns what the CG option
``preconditioner`` accepts (an operator, a callable, or a name such as ``"arnoldi"``) into one.

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
from linop.operator import LinearOperator
from linop.structured import LowRankOperator
from linop.tags import Tags

__all__ = ["PRECONDITIONERS", "as_preconditioner", "deflation_preconditioner"]


def deflation_preconditioner(
    A: LinearOperator, rank: int = 20, maxiter: int | None = None, seed: int = 0
) -> tuple[LinearOperator, int]:
    """``M = V (Λ+λ)⁻¹ Vᵀ + (I − VVᵀ)/σ`` from the top ``rank`` eigenpairs ``(θ + λ, V)`` of a
    symmetric positive definite ``A`` (``H`` or ``H + λI``), with ``σ`` the smallest resolved
    ``θ + λ``; and the products it cost (0 when the eigenpairs were cached).

    ``M`` maps the resolved eigenvalues to one and leaves the rest below one, so CG sees the
    condition number of the unresolved spectrum. It is the operator
    ``V diag(1/d − 1/σ) Vᵀ + I/σ``: a low-rank term plus a shift.

    Raises:
        ValueError: if a resolved ``θ + λ`` is not positive (add a shift).
    """
    low, hvps = eigh(A, min(rank, A.shape[0]), maxiter=maxiter, seed=seed, which="LA")
    d = low.values
    if not bool((d > 0).all()):
        raise ValueError(
            "preconditioner='arnoldi' needs a positive definite operator, but some of its top "
            "eigenvalues θ + λ are not positive; add a shift λ > 0"
        )
    sigma = float(d.min())
    M = RegularizedOperator(LowRankOperator(low.vectors, 1 / d - 1 / sigma), 1 / sigma)
    return M.with_tags(psd=True), hvps  # its eigenvalues are 1/d and 1/σ, all positive


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
}


def as_preconditioner(
    M: Any, A: LinearOperator, rank: int, maxiter: int | None, seed: int
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
