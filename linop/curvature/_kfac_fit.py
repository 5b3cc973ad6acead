"""The passes over the data that fit K-FAC's factors and EK-FAC's eigenvalues (see
`linop.curvature.kfac` for the definitions): one forward pass per batch with the layers' inputs
and outputs captured, one backward pass per output cotangent, sums all-reduced over the data
source once per pass."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from tqdm.auto import tqdm

from linop._checks import positive_int
from linop._checks import seed as check_seed
from linop.curvature._kfac_layers import Capture, KroneckerEigen, KroneckerLayer, kfac_layers
from linop.curvature._likelihood import (
    LIKELIHOODS,
    output_gradients,
    output_hessian_sqrt,
    sample_targets,
)
from linop.curvature._module import ModuleLoss, module_point, one_batch
from linop.data import as_source
from linop.errors import NonFiniteError

__all__ = ["KFAC_KINDS", "Fit"]

#: The kinds of output cotangents K-FAC and EK-FAC are built from.
KFAC_KINDS = ("mc", "empirical", "type2")

#: Elements of the per-example gradient matrices EK-FAC holds at once, per layer.
_EKFAC_CHUNK_ELEMENTS = 2**24


@dataclass
class Fit:
    """The passes over the data that fit the factors and the eigenvalue corrections."""

    model: torch.nn.Module
    loss: ModuleLoss
    params: dict[str, torch.Tensor]
    layers: list[KroneckerLayer]
    names: list[str]
    source: Any
    kind: str
    mc_samples: int
    seed: int
    likelihood: str | None
    progress: bool

    @property
    def dtype(self) -> torch.dtype:
        return next(iter(self.params.values())).dtype

    @classmethod
    def build(
        cls, model: Any, loss_fn: Any, data: Any, kind: str, mc_samples: int, seed: int,
        likelihood: str | None, modules: Any, transposed: Sequence[type], progress: bool,
        batch_size_of: Any, process_group: Any, timeout: float,
    ) -> Fit:  # fmt: skip
        from linop.curvature.ggn import GGNOperator  # the checks of the loss and the batch

        if kind not in KFAC_KINDS:
            raise ValueError(f"unknown kind {kind!r}; valid kinds are {KFAC_KINDS}")
        positive_int("mc_samples", mc_samples, allow_none=False)
        seed = check_seed(seed)
        params, buffers = module_point(model)
        layers, names = kfac_layers(model, params, modules, transposed)
        if not layers:
            raise ValueError(
                "no layer to factor: K-FAC needs at least one nn.Linear, nn.Conv2d or "
                "transposed linear layer with a trainable weight"
            )
        loss = ModuleLoss(model, loss_fn, buffers)
        source = as_source(
            [data] if one_batch(data) else data,
            examples_in=batch_size_of,
            process_group=process_group,
            timeout=timeout,
        )
        first = next(iter(source), None)
        if first is None:
            raise ValueError("the dataset has no batches")
        probe = GGNOperator(loss.outputs, loss_fn, params, first, likelihood=likelihood)
        if kind == "mc" and probe.likelihood is None:
            raise ValueError(
                f"kind='mc' samples targets from the model's predictive distribution, known "
                f"only for {'; '.join(f'{k}: {v}' for k, v in LIKELIHOODS.items())}; got "
                f"{loss_fn!r}: pass likelihood=..., or use kind='type2' or 'empirical'"
            )
        return cls(
            model, loss, params, layers, names, source, kind, mc_samples, seed,
            probe.likelihood, progress,
        )  # fmt: skip

    def _passes(self, desc: str) -> Iterable[tuple[int, dict[str, torch.Tensor], list[Any]]]:
        """For each batch: its example count, each layer's input rows, and for every output
        cotangent, each layer's output-gradient rows."""
        live = {k: p.detach().requires_grad_(k in self.names) for k, p in self.params.items()}
        batches = tqdm(
            self.source, total=self.source.num_batches(), desc=desc, disable=not self.progress,
            leave=False,
        )  # fmt: skip
        for batch in batches:
            X, y = batch[0], batch[-1]
            with Capture(self.layers) as cap, torch.enable_grad():
                out = self.loss.outputs(live, X)
            U = self._cotangents(out.detach(), X, y)
            targets = [cap.outputs[layer.name] for layer in self.layers]
            rows = {layer.name: layer.input_rows(cap.inputs[layer.name]) for layer in self.layers}
            grads = []
            for k in range(U.shape[0]):
                g = torch.autograd.grad(out, targets, U[k], retain_graph=k < U.shape[0] - 1)
                grads.append([ly.output_rows(t) for ly, t in zip(self.layers, g, strict=True)])
            yield self.source.examples_in(batch), rows, grads

    def _cotangents(self, out: torch.Tensor, X: Any, y: Any) -> torch.Tensor:
        fn = self.loss.loss_fn
        if self.kind == "type2":
            return output_hessian_sqrt(self.likelihood, fn, out, y)
        if self.kind == "empirical":
            return output_gradients(fn, out, [y])
        assert self.likelihood is not None
        sampled = sample_targets(self.likelihood, out, (X,), self.mc_samples, self.seed)
        return output_gradients(fn, out, list(sampled))

    def _reduce(
        self, sums: list[torch.Tensor], labels: list[str], count: int, what: str
    ) -> list[torch.Tensor]:
        """The sums all-reduced over the source (one collective) and divided by the example
        count; ``labels`` name the layer of each, for the error on non-finite entries."""
        flat, count = self.source.reduce(torch.cat([s.reshape(-1) for s in sums]), count)
        if count == 0:
            raise ValueError("the dataset has no examples")
        flat = flat / count
        out, start = [], 0
        for s, label in zip(sums, labels, strict=True):
            piece = flat[start : start + s.numel()].reshape(s.shape)
            if not bool(torch.isfinite(piece).all()):
                raise NonFiniteError(
                    f"the {what} of layer {label!r} have NaN or infinite entries: some input "
                    f"of the data, or the model or the loss at the point, is not finite"
                )
            out.append(piece)
            start += s.numel()
        return out

    def _acc(self) -> torch.dtype:
        return torch.float64 if self.dtype == torch.float64 else torch.float32

    def kronecker(self) -> list[KroneckerEigen]:
        """One pass: the factors ``A`` and ``G`` of every layer, and their eigendecompositions."""
        acc, weight = self._acc(), self._weight()
        sums: list[torch.Tensor] | None = None  # A, G of the first layer, A, G of the second, ...
        count = 0
        for nb, rows, grads in self._passes("K-FAC factors"):
            batch = []
            for i, layer in enumerate(self.layers):
                a = rows[layer.name].to(acc)
                g = torch.cat([gk[i].to(acc).flatten(0, 1) for gk in grads])
                batch += [a.flatten(0, 1).T @ a.flatten(0, 1) / a.shape[1], g.T @ g / weight]
            sums = batch if sums is None else [s + b for s, b in zip(sums, batch, strict=True)]
            count += nb
        assert sums is not None
        labels = [layer.name or "<model>" for layer in self.layers for _ in range(2)]
        reduced = self._reduce(sums, labels, count, "K-FAC factors")
        blocks = []
        for i, layer in enumerate(self.layers):
            A, G = reduced[2 * i].double(), reduced[2 * i + 1].double()
            lA, QA = torch.linalg.eigh((A + A.T) / 2)
            lG, QG = torch.linalg.eigh((G + G.T) / 2)
            values = torch.outer(lG.clamp_min(0), lA.clamp_min(0))
            blocks.append(KroneckerEigen(layer, A, G, QA, QG, values))
        return blocks

    def _weight(self) -> int:
        """The output cotangents per example that the sums over ``k`` average: the samples."""
        return self.mc_samples if self.kind == "mc" else 1

    def corrected(self, blocks: list[KroneckerEigen]) -> list[KroneckerEigen]:
        """A second pass: the eigenvalues refitted to the per-example gradients projected into
        each block's eigenbasis."""
        acc = self._acc()
        Q = [(b.QG.to(acc), b.QA.to(acc)) for b in blocks]
        sums = [torch.zeros_like(b.values, dtype=acc) for b in blocks]
        count = 0
        for nb, rows, grads in self._passes("EK-FAC eigenvalues"):
            for i, layer in enumerate(self.layers):
                QG, QA = Q[i]
                a = rows[layer.name].to(acc) @ QA  # (B, R, in')
                step = max(1, _EKFAC_CHUNK_ELEMENTS // max(1, sums[i].numel()))
                for gk in grads:
                    g = gk[i].to(acc) @ QG  # (B, R, out)
                    if g.shape[1] == 1:  # no weight sharing: (g ⊗ a)² = g² ⊗ a², one product
                        sums[i] += g[:, 0].square().T @ a[:, 0].square()
                        continue
                    for s in range(0, g.shape[0], step):
                        M = torch.einsum("bro,bri->boi", g[s : s + step], a[s : s + step])
                        sums[i] += M.square().sum(0)
            count += nb
        labels = [layer.name or "<model>" for layer in self.layers]
        weight = self._weight()
        reduced = self._reduce([s / weight for s in sums], labels, count, "EK-FAC eigenvalues")
        return [replace(b, values=v.double()) for b, v in zip(blocks, reduced, strict=True)]
