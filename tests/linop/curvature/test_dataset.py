"""The dataset mean (linop.curvature.dataset): DatasetMean over every kind of data source equals
the full-batch operator; built from an operator or a function; its gradient, its minibatch hook,
progress bars, empty data, repr and pickling; and the dataset forms of HessianOperator."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.func import grad, hessian
from torch.utils.data import DataLoader, TensorDataset

from linop import (
    Batches,
    DatasetMean,
    DenseOperator,
    HessianOperator,
    NonFiniteError,
    TensorBatches,
)
from linop.testing import assert_close, check_operator
from tests.linop._helpers import assert_pickles, gen, logreg_problem, mlp

D64 = torch.float64
MODES = ["rev-rev", "rev-fwd"]
_gen = gen


@pytest.mark.parametrize("mode", MODES)
def test_dataset_mean_equals_full_batch(mode):
    loss, w, X, y = logreg_problem(n=23)
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
    model = mlp(1)
    g = _gen(4)
    X, y = torch.randn(12, 3, dtype=D64, generator=g), torch.randint(0, 2, (12,), generator=g)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, y), batch_size=5)
    Hs = HessianOperator.from_module(model, torch.nn.functional.cross_entropy, loader)
    H1 = HessianOperator.from_module(model, torch.nn.functional.cross_entropy, (X, y))
    assert_close(Hs.to_dense(), H1.to_dense())


def test_sample_draws_reproducible_minibatches():
    loss, w, X, y = logreg_problem(n=30)
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


# ----------------------------------------------------------------------------- every source
def loss(w, X, y):
    """Softmax regression, 4 features and 3 classes (module level: operators pickle)."""
    return F.cross_entropy(X @ w.reshape(4, 3), y)


def scaled_loss(w, XT, s, y):
    """The same loss with examples along dimension 1 of ``XT`` and a shared feature scale ``s``."""
    return F.cross_entropy((XT.T * s) @ w.reshape(4, 3), y)


def _problem(n=23, seed=0):
    g = _gen(seed)
    X = torch.randn(n, 4, dtype=D64, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    w = 0.2 * torch.randn(12, dtype=D64, generator=g)
    return w, X, y


CUTS = [(0, 5), (5, 17), (17, 23)]  # uneven batches


def _sources(X, y):
    return {
        "list-of-tuples": [(X[a:b], y[a:b]) for a, b in CUTS],
        "list-of-lists": [[X[a:b], y[a:b]] for a, b in CUTS],
        "tuple-of-lists": tuple([X[a:b], y[a:b]] for a, b in CUTS),
        "dataloader": DataLoader(TensorDataset(X, y), batch_size=6),
        "tensor-batches": TensorBatches((X, y), 7),
        "batches": Batches([[X[a:b], y[a:b]] for a, b in CUTS]),
    }


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", list(_sources(*_problem()[1:])))
def test_dataset_mean_over_every_source_equals_the_full_batch_hessian(kind, mode):
    w, X, y = _problem()
    data = _sources(X, y)[kind]
    one = HessianOperator(loss, (w, X[:5], y[:5]), mode=mode)  # a template: its batch is not used
    D = DatasetMean(one, data)
    check_operator(D, hessian(loss)(w, X, y))
    assert_close(D.gradient(), grad(loss)(w, X, y))
    assert_close(HessianOperator.from_batches(loss, w, data, mode=mode).to_dense(), D.to_dense())


@pytest.mark.parametrize("mode", MODES)
def test_dataset_mean_over_tensor_batches_with_in_dims(mode):
    w, X, y = _problem()
    s = torch.tensor([1.0, 0.5, 2.0, 1.5], dtype=D64)
    data = TensorBatches((X.T, s, y), 5, in_dims=(1, None, 0))
    full = hessian(scaled_loss)(w, X.T, s, y)
    D = HessianOperator.from_data(scaled_loss, w, (X.T, s, y), 5, mode=mode, in_dims=(1, None, 0))
    check_operator(D, full)
    assert_close(D.gradient(), grad(scaled_loss)(w, X.T, s, y))
    assert_close(
        DatasetMean(HessianOperator(scaled_loss, (w, *data[0]), mode=mode), data).to_dense(), full
    )


def test_dataset_mean_from_a_function_equals_the_one_from_an_operator():
    w, X, y = _problem()
    data = _sources(X, y)["list-of-lists"]
    from_fn = DatasetMean(lambda batch: HessianOperator(loss, (w, *batch)), data)
    from_op = DatasetMean(HessianOperator(loss, (w, X, y)), data)
    full = hessian(loss)(w, X, y)
    check_operator(from_fn, full)
    assert_close(from_op.to_dense(), full)
    assert_close(from_fn.gradient(), grad(loss)(w, X, y))
    assert from_fn.tags == from_op.tags and from_fn.tags.symmetric
    assert_close(from_fn.params, w) and from_fn.spec == from_op.spec


def test_dataset_mean_is_generic():
    """The example-weighted mean of any one-batch operators, non-symmetric ones included (the
    adjoint then comes from autodiff through the mean)."""
    g = _gen(3)
    batches = [torch.randn(m, 4, dtype=D64, generator=g) for m in (2, 5, 3)]
    at = lambda b: DenseOperator(b[0].T @ b[0].flip(1) / b[0].shape[0])  # noqa: E731 - b = (B,)
    D = DatasetMean(at, batches)
    assert not D.tags.symmetric
    expected = sum(b.T @ b.flip(1) for b in batches) / 10  # n_b (B_bᵀ C_b / n_b) summed, over 10
    check_operator(D, expected)
    unweighted = DatasetMean(at, Batches(batches, examples_in=lambda b: 1))
    assert_close(unweighted.to_dense(), sum(at((b,)).to_dense() for b in batches) / 3)


def test_dataset_gradient_and_weights_follow_examples_in():
    w, X, y = _problem()
    data = [(X[a:b], y[a:b]) for a, b in CUTS]
    plain = HessianOperator.from_batches(loss, w, data, batch_size_of=lambda b: 1)
    assert_close(plain.to_dense(), sum(hessian(loss)(w, *b) for b in data) / 3)
    assert_close(plain.gradient(), sum(grad(loss)(w, *b) for b in data) / 3)


def test_dataset_minibatch_hook():
    w, X, y = _problem(30)
    for D in (
        DatasetMean(HessianOperator(loss, (w, X, y)), TensorBatches((X, y), 10)),
        DatasetMean(lambda batch: HessianOperator(loss, (w, *batch)), TensorBatches((X, y), 10)),
    ):
        a = D.minibatch(_gen(4), 6)
        assert isinstance(a, DatasetMean) and a.shape == D.shape
        idx = torch.randperm(30, generator=_gen(4))[:6]
        assert_close(a.to_dense(), hessian(loss)(w, X[idx], y[idx]))
        assert_close(a.gradient(), grad(loss)(w, X[idx], y[idx]))
        assert_close(D.minibatch(_gen(4), 6).to_dense(), a.to_dense())
        assert not torch.allclose(D.minibatch(_gen(5), 6).to_dense(), a.to_dense())
        assert_close(D.minibatch(_gen(4)).to_dense(), hessian(loss)(w, *D.data.minibatch(_gen(4))))
    lists = DatasetMean(HessianOperator(loss, (w, X, y)), [[X[:10], y[:10]], [X[10:], y[10:]]])
    drawn = lists.minibatch(_gen(0)).to_dense()
    assert any(
        torch.allclose(drawn, hessian(loss)(w, X[s], y[s])) for s in (slice(0, 10), slice(10, None))
    )
    with pytest.raises(ValueError, match="batch_size"):
        lists.minibatch(_gen(0), 4)


def test_progress_bars_do_not_change_results(capsys):
    w, X, y = _problem()
    data = TensorBatches((X, y), 4)
    quiet = DatasetMean(HessianOperator(loss, (w, X, y)), data)
    loud = DatasetMean(HessianOperator(loss, (w, X, y)), data, progress=True)
    V = torch.randn(12, 2, dtype=D64, generator=_gen(1))
    assert_close(loud @ V, quiet @ V)
    assert_close(loud.gradient(), quiet.gradient())
    assert_close(HessianOperator.from_batches(loss, w, list(data), progress=True) @ V, quiet @ V)


def test_empty_data_is_an_error():
    w, X, y = _problem()
    one = HessianOperator(loss, (w, X, y))
    with pytest.raises(ValueError, match="no examples"):
        DatasetMean(one, []) @ torch.ones(12, dtype=D64)
    with pytest.raises(ValueError, match="no examples"):
        DatasetMean(one, TensorBatches((X[:0], y[:0]), 4)).gradient()
    with pytest.raises(ValueError, match="no batches"):
        DatasetMean(lambda batch: HessianOperator(loss, (w, *batch)), [])
    with pytest.raises(ValueError, match="no batches"):
        HessianOperator.from_data(loss, w, (X[:0], y[:0]), 4)
    with pytest.raises(ValueError, match="no batches"):
        HessianOperator.from_module(mlp(), F.cross_entropy, [])


def test_repr_names_the_operator_and_the_source():
    w, X, y = _problem()
    D = HessianOperator.from_data(loss, w, (X, y), 5)
    text = repr(D)
    assert text.startswith("DatasetMean(shape=(12, 12), dtype=torch.float64")
    assert "HessianOperator" in text and "TensorBatches" in text
    assert "LoaderData" in repr(
        HessianOperator.from_batches(loss, w, DataLoader(TensorDataset(X, y), batch_size=5))
    )


def test_the_dataset_point_is_a_snapshot():
    w, X, y = _problem()
    w0 = w.clone()
    D = HessianOperator.from_data(loss, w, (X, y), 6)
    w.mul_(-3)
    assert_close(D.params, w0)
    assert_close(D.to_dense(), hessian(loss)(w0, X, y))
    assert_close(D.minibatch(_gen(0), 5).params, w0)


def test_a_nan_in_a_later_batch_of_a_dataset_hessian_is_an_error():
    X, y = torch.randn(30, 4, dtype=D64), torch.randint(0, 3, (30,))
    X[15, 0] = float("nan")
    H = HessianOperator.from_data(loss, torch.zeros(12, dtype=D64), (X, y), 10)
    with pytest.raises(NonFiniteError, match="not finite"):
        H @ torch.ones(12, dtype=D64)
    with pytest.raises(NonFiniteError):
        H.gradient()


@pytest.mark.parametrize(
    "kind", ["tensor-batches", "list-of-tuples", "list-of-lists", "dataloader"]
)
def test_dataset_means_pickle(kind):
    w, X, y = _problem()
    data = _sources(X, y)[kind]
    V = torch.randn(12, 2, dtype=D64, generator=_gen(2))
    D = assert_pickles(HessianOperator.from_batches(loss, w, data), V)
    assert_close(D.gradient(), grad(loss)(w, X, y))
    assert_pickles(DatasetMean(HessianOperator(loss, (w, X, y), mode="rev-fwd"), data), V)
    if kind == "tensor-batches":
        assert_close(
            D.minibatch(_gen(1), 4).to_dense(), hessian(loss)(w, *data.minibatch(_gen(1), 4))
        )
