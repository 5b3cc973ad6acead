"""Automatic-differentiation pieces shared by the curvature operators: the scalar-loss check and
the functional Hessian-vector product [`hvp`][linop.hvp]."""

from __future__ import annotations

import functools
import statistics
import time
import types
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable
from typing import Any

import torch
from torch.func import grad, jvp, vjp, vmap

from linop._tensor import by_columns, traced
from linop.errors import (
    DeviceMismatchError,
    DTypeMismatchError,
    NonScalarLossError,
    ShapeMismatchError,
)
from linop.operator import canonical_device

__all__ = [
    "MODES",
    "ColumnChunks",
    "apply_columns",
    "balanced",
    "as_scalar",
    "check_mode",
    "hvp",
    "problem_key",
    "shared_chunks",
]

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
    return loss if loss.ndim == 0 else loss.reshape(())  # no op where none is needed


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
    and batches the best chunks measured were 8 to 64). So it keeps the time per column of each
    chunk size it used, timed over whole calls (everything a call's chunks cost, between them
    included; a call with fewer columns than the chunk measures its own size) and averaged over
    the last 5 calls of that size but the slowest: one stall does not count, frequent ones do.
    With more torch threads than free cores, a product often waits for a descheduled thread;
    the middle of such timings makes small chunks look fast, each product's own wait hidden
    (the logistic regression's 50-column products under CG were split into chunks of 12, and
    took twice dattri's time), while the mean shows that more products wait more. It
    starts at ``start`` columns, tries the double of the best size (up to ``limit`` and
    to the columns of the call), then its half, while untried, and otherwise keeps the best
    (see `best`: a larger size wins near-ties). A call's columns are split evenly (see
    `balanced`: 650 columns at a size of 512 make two products of 325, not 512 and a slow
    remainder of 138), and the sizes it tries are such even splits of the call.

    Two rules keep it from settling on a wrong size: the first call is not timed (it pays
    one-time costs, up to 25 times a product's own time), and every ``explore``-th call re-times
    the less measured neighbour of the best (one noisy timing must not decide for good; only the
    larger one when the best's products are quick, where the larger wins near-ties anyway: a
    re-timed half would split the call's small products in two for nothing). Each re-timing
    that leaves the best unchanged doubles the interval to the next, up to ``8 explore`` calls
    (a re-timed half costs its call about a third more: materialising a 650-parameter Hessian
    lost 4 % on average to re-timing every 8th call); a new best resets it. As the
    double is capped at the call's columns, a call is tried in one product too. Copies of the
    operator (its other batches) share what was learned, and so do new operators of the same
    loss and shapes (see [`shared_chunks`][linop.curvature._autodiff.shared_chunks]).

    Example:
        >>> chunks = ColumnChunks(start=4)
        >>> fn = lambda v: 2 * v
        >>> chunks.apply(fn, torch.ones(3, 7)).shape       # two products, of 4 and 3
        torch.Size([3, 7])
        >>> chunks.seconds                                  # the first call is not timed
        {}
        >>> _ = chunks.apply(fn, torch.ones(3, 7))
        >>> sorted(chunks.seconds)                          # the call's size: 4 (and 3)
        [4]
    """

    #: sizes within ``tolerance`` of the best time per column count as equal, the largest
    #: winning; a product under ``quick`` seconds is mostly overhead (see `apply`'s re-timing)
    quick, tolerance = 0.005, 1.1

    def __init__(self, start: int = 32, limit: int = 8192, explore: int = 8) -> None:
        self.size, self.limit, self.explore = start, limit, explore
        self._interval = self._due = explore  # calls between re-timings; the next one's call
        self._best: int | None = None  # the best size after the last call
        self.seconds: dict[int, float] = {}  # chunk size -> time per column (recent mean)
        self.samples: dict[int, int] = {}  # chunk size -> calls timed
        self._recent: dict[int, deque[float]] = {}  # chunk size -> its latest timings
        self.products = self.calls = 0

    def best(self) -> int:
        """The size with the least time per column seen, or the largest within ``tolerance`` of
        it. Timings that close are noise, and each chunk's own timing misses part of what
        splitting a call costs (the slicing and writing between chunks, the caches the previous
        chunk warmed): on a 650-parameter logistic regression, 50 columns in chunks of 9
        timed 8 % faster per column than in one product, yet the whole call took 6 % longer
        with one torch thread and 30 % longer with two."""
        least = min(self.seconds.values())
        return max(size for size, t in self.seconds.items() if t <= self.tolerance * least)

    def _near(self, columns: int) -> tuple[int, list[int]]:
        """The best size so far and its neighbours for a call of ``columns``: its double (at
        most the call's ``columns``) and its half, each as the even split of the call."""
        best = self.best()
        near = (min(2 * best, self.limit, columns), best // 2)
        even = [balanced(size, columns) for size in near if size >= 1]
        return best, [size for size in even if size != best]

    def _next(self, columns: int) -> int:
        """The best size so far, or its double, then its half, while untried."""
        best, near = self._near(columns)
        return next((size for size in near if size not in self.seconds), best)

    def apply(self, fn: Callable[[torch.Tensor], torch.Tensor], V: torch.Tensor) -> torch.Tensor:
        """``fn`` applied to every column of ``V`` ``(n, k)``, vmapped in chunks."""
        self.calls += 1
        retimed = bool(self.seconds) and self.calls >= self._due
        if retimed:  # time a neighbour again
            best, near = self._near(V.shape[1])
            if self.seconds[best] * best < self.quick:  # a quick product: a smaller chunk
                near = [size for size in near if size > best]  # cannot win a near-tie
            if near:
                self.size = min(near, key=lambda size: self.samples.get(size, 0))
        k, start = V.shape[1], 0
        size = balanced(self.size, k)  # the call's chunks: this size, or one less
        out: torch.Tensor | None = None
        began = time.perf_counter()
        while start < k:
            step = balanced(size, k - start)
            part = vmap(fn, in_dims=1, out_dims=1)(V[:, start : start + step])
            if out is None:  # written chunk by chunk: no concatenation copy at the end
                out = part if step == k else part.new_empty(part.shape[0], k)
            if part is not out:
                out[:, start : start + step] = part
            self.products += 1
            start += step
        if self.calls > 1:  # the first call pays one-time costs
            recent = self._recent.setdefault(size, deque(maxlen=5))
            recent.append((time.perf_counter() - began) / k)
            fair = sorted(recent)[: max(1, len(recent) - 1)]  # all but the slowest
            self.seconds[size] = statistics.fmean(fair)
            self.samples[size] = self.samples.get(size, 0) + 1
            self.size = self._next(k)
        now = self.best() if self.seconds else None
        if now != self._best:  # a new best: re-time its neighbours every `explore` calls again
            self._best, self._interval, self._due = now, self.explore, self.calls + self.explore
        elif retimed:  # the best confirmed: back off
            self._interval = min(2 * self._interval, 8 * self.explore)
            self._due = self.calls + self._interval
        assert out is not None
        return out


def balanced(size: int, columns: int) -> int:
    """The chunk that splits ``columns`` evenly into as many products as chunks of at most
    ``size`` need: never more than ``size``, and no small remainder.

    Example:
        >>> balanced(512, 650), balanced(256, 650), balanced(32, 50), balanced(100, 50)
        (325, 217, 25, 50)
    """
    pieces = -(-columns // max(size, 1))
    return -(-columns // pieces)


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
    concrete = not traced(V)
    if concrete:
        V = by_columns(V)  # each column one contiguous vector
    if V.shape[1] == 1 or vectorize is False:
        return torch.stack([fn(V[:, i]) for i in range(V.shape[1])], dim=1)
    if concrete and vectorize is None and chunk_size is None and V.device.type == "cpu":
        return chunks.apply(fn, V)
    return vmap(fn, in_dims=1, out_dims=1, chunk_size=chunk_size)(V)


#: Learned chunk sizes by problem (see `shared_chunks`), least recently used first.
_SHARED_CHUNKS: OrderedDict[Hashable, ColumnChunks] = OrderedDict()
_SHARED_CHUNKS_MAX = 64


def shared_chunks(key: Hashable | None, start: int) -> ColumnChunks:
    """The [`ColumnChunks`][linop.curvature._autodiff.ColumnChunks] learned for the problem
    ``key`` (a new one for ``None``).

    Code that builds one operator per call (dattri's attributors build a Hessian per batch
    and per test batch) would otherwise re-learn the chunk size, splitting its products in
    the meantime, on every call. The key (see `problem_key`) names the loss's code and the
    shapes, dtypes and devices of everything it is applied to, which is what a product's cost
    depends on; the memo keeps the 64 most recently used problems. It holds timings only, never
    tensors or functions, and only decides how columns are grouped into products.
    """
    if key is None:
        return ColumnChunks(start)
    key = (key, start)
    chunks = _SHARED_CHUNKS.get(key)
    if chunks is None:
        chunks = _SHARED_CHUNKS[key] = ColumnChunks(start)
        while len(_SHARED_CHUNKS) > _SHARED_CHUNKS_MAX:
            _SHARED_CHUNKS.popitem(last=False)
    else:
        _SHARED_CHUNKS.move_to_end(key)
    return chunks


def problem_key(func: Any, *data: Any) -> Hashable | None:
    """A hashable description of ``func`` applied to ``data`` for
    [`shared_chunks`][linop.curvature._autodiff.shared_chunks], or None if it has no stable one.

    Functions are described by their code and what their closures and ``functools.partial``
    arguments hold; tensors by shape, dtype and device (never values); containers by their
    items; other callables by their type and identity; other values by their type.

    Example:
        >>> f = lambda t, x: (t * x).sum()
        >>> problem_key(f, torch.ones(2)) == problem_key(f, torch.zeros(2))
        True
        >>> problem_key(f, torch.ones(2)) == problem_key(f, torch.ones(3))
        False
    """
    try:
        return (_describe(func, 0), _describe(data, 0))
    except RecursionError:  # pragma: no cover - a self-referencing structure
        return None


def _describe(obj: Any, depth: int) -> Hashable:
    if isinstance(obj, torch.Tensor):
        return ("tensor", tuple(obj.shape), obj.dtype, canonical_device(obj.device))
    if depth > 4:
        return (type(obj),)
    if isinstance(obj, (tuple, list, dict)) and len(obj) > 64:
        return (type(obj), len(obj))  # a long container: its length, for a cheap key
    if isinstance(obj, (tuple, list)):
        return (type(obj), tuple(_describe(item, depth + 1) for item in obj))
    if isinstance(obj, dict):
        return (dict, tuple((k, _describe(v, depth + 1)) for k, v in obj.items() if _plain(k)))
    if isinstance(obj, functools.partial):
        return (functools.partial, _describe((obj.func, obj.args, obj.keywords), depth + 1))
    if isinstance(obj, types.MethodType):
        return (types.MethodType, _describe(obj.__func__, depth + 1), type(obj.__self__))
    if isinstance(obj, types.FunctionType):  # its code, and what its closure holds
        cells = obj.__closure__ or ()
        return (
            obj.__code__,
            tuple(_describe(c.cell_contents, depth + 1) for c in cells if _filled(c)),
        )
    if callable(obj) and not isinstance(obj, type):
        return (type(obj), id(obj))  # a module, a loss object: this very one
    return (type(obj),)


def _plain(key: Any) -> bool:
    return isinstance(key, (str, int, float, bool, type(None)))


def _filled(cell: Any) -> bool:
    try:
        cell.cell_contents  # noqa: B018 - an empty cell raises
    except ValueError:
        return False
    return True
