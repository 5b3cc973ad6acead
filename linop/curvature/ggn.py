"""The generalised Gauss-Newton matrix ``G = Jᵀ H_out J`` of a loss composed with a model, at one
batch, as a [`LinearOperator`][linop.LinearOperator].

``J`` is the Jacobian of the model's outputs with respect to the parameters and ``H_out`` the
Hessian of the loss with respect to the outputs. For a loss convex in the outputs (cross-entropy,
squared error) ``G`` is positive semi-definite everywhere, unlike the Hessian ``G + Σ (∂ℓ/∂o) ∂²o``,
whose second term is indefinite away from a minimum; for a model linear in its parameters the two
are equal. Products go through the model by forward- and reverse-mode autodiff (``J v``, then
``H_out``, then ``Jᵀ``), never through per-example Jacobians; ``H_out`` is in closed form for
cross-entropy and squared error and by autodiff for any other loss of the outputs.

Example:
    >>> import torch
    >>> from linop import GGNOperator
    >>> model = lambda w, X: X @ w.reshape(3, 2)
    >>> X, y = torch.randn(8, 3, dtype=torch.float64), torch.randint(0, 2, (8,))
    >>> w = torch.zeros(6, dtype=torch.float64)
    >>> G = GGNOperator(model, torch.nn.CrossEntropyLoss(), w, (X, y))
    >>> (G @ torch.ones(6, dtype=torch.float64)).shape, G.tags.psd
    (torch.Size([6]), True)
"""

from __future__ import annotations

import torch

from linop.curvature._likelihood import output_hessian
from linop.curvature._output import Linear, OutputCurvature

__all__ = ["GGNOperator"]


class GGNOperator(OutputCurvature):
    """The Gauss-Newton matrix ``Jᵀ H_out J`` of ``loss_fn(output_fn(params, X), y)`` at one batch.

    Args:
        output_fn: the model as a function, ``output_fn(params, *inputs) -> outputs``, the
            examples along the outputs' first dimension.
        loss_fn: ``loss_fn(outputs, targets)``, the *mean* over the batch of a loss per example
            (checked: ``loss_fn(outputs[i:i+1], targets[i:i+1])`` is example ``i``'s loss).
            ``torch.nn.CrossEntropyLoss`` / ``F.cross_entropy`` and ``torch.nn.MSELoss`` /
            ``F.mse_loss`` (mean) get a closed-form output Hessian, any other loss autodiff.
        params: the point (a tensor or a dict of tensors); copied (a snapshot).
        batch: ``(*inputs, targets)``, a tuple or list: the model's inputs, then the targets.
        argnums: where ``params`` goes among ``output_fn``'s inputs.
        chunk_size: how many columns one vmapped product handles at once (default: learned on a
            CPU from the products' timings, all on a GPU).
        vectorize: apply the columns with vmap (True) or one by one (False); default vmap.
        cache: keep the reverse-mode pullback at the point and, once the operator has been
            applied to 24 columns, a linearised forward map (``torch.func.linearize``), so that
            every product replays only the linear maps: about the cost of one gradient, where
            tracing costs about 15 (False: recompute them on every product, saving their memory).

    The operator is square ``(n, n)`` (``n`` the entries of the point), tagged psd, and has the
    point's dtype and device. ``GGNOperator.from_batches(output_fn, loss_fn, params, batches)``,
    ``from_data(..., data, batch_size)`` and ``from_module(model, loss_fn, data)`` (``data`` one
    batch ``(X, y)`` or an iterable of batches) build the dataset mean, as for
    [`HessianOperator`][linop.HessianOperator].

    Raises:
        ShapeMismatchError: outputs without the examples first, or targets of the wrong shape.
        ValueError: a loss that is not the mean over the batch of per-example losses; a bad
            argnums or chunk_size.
        NonScalarLossError: a loss that is not a single-element tensor.
        NonFiniteError: a loss that is NaN or infinite at the point.
    """

    def _output_operator(self, outputs: torch.Tensor) -> Linear:
        return output_hessian(self.likelihood, self.loss_fn, outputs, self.targets)

    def _repr_args(self) -> str:
        return f"loss={self.likelihood or 'autodiff'}"
