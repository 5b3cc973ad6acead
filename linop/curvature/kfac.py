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
from typing import Any

import torch

from linop._checks import positive_int
from linop.curvature._kfac_fit import KFAC_KINDS, Fit
from linop.curvature._kfac_layers import KroneckerEigen
from linop.distributed import DEFAULT_TIMEOUT_SECONDS
from linop.operator import LinearOperator
from linop.structured import LowRankOperator
from linop.tags import Tags

__all__ = ["EKFACOperator", "KFAC_KINDS", "KFACOperator"]


class KFACOperator(LinearOperator):
    """K-FAC: the block-diagonal Kronecker-factored Gauss-Newton or Fisher of a network (see the
    module's docstring for the definitions and conventions). Build it with
    [`from_module`][linop.KFACOperator.from_module].

    Attributes:
        blocks: one ``KroneckerEigen`` per layer: its factors, their eigenvectors and the
            block's eigenvalues (float64).
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
        self._bases = [(b.QG.to(dtype), b.QA.to(dtype)) for b in blocks]
        self._factors = [(b.G.to(dtype), b.A.to(dtype)) for b in blocks]

    # ------------------------------------------------------------------ products
    def _apply(self, V: torch.Tensor, values: Sequence[torch.Tensor]) -> torch.Tensor:
        """``Q diag(values) Qᵀ V``, block by block, in the Kronecker eigenbases."""
        out = torch.empty_like(V)
        for block, (QG, QA), D in zip(self.blocks, self._bases, values, strict=True):
            X = block.layer.gather(V)
            block.layer.scatter(QG @ ((QG.T @ X @ QA) * D) @ QA.T, out)
        return out

    def _matmat(self, X: torch.Tensor) -> torch.Tensor:
        out = torch.empty_like(X)  # (G ⊗ A) vec(W̃) = vec(G W̃ A): two small products per layer
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
        fit = Fit.build(
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

    def __init__(
        self, blocks: Sequence[KroneckerEigen], names: Sequence[str], dtype: torch.dtype, kind: str
    ) -> None:
        super().__init__(blocks, names, dtype, kind)
        self._values = [b.values.to(dtype) for b in blocks]  # its own: not λ_G λ_Aᵀ

    def _matmat(self, X: torch.Tensor) -> torch.Tensor:
        return self._apply(X, self._values)


class _Spectral(LinearOperator):
    """``Q f(Λ) Qᵀ`` for a K-FAC-structured operator's eigenvectors ``Q``."""

    def __init__(self, of: KFACOperator, values: list[torch.Tensor]) -> None:
        psd = all(bool((v >= 0).all()) for v in values)
        super().__init__(of.shape, of.dtype, of.device, Tags(symmetric=True, psd=psd))
        self.of, self.values = of, values

    def _matmat(self, X: torch.Tensor) -> torch.Tensor:
        return self.of._apply(X, self.values)
