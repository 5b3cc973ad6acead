"""HessianOperator against torch.func.hessian, over one batch and over a dataset."""

import pytest
import torch
from torch.func import functional_call, hessian

from linop import (
    DeviceMismatchError,
    HessianOperator,
    NonFiniteError,
    NonScalarLossError,
    TensorBatches,
)
from linop.testing import assert_close, check_operator

D64 = torch.float64
MODES = ["rev-rev", "rev-fwd"]


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _logreg_problem(n=20, d=4, c=3, seed=0):
    g = _gen(seed)
    X = torch.randn(n, d, dtype=D64, generator=g)
    y = torch.randint(0, c, (n,), generator=g)
    w = 0.1 * torch.randn(d * c, dtype=D64, generator=g)

    def loss(w, X, y):
        return torch.nn.functional.cross_entropy(X @ w.reshape(d, c), y)

    return loss, w, X, y


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
    loss, w, X, y = _logreg_problem()
    H = HessianOperator(loss, (w, X, y), mode=mode)
    check_operator(H, hessian(loss)(w, X, y))


@pytest.mark.parametrize("mode", MODES)
def test_argnums_selects_the_input(mode):
    loss, w, X, y = _logreg_problem()
    f = lambda X, w, y: loss(w, X, y)  # noqa: E731
    H = HessianOperator(f, (X, w, y), argnums=1, mode=mode)
    check_operator(H, hessian(loss)(w, X, y))
    H_neg = HessianOperator(f, (X, w, y), argnums=-2, mode=mode)
    assert_close(H_neg.to_dense(), H.to_dense())


def _mlp(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2)).to(D64)


@pytest.mark.parametrize("mode", MODES)
def test_mlp_with_dict_parameters(mode):
    model = _mlp()
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
    loss, w, X, y = _logreg_problem()
    V = torch.randn(w.numel(), 7, dtype=D64, generator=_gen(3))
    ref = HessianOperator(loss, (w, X, y)) @ V
    for mode in MODES:
        for cache in (True, False):
            for vectorize in (True, False, None):
                H = HessianOperator(loss, (w, X, y), mode=mode, chunk_size=3, cache=cache, vectorize=vectorize)
                assert_close(H @ V, ref)
            assert_close(H @ V, ref)  # the cached linearisation is reused


@pytest.mark.parametrize("mode", MODES)
def test_dataset_mean_equals_full_batch(mode):
    loss, w, X, y = _logreg_problem(n=23)
    full = hessian(loss)(w, X, y)
    uneven = [(X[:5], y[:5]), (X[5:17], y[5:17]), (X[17:], y[17:])]
    H = HessianOperator.from_batches(loss, w, uneven, mode=mode)
    check_operator(H, full)
    Hd = HessianOperator.from_data(loss, w, (X, y), batch_size=4, mode=mode, progress=True)
    assert_close(Hd.to_dense(), full)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, y), batch_size=6)
    Hl = HessianOperator.from_batches(loss, w, loader, mode=mode)
    assert_close(Hl.to_dense(), full)
    assert_close(Hd.gradient(), torch.func.grad(loss)(w, X, y))
    assert_close(HessianOperator(loss, (w, X, y)).gradient(), torch.func.grad(loss)(w, X, y))


def test_from_module_over_a_dataloader():
    model = _mlp(1)
    g = _gen(4)
    X, y = torch.randn(12, 3, dtype=D64, generator=g), torch.randint(0, 2, (12,), generator=g)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, y), batch_size=5)
    Hs = HessianOperator.from_module(model, torch.nn.functional.cross_entropy, loader)
    H1 = HessianOperator.from_module(model, torch.nn.functional.cross_entropy, (X, y))
    assert_close(Hs.to_dense(), H1.to_dense())


def test_sample_draws_reproducible_minibatches():
    loss, w, X, y = _logreg_problem(n=30)
    H = HessianOperator.from_data(loss, w, (X, y), batch_size=10)
    a = H.minibatch(torch.Generator().manual_seed(7), batch_size=5)
    b = H.minibatch(torch.Generator().manual_seed(7), batch_size=5)
    c = H.minibatch(torch.Generator().manual_seed(8), batch_size=5)
    assert_close(a.to_dense(), b.to_dense())
    assert not torch.allclose(a.to_dense(), c.to_dense())
    idx = torch.randperm(30, generator=torch.Generator().manual_seed(7))[:5]
    assert_close(a.to_dense(), hessian(loss)(w, X[idx], y[idx]))
    batches = [(X[:10], y[:10]), (X[10:], y[10:])]
    Hb = HessianOperator.from_batches(loss, w, batches)
    s = Hb.minibatch(torch.Generator().manual_seed(0))
    assert any(torch.allclose(s.to_dense(), hessian(loss)(w, *b)) for b in batches)
    with pytest.raises(ValueError, match="from_data"):
        Hb.minibatch(torch.Generator(), batch_size=3)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, y), batch_size=4)
    Hl = HessianOperator.from_batches(loss, w, loader)
    sl = Hl.minibatch(torch.Generator().manual_seed(7), batch_size=5)
    assert_close(sl.to_dense(), a.to_dense())
    assert not hasattr(HessianOperator(loss, (w, X, y)), "minibatch")  # one batch: nothing to draw


def test_psd_flag_and_symmetry():
    loss, w, X, y = _logreg_problem()
    assert HessianOperator(loss, (w, X, y)).tags.symmetric
    assert not HessianOperator(loss, (w, X, y)).tags.psd
    assert HessianOperator(loss, (w, X, y), psd=True).tags.psd


def test_bad_inputs():
    loss, w, X, y = _logreg_problem()
    with pytest.raises(NonScalarLossError, match="single-element"):
        HessianOperator(lambda w: w * 2, (w,))
    with pytest.raises(NonScalarLossError, match="torch.Tensor"):
        HessianOperator(lambda w: 1.0, (w,))
    with pytest.raises(ValueError, match="unknown mode 'fwd-fwd'.*'rev-rev'"):
        HessianOperator(loss, (w, X, y), mode="fwd-fwd")
    with pytest.raises(ValueError, match="argnums"):
        HessianOperator(loss, (w, X, y), argnums=3)
    with pytest.raises(NonFiniteError, match="nan"):
        HessianOperator(loss, (w * float("nan"), X, y))
    with pytest.raises(DeviceMismatchError, match="move the data"):
        HessianOperator(loss, (w, X.to("meta"), y))
    with pytest.raises(TypeError, match="floating point"):
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


def test_tensor_batches():
    X, y = torch.arange(10.0).reshape(5, 2), torch.arange(5)
    tb = TensorBatches((X, y), 2)
    assert len(tb) == 3 and tb[-1][0].shape == (1, 2)
    with pytest.raises(IndexError):
        tb[3]
    with pytest.raises(ValueError, match="same number"):
        TensorBatches((X, y[:3]), 2)
    shared = TensorBatches((X.T, torch.ones(3), y), 2, in_dims=(1, None, 0))
    assert len(shared) == 3 and shared[1][0].shape == (2, 2) and shared[1][1].shape == (3,)
    assert torch.equal(shared.take(torch.tensor([4, 0]))[2], torch.tensor([4, 0]))
    with pytest.raises(ValueError, match="in_dims"):
        TensorBatches((X, y), 2, in_dims=(0,))


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
