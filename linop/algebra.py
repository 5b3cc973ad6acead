"""Lazy composites: sums, scalings, products, adjoints and the regularised ``A + λI``.

Composites are flat: ``A + B + C`` is one [`SumOperator`][linop.SumOperator] of three terms and
``2 * (3 * A)`` is one [`ScaledOperator`][linop.ScaledOperator]. ``A + λ * I`` is a
[`RegularizedOperator`][linop.RegularizedOperator] that remembers its shift, so solvers can
exploit it.

Example:
    >>> import torch
    >>> from linop import DenseOperator, IdentityOperator
    >>> A = DenseOperator(torch.tensor([[2.0, 1.0], [1.0, 3.0]]))
    >>> R = A + 0.1 * IdentityOperator.like(A)
    >>> type(R).__name__, R.shift
    ('RegularizedOperator', 0.1)
"""

from __future__ import annotations

import math
from itertools import pairwise

import torch

from linop.errors import NonFiniteError, ShapeMismatchError
from linop.operator import LinearOperator
from linop.structured import IdentityOperator
from linop.tags import Tags

__all__ = [
    "SumOperator",
    "ScaledOperator",
    "ProductOperator",
    "AdjointOperator",
    "RegularizedOperator",
    "split_shift",
]


def _shift_of(op: LinearOperator) -> float | None:
    """``λ`` if ``op`` is ``λ * I`` (an identity, maybe scaled), else None."""
    if isinstance(op, IdentityOperator):
        return 1.0
    if isinstance(op, ScaledOperator) and isinstance(op.base, IdentityOperator):
        return op.scalar
    return None


def add(a: LinearOperator, b: LinearOperator) -> LinearOperator:
    """``a + b`` with the algebra's simplifications (used by ``LinearOperator.__add__``)."""
    shift_a, shift_b = _shift_of(a), _shift_of(b)
    if shift_b is not None and shift_a is None:
        return RegularizedOperator(a, shift_b)
    if shift_a is not None and shift_b is None:
        return RegularizedOperator(b, shift_a)
    return SumOperator([a, b])


def split_shift(op: LinearOperator) -> tuple[LinearOperator, float]:
    """``(A, λ)`` for ``op = A + λI`` (a [`RegularizedOperator`][linop.RegularizedOperator]), else
    ``(op, 0.0)``."""
    return (op.base, op.shift) if isinstance(op, RegularizedOperator) else (op, 0.0)


def _finite(c: float, what: str) -> float:
    """``c`` as a float, or [`NonFiniteError`][linop.errors.NonFiniteError] if it is NaN or
    infinite."""
    if not math.isfinite(float(c)):
        raise NonFiniteError(f"the {what} is {float(c)}; an operator needs a finite one")
    return float(c)


class SumOperator(LinearOperator):
    """``A₁ + A₂ + …``, flattened: nested sums become one.

    Args:
        terms: operators of one shape, dtype and device.
    """

    def __init__(self, terms: list[LinearOperator]) -> None:
        flat: list[LinearOperator] = []
        for t in terms:
            flat.extend(t.terms if isinstance(t, SumOperator) else [t])
        if not flat:
            raise ValueError("a SumOperator needs at least one term")
        first = flat[0]
        for t in flat[1:]:
            if t.shape != first.shape:
                raise ShapeMismatchError(f"cannot add {first!r} and {t!r}: shapes differ")
            first._check_compatible(t, "+")
        super().__init__(first.shape, first.dtype, first.device, Tags.sum([t.tags for t in flat]))
        self.terms: list[LinearOperator] = flat

    def _matmat(self, X: torch.Tensor) -> torch.Tensor:
        out = self.terms[0]._matmat(X)
        for t in self.terms[1:]:
            out = out + t._matmat(X)
        return out

    def _adjoint(self) -> LinearOperator:
        return self if self.tags.symmetric else SumOperator([t.adjoint() for t in self.terms])

    def _to_dense(self, chunk_size: int | None) -> torch.Tensor:
        out = self.terms[0]._to_dense(chunk_size)
        for t in self.terms[1:]:
            out = out + t._to_dense(chunk_size)
        return out

    def _repr_args(self) -> str:
        return f"terms={len(self.terms)}"


class ScaledOperator(LinearOperator):
    """``c · A`` for a real scalar ``c``; ``c₁ · (c₂ · A)`` collapses to ``(c₁c₂) · A``.

    Args:
        base: the operator.
        scalar: a real number.
    """

    def __init__(self, base: LinearOperator, scalar: float) -> None:
        _finite(scalar, "scalar")
        if isinstance(base, ScaledOperator):
            scalar, base = scalar * base.scalar, base.base
        super().__init__(base.shape, base.dtype, base.device, base.tags.scale(scalar))
        self.base: LinearOperator = base
        self.scalar: float = float(scalar)

    def _matmat(self, X: torch.Tensor) -> torch.Tensor:
        return self.scalar * self.base._matmat(X)

    def _adjoint(self) -> LinearOperator:
        return self if self.tags.symmetric else ScaledOperator(self.base.adjoint(), self.scalar)

    def _to_dense(self, chunk_size: int | None) -> torch.Tensor:
        return self.scalar * self.base._to_dense(chunk_size)

    def _repr_args(self) -> str:
        return f"scalar={self.scalar:g}"


class ProductOperator(LinearOperator):
    """``A₁ A₂ ⋯ Aₖ`` applied right to left; nested products become one.

    Args:
        factors: operators whose inner dimensions agree, of one dtype and device.
    """

    def __init__(self, factors: list[LinearOperator]) -> None:
        flat: list[LinearOperator] = []
        for f in factors:
            flat.extend(f.factors if isinstance(f, ProductOperator) else [f])
        if not flat:
            raise ValueError("a ProductOperator needs at least one factor")
        for left, right in pairwise(flat):
            if left.shape[1] != right.shape[0]:
                raise ShapeMismatchError(
                    f"cannot multiply {left!r} by {right!r}: inner dimensions "
                    f"{left.shape[1]} and {right.shape[0]} differ"
                )
            left._check_compatible(right, "@")
        shape = (flat[0].shape[0], flat[-1].shape[1])
        super().__init__(shape, flat[0].dtype, flat[0].device, Tags.product([f.tags for f in flat]))
        self.factors: list[LinearOperator] = flat

    def _matmat(self, X: torch.Tensor) -> torch.Tensor:
        for f in reversed(self.factors):
            X = f._matmat(X)
        return X

    def _adjoint(self) -> LinearOperator:
        return ProductOperator([f.adjoint() for f in reversed(self.factors)])

    def _repr_args(self) -> str:
        return f"factors={len(self.factors)}"


class AdjointOperator(LinearOperator):
    """``Aᵀ`` of an operator that has no explicit adjoint, by reverse-mode autodiff.

    Since ``A`` is linear, ``Aᵀ y`` is the gradient of ``⟨A x, y⟩`` with respect to ``x``;
    ``torch.func.vjp`` computes it in one pass for all columns of ``Y``.

    Args:
        base: the operator whose adjoint is wanted; its ``_matmat`` must be differentiable.
    """

    def __init__(self, base: LinearOperator) -> None:
        m, n = base.shape
        super().__init__((n, m), base.dtype, base.device, base.tags)
        self.base: LinearOperator = base

    def _matmat(self, Y: torch.Tensor) -> torch.Tensor:
        zeros = torch.zeros(self.base.shape[1], Y.shape[1], dtype=self.dtype, device=self.device)
        pullback = torch.func.vjp(self.base._matmat, zeros)[1]
        return pullback(Y)[0]

    def _adjoint(self) -> LinearOperator:
        return self.base


class RegularizedOperator(LinearOperator):
    """``A + λ I`` for a square operator ``A`` and a real shift ``λ``.

    Solvers read ``base`` and ``shift``: Arnoldi reuses the base's eigenpairs for any ``λ``, LiSSA
    uses ``λ`` as damping, and the explicit solver adds it to the diagonal. Adding another
    ``μ * I`` gives ``RegularizedOperator(A, λ + μ)``.

    Args:
        base: a square operator.
        shift: the real number ``λ``.
    """

    def __init__(self, base: LinearOperator, shift: float) -> None:
        if base.shape[0] != base.shape[1]:
            raise ShapeMismatchError(f"only a square operator can be regularised, got {base!r}")
        if isinstance(base, RegularizedOperator):
            shift, base = shift + base.shift, base.base
        shift = _finite(shift, "shift λ")
        identity_tags = Tags(psd=shift >= 0, nsd=shift <= 0)
        super().__init__(base.shape, base.dtype, base.device, Tags.sum([base.tags, identity_tags]))
        self.base: LinearOperator = base
        self.shift: float = shift

    def _matmat(self, X: torch.Tensor) -> torch.Tensor:
        out = self.base._matmat(X)
        return torch.add(out, X, alpha=self.shift) if self.shift else out

    def _adjoint(self) -> LinearOperator:
        return self if self.tags.symmetric else RegularizedOperator(self.base.adjoint(), self.shift)

    def _to_dense(self, chunk_size: int | None) -> torch.Tensor:
        M = self.base._to_dense(chunk_size)
        M.diagonal().add_(self.shift)  # the base's matrix is a fresh tensor
        return M

    def _repr_args(self) -> str:
        return f"shift={self.shift:g}"
