"""The lazy inverse operator and [`solve`][linop.solve].

An [`InverseOperator`][linop.InverseOperator] is itself a [`LinearOperator`][linop.LinearOperator].
Its set-up (factorisation, eigen-decomposition) runs once, on first use, and is reused for every
right-hand side; after each product, `InverseOperator.info` holds a [`SolveInfo`][linop.SolveInfo].

``inv @ v`` is differentiable and vmappable with respect to ``v`` for every method: the gradient
of ``A⁻¹ v`` against ``g`` is ``A⁻ᵀ g`` (another solve), and under ``torch.func.vmap`` the batch of
vectors is solved at once as columns (each column still stops on its own).
"""

from __future__ import annotations

import time
from typing import Any

import torch

from linop._tensor import finite, traced
from linop.errors import NonFiniteError, ShapeMismatchError
from linop.inverse import arnoldi, cg, eigen, explicit, lissa, nystrom  # noqa: F401 - they register
from linop.inverse.base import METHODS, SolveInfo, SolverOptions, StopReason, Strategy
from linop.inverse.eigen import default_method
from linop.operator import LinearOperator
from linop.tags import Tags

__all__ = ["InverseOperator", "make_strategy", "solve"]


def make_strategy(
    operator: LinearOperator, method: str | SolverOptions | None, options: dict[str, Any]
) -> Strategy:
    """The strategy for ``method`` (a name with keyword options, or a typed options object);
    unknown methods or options, and invalid values, raise here with the valid ones listed."""
    if isinstance(method, SolverOptions):
        if options:
            raise TypeError("pass the options either as an options object or as keywords, not both")
        if method.method not in METHODS:
            raise TypeError(
                f"{type(method).__name__} names no inverse method; pass a method's options "
                f"(CGOptions, ExplicitOptions, ArnoldiOptions, LissaOptions, NystromOptions, "
                f"EigenOptions) or "
                f"its name"
            )
        return METHODS[method.method](operator, method)
    if method is None:
        method = default_method(operator)
    if method not in METHODS:
        raise ValueError(
            f"unknown inverse method {method!r}; valid methods are {', '.join(sorted(METHODS))}"
        )
    strategy = METHODS[method]
    return strategy(operator, strategy.Options.parse(**options))


class _Solve(torch.autograd.Function):
    """``X = A⁻¹ B`` made to work with autograd and torch.func: the backward is the adjoint
    solve, and under ``vmap`` the batch is solved at once, as more columns."""

    @staticmethod
    def forward(B: torch.Tensor, inverse: InverseOperator) -> torch.Tensor:
        return inverse._solve(B)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
        ctx.inverse = inputs[1]

    @staticmethod
    def backward(ctx: Any, G: torch.Tensor) -> tuple[torch.Tensor, None]:
        return ctx.inverse.adjoint()._matmat(G), None

    @staticmethod
    def vmap(
        info: Any, in_dims: tuple[Any, ...], B: torch.Tensor, inverse: InverseOperator
    ) -> tuple[torch.Tensor, int]:
        Bs = B.movedim(in_dims[0], 0)  # (batch, n, k)
        batch, n, k = Bs.shape
        X = _Solve.apply(Bs.permute(1, 0, 2).reshape(n, batch * k), inverse)
        return X.reshape(n, batch, k).permute(1, 0, 2), 0


class InverseOperator(LinearOperator):
    """``A⁻¹`` for a square operator ``A``, applied by a chosen method, lazily.

    Args:
        operator: the square operator ``A``.
        method: ``"explicit"``, ``"cg"``, ``"arnoldi"``, ``"lissa"``, ``"nystrom"`` or
            ``"eigen"``, or a typed options object ([`CGOptions`][linop.CGOptions], ...), which
            names its method. None (the default): ``"eigen"`` for an operator that knows its
            eigendecomposition (K-FAC, EK-FAC, and their shifts), ``"cg"`` otherwise.
        **options: the method's options (an unknown or invalid one is an error listing the
            valid ones).

    Attributes:
        info: the [`SolveInfo`][linop.SolveInfo] of the latest product (None before the first).
        options: the method's typed options.
    """

    def __init__(
        self, operator: LinearOperator, method: str | SolverOptions | None = None, **options: Any
    ) -> None:
        if operator.shape[0] != operator.shape[1]:
            raise ShapeMismatchError(f"only a square operator has an inverse, got {operator!r}")
        strategy = make_strategy(operator, method, options)
        t = operator.tags
        super().__init__(
            operator.shape, operator.dtype, operator.device, Tags(t.symmetric, t.psd, t.nsd)
        )
        self.operator = operator
        self.method: str = strategy.name
        self.strategy = strategy
        self.options: SolverOptions = strategy.options
        self.info: SolveInfo | None = None
        self._adjoint_inverse: InverseOperator | None = None

    def setup(self) -> InverseOperator:
        """Run the method's set-up now (it otherwise runs on the first product)."""
        self.strategy.setup()
        return self

    def matmat(self, X: torch.Tensor) -> torch.Tensor:
        Y = super().matmat(X)
        if X.shape[1] == 0:  # nothing was solved: say so
            self.info = SolveInfo.unchecked(self.method, 0, 0, StopReason.DIRECT)
        return Y

    def _matmat(self, B: torch.Tensor) -> torch.Tensor:
        if self.shape[0] == 0:  # a 0 x 0 system: every column is solved, by nothing
            self.info = SolveInfo.unchecked(self.method, B.shape[1], 0, StopReason.DIRECT)
            return B.clone()
        if traced(B) or (torch.is_grad_enabled() and B.requires_grad):
            return _Solve.apply(B, self)
        return self._solve(B)

    def _solve(self, B: torch.Tensor) -> torch.Tensor:
        if not finite(B):
            raise NonFiniteError("the right-hand side contains NaN or infinite entries")
        start = time.perf_counter()
        setup_hvps = self.strategy.setup()
        X, info = self.strategy.solve(B)
        if X.is_cuda:
            torch.cuda.synchronize(X.device)
        info.hvps += setup_hvps
        info.seconds = time.perf_counter() - start
        self.info = info
        return X

    def inverse(self, method: Any = None, **options: Any) -> LinearOperator:
        """The operator this is the inverse of."""
        return self.operator

    def _adjoint(self) -> LinearOperator:
        if self.tags.symmetric:
            return self
        if self._adjoint_inverse is None:
            self._adjoint_inverse = InverseOperator(self.operator.adjoint(), self.options)
        return self._adjoint_inverse

    def _repr_args(self) -> str:
        return f"method={self.method!r}"


def solve(
    operator: LinearOperator,
    b: torch.Tensor,
    method: str | SolverOptions | None = None,
    *,
    return_info: bool = False,
    **options: Any,
) -> torch.Tensor | tuple[torch.Tensor, SolveInfo]:
    """Solve ``A x = b`` for ``b`` of shape ``(n,)`` or ``(n, k)``.

    Args:
        operator: the square operator ``A``.
        b: the right-hand side(s).
        method: as [`InverseOperator`][linop.InverseOperator].
        return_info: also return the [`SolveInfo`][linop.SolveInfo].
        **options: the method's options.

    Example:
        >>> import torch
        >>> from linop import DiagonalOperator, solve
        >>> x, info = solve(DiagonalOperator(torch.tensor([2.0, 4.0])), torch.ones(2),
        ...                 method="explicit", return_info=True)
        >>> x.tolist(), bool(info.converged.all())
        ([0.5, 0.25], True)
    """
    if not isinstance(b, torch.Tensor):
        raise TypeError(f"b must be a torch.Tensor, got {type(b).__name__}")
    inv = InverseOperator(operator, method, **options)
    x = inv @ b
    if not return_info:
        return x
    assert inv.info is not None  # every product records its SolveInfo
    return x, inv.info
