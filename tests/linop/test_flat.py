"""Flat vectors from and to trees of tensors (linop.flat)."""

from __future__ import annotations

import pytest
import torch

from linop import DTypeMismatchError, FlatSpec, ShapeMismatchError


def test_round_trips():
    tree = {"w": torch.randn(2, 3), "b": torch.randn(2)}
    spec = FlatSpec.of(tree)
    assert spec.size == 8 and spec.numels == (6, 2)
    v = spec.flatten(tree)
    back = spec.unflatten(v)
    assert list(back) == ["w", "b"] and torch.equal(back["w"], tree["w"])
    for t in [torch.randn(3, 2), (torch.randn(2), torch.randn(1, 2)), [torch.randn(4)]]:
        s = FlatSpec.of(t)
        out = s.unflatten(s.flatten(t))
        assert type(out) is type(t)


def test_batched_equals_concatenation():
    tree = {"w": torch.randn(5, 2, 3), "b": torch.randn(5, 2)}
    spec = FlatSpec.of({"w": torch.zeros(2, 3), "b": torch.zeros(2)})
    flat = spec.flatten_batched(tree)
    assert torch.equal(flat, torch.cat([tree["w"].reshape(5, -1), tree["b"]], dim=1))


def test_mismatches_raise():
    spec = FlatSpec.of({"w": torch.zeros(2, 3), "b": torch.zeros(2)})
    with pytest.raises(ShapeMismatchError, match="keys"):
        spec.flatten({"b": torch.zeros(2), "w": torch.zeros(2, 3)})
    with pytest.raises(ShapeMismatchError, match="shape"):
        spec.flatten({"w": torch.zeros(3, 2), "b": torch.zeros(2)})
    with pytest.raises(ShapeMismatchError, match="batch"):
        spec.flatten_batched({"w": torch.zeros(4, 2, 3), "b": torch.zeros(5, 2)})
    with pytest.raises(DTypeMismatchError):
        spec.flatten({"w": torch.zeros(2, 3), "b": torch.zeros(2, dtype=torch.float64)})
    with pytest.raises(ShapeMismatchError):
        spec.unflatten(torch.zeros(7))
    with pytest.raises(TypeError):
        FlatSpec.of({"w": 1.0})
