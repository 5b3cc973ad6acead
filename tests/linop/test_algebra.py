"""Composites (linop.algebra) against their dense matrices, and the algebra's laws (Hypothesis).
How tags propagate through the algebra is tested in test_tags.py."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from linop import (
    DenseOperator,
    IdentityOperator,
    NonFiniteError,
    ProductOperator,
    RegularizedOperator,
    ScaledOperator,
    SumOperator,
)
from linop.testing import assert_close, check_operator
from tests.linop._helpers import KINDS, assert_pickles, gen
from tests.linop._helpers import random_operator as _random_operator

D64 = torch.float64
_gen = gen


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
    I = IdentityOperator.like(H)  # noqa: E741 - the identity, as in the math
    R = H + 1e-3 * I
    assert isinstance(R, RegularizedOperator) and R.base is H and R.shift == pytest.approx(1e-3)
    assert isinstance(0.5 * I + H, RegularizedOperator)
    R2 = R + 2 * I
    assert isinstance(R2, RegularizedOperator) and R2.base is H and R2.shift == pytest.approx(2.001)
    R3 = H + I
    assert R3.shift == 1.0
    assert (H - 0.25 * I).shift == pytest.approx(-0.25)
    assert R.tags.psd and not (H - 0.25 * I).tags.psd


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


def test_regularized_operator_against_dense():
    A = _random_operator("spd", 5, 4)
    a = A.to_dense()
    for shift in (0.3, -0.2, 0.0):
        R = RegularizedOperator(A, shift)
        check_operator(R, a + shift * torch.eye(5, dtype=D64))
    N = _random_operator("dense", 5, 5)  # a non-symmetric base: the adjoint keeps the shift
    check_operator(N + 2.0 * IdentityOperator.like(N), N.to_dense() + 2 * torch.eye(5, dtype=D64))
    with pytest.raises(ValueError, match="square"):
        RegularizedOperator(DenseOperator(torch.ones(2, 3, dtype=D64)), 1.0)


def test_scaling_a_rectangular_operator_by_zero_keeps_its_transpose_rectangular():
    A = DenseOperator(torch.randn(2, 3, dtype=D64))
    Z = 0 * A
    assert Z.T.shape == (3, 2) and not Z.tags.symmetric
    assert_close(Z.T @ torch.ones(2, dtype=D64), torch.zeros(3, dtype=D64))


def test_non_finite_scalars_and_shifts_are_refused():
    A = DenseOperator(torch.eye(3, dtype=D64))
    with pytest.raises(NonFiniteError):
        float("nan") * A
    with pytest.raises(NonFiniteError):
        A + float("inf") * IdentityOperator.like(A)
    with pytest.raises(NonFiniteError):
        A.regularize(float("nan"))


def test_composites_pickle():
    A, B = _random_operator("spd", 4, 0), _random_operator("dense", 4, 1)
    X = torch.randn(4, 2, dtype=D64, generator=_gen(2))
    for op in (A + 0.5 * IdentityOperator.like(A), A + B, 3.0 * B, A @ B, B.T):
        assert_pickles(op, X)
    R = assert_pickles(A.regularize(0.25), X)
    assert isinstance(R, RegularizedOperator) and R.shift == 0.25
