"""Automatic-differentiation pieces shared by the curvature operators: the scalar-loss check and
the functional Hessian-vector product [`hvp`][linop.hvp]."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from torch.func import grad, jvp, vjp, vmap

from linop._tensor import traced
from linop.errors import (
    DeviceMismatchError,
    DTypeMismatchError,
    NonScalarLossError,
    ShapeMismatchError,
)
from linop.operator import canonical_device

__all__ = ["MODES", "ColumnChunks", "apply_columns", "as_scalar", "check_mode", "hvp"]

#: The automatic-differentiation modes a HessianOperator accepts.
MODES = ("rev-rev", "rev-fwd")


def check_mode(mode: str) -> None:
    """A ``ValueError`` listing the valid modes, unless ``mode`` is one."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; valid modes are {', '.join(map(repr, MODES))}")


def as_scalar(loss: Any) -> torch.Tensor:
    """The loss as a 0-d tensor, or [`NonScalarLossError`][linop.errors.NonScalarLossError] saying
    how to reduce it."""
    if not isinstance(loss, torch.Tensor):
        raise NonScalarLossError(f"the loss must be a torch.Tensor, got {type(loss).__name__}")
    if loss.numel() != 1:
        raise NonScalarLossError(
            f"the loss must be a single-element tensor, got shape {tuple(loss.shape)}; "
            f"reduce it, e.g. with .mean() or .sum()"
        )
    return loss.reshape(())


def hvp(
    func: Callable[..., torch.Tensor],
    primals: tuple[Any, ...],
    v: torch.Tensor,
    argnums: int = 0,
    mode: str = "rev-rev",
) -> torch.Tensor:
    """One Hessian-vector product of ``func`` at ``primals`` with respect to the tensor
    ``primals[argnums]``, as a pure function: no caching, composable with ``torch.func.vmap``
    over ``primals`` or ``v``. Only ``primals[argnums]`` is differentiated. Shapes, dtypes and
    devices of ``v`` and the input are checked (typed errors); values are not.

    Example:
        >>> import torch
        >>> from linop import hvp
        >>> hvp(lambda x: (x ** 3).sum(), (torch.tensor([1.0, 2.0]),), torch.ones(2)).tolist()
        [6.0, 12.0]
    """
    check_mode(mode)
    primals = tuple(primals)
    if not -len(primals) <= argnums < len(primals):
        raise ValueError(f"argnums={argnums} is out of range for {len(primals)} inputs")
    argnums = argnums % len(primals)  # -1: the last
    point = primals[argnums]
    if not isinstance(point, torch.Tensor) or not point.is_floating_point():
        raise DTypeMismatchError(
            f"the input differentiated (argnums={argnums}) must be a floating-point tensor, got "
            f"{getattr(point, 'dtype', type(point).__name__)}"
        )
    if not isinstance(v, torch.Tensor) or v.shape != point.shape:
        raise ShapeMismatchError(
            f"v must have the shape of the input differentiated, {tuple(point.shape)}, got "
            f"{tuple(getattr(v, 'shape', ()))}"
        )
    if v.dtype != point.dtype:
        raise DTypeMismatchError(
            f"v is {v.dtype} but the input differentiated is {point.dtype}; convert v with "
            f".to({point.dtype}) (linop never casts silently)"
        )
    if canonical_device(v.device) != canonical_device(point.device):
        raise DeviceMismatchError(
            f"v is on {v.device} but the input differentiated is on {point.device}"
        )
    before, after = primals[:argnums], primals[argnums + 1 :]
    g = grad(lambda p: as_scalar(func(*before, p, *after)))
    if mode == "rev-rev":
        return vjp(g, primals[argnums])[1](v)[0]
    return jvp(g, (primals[argnums],), (v,))[1]


class ColumnChunks:
    """How many columns one vmapped product takes on a CPU, learned from the products' own
    timings.

    vmapping columns amortises the per-product overhead (Python, dispatch, the parts of the
    graph that do not depend on the vector), but its working memory grows with the chunk; past
    the caches it slows down again. The best chunk depends on the model, the batch and the
    machine (to materialise the Hessian of a 7850-parameter model on 4 examples, forward over
    reverse: 5.2 s with chunks of 8 columns, 0.67 s with 256, 0.78 s with 1024; on larger models
    and batches the best chunks measured were 8 to 64). So it keeps the best time per column
    seen for each chunk size it used (a call with fewer columns than the chunk measures its own
    size), starts at ``start`` columns, tries the double of the best size (up to ``limit`` and
    to the columns of the call), then its half, while untried, and otherwise keeps the best;
    copies of the operator (its other batches) share what was learned.
    """

    def __init__(self, start: int = 32, limit: int = 8192) -> None:
        self.size, self.limit = start, limit
        self.seconds: dict[int, float] = {}  # chunk size -> best time per column seen

    def _next(self, columns: int) -> int:
        """The best size so far, or its double (if the calls have that many ``columns``), then
        its half, while untried."""
        best = min(self.seconds, key=self.seconds.__getitem__)
        for size in (min(2 * best, self.limit), best // 2):
            if 1 <= size <= columns and size not in self.seconds:
                return size
        return best

    def apply(self, fn: Callable[[torch.Tensor], torch.Tensor], V: torch.Tensor) -> torch.Tensor:
        """``fn`` applied to every column of ``V`` ``(n, k)``, vmapped in chunks."""
        k, start = V.shape[1], 0
        out: torch.Tensor | None = None
        while start < k:
            size = min(self.size, k - start)
            began = time.perf_counter()
            part = vmap(fn, in_dims=1, out_dims=1)(V[:, start : start + size])
            if out is None:  # written chunk by chunk: no concatenation copy at the end
                out = part if size == k else part.new_empty(part.shape[0], k)
            if part is not out:
                out[:, start : start + size] = part
            per_column = (time.perf_counter() - began) / size
            self.seconds[size] = min(self.seconds.get(size, per_column), per_column)
            self.size = self._next(k)
            start += size
        assert out is not None
        return out


def apply_columns(
    fn: Callable[[torch.Tensor], torch.Tensor],
    V: torch.Tensor,
    chunks: ColumnChunks,
    chunk_size: int | None,
    vectorize: bool | None,
) -> torch.Tensor:
    """``fn`` (a product with one flat vector) applied to every column of ``V`` ``(n, k)``: one by
    one for a single column or ``vectorize=False``; on a CPU without a ``chunk_size``, vmapped in
    the chunks ``chunks`` learns; otherwise vmapped in chunks of ``chunk_size`` (default: all)."""
    learned = vectorize is None and chunk_size is None and V.device.type == "cpu"
    if V.shape[1] == 1 or vectorize is False:
        return torch.stack([fn(V[:, i]) for i in range(V.shape[1])], dim=1)
    if learned and not traced(V):
        return chunks.apply(fn, V)
    return vmap(fn, in_dims=1, out_dims=1, chunk_size=chunk_size)(V)
