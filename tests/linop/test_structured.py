"""Operators with explicit structure (linop.structured) against their dense matrices."""

from __future__ import annotations

import pytest
import torch

from linop import (
    DenseOperator,
    DiagonalOperator,
    DTypeMismatchError,
    IdentityOperator,
    LowRankOperator,
    ShapeMismatchError,
)
from linop.testing import check_operator
from tests.linop._helpers import assert_pickles

D64 = torch.float64


def _rand(*shape, seed=0):
    return torch.randn(*shape, dtype=D64, generator=torch.Generator().manual_seed(seed))


def test_identity():
    check_operator(IdentityOperator(5, D64), torch.eye(5, dtype=D64))


def test_identity_like_copies_dtype_and_rejects_rectangular():
    A = DenseOperator(_rand(4, 4))
    I = IdentityOperator.like(A)  # noqa: E741 - the identity, as in the math
    assert (I.shape, I.dtype, I.device) == (A.shape, A.dtype, A.device)
    with pytest.raises(ShapeMismatchError, match="square"):
        IdentityOperator.like(DenseOperator(_rand(3, 4)))


@pytest.mark.parametrize("shape", [(4, 4), (3, 5), (6, 2)])
def test_dense(shape):
    M = _rand(*shape)
    check_operator(DenseOperator(M), M)


def test_dense_symmetric_detected_exactly():
    M = _rand(4, 4)
    assert DenseOperator(M + M.T).tags.symmetric
    assert not DenseOperator(M).tags.symmetric
    check_operator(DenseOperator(M + M.T), M + M.T)


def test_dense_rejects_bad_input():
    with pytest.raises(ShapeMismatchError):
        DenseOperator(torch.ones(3, dtype=D64))
    with pytest.raises(DTypeMismatchError, match="floating"):
        DenseOperator(torch.ones(3, 3, dtype=torch.int64))


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_diagonal(sign):
    d = sign * _rand(6).abs()
    op = DiagonalOperator(d)
    assert op.tags.psd == (sign > 0) and op.tags.nsd == (sign < 0)
    check_operator(op, torch.diag(d))


def test_diagonal_mixed_signs_has_no_definiteness():
    op = DiagonalOperator(torch.tensor([1.0, -1.0], dtype=D64))
    assert op.tags.symmetric and not op.tags.psd and not op.tags.nsd


def test_lowrank():
    V = torch.linalg.qr(_rand(7, 3)).Q
    s = torch.tensor([3.0, 1.0, 0.5], dtype=D64)
    op = LowRankOperator(V, s)
    assert op.rank == 3 and op.tags.psd
    check_operator(op, V @ torch.diag(s) @ V.T)


def test_lowrank_indefinite_and_bad_shapes():
    V = torch.linalg.qr(_rand(7, 2)).Q
    op = LowRankOperator(V, torch.tensor([1.0, -2.0], dtype=D64))
    assert not op.tags.psd
    check_operator(op, V @ torch.diag(op.values) @ V.T)
    with pytest.raises(ShapeMismatchError):
        LowRankOperator(V, torch.ones(3, dtype=D64))
    with pytest.raises(ValueError, match="dtype"):
        LowRankOperator(V, torch.ones(2, dtype=torch.float32))


def test_structured_operators_pickle():
    X = _rand(5, 2, seed=1)
    assert_pickles(DenseOperator(_rand(5, 5)), X)
    assert_pickles(DenseOperator(_rand(5, 3)), X[:3])
    V = torch.linalg.qr(_rand(5, 2, seed=2)).Q
    low = assert_pickles(LowRankOperator(V, torch.tensor([2.0, -1.0], dtype=D64)), X)
    assert low.rank == 2
    assert_pickles(DiagonalOperator(_rand(5)), X)
    assert_pickles(IdentityOperator(5, D64), X)
