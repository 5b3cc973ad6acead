"""Lazy inverses: ``A.inverse(method=..., **options)`` and :func:`solve`.

An :class:`InverseOperator` is itself a :class:`~linop.operator.LinearOperator`. Its set-up
(factorisation, eigen-decomposition) runs once, on first use, and is reused for every right-hand
side; after each product, :attr:`InverseOperator.info` holds a :class:`SolveInfo`.

======== =====================================================================================
method   what it does
======== =====================================================================================
explicit materialise (memory guard applies), then Cholesky (symmetric positive definite) or LU
cg       batched conjugate gradient; every column stops on its own at
         ``‖b − Ax‖ ≤ max(rtol‖b‖, atol)``; ``preconditioner="arnoldi"`` deflates the top
         eigenpairs
arnoldi  Lanczos top-k eigenpairs once (cached on the operator), then ``V (Λ + λ)⁻¹ Vᵀ``
lissa    stochastic Neumann series over random minibatches of a dataset Hessian
======== =====================================================================================

Example:
    >>> import torch
    >>> from linop import DenseOperator
    >>> A = DenseOperator(torch.tensor([[4.0, 1.0], [1.0, 3.0]], dtype=torch.float64))
    >>> x = A.inverse(method="cg", rtol=1e-12) @ torch.tensor([1.0, 2.0], dtype=torch.float64)
    >>> torch.allclose(A @ x, torch.tensor([1.0, 2.0], dtype=torch.float64))
    True
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from linop.errors import NonFiniteError, ShapeMismatchError
from linop.operator import LinearOperator
from linop.tags import Tags

__all__ = ["InverseOperator", "SolveInfo", "Strategy", "METHODS", "register", "solve"]


@dataclass
class SolveInfo:
    """What a solve did, column by column.

    Attributes:
        method: the method's name.
        iterations: ``(k,)`` iterations per right-hand side (0 for direct solves).
        residuals: ``(k,)`` final relative residuals ``‖b − Ax‖ / ‖b‖`` (NaN where the method
            does not compute them; see ``reasons``).
        converged: ``(k,)`` whether each column met its tolerance (True for methods that check
            none — arnoldi, lissa — whose residuals are NaN and whose ``str`` says so).
        reasons: why each column stopped.
        hvps: how many operator-vector products the solve made (columns counted), set-up
            included when it ran in this call.
        seconds: wall time of the call.
    """

    method: str
    iterations: torch.Tensor
    residuals: torch.Tensor
    converged: torch.Tensor
    reasons: list[str]
    hvps: int = 0
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        k = len(self.reasons)
        done = int(self.converged.sum())
        finite = self.residuals[torch.isfinite(self.residuals)]
        if k and not finite.numel():  # arnoldi, lissa: nothing was checked
            return (
                f"{self.method}: {k} columns done (convergence not checked: residual not "
                f"computed), {self.hvps} operator products, {self.seconds:.3f} s"
            )
        res = f"{float(finite.max()):.2e}" if finite.numel() else "not computed"
        return (
            f"{self.method}: {done}/{k} columns converged, max iterations "
            f"{int(self.iterations.max()) if k else 0}, max relative residual {res}, "
            f"{self.hvps} operator products, {self.seconds:.3f} s"
        )


class Strategy:
    """One inverse method: validated options, a once-only :meth:`setup`, a per-call
    :meth:`solve`.

    Subclasses set ``name`` and ``defaults`` (every valid option with its default value) and
    implement :meth:`_setup` and :meth:`solve`.
    """

    name: ClassVar[str] = ""
    defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, operator: LinearOperator, **options: Any) -> None:
        unknown = sorted(set(options) - set(self.defaults))
        if unknown:
            valid = ", ".join(f"{k}={v!r}" for k, v in self.defaults.items())
            raise TypeError(
                f"unknown option(s) {unknown} for method {self.name!r}; valid options: {valid}"
            )
        self.operator = operator
        self.options: dict[str, Any] = {**self.defaults, **options}
        self._ready = False
        self.setup_hvps = 0

    def setup(self) -> int:
        """Run the set-up once; returns the operator products it made (0 when already done)."""
        if self._ready:
            return 0
        self.setup_hvps = self._setup() or 0
        self._ready = True
        return self.setup_hvps

    def _setup(self) -> int | None:
        return 0

    def solve(self, B: torch.Tensor) -> tuple[torch.Tensor, SolveInfo]:
        """Solve ``A X = B`` for an ``(n, k)`` tensor ``B``."""
        raise NotImplementedError  # pragma: no cover - every registered method overrides it


#: The registered methods, by name.
METHODS: dict[str, type[Strategy]] = {}


def register(cls: type[Strategy]) -> type[Strategy]:
    """Class decorator adding a :class:`Strategy` to :data:`METHODS`."""
    METHODS[cls.name] = cls
    return cls


def make_strategy(operator: LinearOperator, method: str, options: dict[str, Any]) -> Strategy:
    """The strategy object for ``method``, or a ``ValueError`` listing the valid methods."""
    if method not in METHODS:
        raise ValueError(
            f"unknown inverse method {method!r}; valid methods are {', '.join(sorted(METHODS))}"
        )
    return METHODS[method](operator, **options)


class InverseOperator(LinearOperator):
    """``A⁻¹`` for a square operator ``A``, applied by a chosen method, lazily.

    Args:
        operator: the square operator ``A``.
        method: ``"explicit"``, ``"cg"``, ``"arnoldi"`` or ``"lissa"``.
        **options: the method's options (an unknown one is an error listing the valid ones).

    Attributes:
        info: the :class:`SolveInfo` of the latest product (None before the first).
    """

    def __init__(self, operator: LinearOperator, method: str = "cg", **options: Any) -> None:
        if operator.shape[0] != operator.shape[1]:
            raise ShapeMismatchError(f"only a square operator has an inverse, got {operator!r}")
        strategy = make_strategy(operator, method, options)
        t = operator.tags
        super().__init__(operator.shape, operator.dtype, operator.device, Tags(t.symmetric, t.psd, t.nsd))
        self.operator = operator
        self.method = method
        self.strategy = strategy
        self.info: SolveInfo | None = None

    def setup(self) -> InverseOperator:
        """Run the method's set-up now (it otherwise runs on the first product)."""
        self.strategy.setup()
        return self

    def _matmat(self, B: torch.Tensor) -> torch.Tensor:
        if not bool(torch.isfinite(B).all()):
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

    def inverse(self, method: str | None = None, **options: Any) -> LinearOperator:
        """The operator this is the inverse of."""
        return self.operator

    def _adjoint(self) -> LinearOperator:
        if self.tags.symmetric:
            return self
        return InverseOperator(self.operator.adjoint(), self.method, **_user_options(self.strategy))

    def _repr_args(self) -> str:
        return f"method={self.method!r}"


def _user_options(strategy: Strategy) -> dict[str, Any]:
    return {k: v for k, v in strategy.options.items() if v is not strategy.defaults.get(k)}


def solve(
    operator: LinearOperator,
    b: torch.Tensor,
    method: str = "cg",
    *,
    return_info: bool = False,
    **options: Any,
) -> torch.Tensor | tuple[torch.Tensor, SolveInfo]:
    """Solve ``A x = b`` for ``b`` of shape ``(n,)`` or ``(n, k)``.

    Args:
        operator: the square operator ``A``.
        b: the right-hand side(s).
        method: as :class:`InverseOperator`.
        return_info: also return the :class:`SolveInfo`.
        **options: the method's options.

    Example:
        >>> import torch
        >>> from linop import DiagonalOperator, solve
        >>> x, info = solve(DiagonalOperator(torch.tensor([2.0, 4.0])), torch.ones(2),
        ...                 method="explicit", return_info=True)
        >>> x.tolist(), bool(info.converged.all())
        ([0.5, 0.25], True)
    """
    inv = InverseOperator(operator, method, **options)
    x = inv @ b
    return (x, inv.info) if return_info else x


# Register the methods (imported for their side effect).
from linop.inverse import arnoldi, cg, explicit, lissa  # noqa: E402,F401
