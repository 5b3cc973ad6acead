"""K-FAC and EK-FAC: Kronecker-factored curvature of a network, with exact eigendecompositions.

For a layer with gradient matrix ``W̃ = [W | b]`` ``(out, in + 1)``, the Gauss-Newton (or Fisher)
block of example ``n`` is ``Σ_k Σ_{r,s} (g_{kr} g_{ks}ᵀ) ⊗ (ã_r ã_sᵀ)``, with ``ã_r`` the layer's
input at weight-sharing location ``r`` (a trailing 1 for the bias) and ``g_{kr}`` the gradient
of the layer's output there along output cotangent ``k``. K-FAC keeps one Kronecker product
per layer (Martens and Grosse, 2015), block-diagonal over layers:

    G ⊗ A,   A = (1/N) Σ_n (1/R) Σ_r ã_r ã_rᵀ,   G = (1/(N S)) Σ_n Σ_k Σ_r g_{kr} g_{kr}ᵀ

in the row-major order of ``W̃`` (``vec(W̃)`` runs along rows). Weight sharing (the ``R``
locations of a convolution or of extra leading dimensions) follows the "expand" setting of
Eschenhagen et al. (2023): locations count as examples, with ``A`` averaged and ``G`` summed
over them. The bias is factored jointly with the weight (homogeneous coordinates). The output
cotangents ``k`` depend on ``kind``:

- ``"type2"``: the columns of the exact square root of each example's output Hessian, so that
  ``Σ_k`` reproduces each example's Gauss-Newton term exactly, with no sampling (``S = 1``; one
  backward pass per output, e.g. per class, and batch);
- ``"mc"``: the output gradients at ``mc_samples = S`` targets sampled from the model's
  predictive distribution (an unbiased estimate of the same matrix);
- ``"empirical"``: the output gradients at the data's own targets (the empirical Fisher).

EK-FAC (George et al., 2018) keeps K-FAC's eigenbasis ``Q_G ⊗ Q_A`` and refits the eigenvalues
to the second moments of the per-example gradients projected into it,
``Λ = (1/(N S)) Σ_n Σ_k (Q_Gᵀ ∇_{W̃}ℓ_{nk} Q_A)²`` (one more pass over the data): the diagonal,
in that basis, of the matrix K-FAC approximates.

Both operators store each block as ``(Q_G ⊗ Q_A) diag(Λ) (Q_G ⊗ Q_A)ᵀ`` (eigendecompositions in
float64): products cost a few small matrix products per layer, ``eigh`` is exact, and
``(K + λI).inverse()`` is the exact inverse ``(Q_G ⊗ Q_A) diag(1/(Λ + λ)) (Q_G ⊗ Q_A)ᵀ``
(method ``"eigen"``), with no iterations: the preconditioner of CG on the Hessian or the GGN.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from tqdm.auto import tqdm

from linop._checks import positive_int
from linop._checks import seed as check_seed
from linop.curvature._kfac_layers import Capture, KroneckerLayer, kfac_layers
from linop.curvature._likelihood import (
    LIKELIHOODS,
    output_gradients,
    output_hessian_sqrt,
    sample_targets,
)
from linop.curvature._module import ModuleLoss, module_point, one_batch
from linop.data import as_source
from linop.distributed import DEFAULT_TIMEOUT_SECONDS
from linop.errors import NonFiniteError
from linop.operator import LinearOperator
from linop.structured import LowRankOperator
from linop.tags import Tags

__all__ = ["EKFACOperator", "KFAC_KINDS", "KFACOperator"]

#: The kinds of output cotangents K-FAC and EK-FAC are built from.
KFAC_KINDS = ("mc", "empirical", "type2")

#: Elements of the per-example gradient matrices EK-FAC holds at once, per layer.
_EKFAC_CHUNK_ELEMENTS = 2**24


@dataclass(frozen=True)
class KroneckerEigen:
    """One layer's block ``(Q_G ⊗ Q_A) diag(Λ) (Q_G ⊗ Q_A)ᵀ``, all in float64.

    Attributes:
        layer: the layer and its parameters' positions.
        A, G: the Kronecker factors (input and output-gradient covariances).
        QA, QG: their eigenvectors (columns).
        values: the eigenvalues ``Λ`` ``(out, in')`` of the block (K-FAC: ``λ_G λ_Aᵀ``).
    """

    layer: KroneckerLayer
    A: torch.Tensor
    G: torch.Tensor
    QA: torch.Tensor
    QG: torch.Tensor
    values: torch.Tensor


class KFACOperator(LinearOperator):
    """K-FAC: the block-diagonal Kronecker-factored Gauss-Newton or Fisher of a network (see the
    module's docstring for the definitions and conventions). Build it with
    [`from_module`][linop.KFACOperator.from_module].

    Attributes:
        blocks: one [`KroneckerEigen`][linop.curvature.kfac.KroneckerEigen] per layer.
        names: the parameters the operator covers, in the order of the flat vector.
        kind: ``"mc"``, ``"empirical"`` or ``"type2"``.

    Tagged psd. ``K.eigh(k)`` gives exact eigenpairs; ``(K + λI).inverse()`` the exact
    damped inverse ([`EigenOptions`][linop.EigenOptions]).
    """

    def __init__(
        self, blocks: Sequence[KroneckerEigen], names: Sequence[str], dtype: torch.dtype, kind: str
    ) -> None:
        n = sum(b.layer.shape[0] * b.layer.shape[1] for b in blocks)
        device = blocks[0].values.device
        super().__init__((n, n), dtype, device, Tags(symmetric=True, psd=True))
        self.blocks = list(blocks)
        self.names = list(names)
        self.kind = kind
        self._cast = [(b.QG.to(dtype), b.QA.to(dtype), b.values.to(dtype)) for b in blocks]
        self._factors = [(b.G.to(dtype), b.A.to(dtype)) for b in blocks]

    # ------------------------------------------------------------------ products
    def _apply(self, V: torch.Tensor, values: Sequence[torch.Tensor]) -> torch.Tensor:
        out = torch.empty_like(V)
        for block, (QG, QA, _), D in zip(self.blocks, self._cast, values, strict=True):
            X = block.layer.gather(V)
            Y = QG @ ((QG.T @ X @ QA) * D) @ QA.T
            block.layer.scatter(Y, out)
        return out

    def _matmat(self, X: torch.Tensor) -> torch.Tensor:
        if type(self) is not KFACOperator:  # refitted eigenvalues: the eigenbasis form
            return self._apply(X, [c[2] for c in self._cast])
        out = torch.empty_like(X)  # K-FAC's own blocks: (G ⊗ A) vec(W̃) = vec(G W̃ A), cheaper
        for block, (G, A) in zip(self.blocks, self._factors, strict=True):
            block.layer.scatter(G @ block.layer.gather(X) @ A, out)
        return out

    def eigenvalues(self) -> torch.Tensor:
        """All ``n`` eigenvalues, block by block (float64, unsorted)."""
        return torch.cat([b.values.reshape(-1) for b in self.blocks])

    def spectral(self, f: Callable[[torch.Tensor], torch.Tensor]) -> LinearOperator:
        """The operator ``Q f(Λ) Qᵀ`` (same eigenvectors, eigenvalues mapped by ``f`` in
        float64): ``f = lambda s: 1 / (s + lam)`` is the inverse of ``K + λI``."""
        return _Spectral(self, [f(b.values).to(self.dtype) for b in self.blocks])

    def eigh(self, k: int, **options: Any) -> LowRankOperator:
        """The exact top-``k`` eigenpairs as a [`LowRankOperator`][linop.LowRankOperator]
        ``V diag(θ) Vᵀ`` (``which="smallest"`` for the bottom ones)."""
        which = options.pop("which", "largest")
        if options or which not in ("largest", "smallest"):
            raise TypeError(
                f"{type(self).__name__}.eigh takes k and which='largest'|'smallest', got "
                f"{sorted(options) or which!r}"
            )
        positive_int("k", k, allow_none=False)
        k = min(int(k), self.shape[0])
        values = self.eigenvalues()
        top = torch.topk(values, k, largest=which == "largest").indices
        V = torch.zeros(self.shape[0], k, dtype=torch.float64, device=self.device)
        start = 0
        for block in self.blocks:
            size = block.values.numel()
            mine = (top >= start) & (top < start + size)
            cols, flat = mine.nonzero().flatten(), top[mine] - start
            i, j = flat // block.values.shape[1], flat % block.values.shape[1]
            M = block.QG[:, i].T.unsqueeze(2) * block.QA[:, j].T.unsqueeze(1)  # outer products
            part = torch.zeros(self.shape[0], cols.numel(), dtype=torch.float64, device=V.device)
            block.layer.scatter(M, part)
            V[:, cols] = part
            start += size
        return LowRankOperator(V.to(self.dtype), values[top].to(self.dtype))

    def factors(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """The Kronecker factors ``(A, G)`` of each layer, by module name (float64)."""
        return {b.layer.name: (b.A, b.G) for b in self.blocks}

    def _repr_args(self) -> str:
        return f"kind={self.kind!r}, layers={[b.layer.name for b in self.blocks]}"

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_module(
        cls,
        model: torch.nn.Module,
        loss_fn: Callable[[torch.Tensor, Any], torch.Tensor],
        data: Any,
        *,
        kind: str = "mc",
        mc_samples: int = 1,
        seed: int = 0,
        likelihood: str | None = None,
        modules: Iterable[str] | None = None,
        transposed: Sequence[type] = (),
        progress: bool = False,
        batch_size_of: Callable[[tuple[Any, ...]], int] | None = None,
        process_group: Any = None,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
    ) -> Any:
        """K-FAC of ``loss_fn(model(X), y)`` over ``data``, with respect to the trainable
        parameters of ``model``'s supported layers (as ``named_parameters``; both copied).

        Args:
            model: the network, in eval mode if it has dropout or batch norm.
            loss_fn: ``loss_fn(outputs, targets)``, the mean over the batch of a loss per
                example (cross-entropy and squared error are recognised).
            data: one batch ``(X, y)``, an iterable of batches (a DataLoader, a list) or a
                data source (`linop.data`).
            kind: ``"mc"`` (default), ``"empirical"`` or ``"type2"`` (see the module).
            mc_samples: targets sampled per example (``kind="mc"``).
            seed: the seed of the samples, in ``[0, 2**63)``; an example gets the same samples
                in any batch (as [`FisherOperator`][linop.FisherOperator]).
            likelihood: ``"categorical"`` or ``"gaussian"`` for a loss not recognised.
            modules: restrict the operator to these modules (names as ``named_modules``);
                the other parameters are held fixed and are not in the operator.
            transposed: extra layer classes whose ``weight`` is ``(in, out)`` and that compute
                ``x @ weight + bias`` (classes named ``Conv1D`` are taken as such).
            progress: a progress bar over the batches of each pass.
            batch_size_of: the number of examples of a batch (default: leading dimension).
            process_group: a ``torch.distributed`` group whose ranks each hold a shard of the
                data: the factors are all-reduced.
            timeout: seconds a collective waits for the other ranks.

        Raises:
            ValueError: an unknown kind; trainable parameters outside supported layers; a
                model in training mode with dropout or batch norm; a loss that is not a mean
                of per-example losses; ``kind="mc"`` on a loss with no known likelihood.
            NonFiniteError: non-finite factors (the data, the model or the loss at the point).
        """
        fit = _Fit.build(
            model, loss_fn, data, kind, mc_samples, seed, likelihood, modules, transposed,
            progress, batch_size_of, process_group, timeout,
        )  # fmt: skip
        blocks = fit.kronecker()
        if cls is EKFACOperator:
            blocks = fit.corrected(blocks)
        return cls(blocks, fit.names, fit.dtype, kind)


class EKFACOperator(KFACOperator):
    """EK-FAC: K-FAC's Kronecker eigenbasis with the eigenvalues refitted to the per-example
    gradients (one more pass over the data; see the module's docstring). Same constructor,
    [`from_module`][linop.KFACOperator.from_module], and the same exact ``eigh`` and damped
    inverse."""


class _Spectral(LinearOperator):
    """``Q f(Λ) Qᵀ`` for a K-FAC-structured operator's eigenvectors ``Q``."""

    def __init__(self, of: KFACOperator, values: list[torch.Tensor]) -> None:
        psd = all(bool((v >= 0).all()) for v in values)
        super().__init__(of.shape, of.dtype, of.device, Tags(symmetric=True, psd=psd))
        self.of, self.values = of, values

    def _matmat(self, X: torch.Tensor) -> torch.Tensor:
        return self.of._apply(X, self.values)


@dataclass
class _Fit:
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
    ) -> _Fit:  # fmt: skip
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
        acc, L = self._acc(), len(self.layers)
        sums: list[torch.Tensor] | None = None
        count = 0
        for nb, rows, grads in self._passes("K-FAC factors"):
            batch = []
            for layer in self.layers:
                a = rows[layer.name].to(acc)
                batch.append(a.flatten(0, 1).T @ a.flatten(0, 1) / a.shape[1])
            for i in range(L):
                g = torch.cat([gk[i].to(acc).flatten(0, 1) for gk in grads])
                batch.append(g.T @ g)
            sums = batch if sums is None else [s + b for s, b in zip(sums, batch, strict=True)]
            count += nb
        assert sums is not None
        weight = self.mc_samples if self.kind == "mc" else 1
        sums = sums[:L] + [g / weight for g in sums[L:]]
        L = len(self.layers)
        pairs = [t for i in range(L) for t in (sums[i], sums[L + i])]
        labels = [layer.name or "<model>" for layer in self.layers for _ in range(2)]
        reduced = self._reduce(pairs, labels, count, "K-FAC factors")
        blocks = []
        for i, layer in enumerate(self.layers):
            A, G = reduced[2 * i].double(), reduced[2 * i + 1].double()
            lA, QA = torch.linalg.eigh((A + A.T) / 2)
            lG, QG = torch.linalg.eigh((G + G.T) / 2)
            values = torch.outer(lG.clamp_min(0), lA.clamp_min(0))
            blocks.append(KroneckerEigen(layer, A, G, QA, QG, values))
        return blocks

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
        weight = self.mc_samples if self.kind == "mc" else 1
        labels = [layer.name or "<model>" for layer in self.layers]
        reduced = self._reduce([s / weight for s in sums], labels, count, "EK-FAC eigenvalues")
        return [replace(b, values=v.double()) for b, v in zip(blocks, reduced, strict=True)]
