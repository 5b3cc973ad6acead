"""Randomized Nyström approximations (linop.nystrom), the Nyström inverse and the Nyström
preconditioner: exact at full rank, within the theory's error bound below it, cached across ranks
and shifts, and refusing operators not known to be psd."""

from __future__ import annotations

import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from linop import (
    DenseOperator,
    IdentityOperator,
    IndefiniteOperatorError,
    NegativeCurvatureWarning,
    NonFiniteError,
    SingularOperatorError,
    StopReason,
    Tags,
)
from linop.nystrom import adaptive_nystrom, nystrom
from linop.testing import assert_close, check_operator
from tests.linop._helpers import Counting, gen, spd

D64 = torch.float64


def with_spectrum(values: torch.Tensor, seed: int) -> torch.Tensor:
    """A symmetric matrix with the given eigenvalues and random eigenvectors."""
    n = values.shape[0]
    Q = torch.linalg.qr(torch.randn(n, n, dtype=D64, generator=gen(seed))).Q
    M = (Q * values) @ Q.T
    return (M + M.T) / 2


def decaying(n: int, seed: int, rate: float = 0.7) -> torch.Tensor:
    return with_spectrum(rate ** torch.arange(n, dtype=D64), seed)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 24), seed=st.integers(0, 10_000))
def test_full_rank_nystrom_is_the_operator(n, seed):
    M = spd(n, seed, 1e-3, 10.0)
    low, products = nystrom(DenseOperator(M, Tags(psd=True)), n, seed=seed)
    assert products == n
    check_operator(low, M, 1e-8)
    assert_close(low.vectors.T @ low.vectors, torch.eye(n, dtype=D64), 1e-10)


def test_nystrom_error_is_within_the_expectation_bound_and_below_the_operator():
    """Tropp, Yurtsever, Udell and Cevher (2017): with a Gaussian test matrix of ``ℓ = r + p``
    columns, E tr(A − Â) ≤ (1 + r/(p − 1)) Σ_{j>r} λ_j. The mean over 20 seeds is compared with
    that bound (the mean of 20 draws of a non-negative error exceeding its expectation by 25 %
    would need a heavy tail the bound's proof excludes), and every draw with A − Â ⪰ 0, which
    holds deterministically."""
    n, ell, r = 60, 20, 10
    lam = 0.7 ** torch.arange(n, dtype=D64)
    M = with_spectrum(lam, 1)
    A = DenseOperator(M, Tags(psd=True))
    bound = (1 + r / (ell - r - 1)) * float(lam[r:].sum())
    errors = []
    for seed in range(20):
        low, _ = nystrom(A, ell, seed=seed)
        D = M - low.to_dense()
        assert float(torch.linalg.eigvalsh(D).min()) >= -1e-10
        errors.append(float(torch.trace(D)))
    assert sum(errors) / len(errors) <= 1.25 * bound
    # and a larger sketch is more accurate: the best rank-ell error is the tail beyond ell
    assert min(errors) >= float(lam[ell:].sum()) * (1 - 1e-8)


def test_the_sketch_is_cached_grows_and_serves_every_shift():
    M = decaying(50, 2)
    A = Counting(M, Tags(psd=True))
    low20, products = nystrom(A, 20, seed=3)
    assert products == A.count == 20
    assert nystrom(A, 20, seed=3)[1] == 0 and nystrom(A, 12, seed=3)[1] == 0
    low40, products = nystrom(A, 40, seed=3)
    assert products == 20 and A.count == 40  # only the new columns
    # the rank-20 sketch is the same whatever was asked before
    fresh = Counting(M, Tags(psd=True))
    assert_close(nystrom(fresh, 40, seed=3)[0].to_dense(), low40.to_dense(), 1e-12)
    assert_close(nystrom(Counting(M, Tags(psd=True)), 20, seed=3)[0].to_dense(), low20.to_dense())
    # H + λI is sketched through H: a sweep of λ costs nothing
    for lam in (1e-3, 1e-1, 1.0):
        shifted, products = nystrom(A + lam * IdentityOperator.like(A), 40, seed=3)
        assert products == 0
        assert_close(shifted.values, low40.values + lam, 1e-12)
    assert A.count == 40
    # another seed is another sketch
    assert nystrom(A, 10, seed=4)[1] == 10


def test_nystrom_refuses_what_it_cannot_approximate():
    M = with_spectrum(torch.tensor([3.0, 2.0, 1.0, -1.0], dtype=D64), 5)
    with pytest.raises(IndefiniteOperatorError, match="with_tags"):
        nystrom(DenseOperator(M), 2)
    # vouched psd but indefinite: the negative curvature is kept, with a warning
    with pytest.warns(NegativeCurvatureWarning, match="negative curvature"):
        low, _ = nystrom(DenseOperator(M, Tags(psd=True)), 4)
    assert_close(low.to_dense(), M, 1e-8)
    with pytest.raises(ValueError, match="rank must be between 1 and n = 4"):
        nystrom(DenseOperator(spd(4, 0), Tags(psd=True)), 5)
    bad = Counting(spd(4, 0), Tags(psd=True))
    bad.M[0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match="not finite"):
        nystrom(bad, 2)
    with pytest.raises(ValueError, match="shift"):
        adaptive_nystrom(DenseOperator(spd(4, 0), Tags(psd=True)), None, 1.0, 100, 0)


@settings(max_examples=20, deadline=None)
@given(n=st.integers(1, 20), seed=st.integers(0, 10_000), lam=st.sampled_from([0.0, 1e-3, 1.0]))
def test_full_rank_nystrom_inverse_is_the_inverse(n, seed, lam):
    M = spd(n, seed, 1e-2, 10.0)
    H = DenseOperator(M, Tags(psd=True))
    A = H + lam * IdentityOperator.like(H) if lam else H
    B = torch.randn(n, 3, dtype=D64, generator=gen(seed))
    inv = A.inverse("nystrom", rank=n, seed=seed)
    X = inv @ B
    assert_close(X, torch.linalg.solve(M + lam * torch.eye(n, dtype=D64), B), 1e-7)
    assert inv.info.reasons == [StopReason.LOW_RANK] * 3 and inv.info.extra["rank"] == n


def test_nystrom_inverse_below_full_rank_and_its_adaptive_rank():
    n, lam = 80, 1e-3
    values = 0.85 ** torch.arange(n, dtype=D64)  # λ̂_r reaches 1e-4 near r = 57, 1e-6 past n
    M = with_spectrum(values, 6)
    H = Counting(M, Tags(psd=True))
    A = H + lam * IdentityOperator.like(H)
    B = torch.randn(n, 4, dtype=D64, generator=gen(7))
    ref = torch.linalg.solve(M + lam * torch.eye(n, dtype=D64), B)
    for tol, expected in ((1e-1, 64), (1e-3, 80)):
        inv = A.inverse("nystrom", tol=tol)
        X = inv @ B
        rank = inv.info.extra["rank"]
        assert rank == expected
        assert H.count == expected  # the larger sketch reused the smaller one's products
        low, _ = nystrom(A, rank)
        assert float(low.values.min()) - lam <= tol * lam or rank == n
        # the error is about λ_{r+1}/λ relative, and within tol where the rule stopped
        rel = ((X - ref).norm(dim=0) / ref.norm(dim=0)).max()
        assert float(rel) <= 10 * tol
    with pytest.raises(ValueError, match="shift"):
        H.inverse("nystrom", rank=10) @ B
    with pytest.raises(ValueError, match="shift"):
        H.inverse("nystrom") @ B
    singular = DenseOperator(torch.zeros(3, 3, dtype=D64), Tags(psd=True))
    with pytest.raises(SingularOperatorError):
        singular.inverse("nystrom", rank=3) @ torch.ones(3, dtype=D64)
    for bad in (dict(rank=0), dict(tol=0.0), dict(max_rank=-1), dict(seed=-1), dict(depth=3)):
        with pytest.raises((ValueError, TypeError)):
            A.inverse("nystrom", **bad)


def test_nystrom_preconditioned_cg_agrees_with_cg_in_fewer_iterations():
    n, lam = 120, 1e-4
    M = with_spectrum(0.8 ** torch.arange(n, dtype=D64), 8)
    H = DenseOperator(M, Tags(psd=True))
    A = H + lam * IdentityOperator.like(H)
    B = torch.randn(n, 3, dtype=D64, generator=gen(9))
    plain = A.inverse("cg", rtol=1e-10)
    pre = A.inverse("cg", rtol=1e-10, preconditioner="nystrom")  # the adaptive rank
    block = A.inverse("cg", rtol=1e-10, preconditioner="nystrom", rank=32, block=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        X = plain @ B
        assert_close(pre @ B, X, 1e-6)
        assert_close(block @ B, X, 1e-6)
    assert int(pre.info.iterations.max()) * 2 < int(plain.info.iterations.max())
    assert int(block.info.iterations.max()) < int(plain.info.iterations.max())
    with pytest.raises(IndefiniteOperatorError):
        (DenseOperator(M) + lam * IdentityOperator.like(H)).inverse(
            "cg", preconditioner="nystrom"
        ) @ B


@settings(max_examples=15, deadline=None)
@given(n=st.integers(2, 20), seed=st.integers(0, 10_000), lam=st.sampled_from([1e-3, 1.0]))
def test_full_rank_nystrom_preconditioner_is_the_inverse(n, seed, lam):
    from linop.inverse import nystrom_preconditioner

    M = spd(n, seed, 1e-2, 10.0)
    H = DenseOperator(M, Tags(psd=True))
    A = H + lam * IdentityOperator.like(H)
    P, products = nystrom_preconditioner(A, rank=n, seed=seed)
    assert products == n
    assert P.tags.psd
    assert_close(P.to_dense(), torch.linalg.inv(M + lam * torch.eye(n, dtype=D64)), 1e-6)
    b = torch.randn(n, dtype=D64, generator=gen(seed))
    inv = A.inverse("cg", rtol=1e-10, preconditioner="nystrom", rank=n, seed=seed)
    inv @ b
    assert int(inv.info.iterations[0]) <= 2
