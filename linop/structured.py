"""Operators with explicit structure: identity, dense, diagonal and low-rank.

Example:
    >>> import torch
    >>> from linop import LowRankOperator
    >>> V = torch.linalg.qr(torch.randn(5, 2, dtype=torch.float64)).Q
    >>> L = LowRankOperator(V, torch.tensor([3.0, 1.0], dtype=torch.float64))
    >>> L.shape, L.tags.psd
    ((5, 5), True)
"""

from __future__ import annotations

import torch

from linop._tensor import check_entries
from linop.errors import DeviceMismatchError, DTypeMismatchError, ShapeMismatchError
from linop.operator import LinearOperator, canonical_device
from linop.tags import Tags

__all__ = ["IdentityOperator", "DenseOperator", "DiagonalOperator", "LowRankOperator"]


class IdentityOperator(LinearOperator):
    """The ``(n, n)`` identity.

    Args:
        n: the dimension.
        dtype: dtype of the vectors (default float32).
        device: device of the vectors (default cpu).
    """

    def __init__(
        self, n: int, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"
    ) -> None:
        super().__init__((n, n), dtype, device, Tags(psd=True))

    @classmethod
    def like(cls, op: LinearOperator) -> IdentityOperator:
        """The identity matching a square operator's size, dtype and device."""
        if op.shape[0] != op.shape[1]:
            raise ShapeMismatchError(f"IdentityOperator.like needs a square operator, got {op!r}")
        return cls(op.shape[0], op.dtype, op.device)

    def _matmat(self, X: torch.Tensor) -> torch.Tensor:
        return X.clone()

    def _to_dense(self, chunk_size: int | None) -> torch.Tensor:
        return torch.eye(self.shape[0], dtype=self.dtype, device=self.device)


class DenseOperator(LinearOperator):
    """An operator backed by an explicit ``(m, n)`` tensor.

    Args:
        matrix: a 2-D floating-point tensor; the operator takes its dtype and device.
        tags: structure the caller vouches for. Without it, a square matrix that is exactly
            symmetric is tagged symmetric; psd is never guessed.
    """

    def __init__(self, matrix: torch.Tensor, tags: Tags | None = None) -> None:
        if not isinstance(matrix, torch.Tensor) or matrix.ndim != 2:
            raise ShapeMismatchError(
                f"DenseOperator needs a 2-D tensor, got {getattr(matrix, 'shape', type(matrix))}"
            )
        check_entries(matrix, "matrix")
        if tags is None:
            square = matrix.shape[0] == matrix.shape[1]
            tags = Tags(symmetric=bool(square and torch.equal(matrix, matrix.mT)))
        m, n = matrix.shape
        super().__init__((m, n), matrix.dtype, matrix.device, tags)
        self.matrix: torch.Tensor = matrix

    def _matmat(self, X: torch.Tensor) -> torch.Tensor:
        return self.matrix @ X

    def _adjoint(self) -> LinearOperator:
        return self if self.tags.symmetric else DenseOperator(self.matrix.mT, self.tags)

    def _to_dense(self, chunk_size: int | None) -> torch.Tensor:
        return self.matrix.clone()


class DiagonalOperator(LinearOperator):
    """``diag(d)`` for a 1-D tensor ``d``; tagged psd when every entry is ``≥ 0``.

    Args:
        diagonal: the 1-D tensor of diagonal entries.
    """

    def __init__(self, diagonal: torch.Tensor) -> None:
        if not isinstance(diagonal, torch.Tensor) or diagonal.ndim != 1:
            raise ShapeMismatchError("DiagonalOperator needs a 1-D tensor of diagonal entries")
        check_entries(diagonal, "diagonal")
        n = diagonal.shape[0]
        tags = Tags(
            symmetric=True, psd=bool((diagonal >= 0).all()), nsd=bool((diagonal <= 0).all())
        )
        super().__init__((n, n), diagonal.dtype, diagonal.device, tags)
        self.diagonal: torch.Tensor = diagonal

    def _matmat(self, X: torch.Tensor) -> torch.Tensor:
        return self.diagonal.unsqueeze(1) * X

    def _to_dense(self, chunk_size: int | None) -> torch.Tensor:
        return torch.diag(self.diagonal)


class LowRankOperator(LinearOperator):
    """``V diag(s) Vᵀ`` for ``V`` of shape ``(n, r)`` and ``s`` of shape ``(r,)``.

    The form of an eigen-decomposition: with orthonormal ``V``, ``s`` are eigenvalues and the
    columns of ``V`` eigenvectors. Tagged psd when every ``s ≥ 0``.

    Args:
        vectors: ``V``, ``(n, r)``.
        values: ``s``, ``(r,)``, same dtype and device as ``V``.
    """

    def __init__(self, vectors: torch.Tensor, values: torch.Tensor) -> None:
        if vectors.ndim != 2 or values.ndim != 1 or values.shape[0] != vectors.shape[1]:
            raise ShapeMismatchError(
                f"LowRankOperator needs V of shape (n, r) and s of shape (r,), got "
                f"{tuple(vectors.shape)} and {tuple(values.shape)}"
            )
        if values.dtype != vectors.dtype:
            raise DTypeMismatchError(
                f"V ({vectors.dtype}) and s ({values.dtype}) must share one dtype"
            )
        if canonical_device(values.device) != canonical_device(vectors.device):
            raise DeviceMismatchError(
                f"V (on {vectors.device}) and s (on {values.device}) must be on one device"
            )
        check_entries(vectors, "V")
        check_entries(values, "s")
        n = vectors.shape[0]
        tags = Tags(symmetric=True, psd=bool((values >= 0).all()), nsd=bool((values <= 0).all()))
        super().__init__((n, n), vectors.dtype, vectors.device, tags)
        self.vectors: torch.Tensor = vectors
        self.values: torch.Tensor = values

    @property
    def rank(self) -> int:
        """The number of columns ``r`` of ``V``."""
        return self.vectors.shape[1]

    def _matmat(self, X: torch.Tensor) -> torch.Tensor:
        return self.vectors @ (self.values.unsqueeze(1) * (self.vectors.mT @ X))

    def _to_dense(self, chunk_size: int | None) -> torch.Tensor:
        return (self.vectors * self.values) @ self.vectors.mT

    def _repr_args(self) -> str:
        return f"rank={self.rank}"
