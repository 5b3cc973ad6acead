"""Data sources: where the batches of a dataset mean come from.

Every source implements one small protocol, [`DataSource`][linop.DataSource]: iterate the batches
(as tuples), count the examples of a batch and of the whole source, draw a reproducible minibatch,
and reduce a sum over the source (across ranks, for a sharded source).
[`as_source`][linop.as_source] turns what users pass — tensors, DataLoaders, lists of batches — into
one; no operator tells them apart itself.

- [`TensorBatches`][linop.TensorBatches]: tensors sharing an example dimension (``in_dims`` says
  which; None marks an input shared by every example), in batches of ``batch_size``; minibatches are
  drawn example by example.
- [`LoaderData`][linop.LoaderData]: a ``torch.utils.data.DataLoader``; minibatches are drawn example
  by example from its dataset and collated by its ``collate_fn``.
- [`Batches`][linop.Batches]: any re-iterable of batches (tuples or lists), a list for instance; a
  minibatch is one of its batches, drawn whole.
- [`ShardedData`][linop.ShardedData]: this rank's shard of a dataset spread over a
  ``torch.distributed`` process group: sums are all-reduced (with a timeout), and minibatch draws
  share one seed plus the rank.

Example:
    >>> import torch
    >>> from linop.data import TensorBatches, as_source
    >>> data = TensorBatches((torch.zeros(10, 3), torch.arange(10)), batch_size=4)
    >>> len(data), data[2][1].tolist(), data.num_examples()
    (3, [8, 9], 10)
    >>> batch = data.minibatch(torch.Generator().manual_seed(0), 5)
    >>> data.examples_in(batch), type(as_source([(torch.ones(2, 3),)])).__name__
    (5, 'Batches')
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch

from linop._checks import positive_int
from linop.distributed import DEFAULT_TIMEOUT_SECONDS, all_reduce_sum, rank, resolve_group

__all__ = ["Batches", "DataSource", "LoaderData", "ShardedData", "TensorBatches", "as_source"]

Batch = tuple[Any, ...]


def as_batch(batch: Any) -> Batch:
    """A batch as a tuple of inputs: a tuple or list is one input per entry, anything else one
    input."""
    return tuple(batch) if isinstance(batch, (tuple, list)) else (batch,)


def leading_size(batch: Batch) -> int:
    """The number of examples of a batch: the leading dimension of its first tensor with one."""
    for t in batch:
        if isinstance(t, torch.Tensor) and t.ndim >= 1:
            return int(t.shape[0])
    raise ValueError("cannot tell the batch size: no tensor input has a leading dimension")


class DataSource:
    """The protocol every data source implements.

    Subclasses implement `__iter__`; the others have defaults: the examples of a batch are
    the leading dimension of its first tensor (or ``examples_in``'s answer), the total is a
    pass over the batches, a source draws no minibatches, and sums are local.

    Args:
        examples_in: the number of examples of a batch (default: `leading_size`).
    """

    def __init__(self, examples_in: Callable[[Batch], int] | None = None) -> None:
        self._examples_in = examples_in

    def __iter__(self) -> Iterator[Batch]:
        raise NotImplementedError(f"{type(self).__name__} must implement __iter__")

    def num_batches(self) -> int | None:
        """How many batches one pass yields, when known without a pass."""
        return None

    def examples_in(self, batch: Batch) -> int:
        """The number of examples of ``batch`` (the weight of its mean in the dataset mean)."""
        return self._examples_in(batch) if self._examples_in is not None else leading_size(batch)

    def num_examples(self) -> int:
        """The total number of examples (of every rank, for a sharded source)."""
        return sum(self.examples_in(b) for b in self)

    def minibatch(self, generator: torch.Generator, batch_size: int | None = None) -> Batch:
        """A minibatch drawn reproducibly from ``generator`` (the hook of stochastic solvers)."""
        raise TypeError(
            f"cannot draw random minibatches from {type(self).__name__}; use a list of batches, a "
            f"DataLoader or tensors (HessianOperator.from_data)"
        )

    def reduce(self, total: torch.Tensor, count: int) -> tuple[torch.Tensor, int]:
        """A sum over this source's batches, and their example count, summed over every part of
        the dataset (the identity for a local source)."""
        return total, count

    def restrict(self, batch: Batch) -> DataSource:
        """A source holding only ``batch``, counted and reduced like this one."""
        return Batches([batch], examples_in=self.examples_in)


class TensorBatches(DataSource, Sequence[Batch]):
    """Tensors sharing an example dimension, seen as a sequence of batches.

    Args:
        data: the inputs (e.g. ``(X, y)``).
        batch_size: examples per batch (the last batch may be smaller).
        in_dims: for every input, the dimension that indexes examples, or None for an input
            shared by every example (default: dimension 0 of every input).
    """

    def __init__(
        self, data: tuple[Any, ...], batch_size: int, in_dims: tuple[int | None, ...] | None = None
    ) -> None:
        super().__init__()
        data = tuple(data)
        in_dims = tuple(in_dims) if in_dims is not None else (0,) * len(data)
        if len(in_dims) != len(data):
            raise ValueError(f"in_dims has {len(in_dims)} entries for {len(data)} inputs")
        for i, (t, d) in enumerate(zip(data, in_dims, strict=True)):
            if d is not None and not isinstance(t, torch.Tensor):
                raise TypeError(
                    f"input {i} has an example dimension (in_dims[{i}] = {d}) but is a "
                    f"{type(t).__name__}, not a tensor; mark shared inputs with None"
                )
            if d is not None and not -t.ndim <= d < max(t.ndim, 1):
                raise ValueError(
                    f"in_dims[{i}] = {d} is out of range for input {i} of shape {tuple(t.shape)}"
                )
        sizes = {t.shape[d] for t, d in zip(data, in_dims, strict=True) if d is not None}
        if not sizes:
            raise TypeError("at least one input must have an example dimension")
        if len(sizes) != 1:
            raise ValueError(f"every input needs the same number of examples, got {sorted(sizes)}")
        positive_int("batch_size", batch_size, allow_none=False)
        self.data, self.in_dims = data, in_dims
        self.batch_size = operator.index(batch_size)
        self._count = sizes.pop()
        self._axis = next(i for i, d in enumerate(in_dims) if d is not None)

    def __len__(self) -> int:
        return math.ceil(self._count / self.batch_size)

    def __getitem__(self, i: int) -> Batch:  # type: ignore[override]
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        start = (i % len(self)) * self.batch_size
        stop = min(self._count, start + self.batch_size)
        return tuple(
            t if d is None else t.narrow(d, start, stop - start)
            for t, d in zip(self.data, self.in_dims, strict=True)
        )

    def __iter__(self) -> Iterator[Batch]:
        return (self[i] for i in range(len(self)))

    def num_batches(self) -> int:
        return len(self)

    def examples_in(self, batch: Batch) -> int:
        return int(batch[self._axis].shape[self.in_dims[self._axis]])

    def num_examples(self) -> int:
        return self._count

    def take(self, index: torch.Tensor) -> Batch:
        """The examples at ``index``, as one batch."""
        return tuple(
            t if d is None else t.index_select(d, index.to(t.device))
            for t, d in zip(self.data, self.in_dims, strict=True)
        )

    def minibatch(self, generator: torch.Generator, batch_size: int | None = None) -> Batch:
        """``batch_size`` distinct examples (default: `batch_size`) drawn uniformly."""
        return self.take(_draw_examples(self._count, batch_size, self.batch_size, generator))


def _draw_examples(
    n: int, size: int | None, default: int, generator: torch.Generator
) -> torch.Tensor:
    """``size`` (default ``default``) distinct positions among ``n``, drawn uniformly."""
    if size is None:
        size = default
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"batch_size must be a positive integer or None, got {size!r}")
    if size > n:
        raise ValueError(f"batch_size {size} exceeds the {n} examples of the dataset")
    return torch.randperm(n, generator=generator)[:size]


def _sampler_pool(loader: torch.utils.data.DataLoader) -> Sequence[int] | None:
    """The dataset indices one pass over ``loader`` draws from, when they are a fixed set (None
    for an iterable-style dataset)."""
    data = torch.utils.data
    dataset, sampler = loader.dataset, loader.sampler
    if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
        return None
    if not isinstance(loader.batch_sampler, data.BatchSampler):
        raise TypeError(
            f"cannot draw minibatches that match a DataLoader with its own batch sampler "
            f"({type(loader.batch_sampler).__name__}); use tensors (from_data) or a list of batches"
        )
    if isinstance(sampler, data.SequentialSampler):
        kept = len(loader) * loader.batch_size if loader.drop_last else len(dataset)  # type: ignore[operator]
        return range(kept)
    if isinstance(sampler, data.RandomSampler) and not sampler.replacement:
        return range(len(dataset))  # every example is equally likely in a pass
    if isinstance(sampler, data.SubsetRandomSampler):
        return list(sampler.indices)
    if isinstance(sampler, Sequence):  # a list of indices given as the sampler
        return sampler
    raise TypeError(
        f"cannot draw minibatches that match the DataLoader's sampler ({type(sampler).__name__}): "
        f"its examples are not a fixed set; use tensors (from_data) or a list of batches"
    )


class LoaderData(DataSource):
    """A ``torch.utils.data.DataLoader`` as a data source.

    Args:
        loader: the DataLoader; every pass iterates it again.
        examples_in: the number of examples of a batch (default: the leading dimension).
    """

    def __init__(
        self, loader: torch.utils.data.DataLoader, examples_in: Callable[[Batch], int] | None = None
    ) -> None:
        super().__init__(examples_in)
        self.loader = loader

    def __iter__(self) -> Iterator[Batch]:
        return (as_batch(b) for b in self.loader)

    def num_batches(self) -> int | None:
        try:
            return len(self.loader)
        except TypeError:  # an iterable-style dataset without a length
            return None

    def num_examples(self) -> int:
        """The examples one pass yields (counted without a pass when the loader's sampler says
        how many, else by a pass)."""
        loader = self.loader
        if self._examples_in is None and isinstance(
            loader.batch_sampler, torch.utils.data.BatchSampler
        ):
            try:
                per_pass = len(loader.sampler)  # type: ignore[arg-type]
            except TypeError:  # an iterable-style dataset
                return super().num_examples()
            return len(loader) * loader.batch_size if loader.drop_last else per_pass  # type: ignore[operator]
        return super().num_examples()

    def minibatch(self, generator: torch.Generator, batch_size: int | None = None) -> Batch:
        """``batch_size`` distinct examples (default: the loader's batch size), drawn uniformly
        from those a pass yields (the sampler's indices), collated by its ``collate_fn``.

        Raises:
            TypeError: for an iterable-style dataset, or a sampler whose examples are not a fixed
                set (with replacement, weighted, a custom batch sampler).
        """
        pool = _sampler_pool(self.loader)
        if pool is None:
            return super().minibatch(generator, batch_size)
        idx = _draw_examples(len(pool), batch_size, self.loader.batch_size or 1, generator)
        dataset = self.loader.dataset
        return as_batch(self.loader.collate_fn([dataset[int(pool[int(i)])] for i in idx]))


class Batches(DataSource):
    """A re-iterable of batches (each a tuple or list of inputs, or a single input), a list for
    instance. A minibatch is one batch drawn whole, from a sequence.

    Args:
        batches: the batches; iterated once per pass.
        examples_in: the number of examples of a batch (default: the leading dimension).
    """

    def __init__(
        self, batches: Iterable[Any], examples_in: Callable[[Batch], int] | None = None
    ) -> None:
        if iter(batches) is batches:
            raise TypeError(
                "the batches are a one-shot iterator (a generator?); every product iterates over "
                "the data again, so pass a list, a DataLoader or tensors (from_data)"
            )
        super().__init__(examples_in)
        self.batches = batches

    def __iter__(self) -> Iterator[Batch]:
        return (as_batch(b) for b in self.batches)

    def num_batches(self) -> int | None:
        return len(self.batches) if isinstance(self.batches, Sequence) else None

    def minibatch(self, generator: torch.Generator, batch_size: int | None = None) -> Batch:
        if not isinstance(self.batches, Sequence):
            return super().minibatch(generator, batch_size)
        if batch_size is not None:
            raise ValueError(
                "batches given as a list are drawn whole; pass batch_size=None, or build the "
                "operator with from_data (tensors) to draw examples"
            )
        if not len(self.batches):
            raise ValueError("the dataset has no batches to draw from")
        return as_batch(
            self.batches[int(torch.randint(len(self.batches), (1,), generator=generator))]
        )


class ShardedData(DataSource):
    """This rank's shard of a dataset spread over a ``torch.distributed`` process group.

    Iterates the local source; `reduce` all-reduces a sum and its example count over the
    ranks, waiting at most ``timeout`` seconds (a rank that died or hangs surfaces as a
    [`DistributedError`][linop.errors.DistributedError]); `minibatch` makes one shared draw from the
    generator, then draws from the local source with that draw plus the rank, so every rank
    draws its own minibatch reproducibly.

    Args:
        source: the local shard (any data source).
        process_group: a process group, or ``"world"``/True for the default one.
        timeout: seconds a collective waits for the other ranks.
    """

    def __init__(
        self, source: DataSource, process_group: Any, timeout: float = DEFAULT_TIMEOUT_SECONDS
    ) -> None:
        if not isinstance(source, DataSource):
            raise TypeError(
                f"ShardedData wraps a DataSource, got {type(source).__name__}; pass "
                f"as_source(data, process_group=...) to build one from a list or a DataLoader"
            )
        super().__init__(source.examples_in)
        self.source = source
        self.process_group = resolve_group(process_group)
        self.timeout = float(timeout)

    def __iter__(self) -> Iterator[Batch]:
        return iter(self.source)

    def num_batches(self) -> int | None:
        return self.source.num_batches()

    def num_examples(self) -> int:
        local = torch.tensor([float(self.source.num_examples())], dtype=torch.float64)
        return int(all_reduce_sum(local, self.process_group, self.timeout).item())

    def minibatch(self, generator: torch.Generator, batch_size: int | None = None) -> Batch:
        shared = int(torch.randint(2**62, (1,), generator=generator))
        own = torch.Generator().manual_seed(shared + rank(self.process_group))
        return self.source.minibatch(own, batch_size)

    def reduce(self, total: torch.Tensor, count: int) -> tuple[torch.Tensor, int]:
        total = all_reduce_sum(total, self.process_group, self.timeout)
        n = torch.tensor([float(count)], dtype=torch.float64, device=total.device)
        return total, int(all_reduce_sum(n, self.process_group, self.timeout).item())

    def restrict(self, batch: Batch) -> DataSource:
        return ShardedData(self.source.restrict(batch), self.process_group, self.timeout)


def as_source(
    data: Any,
    *,
    examples_in: Callable[[Batch], int] | None = None,
    process_group: Any = None,
    timeout: float = DEFAULT_TIMEOUT_SECONDS,
) -> DataSource:
    """The data source for ``data``: a [`DataSource`][linop.DataSource] as it is, a DataLoader as
    [`LoaderData`][linop.LoaderData], any other re-iterable of batches (a list) as
    [`Batches`][linop.Batches]; with a ``process_group``, wrapped in a
    [`ShardedData`][linop.ShardedData].

    Raises:
        TypeError: for a one-shot iterator (a generator), which a second pass would find empty.
        DistributedError: for a process group when ``torch.distributed`` is not initialised.
    """
    if isinstance(data, (torch.Tensor, str, bytes)):
        raise TypeError(
            f"data must be batches (a list of (X, y) tuples, a DataLoader or a DataSource), got "
            f"a {type(data).__name__}; for tensors sharing an example dimension use "
            f"TensorBatches((X, y), batch_size) or from_data"
        )
    if isinstance(data, DataSource):
        source = data
    elif isinstance(data, torch.utils.data.DataLoader):
        source = LoaderData(data, examples_in)
    else:
        source = Batches(data, examples_in)
    if examples_in is not None and isinstance(data, DataSource):
        raise ValueError(
            "examples_in applies to DataLoaders and lists; a DataSource counts its own examples"
        )
    return ShardedData(source, process_group, timeout) if process_group is not None else source
