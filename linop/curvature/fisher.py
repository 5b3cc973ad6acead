"""The Fisher information of a model's predictive distribution at one batch, as a
[`LinearOperator`][linop.LinearOperator]: the empirical Fisher ``(1/N) Σᵢ ∇ℓᵢ ∇ℓᵢᵀ`` (``ℓᵢ`` the
loss of example ``i`` at its own target) or its Monte-Carlo form at targets sampled from the model.

With ``J`` the Jacobian of the outputs and ``rᵢ = ∂ℓᵢ/∂oᵢ`` the output gradient of example ``i``,
``∇ℓᵢ = Jᵢᵀ rᵢ``, so the Fisher is ``Jᵀ M J`` with ``M`` block diagonal, ``rᵢ rᵢᵀ / N``: products
cost what a Gauss-Newton product costs (one linearised forward and one backward pass), with no
per-example gradients. Materialising (``to_dense``) uses per-example gradients in chunks.

``kind="mc"`` samples ``mc_samples`` targets per example from the model's predictive
distribution (categorical for cross-entropy, Gaussian for squared error); in expectation over the
samples it equals the Gauss-Newton matrix ([`GGNOperator`][linop.GGNOperator]). The samples are a
hash of the seed and each example's inputs: the operator is a fixed matrix, the same example gets
the same samples in every batch, and a seed reproduces them on any device.

Example:
    >>> import torch
    >>> from linop import FisherOperator
    >>> model = lambda w, X: X @ w.reshape(3, 2)
    >>> X, y = torch.randn(8, 3, dtype=torch.float64), torch.randint(0, 2, (8,))
    >>> w = torch.zeros(6, dtype=torch.float64)
    >>> F = FisherOperator(model, torch.nn.CrossEntropyLoss(), w, (X, y))
    >>> G = torch.func.vmap(torch.func.grad(
    ...     lambda w, x, t: torch.nn.functional.cross_entropy(model(w, x[None]), t[None])),
    ...     in_dims=(None, 0, 0))(w, X, y)
    >>> torch.allclose(F.to_dense(), G.T @ G / 8)
    True
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from linop._checks import positive_int
from linop._checks import seed as check_seed
from linop.curvature._likelihood import (
    LIKELIHOODS,
    likelihood_of,
    output_gradients,
    sample_targets,
)
from linop.curvature._output import Linear, OutputCurvature
from linop.curvature.gradients import gradient_chunks
from linop.data import leading_size
from linop.flat import Tree

__all__ = ["FisherOperator", "KINDS"]

#: The kinds of Fisher a FisherOperator computes.
KINDS = ("empirical", "mc")


class _ExampleLoss:
    """``loss_fn(output_fn(*args[:-1]), args[-1])``: the loss as one function of the model's
    inputs (the parameters among them) and the targets, last."""

    def __init__(self, output_fn: Callable[..., Any], loss_fn: Callable[..., Any]) -> None:
        self.output_fn, self.loss_fn = output_fn, loss_fn

    def __call__(self, *args: Any) -> torch.Tensor:
        return self.loss_fn(self.output_fn(*args[:-1]), args[-1])


class FisherOperator(OutputCurvature):
    """The Fisher ``(1/N) Σᵢ ∇ℓᵢ ∇ℓᵢᵀ`` of ``loss_fn(output_fn(params, X), y)`` at one batch.

    Args:
        output_fn: the model as a function, ``output_fn(params, *inputs) -> outputs``, the
            examples along the outputs' first dimension.
        loss_fn: ``loss_fn(outputs, targets)``, the *mean* over the batch of a loss per example
            (checked), ``ℓᵢ = loss_fn(outputs[i:i+1], targets[i:i+1])``.
        params: the point (a tensor or a dict of tensors); copied (a snapshot).
        batch: ``(*inputs, targets)``, a tuple or list.
        argnums: where ``params`` goes among ``output_fn``'s inputs.
        kind: ``"empirical"`` (the targets of the data) or ``"mc"`` (targets sampled from the
            model's predictive distribution).
        mc_samples: targets sampled per example (``kind="mc"``).
        seed: the seed of the samples (``kind="mc"``), in ``[0, 2**63)``.
        likelihood: the predictive distribution, ``"categorical"`` or ``"gaussian"`` (default:
            recognised from ``loss_fn``: cross-entropy is categorical, mean squared error over
            ``D`` outputs the Gaussian ``N(outputs, D/2 · I)`` whose negative log-likelihood it
            is); give it for a loss written as a lambda.
        gradient_chunk: examples whose gradients are held at once when materialising
            (``to_dense``), bounding that memory (default: 256 MiB of gradients).
        chunk_size: columns per vmapped product (default: learned on a CPU).
        vectorize: apply the columns with vmap (True) or one by one (False).
        cache: linearise the model once and keep the pullback (see
            [`GGNOperator`][linop.GGNOperator]).

    Tagged psd. ``from_batches``, ``from_data`` and ``from_module`` build the dataset mean as
    for [`GGNOperator`][linop.GGNOperator] (each example's samples do not depend on the batching).

    Raises:
        ValueError: an unknown kind or likelihood; ``kind="mc"`` on a loss with no known
            likelihood; a loss that is not the mean of per-example losses; bad mc_samples or seed.
        ShapeMismatchError: outputs without the examples first, or targets of the wrong shape.
    """

    _transient = ("_state", "_sampled")

    def __init__(
        self,
        output_fn: Callable[..., torch.Tensor],
        loss_fn: Callable[..., torch.Tensor],
        params: Tree,
        batch: Any,
        argnums: int = 0,
        *,
        kind: str = "empirical",
        mc_samples: int = 1,
        seed: int = 0,
        likelihood: str | None = None,
        gradient_chunk: int | None = None,
        chunk_size: int | None = None,
        vectorize: bool | None = None,
        cache: bool = True,
    ) -> None:
        if kind not in KINDS:
            raise ValueError(
                f"unknown kind {kind!r}; valid kinds are {', '.join(map(repr, KINDS))}"
            )
        if likelihood is not None and likelihood not in LIKELIHOODS:
            raise ValueError(
                f"unknown likelihood {likelihood!r}; valid ones are "
                f"{', '.join(map(repr, LIKELIHOODS))}"
            )
        positive_int("mc_samples", mc_samples, allow_none=False)
        positive_int("gradient_chunk", gradient_chunk)
        self.seed = check_seed(seed)
        likelihood = likelihood or likelihood_of(loss_fn)
        if kind == "mc" and likelihood is None:
            known = "; ".join(f"{k}: {v}" for k, v in LIKELIHOODS.items())
            raise ValueError(
                f"kind='mc' samples targets from the model's predictive distribution, which is "
                f"known only for {known}. Got {loss_fn!r}: pass likelihood='categorical' or "
                f"'gaussian' if it is one of these, or use kind='empirical' or GGNOperator"
            )
        self.kind, self.mc_samples, self.gradient_chunk = kind, int(mc_samples), gradient_chunk
        super().__init__(
            output_fn,
            loss_fn,
            params,
            batch,
            argnums,
            chunk_size=chunk_size,
            vectorize=vectorize,
            cache=cache,
            likelihood=likelihood,
        )

    def sampled_targets(self, outputs: torch.Tensor | None = None) -> list[Any]:
        """The targets the Fisher is taken at: the batch's own (``"empirical"``), or the
        ``mc_samples`` drawn from the model's predictive distribution at the point (``"mc"``)."""
        if self.kind == "empirical":
            return [self.targets]
        cached = self.__dict__.get("_sampled")
        if cached is None:
            if outputs is None:
                with torch.no_grad():
                    outputs = self.outputs(self.params)
            assert self.likelihood is not None
            cached = list(
                sample_targets(self.likelihood, outputs, self.inputs, self.mc_samples, self.seed)
            )
            self._sampled = cached
        return cached

    def _output_operator(self, outputs: torch.Tensor) -> Linear:
        B = outputs.shape[0]
        R = output_gradients(self.loss_fn, outputs, self.sampled_targets(outputs))
        dims, scale = tuple(range(2, R.ndim)), 1.0 / (B * R.shape[0])

        def middle(u: torch.Tensor) -> torch.Tensor:
            return (R * (R * u).sum(dims, keepdim=True)).sum(0) * scale

        return middle

    def _to_dense(self, chunk_size: int | None) -> torch.Tensor:
        """``Σ gᵢ gᵢᵀ / (N S)`` from the per-example gradients, ``gradient_chunk`` examples at a
        time."""
        n, B = self.shape[0], leading_size(self.inputs)
        dense = torch.zeros(n, n, dtype=self.dtype, device=self.device)
        func = _ExampleLoss(self.output_fn, self.loss_fn)
        in_dims = tuple(
            0 if isinstance(x, torch.Tensor) and x.ndim and x.shape[0] == B else None
            for x in self.inputs
        )
        targets = self.sampled_targets()
        for t in targets:
            batch = (*self.inputs, t)
            dims = (*in_dims, 0 if isinstance(t, torch.Tensor) and t.ndim else None)
            for G in gradient_chunks(
                func, self.spec, self.params, batch, self.argnums, dims, self.gradient_chunk
            ):
                dense.addmm_(G.T, G)
        return dense / (B * len(targets))

    def _repr_args(self) -> str:
        extra = f", mc_samples={self.mc_samples}, seed={self.seed}" if self.kind == "mc" else ""
        return f"kind={self.kind!r}{extra}, likelihood={self.likelihood}"
