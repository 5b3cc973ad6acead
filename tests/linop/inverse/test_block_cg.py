"""Block CG (linop.inverse.block_cg, ``inverse("cg", block=True)``): the answer of a dense solve,
per-column stopping, blocks that lose rank, preconditioners, bad curvature, product counts."""

from __future__ import annotations

import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from linop import DenseOperator, NegativeCurvatureWarning, StopReason, Tags
from linop.inverse.block_cg import orthonormal_basis
from linop.testing import assert_close
from tests.linop._helpers import Counting, gen, spd

D64 = torch.float64


def decaying(n: int, seed: int, low: float = 1e-3, high: float = 1e2) -> torch.Tensor:
    """A symmetric positive definite matrix with log-spaced eigenvalues in [low, high]."""
    Q = torch.linalg.qr(torch.randn(n, n, dtype=D64, generator=gen(seed))).Q
    M = (Q * torch.logspace(torch.log10(torch.tensor(low)), torch.log10(torch.tensor(high)), n,
                            dtype=D64)) @ Q.T  # fmt: skip
    return (M + M.T) / 2


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 30),
    k=st.integers(1, 8),
    seed=st.integers(0, 1000),
    rtol=st.sampled_from([1e-4, 1e-8, 1e-11]),
)
def test_block_cg_agrees_with_a_dense_solve_column_by_column(n, k, seed, rtol):
    M = spd(n, seed, 0.1, 10.0)
    B = torch.randn(n, k, dtype=D64, generator=gen(seed + 7))
    inv = DenseOperator(M, Tags(psd=True)).inverse("cg", rtol=rtol, block=True)
    X = inv @ B
    residual = (B - M @ X).norm(dim=0) / B.norm(dim=0)
    assert bool((residual <= rtol * 1.0001).all())
    assert inv.info.reasons == [StopReason.CONVERGED] * k
    assert_close(inv.info.residuals, residual, 1e-6)
    assert_close(X, torch.linalg.solve(M, B), 1e3 * rtol * 100)


def test_block_cg_needs_far_fewer_products_on_related_right_hand_sides():
    M = decaying(200, 3)
    A = Counting(M)
    B = M[:, :40] @ torch.randn(40, 30, dtype=D64, generator=gen(4))  # 30 related columns
    ref = torch.linalg.solve(M, B)
    counts = {}
    for block in (False, True):
        A.count = 0
        inv = A.inverse("cg", rtol=1e-8, block=block, maxiter=5000)
        X = inv @ B
        assert inv.info.converged.all()
        assert inv.info.hvps == A.count  # the report counts every product, true residual included
        assert_close(X, ref, 1e-4)
        counts[block] = A.count
    assert counts[True] * 3 < counts[False]


def test_a_block_that_loses_rank_is_deflated_without_nan():
    M = spd(20, 5)
    b = torch.randn(20, dtype=D64, generator=gen(6))
    c = torch.randn(20, dtype=D64, generator=gen(7))
    # a duplicate, a combination of two others, a zero column, and a scaled copy
    B = torch.stack([b, c, b, 2 * b - 3 * c, torch.zeros(20, dtype=D64), 1e-6 * c], dim=1)
    A = Counting(M)
    inv = A.inverse("cg", rtol=1e-10, block=True)
    X = inv @ B
    assert torch.isfinite(X).all()
    assert_close(X, torch.linalg.solve(M, B), 1e-8)
    assert torch.equal(X[:, 4], torch.zeros(20, dtype=D64))
    assert int(inv.info.iterations[4]) == 0
    # the block never held more than the two independent directions: ≤ 2 products an iteration
    assert inv.info.hvps - 6 <= 2 * int(inv.info.iterations.max())


def test_one_column_block_cg_is_plain_cg():
    M = decaying(50, 8, 1e-2, 1.0)
    b = torch.randn(50, dtype=D64, generator=gen(9))
    A = DenseOperator(M, Tags(psd=True))
    plain, block = A.inverse("cg", rtol=1e-9), A.inverse("cg", rtol=1e-9, block=True)
    assert_close(block @ b, plain @ b, 1e-6)
    assert abs(int(block.info.iterations[0]) - int(plain.info.iterations[0])) <= 2


def test_block_cg_with_preconditioners_and_a_warm_start():
    M = decaying(80, 10)
    A = DenseOperator(M, Tags(psd=True))
    B = torch.randn(80, 5, dtype=D64, generator=gen(11))
    ref = torch.linalg.solve(M, B)
    exact = A.inverse("cg", rtol=1e-10, block=True, preconditioner=DenseOperator(torch.inverse(M)))
    assert_close(exact @ B, ref, 1e-7)
    assert int(exact.info.iterations.max()) <= 2
    deflated = A.inverse("cg", rtol=1e-10, block=True, preconditioner="arnoldi", rank=20)
    assert_close(deflated @ B, ref, 1e-6)
    warm = A.inverse("cg", rtol=1e-10, block=True, x0=ref + 1e-9)
    cold = A.inverse("cg", rtol=1e-10, block=True)
    assert_close(warm @ B, ref, 1e-7)
    cold @ B
    assert int(warm.info.iterations.max()) < int(cold.info.iterations.max())


def test_block_cg_on_an_indefinite_matrix_warns_and_stays_finite():
    M = torch.diag(torch.tensor([3.0, 2.0, -1.0, 1.0, 0.5], dtype=D64))
    B = torch.ones(5, 2, dtype=D64)
    inv = DenseOperator(M).inverse("cg", block=True)
    with pytest.warns(NegativeCurvatureWarning, match="not positive definite"):
        X = inv @ B
    assert torch.isfinite(X).all()
    assert inv.info.reasons == [StopReason.NEGATIVE_CURVATURE] * 2
    # indefinite=True goes on through negative curvature: an invertible matrix is solved
    through = DenseOperator(M).inverse("cg", block=True, indefinite=True, rtol=1e-10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert_close(through @ B, torch.linalg.solve(M, B), 1e-8)


def test_block_cg_is_differentiable_in_the_right_hand_side():
    M = spd(6, 12)
    A = DenseOperator(M, Tags(psd=True))
    B = torch.randn(6, 3, dtype=D64, generator=gen(13), requires_grad=True)
    X = A.inverse("cg", rtol=1e-12, block=True) @ B
    X.sum().backward()
    assert_close(B.grad, torch.linalg.solve(M, torch.ones(6, 3, dtype=D64)), 1e-8)


def test_orthonormal_basis_drops_dependent_directions():
    a, b = torch.randn(40, 2, dtype=D64, generator=gen(14)).unbind(1)
    D = torch.stack([a, b, a + b, 1e-20 * a, torch.zeros(40, dtype=D64)], dim=1)
    P = orthonormal_basis(D, D64)
    assert P.shape == (40, 2)
    assert_close(P.T @ P, torch.eye(2, dtype=D64), 1e-12)
    # it spans a and b
    assert_close(P @ (P.T @ D[:, :3]), D[:, :3], 1e-12)
    assert orthonormal_basis(torch.zeros(5, 3, dtype=D64), D64).shape == (5, 0)
    # float32 blocks keep float32 and stay orthonormal to its precision
    P32 = orthonormal_basis(torch.randn(100, 10, generator=gen(15)), torch.float32)
    assert P32.dtype == torch.float32
    assert_close(P32.T @ P32, torch.eye(10), 1e-5)
