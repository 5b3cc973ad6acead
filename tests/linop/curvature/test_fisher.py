"""FisherOperator (linop.curvature.fisher): the empirical Fisher against explicit per-example outer
products (MLPs, a small CNN, several losses, dict points, argnums, from_module, uneven batches);
the Monte-Carlo Fisher reproducible, independent of the batching, and equal to the GGN in
expectation (a statistical test); bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from linop import DatasetMean, FisherOperator, GGNOperator
from linop.testing import assert_close, check_operator
from tests.linop._helpers import assert_pickles
from tests.linop.curvature._models import (
    D64,
    LOSSES,
    classification,
    cnn,
    dense_empirical_fisher,
    dense_ggn,
    gen,
    mlp,
    outputs_fn,
    params_of,
    targets_for,
)


@pytest.mark.parametrize("name", list(LOSSES))
def test_empirical_fisher_every_loss(name):
    model, loss = mlp(seed=1), LOSSES[name]
    X, _ = classification(n=7, seed=1)
    y = targets_for(name, 7, 3)
    p, f = params_of(model), outputs_fn(model)
    Fo = FisherOperator(f, loss, p, (X, y))
    assert Fo.tags.psd
    expected = dense_empirical_fisher(f, loss, p, X, y)
    check_operator(Fo, expected)  # products (Jᵀ R Rᵀ J) and to_dense (per-example gradients)
    assert_close(FisherOperator(f, loss, p, (X, y), gradient_chunk=2).to_dense(), expected)


def test_cnn_dict_point_and_module():
    model = cnn(seed=2)
    g = gen(2)
    X, y = torch.randn(5, 1, 5, 5, dtype=D64, generator=g), torch.randint(0, 3, (5,), generator=g)
    p, f = params_of(model), outputs_fn(model)
    expected = dense_empirical_fisher(f, F.cross_entropy, p, X, y)
    check_operator(FisherOperator(f, F.cross_entropy, p, (X, y)), expected)
    Fm = FisherOperator.from_module(model, F.cross_entropy, (X, y))
    assert isinstance(Fm, FisherOperator) and list(Fm.spec.keys) == list(p)
    assert_close(Fm @ torch.eye(Fm.shape[0], dtype=D64), expected)
    assert_pickles(Fm, torch.randn(Fm.shape[0], 2, dtype=D64, generator=g))


def test_argnums_and_uneven_batches():
    model = mlp(seed=3)
    X, y = classification(n=11, seed=3)
    p, f = params_of(model), outputs_fn(model)
    expected = dense_empirical_fisher(f, F.cross_entropy, p, X, y)
    swapped = FisherOperator(lambda X, p: f(p, X), F.cross_entropy, p, (X, y), argnums=1)
    assert_close(swapped.to_dense(), expected)
    uneven = [(X[:3], y[:3]), (X[3:4], y[3:4]), (X[4:], y[4:])]
    Fb = FisherOperator.from_batches(f, F.cross_entropy, p, uneven)
    assert isinstance(Fb, DatasetMean)
    check_operator(Fb, expected)
    loader = DataLoader(TensorDataset(X, y), batch_size=4)
    assert_close(FisherOperator.from_module(model, F.cross_entropy, loader).to_dense(), expected)


@pytest.mark.parametrize("loss", [F.cross_entropy, torch.nn.MSELoss()])
def test_mc_fisher_is_reproducible_and_independent_of_batching(loss):
    model = mlp(seed=4)
    X, _ = classification(n=10, seed=4)
    y = targets_for("cross" if loss is F.cross_entropy else "mse", 10, 3)
    p, f = params_of(model), outputs_fn(model)
    one = FisherOperator(f, loss, p, (X, y), kind="mc", mc_samples=3, seed=5)
    assert one.tags.psd
    dense = one.to_dense()
    check_operator(one, dense)
    again = FisherOperator(f, loss, p, (X, y), kind="mc", mc_samples=3, seed=5)
    assert_close(again.to_dense(), dense, 1e-13)
    other = FisherOperator(f, loss, p, (X, y), kind="mc", mc_samples=3, seed=6)
    assert (other.to_dense() - dense).abs().max() > 1e-6
    # the samples of an example depend on its inputs and the seed, not on its batch
    batches = [(X[:4], y[:4]), (X[4:], y[4:])]
    split = FisherOperator.from_batches(f, loss, p, batches, kind="mc", mc_samples=3, seed=5)
    assert_close(split.to_dense(), dense)
    shuffled = torch.randperm(10, generator=gen(0))
    mixed = FisherOperator(f, loss, p, (X[shuffled], y[shuffled]), kind="mc", mc_samples=3, seed=5)
    assert_close(mixed.to_dense(), dense)
    # the targets play no part
    assert_close(
        FisherOperator(f, loss, p, (X, y.flip(0)), kind="mc", mc_samples=3, seed=5).to_dense(),
        dense,
    )


@pytest.mark.parametrize("loss", [F.cross_entropy, F.mse_loss])
def test_mc_fisher_converges_to_the_ggn(loss):
    """``K`` seeds give ``K`` i.i.d. estimates ``F_k`` (8 samples per example each) whose mean is
    the GGN ``G`` if the MC Fisher is unbiased. For a fixed probe pair ``(u, w)`` the scalars
    ``uᵀ F_k w`` are i.i.d. with mean ``uᵀ G w``, so ``t = (mean − uᵀGw) / (sd / √K)`` is
    Student-t with ``K − 1 = 39`` degrees of freedom (the CLT makes the scalars' mean close to
    normal). ``P(|t| > 4.5) ≈ 6·10⁻⁵`` per probe, ``3·10⁻⁴`` over 5 probes: a larger ``|t|`` is a
    bias, not chance. The same test rejects ``1.5 G`` (so it can fail), and the mean of the 40
    estimates is closer to ``G`` than a single one (the error shrinks as 1/√S)."""
    model = mlp(seed=6)
    X, _ = classification(n=8, seed=6)
    y = targets_for("cross" if loss is F.cross_entropy else "mse", 8, 3)
    p, f = params_of(model), outputs_fn(model)
    G = dense_ggn(f, loss, p, X, y)
    K = 40
    estimates = torch.stack(
        [
            FisherOperator(f, loss, p, (X, y), kind="mc", mc_samples=8, seed=s).to_dense()
            for s in range(K)
        ]
    )
    U = torch.randn(5, G.shape[0], dtype=D64, generator=gen(11))
    W = torch.randn(5, G.shape[0], dtype=D64, generator=gen(12))
    z = torch.einsum("in,knm,im->ki", U, estimates, W)

    def t_statistics(target: torch.Tensor) -> torch.Tensor:
        expected = torch.einsum("in,nm,im->i", U, target, W)
        return (z.mean(0) - expected) / (z.std(0) / K**0.5)

    assert t_statistics(G).abs().max() < 4.5, t_statistics(G)
    assert t_statistics(1.5 * G).abs().max() > 4.5  # the test detects a bias of this size
    mean = estimates.mean(0)
    assert float((mean - G).norm()) < float((estimates[0] - G).norm()) / 3  # expected ≈ √40
    # while the empirical Fisher is a different matrix
    empirical = FisherOperator(f, loss, p, (X, y)).to_dense()
    assert float((empirical - G).norm()) > 5 * float((mean - G).norm())


# ---------------------------------------------------------------------- bad input
def _problem():
    model = mlp(seed=9)
    X, y = classification(n=6, seed=9)
    return outputs_fn(model), params_of(model), X, y


def test_mc_needs_a_known_likelihood():
    f, p, X, y = _problem()
    quartic = lambda o, t: ((o - t) ** 4).mean()  # noqa: E731
    with pytest.raises(ValueError, match=r"categorical.*gaussian"):
        FisherOperator(f, quartic, p, (X, torch.zeros(6, 3, dtype=D64)), kind="mc")
    with pytest.raises(ValueError, match="cross-entropy"):
        FisherOperator(f, torch.nn.CrossEntropyLoss(label_smoothing=0.1), p, (X, y), kind="mc")
    # a lambda that is cross-entropy works when the caller says so
    ce = lambda o, t: F.cross_entropy(o, t)  # noqa: E731
    declared = FisherOperator(f, ce, p, (X, y), kind="mc", likelihood="categorical", seed=1)
    reference = FisherOperator(f, F.cross_entropy, p, (X, y), kind="mc", seed=1)
    assert_close(declared.to_dense(), reference.to_dense())


def test_bad_options():
    f, p, X, y = _problem()
    with pytest.raises(ValueError, match="valid kinds"):
        FisherOperator(f, F.cross_entropy, p, (X, y), kind="true")
    with pytest.raises(ValueError, match="likelihood"):
        FisherOperator(f, F.cross_entropy, p, (X, y), likelihood="poisson")
    with pytest.raises(ValueError, match="mc_samples"):
        FisherOperator(f, F.cross_entropy, p, (X, y), kind="mc", mc_samples=0)
    with pytest.raises(ValueError, match="seed"):
        FisherOperator(f, F.cross_entropy, p, (X, y), kind="mc", seed=-1)
    with pytest.raises(ValueError, match="gradient_chunk"):
        FisherOperator(f, F.cross_entropy, p, (X, y), gradient_chunk=0)
    with pytest.raises(ValueError, match="mean over the batch"):
        FisherOperator(f, torch.nn.MSELoss(reduction="sum"), p, (X, torch.zeros(6, 3, dtype=D64)))


def test_ggn_and_fisher_share_the_point_and_layout():
    f, p, X, y = _problem()
    G = GGNOperator(f, F.cross_entropy, p, (X, y))
    Fo = FisherOperator(f, F.cross_entropy, p, (X, y))
    assert G.spec == Fo.spec and torch.equal(G.params, Fo.params)
