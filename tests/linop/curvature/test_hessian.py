"""The one-batch HessianOperator (linop.curvature.hessian) against torch.func.hessian: both modes,
argnums, dict points, from_module, bad input; its point is a snapshot; it pickles. The dataset
forms (from_batches, from_data, from_module over many batches) are in test_dataset.py."""

from __future__ import annotations

import pickle

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, hessian

from linop import (
    DeviceMismatchError,
    DTypeMismatchError,
    HessianOperator,
    NonFiniteError,
    NonScalarLossError,
    hvp,
)
from linop.testing import assert_close, check_operator
from tests.linop._helpers import assert_pickles, logreg_problem, mlp

D64 = torch.float64
MODES = ["rev-rev", "rev-fwd"]


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("mode", MODES)
def test_quadratic(mode):
    g = _gen(1)
    M = torch.randn(5, 5, dtype=D64, generator=g)
    A = M @ M.T
    b = torch.randn(5, dtype=D64, generator=g)
    H = HessianOperator(lambda x: 0.5 * x @ A @ x + b @ x, (torch.zeros(5, dtype=D64),), mode=mode)
    check_operator(H, A)


@pytest.mark.parametrize("mode", MODES)
def test_logistic_regression_with_integer_labels(mode):
    loss, w, X, y = logreg_problem()
    H = HessianOperator(loss, (w, X, y), mode=mode)
    check_operator(H, hessian(loss)(w, X, y))


@pytest.mark.parametrize("mode", MODES)
def test_argnums_selects_the_input(mode):
    loss, w, X, y = logreg_problem()
    f = lambda X, w, y: loss(w, X, y)  # noqa: E731
    H = HessianOperator(f, (X, w, y), argnums=1, mode=mode)
    check_operator(H, hessian(loss)(w, X, y))
    H_neg = HessianOperator(f, (X, w, y), argnums=-2, mode=mode)
    assert_close(H_neg.to_dense(), H.to_dense())


@pytest.mark.parametrize("mode", MODES)
def test_mlp_with_dict_parameters(mode):
    model = mlp()
    g = _gen(2)
    X, y = torch.randn(16, 3, dtype=D64, generator=g), torch.randint(0, 2, (16,), generator=g)
    params = {k: p.detach() for k, p in model.named_parameters()}

    def f(p, X, y):
        return torch.nn.functional.cross_entropy(functional_call(model, p, (X,)), y)

    H = HessianOperator(f, (params, X, y), mode=mode)
    flat = H.spec.flatten(params)
    f_flat = lambda t: f(H.spec.unflatten(t), X, y)  # noqa: E731
    dense = hessian(f_flat)(flat)
    check_operator(H, dense)
    Hm = HessianOperator.from_module(model, torch.nn.functional.cross_entropy, (X, y), mode=mode)
    assert_close(Hm.to_dense(), dense)
    assert list(Hm.spec.keys) == [k for k, _ in model.named_parameters()]


def test_chunk_size_and_cache_do_not_change_results():
    loss, w, X, y = logreg_problem()
    V = torch.randn(w.numel(), 7, dtype=D64, generator=_gen(3))
    ref = HessianOperator(loss, (w, X, y)) @ V
    for mode in MODES:
        for cache in (True, False):
            for vectorize in (True, False, None):
                H = HessianOperator(
                    loss, (w, X, y), mode=mode, chunk_size=3, cache=cache, vectorize=vectorize
                )
                assert_close(H @ V, ref)
            assert_close(H @ V, ref)  # the cached linearisation is reused


def test_psd_flag_and_symmetry():
    loss, w, X, y = logreg_problem()
    assert HessianOperator(loss, (w, X, y)).tags.symmetric
    assert not HessianOperator(loss, (w, X, y)).tags.psd
    assert HessianOperator(loss, (w, X, y), psd=True).tags.psd


def test_bad_inputs():
    loss, w, X, y = logreg_problem()
    with pytest.raises(NonScalarLossError, match="single-element"):
        HessianOperator(lambda w: w * 2, (w,))
    with pytest.raises(NonScalarLossError, match=r"torch\.Tensor"):
        HessianOperator(lambda w: 1.0, (w,))
    with pytest.raises(ValueError, match=r"unknown mode 'fwd-fwd'.*'rev-rev'"):
        HessianOperator(loss, (w, X, y), mode="fwd-fwd")
    with pytest.raises(ValueError, match="argnums"):
        HessianOperator(loss, (w, X, y), argnums=3)
    with pytest.raises(NonFiniteError, match="nan"):
        HessianOperator(loss, (w * float("nan"), X, y))
    with pytest.raises(DeviceMismatchError, match="move the data"):
        HessianOperator(loss, (w, X.to("meta"), y))
    with pytest.raises(DTypeMismatchError, match="floating-point"):
        HessianOperator(lambda w: w.sum().float(), (torch.arange(3),))
    with pytest.raises(TypeError, match="one-shot"):
        HessianOperator.from_batches(loss, w, ((X, y) for _ in range(2)))
    with pytest.raises(ValueError, match="no batches"):
        HessianOperator.from_batches(loss, w, [])
    with pytest.raises(ValueError, match="chunk_size"):
        HessianOperator(loss, (w, X, y), chunk_size=0)
    H = HessianOperator(loss, (w, X, y))
    with pytest.raises(ValueError, match="float32"):
        H @ torch.ones(w.numel(), dtype=torch.float32)


def test_single_element_loss_of_shape_one_is_accepted():
    H = HessianOperator(lambda x: (x**2).sum().reshape(1), (torch.ones(3, dtype=D64),))
    assert_close(H.to_dense(), 2 * torch.eye(3, dtype=D64))


@pytest.mark.parametrize("mode", MODES)
def test_repeated_products_do_not_drift(mode):
    """torch.func.linearize's cached function drifts on repeated calls (torch 2.13); products at a
    fixed point must give the same answer every time."""
    g = _gen(5)
    X, y = torch.randn(50, 4, generator=g), (torch.rand(50, generator=g) > 0.5).float()
    f = lambda w, X, y: torch.nn.functional.binary_cross_entropy_with_logits(X @ w, y)  # noqa: E731
    w, v = torch.randn(4, generator=g), torch.randn(4, generator=g)
    H = HessianOperator(f, (w, X, y), mode=mode)
    ref = hessian(f)(w, X, y) @ v
    for _ in range(6):
        torch.testing.assert_close(H @ v, ref, rtol=1e-5, atol=1e-6)


def test_from_module_refuses_only_what_training_mode_makes_random_or_stateful():
    X, y = torch.randn(16, 4, dtype=D64), torch.randint(0, 3, (16,))
    lin = lambda: torch.nn.Linear(4, 5)  # noqa: E731
    for layer in (torch.nn.BatchNorm1d(5), torch.nn.Dropout(0.5)):
        m = torch.nn.Sequential(lin(), layer, torch.nn.Linear(5, 3)).double()
        before = {k: b.clone() for k, b in m.named_buffers()}
        with pytest.raises(ValueError, match=r"model\.eval"):  # before touching the model
            HessianOperator.from_module(m, F.cross_entropy, (X, y))
        assert all(torch.equal(before[k], b) for k, b in m.named_buffers())
        m.eval()
        n = sum(p.numel() for p in m.parameters())
        assert HessianOperator.from_module(m, F.cross_entropy, (X, y)).to_dense().shape == (n, n)
    for layer in (torch.nn.Dropout(0.0), torch.nn.InstanceNorm1d(1)):  # deterministic in training
        m = torch.nn.Sequential(
            lin(), torch.nn.Unflatten(1, (1, 5)), layer, torch.nn.Flatten(), torch.nn.Linear(5, 3)
        )
        HessianOperator.from_module(m.double(), F.cross_entropy, (X, y))


def test_functional_hvp_with_a_negative_argnums():
    f = lambda a, b: (a * b**3).sum()  # noqa: E731
    out = hvp(f, (torch.ones(2), torch.tensor([1.0, 2.0])), torch.ones(2), argnums=-1)
    assert out.tolist() == [6.0, 12.0]


def test_functional_hvp_against_torch_func_hessian():
    loss, w, X, y = logreg_problem()
    v = torch.randn(w.numel(), dtype=D64, generator=_gen(9))
    expected = hessian(loss)(w, X, y) @ v
    for mode in MODES:
        assert_close(hvp(loss, (w, X, y), v, mode=mode), expected)
        V = torch.randn(3, w.numel(), dtype=D64, generator=_gen(10))
        batched = torch.func.vmap(lambda u: hvp(loss, (w, X, y), u, mode=mode))(V)  # noqa: B023
        assert_close(batched, (hessian(loss)(w, X, y) @ V.T).T)
    with pytest.raises(ValueError, match="unknown mode"):
        hvp(loss, (w, X, y), v, mode="fwd-fwd")


# ------------------------------------------------------------------ the point is a snapshot
def logreg_loss(w, X, y):
    """Softmax regression with 4 features and 3 classes (module level: operators pickle)."""
    return F.cross_entropy(X @ w.reshape(4, 3), y)


def mlp_loss(p, X, y):
    """A one-hidden-layer network as a function of a dict of parameters."""
    return F.cross_entropy(torch.tanh(X @ p["W"]) @ p["v"] + p["b"], y)


def _data(n=24, seed=0):
    g = _gen(seed)
    return torch.randn(n, 4, dtype=D64, generator=g), torch.randint(0, 3, (n,), generator=g)


def _dict_point(seed=1):
    g = _gen(seed)
    return {
        "W": 0.5 * torch.randn(4, 5, dtype=D64, generator=g),
        "v": 0.5 * torch.randn(5, 3, dtype=D64, generator=g),
        "b": torch.zeros(3, dtype=D64),
    }


@pytest.mark.parametrize("cache", [True, False])
@pytest.mark.parametrize("mode", MODES)
def test_a_tensor_point_is_a_snapshot(mode, cache):
    X, y = _data()
    w = 0.1 * torch.randn(12, dtype=D64, generator=_gen(2))
    w0 = w.clone()
    H = HessianOperator(logreg_loss, (w, X, y), mode=mode, cache=cache)
    w.add_(1)  # the caller's tensor changes in place after construction
    assert_close(H.params, w0)
    assert_close(H.to_dense(), hessian(logreg_loss)(w0, X, y))
    assert_close(H.gradient(), grad(logreg_loss)(w0, X, y))
    assert_close(H.at((X[:10], y[:10])).to_dense(), hessian(logreg_loss)(w0, X[:10], y[:10]))


@pytest.mark.parametrize("cache", [True, False])
@pytest.mark.parametrize("mode", MODES)
def test_a_dict_point_is_a_snapshot(mode, cache):
    X, y = _data()
    p = _dict_point()
    p0 = {k: t.clone() for k, t in p.items()}
    H = HessianOperator(mlp_loss, (p, X, y), mode=mode, cache=cache)
    p["W"].add_(1)
    p["v"].mul_(-2)
    p["b"].sub_(3)
    flat0 = H.spec.flatten(p0)
    f = lambda t: mlp_loss(H.spec.unflatten(t), X, y)  # noqa: E731
    assert_close(H.params, flat0)
    assert_close(H.to_dense(), hessian(f)(flat0))
    assert_close(H.gradient(), grad(f)(flat0))


def _model(kind):
    torch.manual_seed(0)
    if kind == "one-parameter":
        return torch.nn.Linear(4, 3, bias=False).double()
    return torch.nn.Sequential(
        torch.nn.Linear(4, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3)
    ).double()


@pytest.mark.parametrize("kind", ["one-parameter", "several-parameters"])
@pytest.mark.parametrize("mode", MODES)
def test_training_the_model_afterwards_does_not_change_from_module(kind, mode):
    """An optimizer step and an in-place ``add_`` update the model's parameters after the
    operators are built: their products stay those at the construction point."""
    X, y = _data()
    model = _model(kind)
    point = {k: p.detach().clone() for k, p in model.named_parameters()}
    one = HessianOperator.from_module(model, F.cross_entropy, (X, y), mode=mode)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, y), batch_size=7)
    dataset = HessianOperator.from_module(model, F.cross_entropy, loader, mode=mode)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    F.cross_entropy(model(X), y).backward()
    optimizer.step()
    with torch.no_grad():
        next(model.parameters()).add_(1)
    assert not torch.equal(next(model.parameters()), next(iter(point.values())))

    flat = one.spec.flatten(point)
    f = lambda t: F.cross_entropy(functional_call(model, one.spec.unflatten(t), (X,)), y)  # noqa: E731
    expected = hessian(f)(flat)
    assert_close(one.to_dense(), expected)
    assert_close(dataset.to_dense(), expected)
    assert_close(one.gradient(), grad(f)(flat))
    assert_close(dataset.gradient(), grad(f)(flat))


def test_from_module_accepts_one_batch_as_a_list():
    X, y = _data()
    model = _model("several-parameters")
    as_tuple = HessianOperator.from_module(model, F.cross_entropy, (X, y))
    as_list = HessianOperator.from_module(model, F.cross_entropy, [X, y])
    assert isinstance(as_list, HessianOperator)  # one batch, not a dataset of two
    assert_close(as_list.to_dense(), as_tuple.to_dense())
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, y), batch_size=10)
    first = next(iter(loader))  # what a DataLoader yields: a list [X, y]
    assert isinstance(first, list)
    from_loader = HessianOperator.from_module(model, F.cross_entropy, first)
    assert isinstance(from_loader, HessianOperator)
    assert_close(
        from_loader.to_dense(),
        HessianOperator.from_module(model, F.cross_entropy, (X[:10], y[:10])).to_dense(),
    )


# ------------------------------------------------------------------------------------ pickling
@pytest.mark.parametrize("mode", MODES)
def test_one_batch_hessians_pickle(mode):
    X, y = _data()
    w = 0.1 * torch.randn(12, dtype=D64, generator=_gen(3))
    V = torch.randn(12, 3, dtype=D64, generator=_gen(4))
    H = HessianOperator(logreg_loss, (w, X, y), mode=mode)
    H @ V
    assert ("_linearized" in H.__dict__) == (mode == "rev-rev")  # the cached linearisation
    copy = assert_pickles(H, V)
    assert "_linearized" not in pickle.loads(pickle.dumps(H)).__dict__  # dropped, rebuilt on use
    assert_close(copy.gradient(), H.gradient())
    assert_close(copy.at((X[:5], y[:5])) @ V, H.at((X[:5], y[:5])) @ V)
    P = HessianOperator(mlp_loss, (_dict_point(), X, y), mode=mode)
    assert_pickles(P, torch.randn(P.shape[0], 2, dtype=D64, generator=_gen(5)))


def test_from_module_pickles():
    X, y = _data()
    model = _model("several-parameters")
    one = HessianOperator.from_module(model, F.cross_entropy, (X, y))
    V = torch.randn(one.shape[0], 2, dtype=D64, generator=_gen(6))
    assert_pickles(one, V)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, y), batch_size=7)
    assert_pickles(HessianOperator.from_module(model, F.cross_entropy, loader), V)
