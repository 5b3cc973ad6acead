"""What the Gauss-Newton and Fisher operators know about a loss of the model's outputs: whether it
is a negative log-likelihood they recognise (cross-entropy: categorical; squared error: Gaussian),
its output Hessian in closed form, and how to sample targets from the model's predictive
distribution, reproducibly and independently of how the data is batched."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch.func import grad, vjp

from linop.errors import ShapeMismatchError
from linop.kernels.hash import GOLDEN, M32, fmix32, word

__all__ = [
    "LIKELIHOODS",
    "likelihood_of",
    "output_gradients",
    "output_hessian",
    "output_hessian_sqrt",
    "sample_targets",
]

#: The likelihoods the MC Fisher samples from, and the losses that are their negative logs.
LIKELIHOODS = {
    "categorical": "cross-entropy (torch.nn.CrossEntropyLoss or F.cross_entropy, logits (B, C))",
    "gaussian": "squared error (torch.nn.MSELoss or F.mse_loss, reduction='mean')",
}


def likelihood_of(loss_fn: Callable[..., Any]) -> str | None:
    """``"categorical"`` for a plain mean cross-entropy, ``"gaussian"`` for a mean squared error,
    None for any other loss (whose output Hessian is then taken by autodiff)."""
    if loss_fn is F.cross_entropy:
        return "categorical"
    if loss_fn is F.mse_loss:
        return "gaussian"
    if isinstance(loss_fn, torch.nn.CrossEntropyLoss):
        plain = loss_fn.weight is None and loss_fn.reduction == "mean"
        return "categorical" if plain and loss_fn.label_smoothing == 0 else None
    if isinstance(loss_fn, torch.nn.MSELoss) and loss_fn.reduction == "mean":
        return "gaussian"
    return None


def check_targets(likelihood: str | None, outputs: torch.Tensor, targets: Any) -> None:
    """Targets of the shape a recognised loss needs (torch only warns when squared error
    broadcasts them), or a [`ShapeMismatchError`][linop.ShapeMismatchError] saying which."""
    shape = tuple(getattr(targets, "shape", ()))
    if likelihood == "gaussian" and shape != tuple(outputs.shape):
        raise ShapeMismatchError(
            f"squared error needs targets of the outputs' shape {tuple(outputs.shape)}, got "
            f"{shape} (torch would broadcast them into a different loss)"
        )
    if likelihood == "categorical":
        if not isinstance(targets, torch.Tensor):
            raise TypeError(f"cross-entropy needs tensor targets, got {type(targets).__name__}")
        if outputs.ndim != 2:
            raise ShapeMismatchError(
                f"cross-entropy needs logits of shape (B, C), got {tuple(outputs.shape)}"
            )
        B = outputs.shape[0]
        fine = shape == (B,) if not targets.is_floating_point() else shape == tuple(outputs.shape)
        if not fine:
            raise ShapeMismatchError(
                f"cross-entropy needs targets of shape ({B},) (class indices) or "
                f"{tuple(outputs.shape)} (probabilities) for logits {tuple(outputs.shape)}, got "
                f"{shape}"
            )


def output_hessian(
    likelihood: str | None,
    loss_fn: Callable[..., Any],
    outputs: torch.Tensor,
    targets: Any,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``u ↦ H_out u`` for one tangent ``u`` of the outputs' shape, ``H_out`` the Hessian of
    ``loss_fn(outputs, targets)`` with respect to the outputs: in closed form for the recognised
    losses (cross-entropy: ``(diag(p) − p pᵀ) / B`` per example; squared error: ``2 / numel``), by
    reverse over reverse through the loss otherwise (its linearisation is kept)."""
    outputs = outputs.detach()
    if likelihood == "categorical":  # (ignored targets fail the mean check: no example skipped)
        p = torch.softmax(outputs, dim=-1)
        B = outputs.shape[0]
        return lambda u: (p * u - p * (p * u).sum(-1, keepdim=True)) / B
    if likelihood == "gaussian":
        scale = 2.0 / outputs.numel()
        return lambda u: u * scale

    def gradient(o: torch.Tensor) -> torch.Tensor:
        return grad(lambda o: loss_fn(o, targets).reshape(()))(o)

    pullback = vjp(gradient, outputs)[1]
    return lambda u: pullback(u)[0]


def output_gradients(
    loss_fn: Callable[..., Any], outputs: torch.Tensor, targets: list[Any]
) -> torch.Tensor:
    """The per-example output gradients ``∂ℓᵢ/∂oᵢ`` (``B`` times those of the mean loss) at each
    set of targets, stacked ``(S, *outputs.shape)``."""
    B, outputs = outputs.shape[0], outputs.detach()
    return torch.stack(
        [B * grad(lambda o, t=t: loss_fn(o, t).reshape(()))(outputs) for t in targets]
    )


def output_hessian_sqrt(
    likelihood: str | None, loss_fn: Callable[..., Any], outputs: torch.Tensor, targets: Any
) -> torch.Tensor:
    """Columns ``U`` ``(K, *outputs.shape)`` of a square root of every example's output Hessian:
    ``Σ_k U[k, i] U[k, i]ᵀ = ∇²ℓᵢ`` at ``oᵢ``. Cross-entropy: ``diag(√p) − p √pᵀ`` (``K = C``);
    squared error: ``√(2/D) I`` (``K = D``); another loss of ``(B, C)`` outputs: from the
    eigendecomposition of its per-example Hessian (negative eigenvalues dropped)."""
    o = outputs.detach()
    if likelihood == "categorical":
        p = torch.softmax(o, dim=-1)
        eye = torch.eye(o.shape[1], dtype=o.dtype, device=o.device)
        return p.sqrt().T.unsqueeze(2) * (eye.unsqueeze(1) - p.unsqueeze(0))
    if likelihood == "gaussian":
        D = o[0].numel()
        eye = torch.eye(D, dtype=o.dtype, device=o.device).reshape(D, 1, *o.shape[1:])
        return math.sqrt(2.0 / D) * eye.expand(D, *o.shape)
    if o.ndim != 2 or not isinstance(targets, torch.Tensor):
        raise ShapeMismatchError(
            f"the output Hessian's square root of a loss other than cross-entropy or squared "
            f"error needs outputs (B, C) and tensor targets, got outputs {tuple(o.shape)}"
        )

    def one(oi: torch.Tensor, ti: torch.Tensor) -> torch.Tensor:
        return loss_fn(oi.unsqueeze(0), ti.unsqueeze(0)).reshape(())

    H = torch.func.vmap(torch.func.hessian(one))(o, targets)
    lam, V = torch.linalg.eigh((H + H.mT) / 2)
    return (V * lam.clamp_min(0).sqrt().unsqueeze(1)).permute(2, 0, 1)


def _example_keys(inputs: tuple[Any, ...], count: int, device: torch.device) -> torch.Tensor:
    """A 32-bit key per example (int64 in ``[0, 2³²)``) hashed from the bits of its inputs: the
    same example gets the same key in any batch, on any device."""
    key = torch.zeros(count, dtype=torch.int64, device=device)
    for t in inputs:
        if not isinstance(t, torch.Tensor) or t.ndim == 0 or t.shape[0] != count:
            continue
        flat = t.detach().reshape(count, -1)
        if flat.is_floating_point():
            bits = {8: torch.int64, 4: torch.int32, 2: torch.int16}[flat.element_size()]
            flat = flat.contiguous().view(bits)
        flat = flat.to(torch.int64)
        flat = (flat ^ (flat >> 32)) & M32
        position = fmix32(torch.arange(flat.shape[1], device=device, dtype=torch.int64))
        mixed = fmix32((flat + position) & M32).sum(dim=1) & M32
        key = fmix32((key * GOLDEN + mixed) & M32)
    return key


def _uniform(seed: int, keys: torch.Tensor, cols: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Uniform numbers in (0, 1), one per (example key, column), from the counter-based hash."""
    w = word(seed, keys.unsqueeze(1), cols.unsqueeze(0), stream=7)
    return ((w.to(torch.float64) + 0.5) / 2.0**32).to(dtype)


def sample_targets(
    likelihood: str, outputs: torch.Tensor, inputs: tuple[Any, ...], samples: int, seed: int
) -> torch.Tensor:
    """``samples`` targets per example drawn from the model's predictive distribution at
    ``outputs``, stacked ``(samples, *targets_shape)``: class indices from ``softmax(logits)``
    (categorical), or ``outputs + √(D/2) ε`` with ``D`` the outputs per example (Gaussian: the
    mean squared error over ``D`` outputs is the negative log-likelihood of ``N(outputs, D/2 · I)``
    up to a constant). The draws are a hash of ``(seed, the example's inputs, sample)``, so an
    example gets the same targets in any batch, and the operator at a batch is a fixed matrix."""
    outputs = outputs.detach()
    B = outputs.shape[0]
    keys = _example_keys(inputs, B, outputs.device)
    work = torch.float64 if outputs.dtype == torch.float64 else torch.float32
    if likelihood == "categorical":
        cols = torch.arange(samples, device=outputs.device)
        u = _uniform(seed, keys, cols, work)  # (B, S)
        cdf = torch.softmax(outputs.to(work), dim=-1).cumsum(-1)
        cdf = cdf / cdf[:, -1:]
        classes = torch.searchsorted(cdf, u.contiguous()).clamp_(max=outputs.shape[1] - 1)
        return classes.T.contiguous()  # (S, B)
    D = outputs[0].numel()
    cols = torch.arange(2 * samples * D, device=outputs.device)
    u = _uniform(seed, keys, cols, work).reshape(B, samples, 2, D)
    eps = torch.sqrt(-2 * torch.log(u[:, :, 0])) * torch.cos(2 * math.pi * u[:, :, 1])
    eps = eps.transpose(0, 1).reshape(samples, *outputs.shape).to(outputs.dtype)
    return outputs.unsqueeze(0) + math.sqrt(D / 2) * eps
