"""Models and dense float64 ground truth for the Gauss-Newton and Fisher tests: ``Jᵀ H_out J`` from
full Jacobians (``torch.func.jacrev``) and output Hessians (``torch.func.hessian``), and the
empirical Fisher from explicit per-example outer products."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, hessian, jacrev, vmap

from linop.flat import FlatSpec

D64 = torch.float64


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def mlp(d: int = 4, h: int = 5, c: int = 3, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(d, h), torch.nn.Tanh(), torch.nn.Linear(h, h), torch.nn.Tanh(),
        torch.nn.Linear(h, c),
    ).to(D64)  # fmt: skip


def cnn(seed: int = 0) -> torch.nn.Module:
    """A small CNN on (B, 1, 5, 5) images, 3 classes."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 2, 3), torch.nn.Tanh(), torch.nn.Flatten(), torch.nn.Linear(18, 3),
    ).to(D64)  # fmt: skip


def params_of(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: p.detach().clone() for k, p in model.named_parameters()}


def outputs_fn(model: torch.nn.Module) -> Callable[..., torch.Tensor]:
    return lambda p, X: functional_call(model, p, (X,))


def dense_ggn(
    output_fn: Callable[..., torch.Tensor], loss_fn: Callable[..., Any], params: Any, X: Any, y: Any
) -> torch.Tensor:
    """``Jᵀ H_out J`` with the full Jacobian of the outputs and the full output Hessian."""
    spec = FlatSpec.of(params)
    theta = spec.flatten(params).detach()

    def f(t: torch.Tensor) -> torch.Tensor:
        return output_fn(spec.unflatten(t), X)

    out = f(theta)
    J = jacrev(f)(theta).reshape(out.numel(), -1)
    H = hessian(lambda o: loss_fn(o, y))(out).reshape(out.numel(), out.numel())
    return J.T @ H @ J


def dense_empirical_fisher(
    output_fn: Callable[..., torch.Tensor], loss_fn: Callable[..., Any], params: Any, X: Any, y: Any
) -> torch.Tensor:
    """``(1/N) Σᵢ gᵢ gᵢᵀ``, ``gᵢ`` the gradient of example ``i``'s loss, one example at a time."""
    spec = FlatSpec.of(params)
    theta = spec.flatten(params).detach()
    rows = []
    for i in range(len(X)):
        g = grad(lambda t, i=i: loss_fn(output_fn(spec.unflatten(t), X[i : i + 1]), y[i : i + 1]))
        rows.append(g(theta))
    G = torch.stack(rows)
    return G.T @ G / len(X)


def classification(n: int = 9, d: int = 4, c: int = 3, seed: int = 0) -> tuple[Any, Any]:
    g = gen(seed)
    return torch.randn(n, d, dtype=D64, generator=g), torch.randint(0, c, (n,), generator=g)


def per_example_grads_loop(func: Callable[..., Any], theta: torch.Tensor, X: Any, y: Any) -> Any:
    """Per-example gradients of ``func(theta, X[i:i+1], y[i:i+1])`` by vmap over examples."""
    return vmap(grad(lambda t, x, t_: func(t, x[None], t_[None])), in_dims=(None, 0, 0))(
        theta, X, y
    )


LOSSES: dict[str, Callable[..., Any]] = {
    "cross_entropy": torch.nn.CrossEntropyLoss(),
    "F.cross_entropy": F.cross_entropy,
    "mse": torch.nn.MSELoss(),
    "quartic (autodiff)": lambda o, t: ((o - t) ** 4).mean(),
    "cross_entropy with smoothing (autodiff)": torch.nn.CrossEntropyLoss(label_smoothing=0.1),
}


def targets_for(name: str, n: int, c: int, seed: int = 1) -> torch.Tensor:
    g = gen(seed)
    if "cross" in name:
        return torch.randint(0, c, (n,), generator=g)
    return torch.randn(n, c, dtype=D64, generator=g)
