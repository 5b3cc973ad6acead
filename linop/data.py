"""Datasets as re-iterable sequences of batches, and the helpers that read batches.

:class:`TensorBatches` views tensors that share an example dimension (or are shared by every
example) as a sequence of batches from which random minibatches can also be drawn; dataset
Hessians (:meth:`linop.HessianOperator.from_data`) use it.

Example:
    >>> import torch
    >>> from linop import TensorBatches
    >>> batches = TensorBatches((torch.zeros(10, 3), torch.arange(10)), batch_size=4)
    >>> len(batches), batches[2][1].tolist()
    (3, [8, 9])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["TensorBatches"]


class TensorBatches(Sequence):
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
        data = tuple(data)
        in_dims = tuple(in_dims) if in_dims is not None else (0,) * len(data)
        if len(in_dims) != len(data):
            raise ValueError(f"in_dims has {len(in_dims)} entries for {len(data)} inputs")
        sizes = {t.shape[d] for t, d in zip(data, in_dims) if d is not None}
        if not sizes:
            raise TypeError("at least one input must have an example dimension")
        if len(sizes) != 1:
            raise ValueError(f"every input needs the same number of examples, got {sorted(sizes)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.data, self.in_dims = data, in_dims
        self.batch_size = int(batch_size)
        self.num_examples = sizes.pop()

    def __len__(self) -> int:
        return math.ceil(self.num_examples / self.batch_size)

    def __getitem__(self, i: int) -> tuple[Any, ...]:  # type: ignore[override]
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        start = (i % len(self)) * self.batch_size
        stop = min(self.num_examples, start + self.batch_size)
        return tuple(
            t if d is None else t.narrow(d, start, stop - start) for t, d in zip(self.data, self.in_dims)
        )

    def take(self, index: torch.Tensor) -> tuple[Any, ...]:
        """The examples at ``index``, as one batch."""
        return tuple(
            t if d is None else t.index_select(d, index.to(t.device))
            for t, d in zip(self.data, self.in_dims)
        )


def _examples_in(batches: TensorBatches, batch: tuple[Any, ...]) -> int:
    d = next(i for i, d in enumerate(batches.in_dims) if d is not None)
    return int(batch[d].shape[batches.in_dims[d]])


def _as_tuple(batch: Any) -> tuple[Any, ...]:
    return tuple(batch) if isinstance(batch, (tuple, list)) else (batch,)


def _leading_size(batch: tuple[Any, ...]) -> int:
    for t in batch:
        if isinstance(t, torch.Tensor) and t.ndim >= 1:
            return int(t.shape[0])
    raise ValueError("cannot tell the batch size: no tensor input has a leading dimension")


def _is_dataloader(obj: Any) -> bool:
    return isinstance(obj, torch.utils.data.DataLoader)


def _collate(loader: torch.utils.data.DataLoader, index: torch.Tensor) -> tuple[Any, ...]:
    return _as_tuple(loader.collate_fn([loader.dataset[int(i)] for i in index]))
