"""IFVP functions (inverse-Fisher-vector products) with the signatures of ``dattri.func.fisher``
0.2.0, built on linop, and its EK-FAC estimation helpers.

``ifvp_explicit`` and ``ifvp_at_x_explicit`` materialise the empirical Fisher
``F = (1/N) Σᵢ ∇ℓᵢ ∇ℓᵢᵀ`` from per-example gradients
([`linop.per_example_gradients`][linop.per_example_gradients]) and solve ``(F + λI) x = v``
([`inverse("explicit")`][linop.LinearOperator.inverse]). Example ``i`` is every input of ``func``
but ``x[argnums]`` sliced at position ``i`` of its leading dimension (with a leading dimension of
1 kept, so a mean loss is that example's loss); inputs without a leading dimension are shared.
As the 0.2.0 docstring says, ``func`` at the data's own labels gives the empirical Fisher, and at
labels predicted (or sampled) from the model the "true" one.

Fixed from 0.2.0 (see the migration guide):

- 0.2.0 took ``g @ g.T`` of the one 1-D gradient of the mean loss, a scalar, so it solved with
  ``‖ḡ‖² 11ᵀ + λI`` rather than a Fisher;
- ``estimate_eigenvector`` returns every eigenvector as a *row* (``torch.linalg.eigh`` returns
  columns), which is how ``estimate_lambda`` and dattri's EK-FAC attributor use them; 0.2.0
  returned columns and used them as rows, so its corrected eigenvalues were taken in a wrong
  basis;
- a ``func`` returning ``(loss, mask)``, as documented, is unpacked (0.2.0 multiplied the tuple),
  and sequence inputs ``(B, t, d)`` work (0.2.0 failed with a NameError).

Example:
    >>> import torch
    >>> from dattri.func.fisher import ifvp_at_x_explicit
    >>> X, y = torch.randn(20, 3), torch.randn(20)
    >>> loss = lambda w, X, y: ((X @ w - y) ** 2).mean()
    >>> ifvp = ifvp_at_x_explicit(loss, torch.zeros(3), X, y, regularization=0.1)
    >>> ifvp(torch.ones(3)).shape, ifvp(torch.ones(2, 3)).shape
    (torch.Size([3]), torch.Size([2, 3]))
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.utils import _pytree

import linop
from linop.tags import Tags

__all__ = [
    "IFVPUsageError",
    "estimate_covariance",
    "estimate_eigenvector",
    "estimate_lambda",
    "ifvp_at_x_explicit",
    "ifvp_explicit",
]


class IFVPUsageError(ValueError):
    """The usage exception class for the IFVP module (a ``ValueError``, as in linop)."""


def _single(argnums: int | tuple[int, ...]) -> int:
    if isinstance(argnums, tuple):
        if len(argnums) != 1:
            raise IFVPUsageError("the IFVP functions support one argnums; concatenate inputs")
        argnums = argnums[0]
    if isinstance(argnums, bool) or not isinstance(argnums, int):
        raise IFVPUsageError(f"argnums must be an integer, got {argnums!r}")
    return argnums


def _has_examples(x: Any) -> bool:
    leaves = _pytree.tree_leaves(x)
    return bool(leaves) and all(isinstance(t, Tensor) and t.ndim >= 1 for t in leaves)


def _fisher(func: Callable, x: tuple[Any, ...], argnums: int) -> linop.DenseOperator:
    """The empirical Fisher ``GᵀG / N`` of ``func`` at ``x`` as a psd dense operator."""
    if not -len(x) <= argnums < len(x):
        raise IFVPUsageError(f"argnums={argnums} is out of range for {len(x)} inputs")
    argnums %= len(x)
    others = x[:argnums] + x[argnums + 1 :]
    in_dims = tuple(0 if _has_examples(t) else None for t in others)
    if all(d is None for d in in_dims):
        raise IFVPUsageError(
            "no input of func has a leading example dimension: the Fisher needs examples"
        )
    try:
        G = linop.per_example_gradients(func, x[argnums], others, argnums, in_dims=in_dims)
    except linop.ShapeMismatchError as error:
        raise IFVPUsageError(f"Input batch size mismatch: {error}") from error
    return linop.DenseOperator(G.T @ G / G.shape[0], Tags(psd=True))


def _apply_rows(inv: linop.LinearOperator, v: Tensor) -> Tensor:
    """dattri passes vectors as rows, ``(d,)`` or ``(k, d)``; linop takes columns."""
    return inv @ v if v.ndim == 1 else (inv @ v.mT).mT


def ifvp_explicit(func: Callable, argnums: int = 0, regularization: float = 0.0) -> Callable:
    """IFVP by materialising the empirical Fisher at each call's inputs: ``f(x, v)`` returns
    ``(F + regularization · I)⁻¹ v`` for ``v`` ``(d,)`` or rows ``(k, d)``.

    Args:
        func: a loss, the mean over its batch; its Fisher is taken from per-example gradients.
        argnums: which input of ``func`` the Fisher is taken with respect to.
        regularization: ``λ`` in ``F + λI``.

    Raises:
        IFVPUsageError: (at the call) inputs with different numbers of examples, none with an
            example dimension, or a bad argnums.
    """

    def _ifvp_explicit_func(x: tuple[Any, ...], v: Tensor) -> Tensor:
        return ifvp_at_x_explicit(func, *x, argnums=argnums, regularization=regularization)(v)

    return _ifvp_explicit_func


def ifvp_at_x_explicit(
    func: Callable,
    *x: Any,
    argnums: int | tuple[int, ...] = 0,
    regularization: float = 0.0,
) -> Callable:
    """IFVP at fixed inputs ``x``: the empirical Fisher is materialised and factorised once.
    Returns ``f(v)`` for ``v`` ``(d,)`` or rows ``(k, d)``.

    Raises:
        IFVPUsageError: inputs with different numbers of examples, none with an example
            dimension, or an argnums naming more than one input.
    """
    fisher = _fisher(func, tuple(x), _single(argnums))
    inv = fisher.regularize(regularization).inverse("explicit")
    return lambda v: _apply_rows(inv, v)


# ---------------------------------------------------------------------- EK-FAC estimation
def _loss_and_mask(output: Any, batch_size: int) -> tuple[Tensor, Tensor]:
    """``func``'s output, ``loss`` or ``(loss, mask)``, as both (a mask of ones by default)."""
    if isinstance(output, tuple):
        if len(output) != 2:
            raise IFVPUsageError("func must return a loss, or a tuple (loss, mask)")
        return output[0], output[1]
    return output, torch.ones(batch_size, 1)


def _steps(t: Tensor) -> Tensor:
    """A layer's inputs or output gradients as ``(batch, t, features)`` (``t = 1`` when the
    input is not a sequence)."""
    return t.unsqueeze(1) if t.ndim == 2 else t


def _passes(func: Callable, dataloader: Any, max_iter: int | None, device: str | None) -> Any:
    """Forward and backward over at most ``max_iter`` batches; yields each batch's mask and
    number of examples once the layers' gradients are in place."""
    if max_iter is None:
        max_iter = len(dataloader)
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise IFVPUsageError(f"max_iter must be a positive integer or None, got {max_iter!r}")
    for i, batch in enumerate(dataloader):
        if i >= max_iter:
            break
        batch_size = batch[0].shape[0]
        loss, mask = _loss_and_mask(func(tuple(t.to(device) for t in batch)), batch_size)
        # a mean loss: times the batch size, the output gradients are per example
        (loss * batch_size).backward()
        yield mask, batch_size


def _running(old: Tensor | None, new: Tensor, seen: float, added: float) -> Tensor:
    return new if old is None else (seen * old + added * new) / (seen + added)


def estimate_covariance(
    func: Callable,
    dataloader: torch.utils.data.DataLoader,
    layer_cache: dict[str, tuple[Tensor, Tensor]],
    max_iter: int | None = None,
    device: str | None = "cpu",
) -> dict[str, tuple[Tensor, Tensor]]:
    """Estimate the EK-FAC covariance factors ``A = E[a aᵀ]`` (layer inputs) and
    ``S = E[ds dsᵀ]`` (gradients of the layer outputs) over at most ``max_iter`` batches.

    Args:
        func: ``func(batch)`` returns the mean loss, or ``(loss, mask)`` with ``mask``
            ``(batch, t)`` marking the positions that count (e.g. not padding).
        dataloader: the training data.
        layer_cache: ``name -> (inputs, outputs)`` of each layer, filled by forward hooks on
            every forward pass (the outputs with ``retain_grad()``).
        max_iter: the most batches used (default: all).
        device: where the batches are moved.

    Returns:
        ``name -> (A, S)``.
    """
    covariances: dict[str, tuple[Tensor, Tensor]] = {}
    total = 0
    for mask, _ in _passes(func, dataloader, max_iter, device):
        count = int(mask.sum())
        with torch.no_grad():
            for name, (inputs, outputs) in layer_cache.items():
                a = _steps(inputs) * mask[..., None].to(inputs.device)
                a = a.reshape(-1, a.shape[-1])
                ds = _steps(outputs.grad).reshape(-1, outputs.shape[-1])
                cov_a, cov_s = a.T @ a / count, ds.T @ ds / count
                old_a, old_s = covariances.get(name, (None, None))
                covariances[name] = (
                    _running(old_a, cov_a, total, count),
                    _running(old_s, cov_s, total, count),
                )
        total += count
    return covariances


def estimate_eigenvector(
    covariances: dict[str, tuple[Tensor, Tensor]],
) -> dict[str, tuple[Tensor, Tensor]]:
    """The eigenvectors of every covariance pair, ``name -> (Q_A, Q_S)``, **one eigenvector per
    row** (``Q_A @ A @ Q_A.T`` is diagonal), the convention of ``estimate_lambda`` and of
    dattri's EK-FAC attributor (``q_s @ v @ q_a.T`` is ``v`` in the eigenbasis)."""
    return {
        name: (torch.linalg.eigh(cov_a)[1].mT, torch.linalg.eigh(cov_s)[1].mT)
        for name, (cov_a, cov_s) in covariances.items()
    }


def estimate_lambda(
    func: Callable,
    dataloader: torch.utils.data.DataLoader,
    eigenvectors: dict[str, tuple[Tensor, Tensor]],
    layer_cache: dict[str, tuple[Tensor, Tensor]],
    max_iter: int | None = None,
    device: str | None = "cpu",
) -> dict[str, Tensor]:
    """Estimate EK-FAC's corrected eigenvalues: for every layer, the mean over examples of
    ``(Q_S dθᵢ Q_Aᵀ)²`` (elementwise), ``dθᵢ = Σ_t ds_t a_tᵀ`` example ``i``'s weight gradient
    and ``Q`` the eigenvectors of ``estimate_eigenvector`` (rows). Arguments as
    ``estimate_covariance``.

    Returns:
        ``name -> λ`` of shape ``(out_features, in_features)``.
    """
    lambdas: dict[str, Tensor] = {}
    total = 0
    for mask, batch_size in _passes(func, dataloader, max_iter, device):
        with torch.no_grad():
            for name, (inputs, outputs) in layer_cache.items():
                a = _steps(inputs) * mask[..., None].to(inputs.device)
                dtheta = torch.einsum("bto,bti->boi", _steps(outputs.grad), a)
                q_a, q_s = eigenvectors[name]
                batch_lambda = torch.square(q_s @ dtheta @ q_a.mT).mean(dim=0)
                lambdas[name] = _running(lambdas.get(name), batch_lambda, total, batch_size)
        total += batch_size
    return lambdas
