"""The dataset mean: the example-weighted mean of one-batch operators over a data source.

``DatasetMean(at, data)`` is ``Σ_b n_b A(b) / Σ_b n_b`` over the batches ``b`` of ``data`` (with
``n_b`` their numbers of examples), lazily: every product makes one pass over the data, applying
the one-batch operator ``A(b)`` of each batch. For a loss that is the mean over its batch, the
mean of the one-batch Hessians is the Hessian of the mean loss over the whole dataset. Over a
[`ShardedData`][linop.ShardedData] the sums are all-reduced across ranks.

The mean is generic: any operator with an ``at(batch)`` method (every
[`CurvatureOperator`][linop.CurvatureOperator]), or any function from a batch to an operator,
makes one. It is also the hook stochastic solvers use:
[`DatasetMean.minibatch`][linop.DatasetMean.minibatch] is the operator at one random minibatch,
drawn reproducibly (LiSSA).

Example:
    >>> import torch
    >>> from linop import DatasetMean, HessianOperator
    >>> def loss(w, X):
    ...     return ((X @ w) ** 2).mean()
    >>> X = torch.randn(10, 3, dtype=torch.float64)
    >>> one = HessianOperator(loss, (torch.zeros(3, dtype=torch.float64), X[:4]))
    >>> H = DatasetMean(one, [(X[:4],), (X[4:],)])          # the Hessian over all 10 rows
    >>> torch.allclose(H.to_dense(), 2 * X.T @ X / 10)
    True
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from tqdm.auto import tqdm

from linop._checks import integer
from linop.data import Batch, DataSource, as_source
from linop.distributed import DEFAULT_TIMEOUT_SECONDS
from linop.operator import LinearOperator

__all__ = ["DatasetMean", "mean_over_batches"]


class DatasetMean(LinearOperator):
    """The example-weighted mean ``Σ_b n_b A(b) / Σ_b n_b`` of one-batch operators over a data
    source.

    Args:
        at: the one-batch operator at any batch: an operator with an ``at(batch)`` method
            (then its own batch is only a template), or a function from a batch to an operator.
        data: a [`DataSource`][linop.DataSource], or what [`as_source`][linop.as_source] accepts
            (a DataLoader, a list of batches).
        progress: show a progress bar over the batches of every product.

    Attributes:
        like: the operator at the first batch (shape, dtype, device and tags come from it).
        data: the data source.
    """

    def __init__(
        self,
        at: LinearOperator | Callable[[Batch], LinearOperator],
        data: Any,
        *,
        progress: bool = False,
    ) -> None:
        self.data: DataSource = as_source(data)
        at_batch: Callable[[Batch], LinearOperator]
        if isinstance(at, LinearOperator):  # duck-typed: any operator with an at(batch) method
            like, at_batch = at, at.at  # type: ignore[attr-defined]
        else:
            first = next(iter(self.data), None)
            if first is None:
                raise ValueError("the dataset has no batches")
            like, at_batch = at(first), at
        super().__init__(like.shape, like.dtype, like.device, like.tags)
        self.at = at_batch
        self.like = like
        self.progress = progress

    @property
    def spec(self) -> Any:
        """The one-batch operator's flat layout (see [`FlatSpec`][linop.FlatSpec])."""
        return self.like.spec  # type: ignore[attr-defined]

    @property
    def params(self) -> torch.Tensor:
        """The one-batch operator's point, flat."""
        return self.like.params  # type: ignore[attr-defined]

    def mean(
        self, per_batch: Callable[[LinearOperator], torch.Tensor], columns: int
    ) -> torch.Tensor:
        """``Σ_b n_b f(A(b)) / Σ_b n_b`` for a function ``f`` giving ``(m, columns)`` tensors."""
        total = torch.zeros(self.shape[0], columns, dtype=self.dtype, device=self.device)
        count = 0
        batches = tqdm(
            self.data,
            total=self.data.num_batches(),
            desc="batches",
            disable=not self.progress,
            leave=False,
        )
        for batch in batches:
            nb = integer("a batch's number of examples", self.data.examples_in(batch), 0)
            total = total + per_batch(self.at(batch)) * nb  # out of place: vmap works
            count += nb
        total, count = self.data.reduce(total, count)
        if count == 0:
            raise ValueError("the dataset has no examples")
        return total / count

    def _matmat(self, X: torch.Tensor) -> torch.Tensor:
        return self.mean(lambda op: op._matmat(X), X.shape[1])

    def _adjoint(self) -> LinearOperator:
        return self if self.tags.symmetric else super()._adjoint()

    def _to_dense(self, chunk_size: int | None) -> torch.Tensor:
        return self.mean(lambda op: op._to_dense(chunk_size), self.shape[1])

    def gradient(self) -> torch.Tensor:
        """The example-weighted mean of the one-batch operators' ``gradient()``: the gradient of
        the mean loss."""
        return self.mean(lambda op: op.gradient().unsqueeze(1), 1)[:, 0]  # type: ignore[attr-defined]

    def minibatch(self, generator: torch.Generator, batch_size: int | None = None) -> DatasetMean:
        """The operator at one random minibatch, drawn reproducibly from ``generator`` (the hook
        stochastic solvers such as LiSSA use): ``batch_size`` examples for tensors and
        DataLoaders (default: their batch size), one whole batch for a list (``batch_size`` must
        be None). Over a sharded source, each rank draws its own and products are averaged over
        the ranks."""
        batch = self.data.minibatch(generator, batch_size)
        return DatasetMean(self.at(batch), self.data.restrict(batch))

    def _repr_args(self) -> str:
        return f"of {type(self.like).__name__}, data={type(self.data).__name__}"


def mean_over_batches(
    build: Callable[[Batch], LinearOperator],
    batches: Any,
    *,
    progress: bool = False,
    batch_size_of: Callable[[Batch], int] | None = None,
    process_group: Any = None,
    timeout: float = DEFAULT_TIMEOUT_SECONDS,
) -> DatasetMean:
    """The dataset mean of the one-batch operator ``build(first batch)`` (its ``at`` gives the
    others) over ``batches``: the plumbing every curvature operator's ``from_batches`` shares
    (the data source, sharded over ``process_group``; an empty dataset refused)."""
    source = as_source(
        batches, examples_in=batch_size_of, process_group=process_group, timeout=timeout
    )
    first = next(iter(source), None)
    if first is None:
        raise ValueError("the dataset has no batches")
    return DatasetMean(build(first), source, progress=progress)
