"""The one-batch curvature operator: a point (a snapshot of the parameters) and one batch.

A curvature operator (Hessian, Gauss-Newton, Fisher, ...) is defined at **one batch** and a
point; a subclass writes the batch's loss ([`CurvatureOperator.loss`][linop.CurvatureOperator.loss])
and its ``_matmat``, and nothing about datasets: [`DatasetMean`][linop.DatasetMean] turns any of
them into the example-weighted mean over a data source through
[`CurvatureOperator.at`][linop.CurvatureOperator.at].

**The point is a snapshot.** The parameters are copied when the operator is built, so training
the model afterwards (an optimizer step updates parameters in place) never changes the products:
they stay those of the curvature at the construction point. Build a new operator for a new point.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch.func import grad

from linop._tensor import all_finite
from linop.data import Batch, as_batch
from linop.errors import DeviceMismatchError, DTypeMismatchError
from linop.flat import FlatSpec, Tree
from linop.operator import LinearOperator, OperatorCache
from linop.tags import Tags

__all__ = ["CurvatureOperator"]


class CurvatureOperator(LinearOperator):
    """A square curvature operator at a point and one batch of data.

    Args:
        point: the parameters (a tensor or a dict/tuple of tensors); copied (a snapshot).
        batch: the other inputs of the loss at this batch (a tuple).
        tags: the operator's structure.

    Attributes:
        spec: the layout of the point as a flat vector (``spec.unflatten(v)``).
        params: the flat point, a copy of the parameters at construction.
        batch: the batch, a tuple of inputs.
    """

    #: attributes that hold per-batch derived state (rebuilt lazily; dropped by `at` and
    #: when pickling)
    _transient: tuple[str, ...] = ()

    def __init__(self, point: Tree, batch: Batch, tags: Tags) -> None:
        spec = FlatSpec.of(point)
        params = spec.flatten(point).detach()
        if len(spec.shapes) == 1:  # flatten returned a view of the caller's tensor: copy it
            params = params.clone()
        if not params.is_floating_point():
            raise DTypeMismatchError(
                f"the point must be a real floating-point tensor (float64, float32, float16, "
                f"bfloat16), got {params.dtype}"
            )
        n = params.shape[0]
        super().__init__((n, n), params.dtype, params.device, tags)
        self.spec: FlatSpec = spec
        self.params: torch.Tensor = params
        self.batch: Batch = as_batch(batch)
        for i, t in enumerate(self.batch):
            if isinstance(t, torch.Tensor) and t.device.type != self.device.type:
                raise DeviceMismatchError(
                    f"the parameters are on {self.device} but input {i} of the batch is on "
                    f"{t.device}; move the data to {self.device}"
                )

    def loss(self, theta: torch.Tensor) -> torch.Tensor:
        """The batch's (mean) loss at the flat parameters ``theta``, a 0-d tensor."""
        raise NotImplementedError(f"{type(self).__name__} must implement loss")

    def at(self, batch: Any) -> CurvatureOperator:
        """The same operator (same point, options and checks) at another batch."""
        new = copy.copy(self)
        new.batch = as_batch(batch)
        new.cache = OperatorCache()
        for name in self._transient:
            new.__dict__.pop(name, None)
        return new

    def gradient(self) -> torch.Tensor:
        """The flat gradient of the batch's loss at the point."""
        return all_finite(
            grad(self.loss)(self.params),
            "the gradient has NaN or infinite entries: some input of the batch, or the loss or "
            "its derivatives at the point, is not finite",
        )

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for name in self._transient:
            state.pop(name, None)
        return state
