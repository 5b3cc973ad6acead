"""The layers K-FAC factors, and what it needs of each: where its parameters sit in the flat
parameter vector, its inputs as rows ``ã`` (one per example and weight-sharing location, with a
trailing 1 for the bias) and its output gradients as rows ``g``, so that a location's weight
gradient is ``g ãᵀ`` and the layer's gradient matrix is ``W̃ = [W | b]`` of shape
``(out, in + 1)``.

Supported: ``nn.Linear`` (any leading dimensions beyond the batch are weight-sharing locations),
``nn.Conv2d`` (``groups=1``, zero padding; the patches of ``unfold`` are the locations: the
"expand" setting of Eschenhagen et al., 2023) and *transposed* linear layers, whose ``weight`` is
``(in, out)`` and which compute ``x @ weight + bias`` (GPT-2's ``Conv1D``; any module class named
``Conv1D`` is taken as one, others are registered with ``transposed=(MyLayer,)``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["Capture", "KroneckerEigen", "KroneckerLayer", "kfac_layers"]


@dataclass
class KroneckerLayer:
    """One Kronecker-factored block: a supported module and its parameters' flat positions.

    Attributes:
        name: the module's name in the model.
        module: the module.
        weight: ``(start, stop)`` of its weight in the flat parameter vector.
        bias: ``(start, stop)`` of its bias, or None (no bias, or a frozen one).
        out_features, in_features: the gradient matrix is ``(out, in + [bias])``.
        transposed: the weight is stored ``(in, out)``.
    """

    name: str
    module: torch.nn.Module
    weight: tuple[int, int]
    bias: tuple[int, int] | None
    out_features: int
    in_features: int
    transposed: bool

    @property
    def shape(self) -> tuple[int, int]:
        """The gradient matrix's shape ``(out, in + 1)`` with a bias, ``(out, in)`` without."""
        return self.out_features, self.in_features + (self.bias is not None)

    def input_rows(self, x: torch.Tensor) -> torch.Tensor:
        """The layer's input as ``(B, R, in[+1])``: ``R`` weight-sharing locations per example."""
        m = self.module
        if isinstance(m, torch.nn.Conv2d):
            pad = m.padding if isinstance(m.padding, tuple) else (0, 0)  # str refused at build
            patches = F.unfold(x, m.kernel_size, m.dilation, pad, m.stride)  # (B, d, R)
            rows = patches.transpose(1, 2)
        else:
            rows = x.reshape(x.shape[0], -1, x.shape[-1])
        if self.bias is not None:
            rows = torch.cat([rows, rows.new_ones(*rows.shape[:2], 1)], dim=2)
        return rows

    def output_rows(self, g: torch.Tensor) -> torch.Tensor:
        """A gradient of the layer's output as ``(B, R, out)``."""
        if isinstance(self.module, torch.nn.Conv2d):
            return g.flatten(2).transpose(1, 2)
        return g.reshape(g.shape[0], -1, g.shape[-1])

    def gather(self, V: torch.Tensor) -> torch.Tensor:
        """The block's rows of ``V`` ``(n, k)`` as ``k`` matrices ``(k, out, in')``."""
        o, i, k = self.out_features, self.in_features, V.shape[1]
        W = V[slice(*self.weight)]
        if self.transposed:
            W = W.reshape(i, o, k).permute(2, 1, 0)
        else:
            W = W.reshape(o, i, k).permute(2, 0, 1)
        if self.bias is None:
            return W
        return torch.cat([W, V[slice(*self.bias)].T.unsqueeze(2)], dim=2)

    def scatter(self, M: torch.Tensor, out: torch.Tensor) -> None:
        """Write matrices ``M`` ``(k, out, in')`` into their rows of ``out`` ``(n, k)``."""
        i = self.in_features
        W = M[:, :, :i]
        W = W.permute(2, 1, 0) if self.transposed else W.permute(1, 2, 0)
        out[slice(*self.weight)] = W.reshape(self.weight[1] - self.weight[0], M.shape[0])
        if self.bias is not None:
            out[slice(*self.bias)] = M[:, :, i].T


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


def _is_transposed(module: torch.nn.Module, transposed: Sequence[type]) -> bool:
    return isinstance(module, tuple(transposed)) or type(module).__name__ == "Conv1D"


def _check_conv(name: str, m: torch.nn.Conv2d) -> None:
    if m.groups != 1 or m.padding_mode != "zeros" or isinstance(m.padding, str):
        raise ValueError(
            f"K-FAC supports Conv2d layers with groups=1, padding_mode='zeros' and numeric "
            f"padding; layer {name!r} has groups={m.groups}, padding_mode={m.padding_mode!r}, "
            f"padding={m.padding!r}. Restrict the operator to other layers with modules=[...]"
        )


def kfac_layers(
    model: torch.nn.Module,
    params: dict[str, torch.Tensor],
    modules: Iterable[str] | None,
    transposed: Sequence[type],
) -> tuple[list[KroneckerLayer], list[str]]:
    """The Kronecker blocks of ``model`` and the names of the parameters they cover, in the
    order of ``params`` (the model's trainable parameters, as ``named_parameters``).

    Raises:
        ValueError: for trainable parameters outside supported layers (named; unless
            ``modules`` leaves them out), an unknown or unsupported module in ``modules``, or a
            supported layer whose weight is frozen while its bias trains.
    """
    named = dict(model.named_modules())
    wanted = None if modules is None else list(modules)
    if wanted is not None:
        unknown = [m for m in wanted if m not in named]
        if unknown:
            raise ValueError(
                f"modules {unknown} are not in the model; its modules are {[n for n in named if n]}"
            )
    owner: dict[str, tuple[str, torch.nn.Module, str]] = {}
    for mname, m in named.items():
        for pname, _ in m.named_parameters(recurse=False):
            owner[f"{mname}.{pname}" if mname else pname] = (mname, m, pname)
    blocks: dict[str, dict[str, str]] = {}
    unsupported = []
    for full in params:
        mname, m, pname = owner[full]
        if wanted is not None and mname not in wanted:
            continue
        linear = isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)) or _is_transposed(m, transposed)
        if not linear or pname not in ("weight", "bias"):
            unsupported.append(f"{full} ({type(m).__name__})")
            continue
        blocks.setdefault(mname, {})[pname] = full
    if unsupported:
        raise ValueError(
            f"K-FAC factors nn.Linear, nn.Conv2d and transposed linear layers; these trainable "
            f"parameters belong to other layers: {', '.join(unsupported)}. Freeze them "
            f"(requires_grad=False), restrict the operator with modules=[...], or register a "
            f"linear layer that stores its weight as (in, out) with transposed=(YourLayer,)"
        )
    covered = [full for full in params if any(full in ps.values() for ps in blocks.values())]
    offsets, start = {}, 0
    for full in covered:  # positions in the flat vector of the covered parameters
        offsets[full] = (start, start + params[full].numel())
        start += params[full].numel()
    layers = []
    for mname, ps in blocks.items():
        m = named[mname]
        if "weight" not in ps:
            raise ValueError(
                f"layer {mname!r} trains its bias but not its weight; K-FAC factors a layer "
                f"through its weight: freeze the bias too, or unfreeze the weight"
            )
        if isinstance(m, torch.nn.Conv2d):
            _check_conv(mname, m)
        w = params[ps["weight"]]
        t = _is_transposed(m, transposed)
        out, inp = (w.shape[1], w.shape[0]) if t else (w.shape[0], w[0].numel())
        bias = offsets[ps["bias"]] if "bias" in ps else None
        layers.append(KroneckerLayer(mname, m, offsets[ps["weight"]], bias, out, inp, t))
    return layers, covered


class Capture:
    """Forward hooks that record each layer's input (detached) and output (with its graph)
    during one forward pass; used as a context manager."""

    def __init__(self, layers: Sequence[KroneckerLayer]) -> None:
        self.layers = layers
        self.inputs: dict[str, torch.Tensor] = {}
        self.outputs: dict[str, torch.Tensor] = {}
        self._handles: list[Any] = []

    def __enter__(self) -> Capture:
        for layer in self.layers:
            self._handles.append(layer.module.register_forward_hook(self._hook(layer.name)))
        return self

    def _hook(self, name: str) -> Any:
        def hook(module: torch.nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> None:
            if name in self.inputs:
                raise ValueError(
                    f"layer {name!r} ran more than once in one forward pass (a shared or "
                    f"recurrent layer); K-FAC here factors layers applied once per example"
                )
            self.inputs[name] = args[0].detach()
            self.outputs[name] = output

        return hook

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
