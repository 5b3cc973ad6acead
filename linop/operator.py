"""The [`LinearOperator`][linop.LinearOperator] base class.

A subclass implements one method, ``_matmat(X)`` on an ``(n, k)`` tensor, plus ``_adjoint()``
unless it is symmetric. Everything else — matvec, the algebra, ``to_dense``, ``to_scipy`` — comes
from here.

Example:
    >>> import torch
    >>> from linop import DenseOperator, IdentityOperator
    >>> A = DenseOperator(torch.eye(3, dtype=torch.float64) * 2)
    >>> B = A + 0.5 * IdentityOperator.like(A)      # a RegularizedOperator
    >>> (B @ torch.ones(3, dtype=torch.float64)).tolist()
    [2.5, 2.5, 2.5]
"""

from __future__ import annotations

import copy
import numbers
import operator
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any

import torch

from linop._checks import integer
from linop.errors import (
    DenseMemoryError,
    DeviceMismatchError,
    DTypeMismatchError,
    ShapeMismatchError,
)
from linop.tags import Tags

if TYPE_CHECKING:  # pragma: no cover
    import scipy.sparse.linalg

    from linop.structured import LowRankOperator

__all__ = ["LinearOperator", "OperatorCache", "DEFAULT_DENSE_BUDGET_BYTES", "canonical_device"]

#: Default memory budget of `LinearOperator.to_dense`, in bytes (1 GiB).
DEFAULT_DENSE_BUDGET_BYTES = 1 << 30


def _format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def canonical_device(device: torch.device | str) -> torch.device:
    """``device`` in one spelling per physical device: ``"cpu:0"`` is ``"cpu"``, and ``"cuda"``
    is ``"cuda:<current device>"``, so that devices compare equal when they are the same."""
    device = torch.device(device)
    if device.type == "cpu":
        return torch.device("cpu")
    if device.type == "cuda" and device.index is None and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return device


class OperatorCache:
    """Set-up results computed from one operator (Lanczos eigenpairs, sketches), kept by that
    operator as `LinearOperator.cache` and reused by every solver that needs them.

    Entries are keyed by what produced them (the method and its parameters); an entry describes
    the operator's matrix, so copies that share the matrix (``with_tags``) share the cache.

    Example:
        >>> cache = OperatorCache()
        >>> cache.get(("answer",), lambda: 42), cache.get(("answer",), lambda: 0)
        (42, 42)
    """

    def __init__(self) -> None:
        self._entries: dict[Hashable, Any] = {}

    def get(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        """The entry for ``key``, computed by ``compute()`` the first time."""
        if key not in self._entries:
            self._entries[key] = compute()
        return self._entries[key]

    def __contains__(self, key: Hashable) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        """Drop every entry (after the operator's matrix changed, or to free memory)."""
        self._entries.clear()


class LinearOperator:
    """An ``(m, n)`` linear map acting on the columns of torch tensors.

    Args:
        shape: ``(m, n)``.
        dtype: the dtype of the vectors the operator accepts and returns.
        device: the device of those vectors.
        tags: the structure the operator is known to have (see [`linop.tags.Tags`][linop.Tags]).

    ``A @ x`` accepts ``x`` of shape ``(n,)`` (returns ``(m,)``) or ``(n, k)`` (returns ``(m, k)``);
    ``A @ B`` with ``B`` an operator is a lazy product; ``x @ A`` multiplies row vectors through
    the adjoint. ``+``, ``-``, scalar ``*`` and ``/`` build lazy composites; ``A + λ * I`` gives a
    [`RegularizedOperator`][linop.RegularizedOperator].
    """

    def __init__(
        self,
        shape: tuple[int, int],
        dtype: torch.dtype,
        device: torch.device | str,
        tags: Tags | None = None,
    ) -> None:
        try:
            m, n = (operator.index(s) for s in shape)
        except TypeError:
            raise ValueError(f"operator shape must be two integers, got {shape}") from None
        if m < 0 or n < 0:
            raise ValueError(f"operator shape must be non-negative, got {shape}")
        if not dtype.is_floating_point:
            raise DTypeMismatchError(
                f"operators need a real floating dtype (float64, float32, float16, bfloat16), got "
                f"{dtype}" + ("; complex operators are not supported" if dtype.is_complex else "")
            )
        self.shape: tuple[int, int] = (m, n)
        self.dtype: torch.dtype = dtype
        self.device: torch.device = canonical_device(device)
        if self.device.type == "meta":
            raise DeviceMismatchError(
                "an operator on the meta device has no data to compute with; build it from real "
                "tensors (on the CPU or a GPU)"
            )
        # symmetric, psd and nsd describe square matrices only (0 * A of a rectangular A is not)
        self.tags: Tags = tags if tags is not None and m == n else Tags()
        #: set-up results computed from this operator (see `OperatorCache`)
        self.cache: OperatorCache = OperatorCache()

    # ------------------------------------------------------------------ the subclass contract
    def _matmat(self, X: torch.Tensor) -> torch.Tensor:
        """Apply the operator to an ``(n, k)`` tensor of the right dtype and device."""
        raise NotImplementedError(f"{type(self).__name__} must implement _matmat")

    def _adjoint(self) -> LinearOperator:
        """Return the adjoint operator. The default handles symmetric operators and otherwise
        builds the adjoint by reverse-mode autodiff through ``_matmat``."""
        if self.tags.symmetric:
            return self
        return _algebra.AdjointOperator(self)

    # ------------------------------------------------------------------ checks
    def _check_tensor(self, x: torch.Tensor, what: str = "vector") -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"expected a torch.Tensor, got {type(x).__name__}")
        if x.dtype != self.dtype:
            raise DTypeMismatchError(
                f"{self!r} has dtype {self.dtype} but the {what} has dtype {x.dtype}; "
                f"convert it with .to({self.dtype}) (linop never casts silently)"
            )
        if canonical_device(x.device) != self.device:
            fix = (
                "the meta device holds no data: pass a real tensor"
                if x.device.type == "meta"
                else f"move it with .to('{self.device}') (linop never moves data silently)"
            )
            raise DeviceMismatchError(
                f"{self!r} lives on {self.device} but the {what} is on {x.device}; {fix}"
            )

    def _check_compatible(self, other: LinearOperator, op: str) -> None:
        if other.dtype != self.dtype:
            raise DTypeMismatchError(
                f"cannot combine {self!r} (dtype {self.dtype}) {op} {other!r} (dtype {other.dtype})"
            )
        if other.device != self.device:
            raise DeviceMismatchError(
                f"cannot combine {self!r} (on {self.device}) {op} {other!r} (on {other.device})"
            )

    # ------------------------------------------------------------------ application
    def matmat(self, X: torch.Tensor) -> torch.Tensor:
        """``A @ X`` for ``X`` of shape ``(n, k)``; returns ``(m, k)``."""
        self._check_tensor(X, "matrix")
        if X.ndim != 2 or X.shape[0] != self.shape[1]:
            raise ShapeMismatchError(
                f"{self!r} expects a matrix of shape ({self.shape[1]}, k), got {tuple(X.shape)}"
            )
        if X.shape[1] == 0:  # no columns: nothing to apply (solvers and HVPs need one)
            return X.new_zeros(self.shape[0], 0)
        Y = self._matmat(X)
        if Y.shape != (self.shape[0], X.shape[1]):  # pragma: no cover - guards subclasses
            raise RuntimeError(
                f"{type(self).__name__}._matmat returned shape {tuple(Y.shape)}, "
                f"expected {(self.shape[0], X.shape[1])}"
            )
        return Y

    def matvec(self, x: torch.Tensor) -> torch.Tensor:
        """``A @ x`` for ``x`` of shape ``(n,)``; returns ``(m,)``."""
        self._check_tensor(x)
        if x.ndim != 1 or x.shape[0] != self.shape[1]:
            raise ShapeMismatchError(
                f"{self!r} expects a vector of shape ({self.shape[1]},), got {tuple(x.shape)}"
            )
        y = self._matmat(x.unsqueeze(1))
        if y.shape != (self.shape[0], 1):  # pragma: no cover - guards subclasses
            raise RuntimeError(
                f"{type(self).__name__}._matmat returned shape {tuple(y.shape)}, "
                f"expected {(self.shape[0], 1)}"
            )
        return y.squeeze(1)

    def adjoint(self) -> LinearOperator:
        """The adjoint (transpose) operator ``Aᵀ``, with ``⟨A x, y⟩ = ⟨x, Aᵀ y⟩``."""
        return self._adjoint()

    @property
    def T(self) -> LinearOperator:  # noqa: N802 - mirrors torch / numpy
        """Alias of [`adjoint`][linop.LinearOperator.adjoint]."""
        return self.adjoint()

    def __matmul__(self, other: Any) -> Any:
        if isinstance(other, LinearOperator):
            return _algebra.ProductOperator([self, other])
        if isinstance(other, torch.Tensor):
            if other.ndim == 1:
                return self.matvec(other)
            if other.ndim == 2:
                return self.matmat(other)
            raise ShapeMismatchError(
                f"{self!r} acts on tensors of shape ({self.shape[1]},) or ({self.shape[1]}, k), "
                f"got {tuple(other.shape)}"
            )
        raise TypeError(
            f"{self!r} multiplies a torch.Tensor or a LinearOperator, got "
            f"{type(other).__name__}; convert it with torch.as_tensor(...)"
        )

    def __rmatmul__(self, other: Any) -> Any:
        if isinstance(other, torch.Tensor):
            if other.ndim == 1:
                return self.adjoint() @ other
            if other.ndim == 2:
                return (self.adjoint() @ other.mT).mT
            raise ShapeMismatchError(
                f"row vectors multiplying {self!r} must have shape ({self.shape[0]},) or "
                f"(k, {self.shape[0]}), got {tuple(other.shape)}"
            )
        return NotImplemented

    # ------------------------------------------------------------------ algebra
    def __add__(self, other: Any) -> Any:
        if not isinstance(other, LinearOperator):
            return NotImplemented
        if other.shape != self.shape:
            raise ShapeMismatchError(f"cannot add {self!r} and {other!r}: shapes differ")
        self._check_compatible(other, "+")
        return _algebra.add(self, other)

    def __sub__(self, other: Any) -> Any:
        if not isinstance(other, LinearOperator):
            return NotImplemented
        return self + (-1.0) * other

    def __neg__(self) -> LinearOperator:
        return (-1.0) * self

    def __mul__(self, c: Any) -> Any:
        if isinstance(c, torch.Tensor) and c.numel() == 1 and not c.is_complex():
            c = c.item()
        if not isinstance(c, numbers.Real) or isinstance(c, bool):
            return NotImplemented
        return _algebra.ScaledOperator(self, float(c))

    __rmul__ = __mul__

    def __truediv__(self, c: Any) -> Any:
        if isinstance(c, torch.Tensor) and c.numel() == 1 and not c.is_complex():
            c = c.item()
        if not isinstance(c, numbers.Real) or isinstance(c, bool):
            return NotImplemented
        if c == 0:
            raise ZeroDivisionError(f"cannot divide {self!r} by zero")
        return self * (1.0 / float(c))

    def regularize(self, shift: float) -> LinearOperator:
        """``A + shift * I`` as a [`RegularizedOperator`][linop.RegularizedOperator]."""
        return _algebra.RegularizedOperator(self, shift)

    def inverse(self, method: Any = None, **options: Any) -> LinearOperator:
        """The lazy inverse ``A⁻¹`` by ``method`` (``"explicit"``, ``"cg"``, ``"arnoldi"``,
        ``"lissa"``, ``"nystrom"``, ``"eigen"``, or a typed options object such as
        ``CGOptions(rtol=1e-6)``); see [`InverseOperator`][linop.InverseOperator] for the
        options. Unknown or invalid options raise here, listing the valid ones. None (the
        default) is ``"eigen"`` for an operator that knows its eigendecomposition (K-FAC,
        EK-FAC, and their shifts ``K + λI``) and ``"cg"`` otherwise.

        Set-up work runs once, on the first product, and is reused for every right-hand side.
        """
        return _inverse.InverseOperator(self, method, **options)

    def eigh(self, k: int, **options: Any) -> LowRankOperator:
        """The top-``k`` eigenpairs of a symmetric operator as a
        [`LowRankOperator`][linop.LowRankOperator] ``V diag(θ) Vᵀ`` (Lanczos with full
        reorthogonalisation from a seeded start, kept in `cache`). Options as
        [`linop.lanczos.eigh`][linop.lanczos.eigh]: ``maxiter``, ``seed``, ``tol``, ``which``.
        """
        return _lanczos.eigh(self, k, **options)[0]

    def with_tags(self, **tags: bool) -> LinearOperator:
        """A shallow copy of the operator with tags overridden, e.g. ``H.with_tags(psd=True)``.

        The caller vouches for the structure; ``psd=True`` also sets ``symmetric``.
        """
        new = copy.copy(self)
        new.tags = self.tags.replace(**tags)
        if new.shape[0] != new.shape[1] and new.tags.symmetric:
            raise ShapeMismatchError(f"a non-square operator {self!r} cannot be symmetric")
        return new

    # ------------------------------------------------------------------ conversion
    def to_dense(
        self,
        *,
        force: bool = False,
        max_bytes: int = DEFAULT_DENSE_BUDGET_BYTES,
        chunk_size: int | None = None,
    ) -> torch.Tensor:
        """Materialise the operator as an ``(m, n)`` tensor.

        Args:
            force: skip the memory guard.
            max_bytes: the budget above which materialising is refused (default 1 GiB).
            chunk_size: how many identity columns to apply at once (default: all).

        Raises:
            DenseMemoryError: if the matrix would exceed ``max_bytes`` and ``force`` is False.
        """
        m, n = self.shape
        itemsize = torch.empty((), dtype=self.dtype).element_size()
        estimate = m * n * itemsize
        if not isinstance(max_bytes, (int, float)) or max_bytes < 0:
            raise ValueError(f"max_bytes must be a non-negative number, got {max_bytes!r}")
        if chunk_size is not None:
            integer("chunk_size", chunk_size, 1)
        if estimate > max_bytes and not force:
            raise DenseMemoryError(
                f"materialising {self!r} needs about {_format_bytes(estimate)}, over the budget "
                f"of {_format_bytes(max_bytes)}; pass to_dense(max_bytes=...) with a larger "
                f"budget, or force=True, if you really want it"
            )
        return self._to_dense(chunk_size)

    def _to_dense(self, chunk_size: int | None) -> torch.Tensor:
        """The matrix, as a new tensor the caller may modify (override for a faster way)."""
        n = self.shape[1]
        step = n if not chunk_size else int(chunk_size)
        cols = []
        for start in range(0, n, step) if n else []:
            stop = min(n, start + step)
            E = torch.zeros(n, stop - start, dtype=self.dtype, device=self.device)
            E[torch.arange(start, stop), torch.arange(stop - start)] = 1
            cols.append(self._matmat(E))
        if not cols:
            return torch.zeros(self.shape, dtype=self.dtype, device=self.device)
        return torch.cat(cols, dim=1)

    def to_scipy(self) -> scipy.sparse.linalg.LinearOperator:
        """A ``scipy.sparse.linalg.LinearOperator`` view; see
        [`linop.interop.to_scipy`][linop.to_scipy]."""
        return _interop.to_scipy(self)

    # ------------------------------------------------------------------ display
    def _repr_args(self) -> str:
        return ""

    def __repr__(self) -> str:
        extra = self._repr_args()
        extra = f", {extra}" if extra else ""
        return f"{type(self).__name__}(shape={self.shape}, dtype={self.dtype}{extra})"


# The base class's operator-building methods (the algebra dunders, ``inverse``, ``eigh``,
# ``to_scipy``) return subclasses defined in these modules, which import this one: the only import
# cycles in linop, resolved here, once the class exists.
from linop import algebra as _algebra  # noqa: E402
from linop import interop as _interop  # noqa: E402
from linop import inverse as _inverse  # noqa: E402
from linop import lanczos as _lanczos  # noqa: E402
