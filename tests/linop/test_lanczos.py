"""Lanczos and eigh (linop.lanczos): against dense eigendecompositions, through breakdowns, and
the cache: set-up products are kept by the operator they describe, so repeats and λ sweeps cost
nothing new, tag copies share them, and another batch starts afresh."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch.func import hessian

from linop import DenseOperator, HessianOperator, IdentityOperator, LowRankOperator
from linop.lanczos import eigh, lanczos
from linop.tags import Tags
from linop.testing import assert_close
from tests.linop._helpers import Counting, gen, spd

D64 = torch.float64


def test_lanczos_builds_an_orthonormal_basis_and_the_tridiagonal_projection():
    M = spd(12, 0, 0.5, 8.0)
    Q, alpha, beta = lanczos(DenseOperator(M, Tags(psd=True)), 6, seed=3)
    assert Q.shape == (6, 12) and alpha.shape == (6,) and beta.shape == (5,)
    assert_close(Q @ Q.T, torch.eye(6, dtype=D64), 1e-10)
    T = torch.diag(alpha) + torch.diag(beta, 1) + torch.diag(beta, -1)
    assert_close(Q @ M @ Q.T, T, 1e-10)


def test_eigh_matches_dense_and_survives_breakdown():
    # a rank-3 operator: Lanczos finds the invariant subspace after 3 steps and must restart
    V = torch.linalg.qr(torch.randn(25, 3, dtype=D64, generator=gen(4))).Q
    L = LowRankOperator(V, torch.tensor([5.0, -3.0, 1.0], dtype=D64))
    low = L.eigh(5, maxiter=25)
    assert torch.isfinite(low.vectors).all()
    assert_close(low.values[:3], torch.tensor([5.0, -3.0, 1.0], dtype=D64), 1e-10)
    assert_close(low.values[3:], torch.zeros(2, dtype=D64), 1e-10)
    assert_close((low.vectors.T @ low.vectors), torch.eye(5, dtype=D64), 1e-10)
    la = L.eigh(1, maxiter=25, which="LA")
    assert_close(la.values, torch.tensor([5.0], dtype=D64), 1e-10)


def test_eigh_on_a_softmax_hessian_with_a_null_space():
    g = gen(7)
    X, y = torch.randn(50, 4, dtype=D64, generator=g), torch.randint(0, 3, (50,), generator=g)
    loss = lambda w: torch.nn.functional.cross_entropy(X @ w.reshape(4, 3), y)  # noqa: E731
    w = torch.zeros(12, dtype=D64)
    H = HessianOperator(loss, (w,))
    dense = hessian(loss)(w)
    ref = torch.linalg.eigvalsh(dense).flip(0)
    low = H.eigh(12, maxiter=12)
    assert_close(low.values.sort(descending=True).values, ref, 1e-9)
    assert torch.isfinite(low.vectors).all()


def test_eigh_of_a_regularized_operator_ranks_the_shifted_values():
    H = DenseOperator(torch.diag(torch.tensor([-3.0, -1.5, 1.0, 2.0], dtype=D64)))
    R = H + 2.5 * IdentityOperator.like(H)
    assert_close(R.eigh(2, maxiter=4).values, torch.tensor([4.5, 3.5], dtype=D64), 1e-10)
    assert_close(H.eigh(2, maxiter=4).values, torch.tensor([-3.0, 2.0], dtype=D64), 1e-10)


def test_eigh_refuses_what_it_cannot_do():
    N = DenseOperator(torch.randn(4, 4, dtype=D64, generator=gen(0)))
    with pytest.raises(ValueError, match="symmetric"):
        eigh(N, 2)
    S = DenseOperator(spd(4, 0))
    with pytest.raises(ValueError, match="k must be"):
        eigh(S, 5)
    with pytest.raises(ValueError, match="maxiter"):
        eigh(S, 3, maxiter=2)
    with pytest.raises(ValueError, match="which"):
        eigh(S, 2, which="SA")


# ------------------------------------------------------------------------------------ the cache
def test_a_second_eigh_costs_no_products():
    C = Counting(spd(15, 1))
    first, products = eigh(C, 4, maxiter=10)
    assert products == C.count == 10 and len(C.cache) == 1
    again, products = eigh(C, 4, maxiter=10)
    assert products == 0 and C.count == 10
    assert torch.equal(again.values, first.values) and torch.equal(again.vectors, first.vectors)
    fewer, products = eigh(C, 2, maxiter=10)  # fewer pairs of the same run: still cached
    assert products == 0 and torch.equal(fewer.values, first.values[:2])
    _, products = eigh(C, 4, maxiter=12)  # another run: new products, a second entry
    assert products == 12 and C.count == 22 and len(C.cache) == 2
    _, products = eigh(C, 4, maxiter=10, seed=1)
    assert products == 10 and len(C.cache) == 3
    C.cache.clear()
    assert eigh(C, 4, maxiter=10)[1] == 10


def test_a_lambda_sweep_reuses_the_base_operators_cache():
    M = spd(15, 2, 0.1, 5.0)
    H = Counting(M)
    values = []
    for lam in (0.1, 2.0):
        R = H + lam * IdentityOperator.like(H)
        low, products = eigh(R, 15, maxiter=15)
        assert products == (15 if lam == 0.1 else 0) and H.count == 15
        assert len(R.cache) == 0 and len(H.cache) == 1  # kept by H, for every shift
        assert_close(
            low.values, torch.linalg.eigvalsh(M + lam * torch.eye(15, dtype=D64)).flip(0), 1e-9
        )
        values.append(low.values)
    assert_close(values[1] - values[0], torch.full((15,), 1.9, dtype=D64), 1e-12)
    assert eigh(H, 15, maxiter=15, shift=0.5)[1] == 0  # an explicit shift too


def test_tag_copies_share_the_cache():
    H = Counting(spd(10, 3), Tags(symmetric=True))
    psd = H.with_tags(psd=True)
    assert psd.cache is H.cache
    eigh(H, 3, maxiter=8)
    assert eigh(psd, 3, maxiter=8)[1] == 0 and H.count == 8


def loss(w, X, y):
    return F.cross_entropy(X @ w.reshape(3, 4), y)


def test_another_batch_starts_with_a_fresh_cache():
    g = gen(5)
    X, y = torch.randn(40, 3, dtype=D64, generator=g), torch.randint(0, 4, (40,), generator=g)
    w = 0.1 * torch.randn(12, dtype=D64, generator=g)
    H = HessianOperator(loss, (w, X[:20], y[:20]))
    eigh(H, 12, maxiter=12)
    other = H.at((X[20:], y[20:]))
    assert other.cache is not H.cache and len(other.cache) == 0 and len(H.cache) == 1
    low, products = eigh(other, 12, maxiter=12)
    assert products == 12
    expected = torch.linalg.eigvalsh(hessian(loss)(w, X[20:], y[20:])).flip(0)
    assert_close(low.values.sort(descending=True).values, expected, 1e-9)
    assert_close(
        H.eigh(12, maxiter=12).values.sort(descending=True).values,
        torch.linalg.eigvalsh(hessian(loss)(w, X[:20], y[:20])).flip(0),
        1e-9,
    )


def test_lanczos_builds_no_autograd_graph_through_its_products():
    """A Hessian with respect to some parameters while others (inputs of the loss) require grad:
    its products record a graph, and every Lanczos step used to convert one to a float (a torch
    warning, memory and time). The decomposition runs without a graph."""
    g = gen(0)
    W1 = torch.randn(3, 4, dtype=torch.float64, generator=g).requires_grad_()  # not differentiated
    w2 = torch.randn(6, dtype=torch.float64, generator=g)
    X, y = torch.randn(10, 4, dtype=torch.float64, generator=g), torch.randint(0, 2, (10,))

    def loss(w2, W1, X, y):
        return F.cross_entropy(torch.tanh(X @ W1.T) @ w2.reshape(3, 2), y)

    H = HessianOperator(loss, (w2, W1, X, y))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        low = H.eigh(3)
    assert not low.vectors.requires_grad and low.vectors.grad_fn is None
