"""The Arnoldi method (linop.inverse.arnoldi): the top eigenpairs once, kept by the operator, then
``V (Λ + λ)⁻¹ Vᵀ``; λ sweeps, the complement, negative and zero eigenvalues."""

from __future__ import annotations

import pytest
import torch

from linop import (
    ArnoldiOptions,
    DenseOperator,
    IdentityOperator,
    LowRankOperator,
    NegativeCurvatureWarning,
    StopReason,
)
from linop.tags import Tags
from linop.testing import assert_close, check_operator
from tests.linop._helpers import Counting, gen, spd

D64 = torch.float64
_gen, _spd = gen, spd


def test_arnoldi_lambda_sweep_makes_no_new_products():
    C = Counting(_spd(20, 1, 0.001, 10.0))
    B = torch.randn(20, 3, dtype=D64)
    results = []
    for lam in [1e-3, 1e-2, 1e-1, 1.0]:
        inv = (C + lam * IdentityOperator.like(C)).inverse("arnoldi", rank=20, maxiter=20)
        results.append(inv @ B)
        if lam == 1e-3:
            first = C.count
            assert first == 20 and inv.info.hvps == 20
        else:
            assert inv.info.hvps == 0
    assert C.count == first
    ref = torch.linalg.solve(C.M + torch.eye(20, dtype=D64), B)
    assert_close(results[-1], ref, 1e-8)
    # eigh is public and cached on the operator
    low = C.eigh(20, maxiter=20)
    assert isinstance(low, LowRankOperator) and C.count == first


def test_arnoldi_low_rank_and_complement():
    M = _spd(30, 2, 0.5, 1.0)
    M[:3] = 0
    M[:, :3] = 0
    V = torch.linalg.qr(torch.randn(30, 4, dtype=D64, generator=_gen(0))).Q
    top = (V * torch.tensor([50.0, 40.0, 30.0, 20.0], dtype=D64)) @ V.T
    A = DenseOperator(top + 0.01 * torch.eye(30, dtype=D64), Tags(psd=True))
    lam = 1.0
    R = A.regularize(lam)
    B = torch.randn(30, 2, dtype=D64)
    ref = torch.linalg.solve(R.to_dense(), B)
    plain = R.inverse("arnoldi", rank=4, maxiter=30) @ B
    full = R.inverse("arnoldi", rank=4, maxiter=30, complement=True) @ B
    err = lambda X: float((X - ref).norm() / ref.norm())  # noqa: E731
    assert err(full) < 0.02 < err(plain)
    with pytest.raises(ValueError, match="λ > 0"):
        A.inverse("arnoldi", complement=True) @ B


def test_arnoldi_negative_and_zero_eigenvalues_warn_not_nan():
    M = torch.diag(torch.tensor([4.0, 2.0, -1.0, 0.0], dtype=D64))
    A = DenseOperator(M)
    with pytest.warns(NegativeCurvatureWarning, match="1 eigenvalue.*dropped.*1 negative"):
        x = A.inverse("arnoldi", rank=4, maxiter=4) @ torch.ones(4, dtype=D64)
    assert_close(x, torch.tensor([0.25, 0.5, -1.0, 0.0], dtype=D64), 1e-10)


def test_arnoldi_inverse_against_dense_and_its_options():
    M = _spd(7, 4)
    A = DenseOperator(M, Tags(psd=True))
    inv = A.inverse(ArnoldiOptions(rank=7, maxiter=7))
    check_operator(inv, torch.linalg.inv(M), rtol=1e-8)
    check_operator(
        (A + 0.3 * IdentityOperator(7, D64)).inverse("arnoldi", rank=7, maxiter=7),
        torch.linalg.inv(M + 0.3 * torch.eye(7, dtype=D64)),
        rtol=1e-8,
    )
    assert inv.info.reasons and all(r is StopReason.LOW_RANK for r in inv.info.reasons)
    assert isinstance(inv.strategy.low, LowRankOperator) and inv.strategy.low.rank == 7


def test_arnoldi_rank_above_the_size_is_capped():
    M = _spd(5, 5)
    inv = DenseOperator(M, Tags(psd=True)).inverse("arnoldi", rank=50)
    assert_close(
        inv @ torch.ones(5, dtype=D64), torch.linalg.solve(M, torch.ones(5, dtype=D64)), 1e-8
    )
    assert inv.strategy.low.rank == 5
