"""The ``nn.Module`` side of the curvature operators' ``from_module`` constructors: the model's
point (a snapshot of its trainable parameters and buffers) and its loss as a picklable function
of the parameters."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from linop.errors import DTypeMismatchError

__all__ = ["ModuleLoss", "module_point", "one_batch"]


def _random_or_stateful(m: torch.nn.Module) -> bool:
    """Whether a layer in training mode is random (dropout) or updates state (batch norm)."""
    if isinstance(m, torch.nn.modules.dropout._DropoutNd):
        return m.p > 0
    return isinstance(m, torch.nn.modules.batchnorm._NormBase) and m.track_running_stats


def module_point(model: torch.nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Copies of ``model``'s trainable parameters and of its buffers.

    Raises:
        ValueError: for a model in training mode with dropout or batch norm, whose loss is random
            or changes state, so that its curvature is not defined.
    """
    if model.training and any(_random_or_stateful(m) for m in model.modules()):
        raise ValueError(
            "the model is in training mode and has dropout or batch-norm layers: its loss is "
            "random or updates running statistics, so its curvature is not defined. Call "
            "model.eval() first"
        )
    params = {k: p.detach().clone() for k, p in model.named_parameters() if p.requires_grad}
    if not params:
        raise ValueError(
            "the model has no trainable parameters (none with requires_grad=True): there is "
            "nothing to take the curvature with respect to"
        )
    buffers = {k: b.detach().clone() for k, b in model.named_buffers()}
    return params, buffers


class ModuleLoss:
    """``loss_fn(model(X), y)`` as a function of a dict of parameters, the buffers held fixed.

    A class rather than a closure so that operators built from a module pickle.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        loss_fn: Callable[[torch.Tensor, Any], torch.Tensor],
        buffers: dict[str, torch.Tensor],
    ) -> None:
        self.model, self.loss_fn, self.buffers = model, loss_fn, buffers

    def outputs(self, params: dict[str, torch.Tensor], X: torch.Tensor) -> torch.Tensor:
        """The model's outputs at ``params``."""
        dtype = next(iter(params.values())).dtype
        if isinstance(X, torch.Tensor) and X.is_floating_point() and X.dtype != dtype:
            raise DTypeMismatchError(
                f"the inputs are {X.dtype} but the model's parameters are {dtype}; convert one "
                f"of them (model.to({X.dtype}) or X.to({dtype})): linop never casts silently"
            )
        return torch.func.functional_call(self.model, {**params, **self.buffers}, (X,))

    def __call__(self, params: dict[str, torch.Tensor], X: torch.Tensor, y: Any) -> torch.Tensor:
        return self.loss_fn(self.outputs(params, X), y)


def one_batch(data: Any) -> bool:
    """Whether ``data`` is one batch ``(X, y)`` (a tuple or a list, as a DataLoader yields it)
    rather than an iterable of batches."""
    return isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], torch.Tensor)
