"""Composites against their dense matrices, the algebra's laws (Hypothesis) and tag soundness."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from linop import (
    DenseOperator,
    DiagonalOperator,
    IdentityOperator,
    LowRankOperator,
    ProductOperator,
    RegularizedOperator,
    ScaledOperator,
    SumOperator,
)
from linop.tags import Tags
from linop.testing import assert_close, check_operator

D64 = torch.float64


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _spd(n, seed):
    M = torch.randn(n, n, dtype=D64, generator=_gen(seed))
    return M @ M.T + 0.1 * torch.eye(n, dtype=D64)


def _random_operator(kind, n, seed):
    g = _gen(seed)
    if kind == "dense":
        return DenseOperator(torch.randn(n, n, dtype=D64, generator=g))
    if kind == "spd":
        return DenseOperator(_spd(n, seed), Tags(psd=True))
    if kind == "diag":
        return DiagonalOperator(torch.randn(n, dtype=D64, generator=g))
    if kind == "lowrank":
        V = torch.linalg.qr(torch.randn(n, 2, dtype=D64, generator=g)).Q
        return LowRankOperator(V, torch.rand(2, dtype=D64, generator=g))
    return IdentityOperator(n, D64)


KINDS = ["dense", "spd", "diag", "lowrank", "identity"]


def test_composites_against_dense():
    A, B = _random_operator("dense", 5, 1), _random_operator("spd", 5, 2)
    a, b = A.to_dense(), B.to_dense()
    check_operator(A + B, a + b)
    check_operator(3.0 * A, 3.0 * a)
    check_operator(A @ B, a @ b)
    check_operator(A.T, a.T)
    check_operator(B.regularize(0.3), b + 0.3 * torch.eye(5, dtype=D64))
    C = DenseOperator(torch.randn(5, 3, dtype=D64, generator=_gen(3)))
    check_operator(A @ C, a @ C.to_dense())
    check_operator(C.T @ B @ C, C.to_dense().T @ b @ C.to_dense())


def test_composites_flatten():
    A, B, C = (_random_operator("dense", 4, s) for s in range(3))
    S = A + B + C
    assert isinstance(S, SumOperator) and len(S.terms) == 3
    P = A @ B @ C
    assert isinstance(P, ProductOperator) and len(P.factors) == 3
    K = 2 * (3 * A)
    assert isinstance(K, ScaledOperator) and K.scalar == 6 and K.base is A


def test_regularized_is_recognised_and_accumulates():
    H = _random_operator("spd", 4, 0)
    I = IdentityOperator.like(H)
    R = H + 1e-3 * I
    assert isinstance(R, RegularizedOperator) and R.base is H and R.shift == pytest.approx(1e-3)
    assert isinstance(0.5 * I + H, RegularizedOperator)
    R2 = R + 2 * I
    assert isinstance(R2, RegularizedOperator) and R2.base is H and R2.shift == pytest.approx(2.001)
    R3 = H + I
    assert R3.shift == 1.0
    assert (H - 0.25 * I).shift == pytest.approx(-0.25)
    assert R.tags.psd and not (H - 0.25 * I).tags.psd


def test_tags_follow_the_rules():
    P = _random_operator("spd", 4, 0)
    N = -1.0 * P
    assert P.tags.psd and N.tags.nsd and not N.tags.psd and N.tags.symmetric
    assert (0 * P).tags.psd and (0 * P).tags.nsd
    assert (P + P).tags.psd
    assert not (P + N).tags.psd and (P + N).tags.symmetric
    assert not (P @ P).tags.psd and not (P @ P).tags.symmetric
    assert P.T.tags == P.tags
    D = _random_operator("dense", 4, 1)
    assert not (P + D).tags.symmetric


@settings(max_examples=40, deadline=None)
@given(
    kinds=st.lists(st.sampled_from(KINDS), min_size=2, max_size=3),
    seed=st.integers(0, 10_000),
    a=st.floats(-3, 3, allow_nan=False),
    b=st.floats(-3, 3, allow_nan=False),
)
def test_algebraic_laws(kinds, seed, a, b):
    n = 4
    ops = [_random_operator(k, n, seed + i) for i, k in enumerate(kinds)]
    A, B = ops[0], ops[1]
    C = ops[2] if len(ops) > 2 else ops[0]
    X = torch.randn(n, 2, dtype=D64, generator=_gen(seed))
    close = lambda P, Q: assert_close(P @ X, Q @ X, 1e-9)  # noqa: E731
    close(A + B, B + A)
    close((A + B) + C, A + (B + C))
    close(a * (A + B), a * A + b * B + (a - b) * B)
    close((a * b) * A, a * (b * A))
    close(A @ (B + C), A @ B + A @ C)
    close((A @ B) @ C, A @ (B @ C))
    assert_close((A @ B).T @ X, (B.T @ (A.T @ X)), 1e-9)
    assert_close((A + B).T.to_dense(), (A.to_dense() + B.to_dense()).T, 1e-9)
    close(A - A, 0 * B)


@settings(max_examples=40, deadline=None)
@given(
    kinds=st.lists(st.sampled_from(KINDS), min_size=1, max_size=3),
    scalars=st.lists(st.floats(-2, 2, allow_nan=False), min_size=3, max_size=3),
    seed=st.integers(0, 10_000),
    product=st.booleans(),
)
def test_tags_are_sound(kinds, scalars, seed, product):
    """Whatever the algebra builds, its tags hold for its dense matrix."""
    ops = [c * _random_operator(k, 4, seed + i) for i, (k, c) in enumerate(zip(kinds, scalars))]
    op = ops[0]
    for other in ops[1:]:
        op = op @ other if product else op + other
    M = op.to_dense()
    if op.tags.symmetric:
        assert_close(M, M.T, 1e-12)
    eig = torch.linalg.eigvalsh((M + M.T) / 2)
    tol = 1e-9 * max(1.0, float(eig.abs().max()))
    if op.tags.psd:
        assert float(eig.min()) >= -tol
    if op.tags.nsd:
        assert float(eig.max()) <= tol
