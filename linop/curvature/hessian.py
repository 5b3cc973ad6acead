"""Hessian-vector products of a scalar loss at one batch, as a
[`LinearOperator`][linop.LinearOperator].

``HessianOperator(func, primals, argnums=0, mode="rev-rev")`` is the Hessian of ``func(*primals)``
with respect to ``primals[argnums]`` (a tensor or a dict of tensors); the other inputs are the
batch, constants never differentiated, so integer labels and non-tensor arguments work. The
dataset forms ([`HessianOperator.from_batches`][linop.HessianOperator.from_batches],
[`from_data`][linop.HessianOperator.from_data], [`from_module`][linop.HessianOperator.from_module]
over a DataLoader) are a [`DatasetMean`][linop.DatasetMean] of one-batch Hessians: the Hessian of
the mean loss over the whole dataset.

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

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.func import grad, jvp, vjp, vmap

from linop._tensor import all_finite
from linop.curvature._autodiff import (
    MODES,
    apply_columns,
    as_scalar,
    check_mode,
    hvp,
    problem_key,
    shared_chunks,
)
from linop.curvature._module import ModuleLoss, module_point, one_batch
from linop.curvature.base import CurvatureOperator
from linop.curvature.dataset import DatasetMean, mean_over_batches
from linop.data import TensorBatches
from linop.distributed import DEFAULT_TIMEOUT_SECONDS
from linop.errors import NonFiniteError
from linop.flat import Tree
from linop.tags import Tags

__all__ = ["HessianOperator", "MODES", "hvp"]


class HessianOperator(CurvatureOperator):
    """The Hessian of a scalar function with respect to one of its inputs, at one batch.

    Args:
        func: a function returning a single-element tensor.
        primals: the inputs of ``func``; ``primals[argnums]`` (a tensor or a dict of tensors)
            is the point at which the Hessian is taken (copied: later in-place changes to it do
            not change the operator). The other inputs are the batch; nothing else is
            differentiated.
        argnums: which input to differentiate.
        mode: ``"rev-rev"`` (reverse over reverse) or ``"rev-fwd"`` (forward over reverse).
        chunk_size: how many columns of ``V`` one vmapped HVP handles at once (default: all on
            a GPU; on a CPU, learned from the products' timings, see ``vectorize``), to bound
            memory.
        cache: with ``rev-rev``, keep the reverse-mode linearisation at the point (the graph of
            the gradient) and reuse it for every product (default True); False saves that memory
            at the cost of a forward and backward pass per product.
        psd: the caller vouches that the Hessian is positive semi-definite (e.g. a convex loss).
        vectorize: apply the columns of ``V`` with ``vmap`` (True) or one by one (False).
            Default: vmap; on a CPU without a ``chunk_size``, in chunks whose size is learned
            from the products' timings (``ColumnChunks``: from 32 columns, doubled or halved
            while the time per column falls; fewer than twice a chunk in one product), since the
            best chunk ranged from 8 to 512 over the models measured, and a wrong one cost up to
            13 times the time. What is learned is shared with new operators of the same loss,
            shapes and mode, so code that builds one per call does not learn it again.

    The operator is square, ``(n, n)`` with ``n`` the number of entries of the point, symmetric,
    and shares the point's dtype and device. `spec` turns flat vectors into the point's
    layout (``H.spec.unflatten(v)``).

    Raises:
        ValueError: for an unknown mode, argnums out of range or a bad chunk_size.
        NonScalarLossError: if ``func`` does not return a single-element tensor.
        NonFiniteError: if the loss at the point is NaN or infinite.
        DeviceMismatchError: if a tensor input is on another device than the point.
    """

    _transient = ("_linearized",)

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
        primals = tuple(primals) if isinstance(primals, (tuple, list)) else (primals,)
        if not -len(primals) <= argnums < len(primals):
            raise ValueError(f"argnums={argnums} is out of range for {len(primals)} inputs")
        argnums %= len(primals)
        check_mode(mode)
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive integer or None, got {chunk_size}")
        super().__init__(
            primals[argnums],
            primals[:argnums] + primals[argnums + 1 :],
            Tags(symmetric=True, psd=psd),
        )
        self.func = func
        self.argnums = argnums
        self.mode = mode
        self.chunk_size = chunk_size
        self.cache_linearization = cache
        self.vectorize = vectorize
        # learned chunk sizes, shared with the operator at other batches (see `at`) and with
        # operators of the same loss, shapes and options (built per call by some code)
        problem = problem_key(func, primals)
        key = None if problem is None else (problem, argnums, mode)
        self._chunks = shared_chunks(key, start=32)
        self._dense_chunks = shared_chunks(key, start=256)  # to_dense, by forward over reverse
        self._dense_forward = True  # whether the loss has forward-mode derivatives
        self._check()

    # ------------------------------------------------------------------ one batch
    def loss(self, theta: torch.Tensor) -> torch.Tensor:
        b, i = self.batch, self.argnums
        return as_scalar(self.func(*b[:i], self.spec.unflatten(theta), *b[i:]))

    def _loss_with_aux(self, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        value = self.loss(theta)
        return value, value.detach()

    def _check(self) -> None:
        """Evaluate the loss once at the point: scalar and finite, or a clear error. With the
        cached ``rev-rev`` linearisation, it is built in the same pass."""
        if self.cache_linearization and self.mode == "rev-rev":
            # torch.func.vjp is annotated without an overload on has_aux: 2 or 3 values.
            _, pullback, value = vjp(  # type: ignore[misc]
                grad(self._loss_with_aux, has_aux=True), self.params, has_aux=True
            )
            self._linearized = lambda v: pullback(v)[0]
        else:
            with torch.no_grad():
                value = self.loss(self.params)
        if not bool(torch.isfinite(value)):
            raise NonFiniteError(
                f"the loss is {value.item()} at the given parameters; a Hessian there is undefined"
            )

    def at(self, batch: Any) -> HessianOperator:
        """The Hessian at another batch (same point and options; no cached linearisation)."""
        new = super().at(batch)
        assert isinstance(new, HessianOperator)
        new.cache_linearization = False
        return new

    def _hvp_fn(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """``v ↦ H v`` on one flat vector (vmappable).

        ``rev-rev`` with the cache computes the reverse-mode pullback of the gradient at the
        point once and reuses it for every product. ``rev-fwd`` differentiates forward through
        the gradient on every product (``torch.func.linearize`` would cache it, but its cached
        function drifts on repeated calls in torch 2.13, so it is not used).
        """
        cached = self.__dict__.get("_linearized")
        if cached is not None:
            return cached
        g, theta = grad(self.loss), self.params
        if self.mode == "rev-fwd":
            return lambda v: jvp(g, (theta,), (v,))[1]
        if not self.cache_linearization:
            return lambda v: vjp(g, theta)[1](v)[0]
        pullback = vjp(g, theta)[1]
        self._linearized = lambda v: pullback(v)[0]
        return self._linearized

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        out = apply_columns(self._hvp_fn(), V, self._chunks, self.chunk_size, self.vectorize)
        return all_finite(
            out,
            "the Hessian-vector product has NaN or infinite entries: some input of the batch, or "
            "the loss or its derivatives at the point, is not finite (check the inputs for NaN, "
            "and that the loss is twice differentiable there)",
            V,
        )

    def _to_dense(self, chunk_size: int | None) -> torch.Tensor:
        """The Hessian by forward over reverse (a Jacobian-vector product of the gradient per
        identity column, vmapped in chunks), whatever ``mode`` says: it materialises about
        twice as fast as reverse over reverse (0.53-0.67 s against 1.2 s for 7850 parameters).
        Losses without forward-mode derivatives fall back to the operator's own products."""
        n = self.shape[0]
        # column-major (the identity's transpose): the columns of a chunk are one contiguous
        # block, not a strided view (chunks of 82-325 of 650 columns: 2-6 % faster; one product
        # of all columns: no difference)
        E = torch.eye(n, dtype=self.dtype, device=self.device).mT
        if n == 0:
            return E
        g, theta = grad(self.loss), self.params
        forward = self._dense_forward

        def column(v: torch.Tensor) -> torch.Tensor:
            return jvp(g, (theta,), (v,))[1]

        try:
            if not forward:
                raise NotImplementedError
            if chunk_size is None and self.vectorize is None and E.device.type == "cpu":
                out = self._dense_chunks.apply(column, E)
            else:
                step = chunk_size or n
                parts = [vmap(column, 1, 1)(E[:, i : i + step]) for i in range(0, n, step)]
                out = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
        except (NotImplementedError, RuntimeError) as error:  # no forward-mode derivative
            if forward and "forward" not in str(error).lower() and "jvp" not in str(error).lower():
                raise
            self._dense_forward = False
            return super()._to_dense(chunk_size)
        return all_finite(out, "the Hessian has NaN or infinite entries at the point")

    # ------------------------------------------------------------------ dataset forms
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
    ) -> DatasetMean:
        """The Hessian of the mean loss over a dataset given as batches, as a
        [`DatasetMean`][linop.DatasetMean] of one-batch Hessians.

        ``func(params, *batch)`` (for ``argnums=0``) must return the *mean* loss over the batch;
        the result is ``Σ_b n_b H_b / Σ_b n_b`` with ``n_b`` the batch's number of examples (the
        leading dimension of its first tensor, or ``batch_size_of(batch)``), which equals the
        Hessian of the mean loss over all examples.

        Args:
            func: the loss.
            params: the point (a tensor or a dict of tensors); copied.
            batches: a data source (`linop.data`), or a re-iterable of batches (tuples or
                lists of the remaining inputs): a list, a DataLoader. Every product iterates over
                it once.
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
                shards (see [`linop.data.ShardedData`][linop.ShardedData]).
            timeout: seconds a collective waits for the other ranks before it fails.
        """
        return mean_over_batches(
            lambda first: cls(
                func,
                (*first[:argnums], params, *first[argnums:]),
                argnums,
                mode,
                chunk_size=chunk_size,
                cache=False,
                psd=psd,
                vectorize=vectorize,
            ),
            batches,
            progress=progress,
            batch_size_of=batch_size_of,
            process_group=process_group,
            timeout=timeout,
        )

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
    ) -> DatasetMean:
        """The Hessian of the mean loss over inputs ``data`` sharing an example dimension
        (dimension 0, or as ``in_dims`` says; None marks an input shared by all examples),
        evaluated in batches of ``batch_size`` (a [`TensorBatches`][linop.TensorBatches]). Options
        as [`from_batches`][linop.HessianOperator.from_batches]. Minibatches for stochastic methods
        are drawn example by example.
        """
        return cls.from_batches(
            func, params, TensorBatches(data, batch_size, in_dims), argnums, mode, **options
        )

    @classmethod
    def from_module(
        cls,
        model: torch.nn.Module,
        loss_fn: Callable[[torch.Tensor, Any], torch.Tensor],
        data: Any,
        mode: str = "rev-rev",
        **options: Any,
    ) -> HessianOperator | DatasetMean:
        """The Hessian of ``loss_fn(model(X), y)`` with respect to ``model``'s trainable
        parameters (a dict, as ``named_parameters()``; buffers are held fixed; both copied).

        ``data`` is one batch ``(X, y)`` (a tuple or a list, as a DataLoader yields) or an
        iterable of such batches (a DataLoader, a list of batches), for the dataset mean.
        Options as the constructor or [`from_batches`][linop.HessianOperator.from_batches].
        """
        params, buffers = module_point(model)
        func = ModuleLoss(model, loss_fn, buffers)
        if one_batch(data):
            return cls(func, (params, *data), 0, mode, **options)
        return cls.from_batches(func, params, data, 0, mode, **options)

    def _repr_args(self) -> str:
        return f"mode={self.mode!r}"
