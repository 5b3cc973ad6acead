"""LiSSA (linop.inverse.lissa): the stochastic Neumann series over minibatches of a dataset mean,
exact on an operator without data; divergence is detected and explained."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch.func import hessian

from linop import (
    DatasetMean,
    DenseOperator,
    DiagonalOperator,
    DivergenceError,
    HessianOperator,
    IdentityOperator,
    LissaOptions,
    StopReason,
    solve,
)
from linop.tags import Tags
from linop.testing import assert_close, check_operator
from tests.linop._helpers import gen, spd

D64 = torch.float64
_gen, _spd = gen, spd


def test_lissa_converges_on_a_dataset_operator():
    g = _gen(11)
    X, y = torch.randn(64, 3, dtype=D64, generator=g), torch.randint(0, 2, (64,), generator=g)
    loss = lambda w, X, y: torch.nn.functional.cross_entropy(X @ w.reshape(3, 2), y)  # noqa: E731
    w = torch.zeros(6, dtype=D64)
    H = HessianOperator.from_data(loss, w, (X, y), batch_size=64)
    lam = 0.1
    A = H + lam * IdentityOperator.like(H)
    b = torch.randn(6, dtype=D64, generator=g)
    ref = torch.linalg.solve(hessian(loss)(w, X, y) + lam * torch.eye(6, dtype=D64), b)
    inv = A.inverse("lissa", batch_size=16, depth=300, repeats=8, scale=2.0, seed=0)
    x = inv @ b
    # stochastic: minibatches of 16 of 64 examples; the mean over 8 repeats is within 10 %
    assert float((x - ref).norm() / ref.norm()) < 0.10
    assert_close(inv @ b, x)  # seeded: the same answer on every call
    assert inv.info.hvps == 299 * 8
    full = HessianOperator(loss, (w, X, y)) + lam * IdentityOperator.like(H)
    det = full.inverse("lissa", depth=2000, scale=2.0) @ b  # no data to draw from: exact series
    assert_close(det, ref, 1e-8)


def test_lissa_divergence_is_detected_and_explained():
    A = DenseOperator(torch.diag(torch.tensor([1.0, 50.0], dtype=D64)), Tags(psd=True))
    with pytest.raises(DivergenceError, match="increase scale"):
        A.inverse("lissa", scale=10.0, depth=500) @ torch.ones(2, dtype=D64)


def test_lissa_on_an_indefinite_operator_raises_instead_of_answering():
    b = torch.ones(2, dtype=D64)
    with pytest.raises(DivergenceError, match="not positive definite"):
        solve(DiagonalOperator(torch.tensor([1.0, -0.5], dtype=D64)), b, "lissa")
    D = DiagonalOperator(torch.tensor([1.0, 3.0], dtype=D64))
    with pytest.raises(DivergenceError):
        solve(D - 1.5 * IdentityOperator.like(D), b, "lissa")
    assert_close(solve(D, b, "lissa", depth=2000), torch.tensor([1.0, 1 / 3], dtype=D64))
    H = HessianOperator(
        lambda w, M: 0.5 * w @ M @ w,
        (torch.zeros(2, dtype=D64), torch.diag(torch.tensor([1.0, -0.5], dtype=D64))),
    )
    with pytest.raises(DivergenceError):  # a one-batch Hessian has no data to draw: deterministic
        solve(H, b, "lissa", depth=30, scale=2.0)


def test_lissa_without_data_is_the_exact_series():
    M = _spd(6, 3, 1.0, 4.0)
    A = DenseOperator(M, Tags(psd=True))
    inv = A.inverse(LissaOptions(depth=200, scale=5.0))
    check_operator(inv, torch.linalg.inv(M), rtol=1e-8)
    R = A + 0.5 * IdentityOperator.like(A)  # λ is damping: exactly (A + λI)⁻¹
    check_operator(
        R.inverse("lissa", depth=200, scale=5.0),
        torch.linalg.inv(M + 0.5 * torch.eye(6, dtype=D64)),
        rtol=1e-8,
    )
    assert inv.info.reasons and all(r is StopReason.FIXED_DEPTH for r in inv.info.reasons)


def loss(w, X, y):
    return torch.nn.functional.cross_entropy(X @ w.reshape(3, 2), y)


def test_lissa_over_a_list_draws_whole_batches():
    g = _gen(12)
    X, y = torch.randn(48, 3, dtype=D64, generator=g), torch.randint(0, 2, (48,), generator=g)
    w = torch.zeros(6, dtype=D64)
    batches = [[X[i : i + 12], y[i : i + 12]] for i in range(0, 48, 12)]
    H = DatasetMean(HessianOperator(loss, (w, X, y)), batches)
    lam = 0.1
    A = H + lam * IdentityOperator.like(H)
    b = torch.randn(6, dtype=D64, generator=g)
    ref = torch.linalg.solve(hessian(loss)(w, X, y) + lam * torch.eye(6, dtype=D64), b)
    x = A.inverse("lissa", depth=300, repeats=8, scale=2.0) @ b
    # stochastic: whole batches of 12 of 48 examples; the mean over 8 repeats is within 10 %
    assert float((x - ref).norm() / ref.norm()) < 0.10
    with pytest.raises(ValueError, match="batch_size"):
        A.inverse("lissa", batch_size=4) @ b


def test_the_default_scale_is_estimated_from_the_top_eigenvalue_and_reported():
    M = _spd(12, 21, 0.5, 8.0)  # top eigenvalue 8
    lam = 0.25
    H = DenseOperator(M, Tags(psd=True))
    A = H + lam * IdentityOperator.like(H)
    b = torch.randn(12, dtype=D64, generator=_gen(22))
    inv = A.inverse("lissa", depth=400)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        x = inv @ b
    scale = inv.info.extra["scale"]
    # 10 Lanczos steps approach the top eigenvalue from below: the scale is about 1.5 (8 + λ)
    assert 1.5 * (0.99 * 8.0 + lam) <= scale <= 1.5 * (8.0 + lam) * (1 + 1e-12)
    assert inv.info.hvps == 10 + 399  # the estimate's products, then depth - 1 steps
    assert_close(x, torch.linalg.solve(M + lam * torch.eye(12, dtype=D64), b), 1e-8)
    # an explicit scale is used as given, with no products spent on it
    fixed = A.inverse("lissa", depth=600, scale=20.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fixed @ b
    assert fixed.info.extra["scale"] == 20.0 and fixed.info.hvps == 599


def test_the_default_scale_covers_the_minibatches():
    g = _gen(23)
    X, y = torch.randn(96, 3, dtype=D64, generator=g), torch.randint(0, 3, (96,), generator=g)
    loss = lambda w, X, y: torch.nn.functional.cross_entropy(X @ w.reshape(3, 3), y)  # noqa: E731
    w = torch.randn(9, dtype=D64, generator=g)
    H = HessianOperator.from_data(loss, w, (X, y), batch_size=96)
    A = H + 0.1 * IdentityOperator.like(H)
    b = torch.randn(9, dtype=D64, generator=g)
    inv = A.inverse("lissa", batch_size=32, depth=400, repeats=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DivergenceError, no ConvergenceWarning
        x = inv @ b
    scale = inv.info.extra["scale"]
    for seed in range(20):  # and most others: 1.5 times the top of 3 draws
        op = H.minibatch(torch.Generator().manual_seed(100 + seed), 32)
        assert float(torch.linalg.eigvalsh(op.to_dense())[-1]) + 0.1 < scale
    ref = torch.linalg.solve(H.to_dense() + 0.1 * torch.eye(9, dtype=D64), b)
    assert float((x - ref).norm() / ref.norm()) < 0.2
