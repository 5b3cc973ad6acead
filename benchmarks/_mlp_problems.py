"""Two trained MLP classifiers and their test gradients, for the many-right-hand-side and the
estimator benchmarks (:mod:`benchmarks.many_rhs`, :mod:`benchmarks.estimators`).

- ``digits``: a tanh MLP 64-128-10 (9,610 parameters) on sklearn's bundled digits (standardised;
  1,200 training points, test points from the rest), trained in float64 by full-batch Adam
  (lr 1e-2, weight decay 1e-4, 300 steps).
- ``teacher``: a tanh MLP 784-256-10 (203,530 parameters) on a synthetic teacher problem: inputs
  ``N(0, I)`` in 784 dimensions, labels the arg-max of a random teacher MLP of the same shape
  plus Gumbel noise (so the data are not separable), trained the same way (200 steps).

Everything is float64 and seeded; a problem is a plain dict of tensors (``save``/``load`` write
it to a file, for the reference libraries' subprocesses) from which :func:`build_model` rebuilds
the trained ``nn.Module``. The right-hand sides are the loss gradients of test points, flattened
in ``model.named_parameters()`` order (the order of every library measured).

Example:
    >>> p = make_problem("digits", num_rhs=2, num_train=100, steps=5)
    >>> p["rhs"].shape, p["X"].shape
    (torch.Size([9610, 2]), torch.Size([100, 64]))
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.func import functional_call, grad, vmap

SIZES = {"digits": (64, 128, 10), "teacher": (784, 256, 10)}


def build_model(sizes: tuple[int, int, int], state: dict[str, torch.Tensor] | None = None) -> Any:
    """``Linear(d, h) → tanh → Linear(h, c)`` in float64 (with ``state`` loaded if given)."""
    d, h, c = sizes
    model = torch.nn.Sequential(torch.nn.Linear(d, h), torch.nn.Tanh(), torch.nn.Linear(h, c))
    model = model.double()
    if state is not None:
        model.load_state_dict(state)
    return model


def _data(name: str, num_train: int, num_test: int) -> tuple[torch.Tensor, ...]:
    if name == "digits":
        from benchmarks._digits import load_split

        s = load_split(num_train, num_test, seed=0)
        return s.X_train, s.y_train, s.X_test, s.y_test
    g = torch.Generator().manual_seed(1)
    teacher = build_model(SIZES["teacher"])
    with torch.no_grad():
        for p in teacher.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) / p.shape[-1] ** 0.5)
        p.mul_(3.0)  # the output layer: logits of a useful spread
        X = torch.randn(num_train + num_test, 784, generator=g, dtype=torch.float64)
        gumbel = -torch.log(-torch.log(torch.rand(len(X), 10, generator=g, dtype=torch.float64)))
        y = (teacher(X) + gumbel).argmax(1)
    return X[:num_train], y[:num_train], X[num_train:], y[num_train:]


def make_problem(
    name: str,
    num_rhs: int = 100,
    num_train: int | None = None,
    steps: int | None = None,
    hidden: int | None = None,
) -> dict[str, Any]:
    """Train the model of problem ``name`` and return the problem as a dict (``num_train``,
    ``steps`` and the ``hidden`` width default to the problem's own; smaller ones make the quick
    configurations of the benchmarks).

    Keys: ``name``, ``sizes``, ``state`` (the trained ``state_dict``), ``X``, ``y`` (the
    training data), ``rhs`` ``(n_params, num_rhs)`` (the test-loss gradients), ``train_loss``.
    """
    if name not in SIZES:
        raise ValueError(f"unknown problem {name!r}; use one of {sorted(SIZES)}")
    default_train = 1200 if name == "digits" else 1000
    num_train = num_train or default_train
    X, y, X_test, y_test = _data(name, num_train, num_rhs)
    d, h, c = SIZES[name]
    sizes = (d, hidden or h, c)
    torch.manual_seed(0)
    model = build_model(sizes)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-4)
    loss_fn = torch.nn.functional.cross_entropy
    for _ in range(steps if steps is not None else (300 if name == "digits" else 200)):
        opt.zero_grad()
        loss = loss_fn(model(X), y)
        loss.backward()
        opt.step()
    params = {k: v.detach() for k, v in model.named_parameters()}

    def example_loss(p: dict[str, torch.Tensor], x: torch.Tensor, t: torch.Tensor) -> Any:
        return loss_fn(functional_call(model, p, (x[None],)), t[None])

    grads = vmap(grad(example_loss), in_dims=(None, 0, 0))(params, X_test, y_test)
    rhs = torch.cat([g.reshape(num_rhs, -1) for g in grads.values()], dim=1).T.contiguous()
    with torch.no_grad():
        train_loss = float(loss_fn(model(X), y))
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return {
        "name": name,
        "sizes": sizes,
        "state": state,
        "X": X,
        "y": y,
        "rhs": rhs,
        "train_loss": train_loss,
    }


def save(problem: dict[str, Any], path: str | Path) -> None:
    """Write a problem (and anything added to it, e.g. a reference solution) to ``path``."""
    torch.save(problem, path)


def load(path: str | Path) -> dict[str, Any]:
    """Read a problem written by :func:`save`."""
    return torch.load(path, weights_only=False)
