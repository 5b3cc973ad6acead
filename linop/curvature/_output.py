"""The curvatures that factor through a model's outputs, ``Jᵀ M J`` with ``J`` the Jacobian of the
outputs with respect to the parameters and ``M`` a positive semi-definite matrix on the outputs:
the Gauss-Newton matrix (``M`` the loss's output Hessian) and the Fisher (``M`` built from the
per-example output gradients). This module holds what they share: the model and loss, the checks
of the batch, the linearisation at the point, the products ``J v → M → Jᵀ`` and the constructors
over datasets and modules. [`GGNOperator`][linop.GGNOperator] and
[`FisherOperator`][linop.FisherOperator] each write only their ``M``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch.func import jvp, linearize, vjp, vmap

from linop._checks import positive_int
from linop._tensor import all_finite
from linop.curvature._autodiff import ColumnChunks, apply_columns, as_scalar
from linop.curvature._likelihood import check_targets, likelihood_of
from linop.curvature._module import ModuleLoss, module_point, one_batch
from linop.curvature.base import CurvatureOperator
from linop.curvature.dataset import DatasetMean, mean_over_batches
from linop.data import Batch, TensorBatches, as_batch, leading_size
from linop.distributed import DEFAULT_TIMEOUT_SECONDS
from linop.errors import DTypeMismatchError, NonFiniteError, ShapeMismatchError
from linop.flat import Tree
from linop.tags import Tags

__all__ = ["OutputCurvature"]

Linear = Callable[[torch.Tensor], torch.Tensor]

#: Columns an operator with ``cache`` is applied to before its forward map is linearised.
LINEARIZE_AFTER = 24


@dataclass
class _Linearized:
    """The three maps of a product at the point, and how far the forward one is traced."""

    forward: Linear
    middle: Linear
    backward: Linear
    traced: bool = False  # linearize tried
    columns: int = 0  # columns applied so far


def _one_example(t: Any, i: int) -> Any:
    return t[i : i + 1] if isinstance(t, torch.Tensor) and t.ndim else t


def per_example_losses(
    loss_fn: Callable[..., Any], outputs: torch.Tensor, targets: Any
) -> torch.Tensor:
    """``loss_fn(outputs[i:i+1], targets[i:i+1])`` for every example ``i``, as a ``(B,)`` tensor
    (vmapped; one by one for a loss that vmap cannot trace)."""
    batched = isinstance(targets, torch.Tensor) and targets.ndim > 0

    def one(o: torch.Tensor, t: Any) -> torch.Tensor:
        return as_scalar(loss_fn(o.unsqueeze(0), t.unsqueeze(0) if batched else t))

    try:
        return vmap(one, in_dims=(0, 0 if batched else None))(outputs, targets)
    except (RuntimeError, ValueError, NotImplementedError):  # not vmappable: one by one
        return torch.stack(
            [
                as_scalar(loss_fn(outputs[i : i + 1], _one_example(targets, i)))
                for i in range(outputs.shape[0])
            ]
        )


class OutputCurvature(CurvatureOperator):
    """``Jᵀ M J`` at one batch ``(*inputs, targets)``: the shared base of the Gauss-Newton and
    Fisher operators (see the module's docstring). Subclasses write ``_output_operator``."""

    _transient: tuple[str, ...] = ("_state",)

    def __init__(
        self,
        output_fn: Callable[..., torch.Tensor],
        loss_fn: Callable[..., torch.Tensor],
        params: Tree,
        batch: Any,
        argnums: int = 0,
        *,
        chunk_size: int | None = None,
        vectorize: bool | None = None,
        cache: bool = True,
        likelihood: str | None = None,
    ) -> None:
        batch = as_batch(batch)
        if len(batch) < 2:
            raise ValueError(
                f"the batch must hold the model's inputs and then the targets, (X, y), got "
                f"{len(batch)} entr{'y' if len(batch) == 1 else 'ies'}"
            )
        slots = len(batch)  # output_fn's inputs: the parameters and every entry but the targets
        if not -slots <= argnums < slots:
            raise ValueError(
                f"argnums={argnums} is out of range for an output function of {slots} inputs"
            )
        positive_int("chunk_size", chunk_size)
        if not callable(output_fn) or not callable(loss_fn):
            raise TypeError("output_fn and loss_fn must be callables")
        super().__init__(params, batch, Tags(symmetric=True, psd=True))
        self.output_fn, self.loss_fn = output_fn, loss_fn
        self.argnums = argnums % slots
        self.chunk_size, self.vectorize = chunk_size, vectorize
        self.cache_linearization = cache
        #: ``"categorical"`` (cross-entropy), ``"gaussian"`` (squared error) or None (another loss)
        self.likelihood: str | None = likelihood or likelihood_of(loss_fn)
        self._chunks = ColumnChunks()  # shared with the operator at other batches (see `at`)
        self._check()

    # ------------------------------------------------------------------ model and loss
    @property
    def inputs(self) -> Batch:
        """The model's inputs at this batch (the batch without its targets)."""
        return self.batch[:-1]

    @property
    def targets(self) -> Any:
        """The targets at this batch (its last entry)."""
        return self.batch[-1]

    def outputs(self, theta: torch.Tensor) -> torch.Tensor:
        """The model's outputs at the flat parameters ``theta``."""
        x, i = self.inputs, self.argnums
        return self.output_fn(*x[:i], self.spec.unflatten(theta), *x[i:])

    def loss(self, theta: torch.Tensor) -> torch.Tensor:
        return as_scalar(self.loss_fn(self.outputs(theta), self.targets))

    def _check(self) -> None:
        """The outputs have the examples first, the targets fit them, the loss is finite and is
        the mean of per-example losses; otherwise a typed error saying which."""
        with torch.no_grad():
            out = self.outputs(self.params)
        if not isinstance(out, torch.Tensor) or not out.is_floating_point():
            raise DTypeMismatchError(
                f"the model's outputs must be a floating-point tensor, got "
                f"{getattr(out, 'dtype', type(out).__name__)}"
            )
        B = leading_size(self.inputs)
        if out.ndim == 0 or out.shape[0] != B:
            raise ShapeMismatchError(
                f"the model's outputs must have the batch's {B} examples as their first "
                f"dimension, got shape {tuple(out.shape)}; return one row per example"
            )
        y = self.targets
        check_targets(self.likelihood, out, y)
        if isinstance(y, torch.Tensor) and (y.ndim == 0 or y.shape[0] != B):
            raise ShapeMismatchError(
                f"the targets must have the batch's {B} examples as their first dimension, got "
                f"shape {tuple(y.shape)}"
            )
        with torch.no_grad():
            value = as_scalar(self.loss_fn(out, y))
            if not bool(torch.isfinite(value)):
                raise NonFiniteError(
                    f"the loss is {value.item()} at the given parameters; its curvature there is "
                    f"undefined"
                )
            mean = per_example_losses(self.loss_fn, out, y).mean()
        tol = 1e3 * torch.finfo(out.dtype).eps * (abs(float(value)) + abs(float(mean)) + 1e-30)
        if not abs(float(mean) - float(value)) <= tol:
            raise ValueError(
                f"the loss must be the mean over the batch (the outputs' first dimension) of a "
                f"loss per example, loss_fn(outputs, targets) == mean_i loss_fn(outputs[i:i+1], "
                f"targets[i:i+1]); here the loss is {float(value):.6g} but the mean of the "
                f"per-example losses is {float(mean):.6g}. A loss summed over the batch "
                f"(reduction='sum') is {B} times the mean; one that mixes examples has no "
                f"per-example form"
            )

    # ------------------------------------------------------------------ products
    def _output_operator(self, outputs: torch.Tensor) -> Linear:
        """``u ↦ M u`` for one tangent ``u`` of the outputs' shape, at the outputs ``outputs``."""
        raise NotImplementedError(f"{type(self).__name__} must implement _output_operator")

    def _linearization(self, columns: int) -> _Linearized:
        """The maps ``v ↦ J v``, ``u ↦ M u`` and ``w ↦ Jᵀ w`` at the point, for a product with
        ``columns`` columns.

        With ``cache`` they are kept: the reverse-mode pullback from the first product on, and,
        once the operator has met ``LINEARIZE_AFTER`` (24) columns, the forward map linearised
        by ``torch.func.linearize`` (later products replay only the tangent computation:
        measured on an MLP 784-512-512-10, batch 1024, one product 1.14 gradients instead of
        1.76 with ``jvp``; tracing it costs about 15
        gradients, hence the wait). Without ``cache`` (the dataset mean's other batches) every
        product rebuilds them, ``J v`` by ``jvp``.
        """
        state = self.__dict__.get("_state")
        if state is None:
            f, theta = self.outputs, self.params
            out, pullback = vjp(f, theta)  # type: ignore[misc]  # annotated as 2 or 3 values

            def forward(v: torch.Tensor) -> torch.Tensor:
                return jvp(f, (theta,), (v,))[1]

            state = _Linearized(
                forward, self._output_operator(out.detach()), lambda w: pullback(w)[0]
            )
            if self.cache_linearization:
                self._state = state
        if self.cache_linearization and not state.traced:
            state.columns += columns
            if state.columns >= LINEARIZE_AFTER:
                state.traced = True
                try:
                    with warnings.catch_warnings():  # torch's constant folding warns about names
                        warnings.simplefilter("ignore", UserWarning)
                        state.forward = linearize(self.outputs, self.params)[1]
                except Exception:  # noqa: BLE001 - untraceable model: keep jvp on every product
                    pass
        return state

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        state = self._linearization(V.shape[1])
        forward, middle, backward = state.forward, state.middle, state.backward
        out = apply_columns(
            lambda v: backward(middle(forward(v))), V, self._chunks, self.chunk_size, self.vectorize
        )
        return all_finite(
            out,
            f"the {type(self).__name__} product has NaN or infinite entries: some input of the "
            f"batch, or the model or loss derivatives at the point, is not finite",
            V,
        )

    def at(self, batch: Any) -> OutputCurvature:
        """The operator at another batch (same point and options; linearised afresh on every
        product)."""
        new = super().at(batch)
        assert isinstance(new, OutputCurvature)
        new.cache_linearization = False
        return new

    # ------------------------------------------------------------------ dataset forms
    @classmethod
    def from_batches(
        cls,
        output_fn: Callable[..., torch.Tensor],
        loss_fn: Callable[..., torch.Tensor],
        params: Tree,
        batches: Iterable[Any],
        argnums: int = 0,
        *,
        progress: bool = False,
        batch_size_of: Callable[[tuple[Any, ...]], int] | None = None,
        process_group: Any = None,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        **options: Any,
    ) -> DatasetMean:
        """The operator of the mean loss over a dataset given as batches ``(*inputs, targets)``,
        as a [`DatasetMean`][linop.DatasetMean] of one-batch operators: ``Σ_b n_b A_b / Σ_b n_b``
        with ``n_b`` the batch's number of examples.

        Args:
            output_fn: the model, ``output_fn(params, *inputs)`` (``params`` at ``argnums``).
            loss_fn: ``loss_fn(outputs, targets)``, the mean over the batch.
            params: the point (a tensor or a dict of tensors); copied.
            batches: a data source (`linop.data`), or a re-iterable of batches: a list, a
                DataLoader. Every product iterates over it once.
            argnums: where ``params`` goes among the output function's inputs.
            progress: show a progress bar over the batches of every product.
            batch_size_of: the number of examples of a batch (default: the leading dimension).
            process_group: a ``torch.distributed`` process group (or ``"world"``) whose ranks
                each hold a shard of the data (see [`ShardedData`][linop.ShardedData]).
            timeout: seconds a collective waits for the other ranks before it fails.
            **options: as the constructor.
        """
        return mean_over_batches(
            lambda first: cls(output_fn, loss_fn, params, first, argnums, cache=False, **options),
            batches,
            progress=progress,
            batch_size_of=batch_size_of,
            process_group=process_group,
            timeout=timeout,
        )

    @classmethod
    def from_data(
        cls,
        output_fn: Callable[..., torch.Tensor],
        loss_fn: Callable[..., torch.Tensor],
        params: Tree,
        data: tuple[Any, ...],
        batch_size: int,
        argnums: int = 0,
        *,
        in_dims: tuple[int | None, ...] | None = None,
        **options: Any,
    ) -> DatasetMean:
        """The operator of the mean loss over tensors ``data = (*inputs, targets)`` sharing an
        example dimension (``in_dims`` as [`TensorBatches`][linop.TensorBatches]), in batches of
        ``batch_size``; minibatches are drawn example by example. Options as ``from_batches``."""
        return cls.from_batches(
            output_fn,
            loss_fn,
            params,
            TensorBatches(data, batch_size, in_dims),
            argnums,
            **options,
        )

    @classmethod
    def from_module(
        cls,
        model: torch.nn.Module,
        loss_fn: Callable[[torch.Tensor, Any], torch.Tensor],
        data: Any,
        **options: Any,
    ) -> Any:
        """The operator of ``loss_fn(model(X), y)`` with respect to ``model``'s trainable
        parameters (a dict, as ``named_parameters()``; buffers are held fixed; both copied).

        ``data`` is one batch ``(X, y)`` (a tuple or a list, as a DataLoader yields) or an
        iterable of such batches (a DataLoader, a list of batches) for the dataset mean. Options
        as the constructor or ``from_batches``.
        """
        params, buffers = module_point(model)
        outputs = ModuleLoss(model, loss_fn, buffers).outputs
        if one_batch(data):
            return cls(outputs, loss_fn, params, data, 0, **options)
        return cls.from_batches(outputs, loss_fn, params, data, 0, **options)
