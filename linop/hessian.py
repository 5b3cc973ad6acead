"""Hessian-vector products of a scalar loss, as a :class:`LinearOperator`.

``HessianOperator(func, primals, argnums=0, mode="rev-rev")`` is the Hessian of ``func(*primals)``
with respect to ``primals[argnums]`` (a tensor or a dict of tensors); the other inputs are
constants, never differentiated, so integer labels and non-tensor arguments work. The dataset form
(:meth:`HessianOperator.from_batches`, :meth:`HessianOperator.from_data`) is the example-weighted
mean of per-batch Hessians, the Hessian of the mean loss over the whole dataset.

Example:
    >>> import torch
    >>> from linop import HessianOperator
    >>> def loss(w, X, y):
    ...     return torch.nn.functional.cross_entropy(X @ w.reshape(3, 2), y)
    >>> X, y = torch.randn(8, 3, dtype=torch.float64), torch.randint(0, 2, (8,))
    >>> H = HessianOperator(loss, (torch.zeros(6, dtype=torch.float64), X, y))
    >>> (H @ torch.ones(6, dtype=torch.float64)).shape
    torch.Size([6])
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch.func import grad

from linop.data import TensorBatches, _as_tuple, _collate, _examples_in, _is_dataloader, _leading_size
from linop.distributed import DEFAULT_TIMEOUT_SECONDS, all_reduce_sum, resolve_group
from linop.distributed import rank as dist_rank
from linop.distributed import world_size as dist_world_size
from linop._hvp import MODES, _Batch, _check_mode, _finite, hvp
from linop.errors import DeviceMismatchError
from linop.flat import FlatSpec, Tree
from linop.operator import LinearOperator
from linop.tags import Tags

__all__ = ["HessianOperator", "MODES", "hvp"]

class HessianOperator(LinearOperator):
    """The Hessian of a scalar function with respect to one of its inputs.

    Args:
        func: a function returning a single-element tensor.
        primals: the inputs of ``func``; ``primals[argnums]`` (a tensor or a dict of tensors)
            is the point at which the Hessian is taken. Nothing else is differentiated.
        argnums: which input to differentiate.
        mode: ``"rev-rev"`` (reverse over reverse) or ``"rev-fwd"`` (forward over reverse).
        chunk_size: how many columns of ``V`` one vmapped HVP handles at once (default: all),
            to bound memory.
        cache: with ``rev-rev``, keep the reverse-mode linearisation at the point (the graph of
            the gradient) and reuse it for every product (default True for one batch); False
            saves that memory at the cost of a forward and backward pass per product.
        psd: the caller vouches that the Hessian is positive semi-definite (e.g. a convex loss).
        vectorize: apply the columns of ``V`` in one ``vmap`` (True) or one by one (False).
            Default: vmap, except for the cached ``rev-rev`` pullback on a CPU, where a loop was
            measured about 30 % faster than vmap (2 cores).

    The operator is square, ``(n, n)`` with ``n`` the number of entries of the point, symmetric,
    and shares the point's dtype and device. :attr:`spec` turns flat vectors into the point's
    layout (``H.spec.unflatten(v)``).

    Raises:
        ValueError: for an unknown mode or argnums out of range.
        NonScalarLossError: if ``func`` does not return a single-element tensor.
        NonFiniteError: if the loss at the point is NaN or infinite.
        DeviceMismatchError: if a tensor input is on another device than the point.
    """

    def __init__(
        self,
        func: Callable[..., torch.Tensor],
        primals: tuple[Any, ...],
        argnums: int = 0,
        mode: str = "rev-rev",
        *,
        chunk_size: int | None = None,
        cache: bool = True,
        psd: bool = False,
        vectorize: bool | None = None,
    ) -> None:
        if not isinstance(primals, (tuple, list)):
            primals = (primals,)
        primals = tuple(primals)
        if not -len(primals) <= argnums < len(primals):
            raise ValueError(f"argnums={argnums} is out of range for {len(primals)} inputs")
        argnums %= len(primals)
        others = primals[:argnums] + primals[argnums + 1 :]
        self._setup(func, primals[argnums], argnums, mode, chunk_size, psd)
        self.vectorize = vectorize
        self.cache = cache
        self._check_devices(others)
        self._batch = _Batch(self, others)
        self._batch.check(cache)
        self.batches: Iterable[Any] | None = None
        self.progress = False
        self.process_group: Any = None

    def _setup(
        self,
        func: Callable[..., torch.Tensor],
        point: Tree,
        argnums: int,
        mode: str,
        chunk_size: int | None,
        psd: bool,
    ) -> None:
        _check_mode(mode)
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive integer or None, got {chunk_size}")
        self.spec: FlatSpec = FlatSpec.of(point)
        params = self.spec.flatten(point).detach()
        if not params.is_floating_point():
            raise TypeError(f"the point must be floating point, got {params.dtype}")
        n = params.shape[0]
        super().__init__((n, n), params.dtype, params.device, Tags(symmetric=True, psd=psd))
        self.func = func
        self.params: torch.Tensor = params
        self.argnums = argnums
        self.mode = mode
        self.chunk_size = chunk_size

    def _check_devices(self, others: Iterable[Any]) -> None:
        for i, t in enumerate(others):
            if isinstance(t, torch.Tensor) and t.device.type != self.device.type:
                raise DeviceMismatchError(
                    f"the parameters are on {self.device} but input {i} of the batch is on "
                    f"{t.device}; move the data to {self.device}"
                )

    # ------------------------------------------------------------------ dataset form
    @classmethod
    def from_batches(
        cls,
        func: Callable[..., torch.Tensor],
        params: Tree,
        batches: Iterable[Any],
        argnums: int = 0,
        mode: str = "rev-rev",
        *,
        chunk_size: int | None = None,
        psd: bool = False,
        progress: bool = False,
        batch_size_of: Callable[[tuple[Any, ...]], int] | None = None,
        vectorize: bool | None = None,
        process_group: Any = None,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
    ) -> HessianOperator:
        """The Hessian of the mean loss over a dataset given as batches.

        ``func(params, *batch)`` (for ``argnums=0``) must return the *mean* loss over the batch;
        the result is ``Σ_b n_b H_b / Σ_b n_b`` with ``n_b`` the batch's number of examples (the
        leading dimension of its first tensor, or ``batch_size_of(batch)``), which equals the
        Hessian of the mean loss over all examples.

        Args:
            func: the loss.
            params: the point (a tensor or a dict of tensors).
            batches: a re-iterable of tuples of the remaining inputs: a list, a DataLoader,
                or :meth:`from_data`'s tensor slices. Every product iterates over it once.
            argnums: where ``params`` goes among the inputs.
            mode: ``"rev-rev"`` or ``"rev-fwd"``.
            chunk_size: columns per vmapped HVP.
            psd: the caller vouches the Hessian is positive semi-definite.
            progress: show a progress bar over the batches of every product.
            batch_size_of: the number of examples of a batch (default: ``len`` of its first
                tensor).
            vectorize: as in the constructor.
            process_group: a ``torch.distributed`` process group (or ``"world"``) whose ranks
                each hold a shard of the data: every product is the all-reduced mean over all
                shards (see :mod:`linop.distributed`).
            timeout: seconds a collective waits for the other ranks before it fails.
        """
        if iter(batches) is batches:
            raise TypeError(
                "batches is a one-shot iterator (a generator?); every product iterates over the "
                "data again, so pass a list, a DataLoader or HessianOperator.from_data(...)"
            )
        self = cls.__new__(cls)
        self._setup(func, params, argnums, mode, chunk_size, psd)
        self.vectorize = vectorize
        self.cache = False
        self.batches = batches
        self.progress = progress
        self._batch_size_of = batch_size_of or _leading_size
        self.process_group = resolve_group(process_group) if process_group is not None else None
        self.timeout = float(timeout)
        first = next(iter(batches), None)
        if first is None:
            raise ValueError("the dataset has no batches")
        first = _as_tuple(first)
        self._check_devices(first)
        self._batch = None
        _Batch(self, first).check()
        return self

    @classmethod
    def from_data(
        cls,
        func: Callable[..., torch.Tensor],
        params: Tree,
        data: tuple[Any, ...],
        batch_size: int,
        argnums: int = 0,
        mode: str = "rev-rev",
        *,
        in_dims: tuple[int | None, ...] | None = None,
        **options: Any,
    ) -> HessianOperator:
        """The Hessian of the mean loss over inputs ``data`` sharing an example dimension
        (dimension 0, or as ``in_dims`` says; None marks an input shared by all examples),
        evaluated in batches of ``batch_size``. Options as :meth:`from_batches`.

        Minibatches for stochastic methods (:meth:`sample`) are drawn example by example.
        """
        batches = TensorBatches(data, batch_size, in_dims)
        options.setdefault("batch_size_of", lambda b: _examples_in(batches, b))
        return cls.from_batches(func, params, batches, argnums, mode, **options)

    @classmethod
    def from_module(
        cls,
        model: torch.nn.Module,
        loss_fn: Callable[[torch.Tensor, Any], torch.Tensor],
        data: tuple[torch.Tensor, Any] | Iterable[Any],
        mode: str = "rev-rev",
        **options: Any,
    ) -> HessianOperator:
        """The Hessian of ``loss_fn(model(X), y)`` with respect to ``model``'s trainable
        parameters (a dict, as ``named_parameters()``; buffers are held fixed).

        ``data`` is one batch ``(X, y)`` or an iterable of such batches (a DataLoader), for the
        dataset mean. Options as the constructor or :meth:`from_batches`.
        """
        def random_or_stateful(m: torch.nn.Module) -> bool:  # in training mode
            if isinstance(m, torch.nn.modules.dropout._DropoutNd):
                return m.p > 0
            return isinstance(m, torch.nn.modules.batchnorm._NormBase) and m.track_running_stats

        if model.training and any(random_or_stateful(m) for m in model.modules()):
            raise ValueError(
                "the model is in training mode and has dropout or batch-norm layers: its loss is "
                "random or updates running statistics, so its Hessian is not defined. Call "
                "model.eval() first"
            )
        params = {k: p.detach() for k, p in model.named_parameters() if p.requires_grad}
        buffers = {k: b.detach().clone() for k, b in model.named_buffers()}  # the model's stay put

        def func(p: dict[str, torch.Tensor], X: torch.Tensor, y: Any) -> torch.Tensor:
            out = torch.func.functional_call(model, {**p, **buffers}, (X,))
            return loss_fn(out, y)

        if isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], torch.Tensor):
            return cls(func, (params, *data), 0, mode, **options)
        return cls.from_batches(func, params, data, 0, mode, **options)

    # ------------------------------------------------------------------ products
    def _iter_batches(self) -> Iterable[tuple[Any, ...]]:
        from tqdm.auto import tqdm

        assert self.batches is not None
        total = len(self.batches) if hasattr(self.batches, "__len__") else None
        bar = tqdm(self.batches, total=total, desc="HVP batches", disable=not self.progress)
        for b in bar:
            yield _as_tuple(b)

    def _matmat(self, X: torch.Tensor) -> torch.Tensor:
        if self._batch is not None:
            out = self._batch.matmat(X, self.cache)
            if self.process_group is not None:  # each rank's own minibatch: average the ranks
                out = all_reduce_sum(out, self.process_group, self.timeout)
                out = out / dist_world_size(self.process_group)
        else:
            out = self._dataset_mean(lambda batch: batch.matmat(X, cache=False), X)
        return _finite(out, "Hessian-vector product")

    def gradient(self) -> torch.Tensor:
        """The flat gradient of the (mean) loss at the point."""
        if self._batch is not None:
            return _finite(grad(self._batch.loss)(self.params), "gradient")
        column = self.params.unsqueeze(1)
        out = self._dataset_mean(lambda batch: grad(batch.loss)(self.params).unsqueeze(1), column)[:, 0]
        return _finite(out, "gradient")

    def _dataset_mean(
        self, per_batch: Callable[[_Batch], torch.Tensor], like: torch.Tensor
    ) -> torch.Tensor:
        """``Σ_b n_b f(b) / Σ_b n_b`` over the batches (of every rank, with a process group)."""
        total = torch.zeros(self.shape[0], like.shape[1], dtype=self.dtype, device=self.device)
        count = 0
        for others in self._iter_batches():
            nb = self._batch_size_of(others)
            total += per_batch(_Batch(self, others)) * nb
            count += nb
        if self.process_group is not None:
            total = all_reduce_sum(total, self.process_group, self.timeout)
            n = torch.tensor([float(count)], dtype=torch.float64, device=self.device)
            count = int(all_reduce_sum(n, self.process_group, self.timeout).item())
        if count == 0:
            raise ValueError("the dataset has no examples")
        return total / count

    # ------------------------------------------------------------------ minibatches
    def sample(self, generator: torch.Generator, batch_size: int | None = None) -> HessianOperator:
        """The Hessian at one random minibatch of the dataset, drawn reproducibly from
        ``generator`` (the hook stochastic solvers such as LiSSA use).

        With :meth:`from_data` (or a DataLoader, through its dataset) ``batch_size`` distinct
        examples are drawn uniformly; with a list of batches, one batch is drawn and
        ``batch_size`` must be None. On a one-batch operator it returns the operator itself.
        """
        if self.batches is None:
            return self
        if self.process_group is not None:  # one shared draw, then a stream per rank
            base = int(torch.randint(2**62, (1,), generator=generator))
            generator = torch.Generator().manual_seed(base + dist_rank(self.process_group))
        source = self.batches
        if isinstance(source, TensorBatches) or _is_dataloader(source):
            n = len(source.dataset) if _is_dataloader(source) else source.num_examples
            size = batch_size or getattr(source, "batch_size", None) or 1
            if size > n:
                raise ValueError(f"batch_size {size} exceeds the {n} examples of the dataset")
            idx = torch.randperm(n, generator=generator)[:size]
            others = source.take(idx) if isinstance(source, TensorBatches) else _collate(source, idx)
        elif isinstance(source, Sequence):
            if batch_size is not None:
                raise ValueError(
                    "batches given as a list are drawn whole; pass batch_size=None, or build the "
                    "operator with HessianOperator.from_data to draw examples"
                )
            others = _as_tuple(source[int(torch.randint(len(source), (1,), generator=generator))])
        else:
            raise TypeError(
                f"cannot draw random minibatches from {type(source).__name__}; use a list, a "
                f"DataLoader or HessianOperator.from_data"
            )
        return self._at_batch(others)

    def _at_batch(self, others: tuple[Any, ...]) -> HessianOperator:
        """The one-batch operator at the same point, without re-checking the loss."""
        op = copy.copy(self)
        op.batches, op.cache, op.progress = None, False, False
        op.__dict__.pop("_ritz_cache", None)  # eigenpairs belong to the dataset operator
        op._batch = _Batch(op, others)
        return op

    def _repr_args(self) -> str:
        data = "one batch" if self.batches is None else "dataset"
        return f"mode={self.mode!r}, {data}"
