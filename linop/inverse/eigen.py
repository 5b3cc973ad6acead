"""``method="eigen"``: the exact inverse of an operator that knows its eigendecomposition.

An operator ``K = Q diag(θ) Qᵀ`` that exposes ``eigenvalues()`` and ``spectral(f)`` (the operator
``Q f(θ) Qᵀ``), as [`KFACOperator`][linop.KFACOperator] and
[`EKFACOperator`][linop.EKFACOperator] do, has the inverse ``(K + λI)⁻¹ = Q diag(1/(θ + λ)) Qᵀ``
in closed form: no iterations, no products of ``K``, and the same cost as a product. It is the
default method of ``A.inverse()`` for such operators and their shifts ``K + λI``.

Example:
    >>> import torch
    >>> from linop import KFACOperator
    >>> model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    >>> X, y = torch.randn(16, 3), torch.randint(0, 2, (16,))
    >>> K = KFACOperator.from_module(model, torch.nn.CrossEntropyLoss(), (X, y), kind="type2")
    >>> A = K.regularize(0.1)                        # K + 0.1 I
    >>> inv = A.inverse()
    >>> v = torch.randn(K.shape[0])
    >>> torch.allclose(A @ (inv @ v), v, atol=1e-4), inv.method
    (True, 'eigen')
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from linop.algebra import split_shift
from linop.errors import SingularOperatorError
from linop.inverse.base import SolveInfo, SolverOptions, StopReason, Strategy, register
from linop.operator import LinearOperator

__all__ = ["EigenOptions", "EigenStrategy", "default_method", "spectral_parts"]


def spectral_parts(operator: LinearOperator) -> tuple[Any, float] | None:
    """``(K, λ)`` for ``operator = K + λI`` (or ``K``) with ``K`` exposing its
    eigendecomposition (``eigenvalues`` and ``spectral``), else None."""
    base, shift = split_shift(operator)
    known = callable(getattr(base, "spectral", None)) and callable(
        getattr(base, "eigenvalues", None)
    )
    return (base, shift) if known else None


def default_method(operator: LinearOperator) -> str:
    """The method ``A.inverse()`` uses when none is named: ``"eigen"`` for an operator with a
    known eigendecomposition (and its shifts), ``"cg"`` otherwise."""
    return "eigen" if spectral_parts(operator) is not None else "cg"


@dataclass(frozen=True)
class EigenOptions(SolverOptions):
    """Options of ``method="eigen"``.

    Attributes:
        rcond: eigenvalues ``θ + λ`` at most ``rcond · max|θ + λ|`` make the operator singular
            to working precision: the inverse raises
            [`SingularOperatorError`][linop.SingularOperatorError] (add a shift λ > 0).
            Default: ``n`` times the dtype's machine epsilon.
    """

    method = "eigen"
    rcond: float | None = None

    def validate(self) -> None:
        if self.rcond is not None and not 0 <= float(self.rcond) < 1:
            raise ValueError(f"rcond must be in [0, 1), got {self.rcond!r}")


@register
class EigenStrategy(Strategy):
    """The closed-form inverse from a known eigendecomposition; options:
    [`EigenOptions`][linop.EigenOptions]."""

    name = "eigen"
    Options = EigenOptions
    options: EigenOptions

    def __init__(self, operator: LinearOperator, options: SolverOptions) -> None:
        parts = spectral_parts(operator)
        if parts is None:
            raise TypeError(
                f"method='eigen' needs an operator that knows its eigendecomposition "
                f"(KFACOperator, EKFACOperator, or one of them plus lam * I), got {operator!r}; "
                f"use 'explicit', 'cg', 'arnoldi', 'nystrom' or 'lissa'"
            )
        super().__init__(operator, options)
        self.base, self.shift = parts

    def _setup(self) -> int:
        theta = self.base.eigenvalues().double() + self.shift
        top = float(theta.abs().max()) if theta.numel() else 0.0
        n = self.operator.shape[0]
        rcond = self.options.rcond
        if rcond is None:
            rcond = n * torch.finfo(self.operator.dtype).eps
        small = int((theta.abs() <= rcond * top).sum()) if top > 0 else n
        if small:
            raise SingularOperatorError(
                f"{small} of the {n} eigenvalues θ + λ of {self.operator!r} are zero to working "
                f"precision (|θ + λ| ≤ {rcond:.1e} · {top:.3e}), so it has no inverse. Add a "
                f"shift: K.regularize(lam).inverse() with lam > 0"
            )
        self.extra = {
            "shift": self.shift,
            "condition": top / float(theta.abs().min()),
            "negative": int((theta < 0).sum()),
        }
        shift = self.shift
        self.inverse = self.base.spectral(lambda s: 1.0 / (s + shift))
        return 0

    def solve(self, B: torch.Tensor) -> tuple[torch.Tensor, SolveInfo]:
        X = self.inverse._matmat(B)
        info = SolveInfo.unchecked(self.name, B.shape[1], 0, StopReason.EIGEN)
        info.extra.update(self.extra)
        return X, info
