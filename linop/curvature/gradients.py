"""Per-example gradients: the matrix ``G`` (one row per example) that every attribution pipeline
projects or solves against, in the flat layout of the curvature operators.

Row ``i`` is the gradient of the loss of example ``i`` alone: the loss function evaluated on the
batch made of that one example (its inputs with a leading dimension of 1), so a loss written as
the mean over its batch gives each example's own loss. Examples are vmapped in chunks, so the
working memory is that of ``chunk_size`` gradients (plus the model's activations for them).

Example:
    >>> import torch
    >>> from linop import per_example_gradients
    >>> def loss(w, X, y):
    ...     return ((X @ w - y) ** 2).mean()
    >>> X, y = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    >>> w = torch.zeros(3, dtype=torch.float64)
    >>> G = per_example_gradients(loss, w, (X, y))
    >>> G.shape, torch.allclose(G[0], 2 * (X[0] @ w - y[0]) * X[0])
    (torch.Size([5, 3]), True)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.func import grad, vmap
from torch.utils import _pytree

from linop._checks import positive_int
from linop.curvature._autodiff import as_scalar
from linop.curvature._module import ModuleLoss, module_point
from linop.data import as_batch
from linop.errors import ShapeMismatchError
from linop.flat import FlatSpec, Tree

__all__ = ["per_example_gradients", "module_per_example_gradients", "DEFAULT_CHUNK_BYTES"]

#: Default working memory of one chunk of per-example gradients, in bytes (256 MiB).
DEFAULT_CHUNK_BYTES = 256 << 20


def _count(batch: tuple[Any, ...], in_dims: tuple[int | None, ...]) -> int:
    """The number of examples: the size of the example dimension, the same in every input."""
    sizes = set()
    for i, (x, d) in enumerate(zip(batch, in_dims, strict=True)):
        if d is None:
            continue
        for leaf in _pytree.tree_leaves(x):
            if not isinstance(leaf, torch.Tensor) or leaf.ndim <= d:
                raise ShapeMismatchError(
                    f"input {i} has an example dimension (in_dims[{i}] = {d}) but holds "
                    f"{type(leaf).__name__} of shape {tuple(getattr(leaf, 'shape', ()))}; mark "
                    f"inputs shared by every example with None"
                )
            sizes.add(int(leaf.shape[d]))
    if len(sizes) != 1:
        raise ShapeMismatchError(
            "every input with an example dimension needs the same number of examples, got "
            + (str(sorted(sizes)) if sizes else "no such input (all in_dims are None)")
        )
    return sizes.pop()


def gradient_chunks(
    func: Callable[..., torch.Tensor],
    spec: FlatSpec,
    theta: torch.Tensor,
    batch: tuple[Any, ...],
    argnums: int,
    in_dims: tuple[int | None, ...],
    chunk_size: int | None,
) -> Iterator[torch.Tensor]:
    """The per-example gradients of ``func(*batch[:argnums], params, *batch[argnums:])`` at the
    flat point ``theta``, ``(chunk, n)`` blocks in example order."""
    count = _count(batch, in_dims)
    if chunk_size is None:
        chunk_size = max(1, DEFAULT_CHUNK_BYTES // max(1, theta.numel() * theta.element_size()))

    def example_loss(t: torch.Tensor, *example: Any) -> torch.Tensor:
        one = tuple(
            x if d is None else _pytree.tree_map(lambda a, d=d: a.unsqueeze(d), x)
            for x, d in zip(example, in_dims, strict=True)
        )
        return as_scalar(func(*one[:argnums], spec.unflatten(t), *one[argnums:]))

    per_example = vmap(grad(example_loss), in_dims=(None, *in_dims))
    for start in range(0, count, chunk_size):
        size = min(chunk_size, count - start)
        part = tuple(
            x
            if d is None
            else _pytree.tree_map(lambda a, d=d, s=start, k=size: a.narrow(d, s, k), x)
            for x, d in zip(batch, in_dims, strict=True)
        )
        yield per_example(theta, *part)


def per_example_gradients(
    func: Callable[..., torch.Tensor],
    params: Tree,
    batch: Any,
    argnums: int = 0,
    *,
    in_dims: tuple[int | None, ...] | None = None,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """The gradient of every example's loss, ``(B, n)``, row ``i`` the flat gradient (in the
    layout of ``FlatSpec.of(params)``, the curvature operators' layout) of
    ``func(*batch[:argnums], params, *batch[argnums:])`` at the batch made of example ``i`` alone.

    Args:
        func: the loss, the mean over its batch (so that a batch of one example is its loss).
        params: the point (a tensor, or a dict or tuple of tensors).
        batch: the other inputs (a tuple or list; one tensor is one input). An input may be a
            nested tuple or dict of tensors (its leaves are split alike).
        argnums: where ``params`` goes among ``func``'s inputs.
        in_dims: for every input, its example dimension, or None for an input shared by every
            example (default: dimension 0 of every input).
        chunk_size: examples whose gradients are computed at once (default: as many as fit in
            ``DEFAULT_CHUNK_BYTES``, 256 MiB, of gradients), bounding the working memory.

    Raises:
        ShapeMismatchError: inputs with different numbers of examples.
        NonScalarLossError: a loss that is not a single-element tensor.
    """
    batch = as_batch(batch)
    in_dims = tuple(in_dims) if in_dims is not None else (0,) * len(batch)
    if len(in_dims) != len(batch):
        raise ValueError(f"in_dims has {len(in_dims)} entries for {len(batch)} inputs")
    if not 0 <= argnums <= len(batch):
        raise ValueError(f"argnums={argnums} is out of range for {len(batch) + 1} inputs")
    positive_int("chunk_size", chunk_size)
    spec = FlatSpec.of(params)
    theta = spec.flatten(params).detach()
    if _count(batch, in_dims) > 1:  # the loss of two examples is reduced to one number
        two = tuple(
            x if d is None else _pytree.tree_map(lambda a, d=d: a.narrow(d, 0, 2), x)
            for x, d in zip(batch, in_dims, strict=True)
        )
        with torch.no_grad():
            as_scalar(func(*two[:argnums], params, *two[argnums:]))
    parts = list(gradient_chunks(func, spec, theta, batch, argnums, in_dims, chunk_size))
    if not parts:  # no examples
        return theta.new_zeros(0, theta.numel())
    return torch.cat(parts) if len(parts) > 1 else parts[0]


def module_per_example_gradients(
    model: torch.nn.Module,
    loss_fn: Callable[[torch.Tensor, Any], torch.Tensor],
    batch: Any,
    *,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """The gradients of ``loss_fn(model(X[i:i+1]), y[i:i+1])`` with respect to ``model``'s trainable
    parameters for every example of ``batch = (X, y)``, ``(B, n)`` in the layout of
    ``from_module`` operators (``named_parameters()`` order). Options as
    [`per_example_gradients`][linop.per_example_gradients].

    Example:
        >>> import torch
        >>> from linop import module_per_example_gradients
        >>> model = torch.nn.Linear(3, 2)
        >>> X, y = torch.randn(4, 3), torch.tensor([0, 1, 1, 0])
        >>> module_per_example_gradients(model, torch.nn.CrossEntropyLoss(), (X, y)).shape
        torch.Size([4, 8])
    """
    params, buffers = module_point(model)
    return per_example_gradients(
        ModuleLoss(model, loss_fn, buffers), params, batch, chunk_size=chunk_size
    )
