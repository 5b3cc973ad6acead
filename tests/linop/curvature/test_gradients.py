"""Per-example gradients (linop.curvature.gradients) against one gradient per example taken alone:
flat and dict points, argnums, shared inputs (in_dims None), nested inputs, chunking, the module
form in the operators' layout, and bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad

from linop import (
    HessianOperator,
    NonScalarLossError,
    ShapeMismatchError,
    module_per_example_gradients,
    per_example_gradients,
)
from linop.flat import FlatSpec
from linop.testing import assert_close
from tests.linop.curvature._models import D64, classification, cnn, gen, mlp, params_of


def _loop(func, params, X, y):
    spec = FlatSpec.of(params)
    theta = spec.flatten(params)
    return torch.stack(
        [
            grad(lambda t, i=i: func(spec.unflatten(t), X[i : i + 1], y[i : i + 1]))(theta)
            for i in range(len(X))
        ]
    )


@pytest.mark.parametrize("chunk_size", [None, 1, 3, 100])
def test_dict_point_matches_one_gradient_per_example(chunk_size):
    model = mlp(seed=1)
    X, y = classification(n=7, seed=1)
    p = params_of(model)

    def loss(p, X, y):
        return F.cross_entropy(functional_call(model, p, (X,)), y)

    G = per_example_gradients(loss, p, (X, y), chunk_size=chunk_size)
    assert G.shape == (7, FlatSpec.of(p).size)
    assert_close(G, _loop(loss, p, X, y))
    # the mean of the rows is the gradient of the mean loss
    assert_close(G.mean(0), FlatSpec.of(p).flatten(grad(loss)(p, X, y)))


def test_argnums_shared_and_nested_inputs():
    g = gen(2)
    X, y = torch.randn(6, 3, dtype=D64, generator=g), torch.randn(6, dtype=D64, generator=g)
    w, scale = torch.randn(3, dtype=D64, generator=g), torch.tensor(2.0, dtype=D64)

    def loss(data, w, scale):  # the parameters second, a nested input first, a shared one last
        X, y = data
        return (scale * (X @ w - y) ** 2).mean()

    G = per_example_gradients(loss, w, ((X, y), scale), argnums=1, in_dims=(0, None))
    expected = torch.stack([2 * scale * (X[i] @ w - y[i]) * X[i] for i in range(6)])
    assert_close(G, expected)


def test_module_form_is_in_the_operators_layout():
    model = cnn(seed=3)
    g = gen(3)
    X, y = torch.randn(4, 1, 5, 5, dtype=D64, generator=g), torch.randint(0, 3, (4,), generator=g)
    G = module_per_example_gradients(model, F.cross_entropy, (X, y), chunk_size=3)
    H = HessianOperator.from_module(model, F.cross_entropy, (X, y))
    assert G.shape == (4, H.shape[0])
    assert_close(G.mean(0), H.gradient())
    p = params_of(model)
    assert_close(
        G, _loop(lambda p, X, y: F.cross_entropy(functional_call(model, p, (X,)), y), p, X, y)
    )


def test_no_examples():
    w = torch.zeros(3, dtype=D64)
    G = per_example_gradients(lambda w, X: (X @ w).mean(), w, (torch.zeros(0, 3, dtype=D64),))
    assert G.shape == (0, 3)


def test_bad_input():
    w = torch.zeros(3, dtype=D64)
    X = torch.randn(5, 3, dtype=D64)
    with pytest.raises(ShapeMismatchError, match="same number of examples"):
        per_example_gradients(lambda w, X, y: ((X @ w - y) ** 2).mean(), w, (X, torch.zeros(4)))
    with pytest.raises(NonScalarLossError):
        per_example_gradients(lambda w, X: X @ w, w, (X,))
    with pytest.raises(ValueError, match="chunk_size"):
        per_example_gradients(lambda w, X: (X @ w).mean(), w, (X,), chunk_size=0)
    with pytest.raises(ValueError, match="in_dims"):
        per_example_gradients(lambda w, X: (X @ w).mean(), w, (X,), in_dims=(0, 0))
    with pytest.raises(ValueError, match="argnums"):
        per_example_gradients(lambda w, X: (X @ w).mean(), w, (X,), argnums=3)
    with pytest.raises(ShapeMismatchError, match="example dimension"):
        per_example_gradients(lambda w, X, s: (X @ w).mean() * s, w, (X, 2.0))
