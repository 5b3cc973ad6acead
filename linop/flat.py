"""Flat vectors from and to trees of tensors: one tensor, a dict (``named_parameters`` style), or a
tuple or list of tensors.

Every module that turns parameters or per-example gradients into flat vectors uses
[`FlatSpec`][linop.FlatSpec], so the order is the same everywhere: dict insertion order, tuple
order.

Example:
    >>> import torch
    >>> from linop.flat import FlatSpec
    >>> tree = {"w": torch.ones(2, 3), "b": torch.zeros(2)}
    >>> spec = FlatSpec.of(tree)
    >>> v = spec.flatten(tree); v.shape
    torch.Size([8])
    >>> spec.unflatten(v)["w"].shape
    torch.Size([2, 3])
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, TypeAlias

import torch

from linop.errors import DeviceMismatchError, DTypeMismatchError, ShapeMismatchError

__all__ = ["FlatSpec", "Tree"]

#: A tensor, a dict of tensors, or a tuple / list of tensors.
Tree: TypeAlias = torch.Tensor | dict | tuple | list


@dataclass(frozen=True)
class FlatSpec:
    """The layout of a tree of tensors as one flat vector.

    Attributes:
        kind: ``"tensor"``, ``"dict"``, ``"tuple"`` or ``"list"``.
        keys: the dict keys (or positions) in flattening order.
        shapes: the shape of every leaf.
    """

    kind: str
    keys: tuple[Any, ...]
    shapes: tuple[torch.Size, ...]

    @classmethod
    def of(cls, tree: Tree) -> FlatSpec:
        """The spec of a tree of tensors."""
        leaves = _leaves(tree)
        kind = "tensor" if isinstance(tree, torch.Tensor) else type(tree).__name__
        if isinstance(tree, dict):
            kind = "dict"
        keys = tuple(tree.keys()) if isinstance(tree, dict) else tuple(range(len(leaves)))
        return cls(kind, keys, tuple(t.shape for t in leaves))

    @property
    def numels(self) -> tuple[int, ...]:
        """The number of entries of every leaf."""
        return tuple(math.prod(s) for s in self.shapes)

    @property
    def size(self) -> int:
        """The length of the flat vector."""
        return sum(self.numels)

    def flatten(self, tree: Tree) -> torch.Tensor:
        """Concatenate the leaves of ``tree`` (laid out as this spec) into one 1-D tensor."""
        leaves = self._check(tree, batched=False)
        if len(leaves) == 1:
            return leaves[0].reshape(-1)
        return torch.cat([t.reshape(-1) for t in leaves])

    def flatten_batched(self, tree: Tree) -> torch.Tensor:
        """Flatten a tree whose leaves carry a leading batch dimension ``(B, *shape)`` into
        ``(B, size)``."""
        leaves = self._check(tree, batched=True)
        # B may be 0
        rows = [t.reshape(t.shape[0], m) for t, m in zip(leaves, self.numels, strict=True)]
        return rows[0] if len(rows) == 1 else torch.cat(rows, dim=1)

    def unflatten(self, vector: torch.Tensor) -> Tree:
        """Split a 1-D tensor of length [`size`][linop.FlatSpec.size] back into a tree of this
        layout."""
        if vector.ndim != 1 or vector.shape[0] != self.size:
            raise ShapeMismatchError(
                f"expected a flat vector of shape ({self.size},), got {tuple(vector.shape)}"
            )
        if self.kind == "tensor":  # a 1-D tensor is its own flat vector: no op
            shape = self.shapes[0]
            return vector if vector.shape == shape else vector.reshape(shape)
        parts = [
            p.reshape(s)
            for p, s in zip(torch.split(vector, list(self.numels)), self.shapes, strict=True)
        ]
        if self.kind == "dict":
            return dict(zip(self.keys, parts, strict=True))
        return tuple(parts) if self.kind == "tuple" else list(parts)

    def _check(self, tree: Tree, batched: bool) -> list[torch.Tensor]:
        leaves = _leaves(tree)
        if isinstance(tree, dict) and tuple(tree.keys()) != self.keys:
            raise ShapeMismatchError(
                f"expected keys {list(self.keys)} in this order, got {list(tree.keys())}"
            )
        if len(leaves) != len(self.shapes):
            raise ShapeMismatchError(f"expected {len(self.shapes)} tensors, got {len(leaves)}")
        batch = leaves[0].shape[0] if batched and leaves[0].ndim else None
        for key, leaf, shape in zip(self.keys, leaves, self.shapes, strict=True):
            got = leaf.shape[1:] if batched else leaf.shape
            if batched and (leaf.ndim == 0 or leaf.shape[0] != batch):
                raise ShapeMismatchError(
                    f"every tensor needs the same leading batch dimension {batch}; "
                    f"{key!r} has shape {tuple(leaf.shape)}"
                )
            if got != shape:
                raise ShapeMismatchError(
                    f"{key!r} has shape {tuple(got)}, expected {tuple(shape)}"
                    + (" after the batch dimension" if batched else "")
                )
            if leaf.dtype != leaves[0].dtype:
                raise DTypeMismatchError(
                    f"every tensor must share one dtype; {key!r} is {leaf.dtype}, "
                    f"the first is {leaves[0].dtype}"
                )
            if leaf.device != leaves[0].device:  # (a tensor's device always has one spelling)
                raise DeviceMismatchError(
                    f"every tensor must be on one device; {key!r} is on {leaf.device}, the first "
                    f"on {leaves[0].device}"
                )
        return leaves


def _leaves(tree: Tree) -> list[torch.Tensor]:
    if isinstance(tree, torch.Tensor):
        leaves = [tree]
    elif isinstance(tree, dict):
        leaves = list(tree.values())
    elif isinstance(tree, (tuple, list)):
        leaves = list(tree)
    else:
        raise TypeError(
            f"expected a tensor, a dict of tensors or a tuple of tensors, got {type(tree).__name__}"
        )
    if not leaves or not all(isinstance(t, torch.Tensor) for t in leaves):
        raise TypeError("every leaf of the tree must be a torch.Tensor, and there must be one")
    return leaves
