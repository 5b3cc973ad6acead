"""GGNOperator (linop.curvature.ggn) against dense float64 ground truth ``Jᵀ H_out J`` built from
full Jacobians with torch.func: MLPs and a small CNN, several losses (closed-form and autodiff
output Hessians), dict and flat points, argnums, from_module, uneven batches and DataLoaders; equal
to the Hessian for a linear model with a convex loss; bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call, hessian
from torch.utils.data import DataLoader, TensorDataset

from linop import (
    DatasetMean,
    GGNOperator,
    HessianOperator,
    NonFiniteError,
    NonScalarLossError,
    ShapeMismatchError,
)
from linop.testing import assert_close, check_operator
from tests.linop._helpers import assert_pickles
from tests.linop.curvature._models import (
    D64,
    LOSSES,
    classification,
    cnn,
    dense_ggn,
    gen,
    mlp,
    outputs_fn,
    params_of,
    targets_for,
)


@pytest.mark.parametrize("name", list(LOSSES))
def test_mlp_every_loss(name):
    model, loss = mlp(), LOSSES[name]
    X, _ = classification(n=7)
    y = targets_for(name, 7, 3)
    p, f = params_of(model), outputs_fn(model)
    G = GGNOperator(f, loss, p, (X, y))
    assert G.tags.psd and G.tags.symmetric
    expected = None if "autodiff" in name else "categorical" if "cross" in name else "gaussian"
    assert G.likelihood == expected
    check_operator(G, dense_ggn(f, loss, p, X, y))


def _cnn_problem():
    model = cnn()
    g = gen(3)
    X, y = torch.randn(6, 1, 5, 5, dtype=D64, generator=g), torch.randint(0, 3, (6,), generator=g)
    p, f = params_of(model), outputs_fn(model)
    return f, p, X, y, dense_ggn(f, F.cross_entropy, p, X, y)


def test_cnn():
    f, p, X, y, expected = _cnn_problem()
    check_operator(GGNOperator(f, F.cross_entropy, p, (X, y)), expected)


@pytest.mark.parametrize("cache", [True, False])
@pytest.mark.parametrize(("vectorize", "chunk_size"), [(None, None), (True, 2), (False, None)])
def test_every_product_path(cache, vectorize, chunk_size):
    f, p, X, y, expected = _cnn_problem()
    G = GGNOperator(f, F.cross_entropy, p, (X, y), cache=cache, vectorize=vectorize)
    V = torch.randn(G.shape[0], 13, dtype=D64, generator=gen(4))
    for _ in range(3):  # later products reuse (or rebuild) the pullback; from 24 columns on,
        # with the cache, the forward map is linearised
        assert_close(G @ V, expected @ V)
        assert_close(G @ V[:, 0], expected @ V[:, 0])
    state = G.__dict__.get("_state")
    assert (state is not None and state.traced) if cache else state is None


def test_flat_point_argnums_and_module():
    model = mlp(seed=2)
    X, y = classification(n=8, seed=2)
    p = params_of(model)
    w = torch.cat([t.reshape(-1) for t in p.values()])
    shapes = {k: t.shape for k, t in p.items()}

    def unflat(w):
        out, i = {}, 0
        for k, s in shapes.items():
            out[k] = w[i : i + s.numel()].reshape(s)
            i += s.numel()
        return out

    def f_first(w, X):
        return functional_call(model, unflat(w), (X,))

    def f_last(X, w):  # the parameters second: argnums=1 (and -1)
        return f_first(w, X)

    expected = dense_ggn(outputs_fn(model), F.cross_entropy, p, X, y)
    check_operator(GGNOperator(f_first, F.cross_entropy, w, (X, y)), expected)
    assert_close(GGNOperator(f_last, F.cross_entropy, w, (X, y), argnums=1).to_dense(), expected)
    assert_close(GGNOperator(f_last, F.cross_entropy, w, [X, y], argnums=-1).to_dense(), expected)
    Gm = GGNOperator.from_module(model, F.cross_entropy, (X, y))
    assert isinstance(Gm, GGNOperator) and list(Gm.spec.keys) == list(p)
    assert_close(Gm.to_dense(), expected)
    assert_pickles(Gm, torch.randn(Gm.shape[0], 2, dtype=D64, generator=gen(0)))


def test_uneven_batches_dataloaders_and_data_equal_the_full_batch():
    model = mlp(seed=4)
    X, y = classification(n=13, seed=4)
    p, f = params_of(model), outputs_fn(model)
    full = dense_ggn(f, F.cross_entropy, p, X, y)
    uneven = [(X[:2], y[:2]), (X[2:10], y[2:10]), (X[10:], y[10:])]
    G = GGNOperator.from_batches(f, F.cross_entropy, p, uneven)
    assert isinstance(G, DatasetMean) and G.tags.psd
    check_operator(G, full)
    assert_close(GGNOperator.from_data(f, F.cross_entropy, p, (X, y), 4).to_dense(), full)
    loader = DataLoader(TensorDataset(X, y), batch_size=5)
    Gl = GGNOperator.from_module(model, F.cross_entropy, loader, progress=True)
    assert_close(Gl.to_dense(), full)
    # LiSSA's hook: a minibatch is the operator at a random subset
    mini = GGNOperator.from_data(f, F.cross_entropy, p, (X, y), 4).minibatch(gen(0), 3)
    assert mini.shape == G.shape


def test_equals_the_hessian_for_logistic_regression():
    """A linear model with a loss convex in its outputs: the second term of the Hessian,
    Σ (∂ℓ/∂o) ∂²o/∂θ², vanishes, so the GGN is the Hessian (at any point, not only a minimum)."""
    X, y = classification(n=11, d=4, c=3, seed=5)
    w = 0.3 * torch.randn(12, dtype=D64, generator=gen(6))

    def logits(w, X):
        return X @ w.reshape(4, 3)

    G = GGNOperator(logits, F.cross_entropy, w, (X, y))
    H = hessian(lambda w: F.cross_entropy(logits(w, X), y))(w)
    check_operator(G, H)
    Hop = HessianOperator(lambda w, X, y: F.cross_entropy(logits(w, X), y), (w, X, y))
    assert_close(G.to_dense(), Hop.to_dense())


def test_differs_from_the_hessian_for_a_nonlinear_model():
    """The ground truth above is not trivially the Hessian: on an MLP away from a minimum the
    Hessian is indefinite and the GGN is not."""
    model = mlp(seed=7)
    X, y = classification(n=9, seed=7)
    p, f = params_of(model), outputs_fn(model)
    G = GGNOperator(f, F.cross_entropy, p, (X, y)).to_dense()
    H = HessianOperator.from_module(model, F.cross_entropy, (X, y)).to_dense()
    assert torch.linalg.eigvalsh(H).min() < -1e-6
    assert torch.linalg.eigvalsh(G).min() > -1e-10
    assert (G - H).abs().max() > 1e-4


def test_snapshot_and_gradient():
    model = mlp(seed=8)
    X, y = classification(n=6, seed=8)
    G = GGNOperator.from_module(model, F.cross_entropy, (X, y))
    v = torch.randn(G.shape[0], dtype=D64, generator=gen(1))
    before = G @ v
    with torch.no_grad():
        for q in model.parameters():
            q.add_(1.0)
    assert_close(G @ v, before, 1e-12)
    H = HessianOperator.from_module(mlp(seed=8), F.cross_entropy, (X, y))
    assert_close(G.gradient(), H.gradient())


# ---------------------------------------------------------------------- bad input
def _problem():
    model = mlp(seed=9)
    X, y = classification(n=6, seed=9)
    return outputs_fn(model), params_of(model), X, y


def test_a_loss_that_mixes_examples_is_refused():
    f, p, X, y = _problem()
    centred = lambda o, t: F.cross_entropy(o - o.mean(0), t)  # noqa: E731 - normalises over the batch
    with pytest.raises(ValueError, match="mean over the batch"):
        GGNOperator(f, centred, p, (X, y))
    with pytest.raises(ValueError, match="reduction='sum'"):
        GGNOperator(f, torch.nn.CrossEntropyLoss(reduction="sum"), p, (X, y))


def test_outputs_without_the_batch_dimension_are_refused():
    f, p, X, _ = _problem()
    with pytest.raises(ShapeMismatchError, match="first dimension"):
        GGNOperator(lambda p, X: f(p, X).sum(0), F.mse_loss, p, (X, torch.zeros(3, dtype=D64)))


def test_targets_of_the_wrong_shape_are_refused():
    f, p, X, y = _problem()
    with pytest.raises(ShapeMismatchError, match="outputs' shape"):
        GGNOperator(f, F.mse_loss, p, (X, torch.zeros(6, 1, dtype=D64)))  # torch would broadcast
    with pytest.raises(ShapeMismatchError, match="class indices"):
        GGNOperator(f, F.cross_entropy, p, (X, y[:, None]))
    with pytest.raises(ShapeMismatchError, match="targets must have"):
        GGNOperator(f, lambda o, t: ((o - t) ** 2).mean(), p, (X, torch.zeros(3, 3, dtype=D64)))


def test_other_bad_input():
    f, p, X, y = _problem()
    with pytest.raises(NonScalarLossError):
        GGNOperator(f, torch.nn.CrossEntropyLoss(reduction="none"), p, (X, y))
    with pytest.raises(NonFiniteError):
        GGNOperator(f, F.cross_entropy, p, (X * float("nan"), y))
    with pytest.raises(ValueError, match="inputs and then the targets"):
        GGNOperator(f, F.cross_entropy, p, (X,))
    with pytest.raises(ValueError, match="argnums"):
        GGNOperator(f, F.cross_entropy, p, (X, y), argnums=2)
    with pytest.raises(ValueError, match="chunk_size"):
        GGNOperator(f, F.cross_entropy, p, (X, y), chunk_size=0)
