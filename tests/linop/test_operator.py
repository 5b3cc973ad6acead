"""The base class (linop.operator): checks on input, the memory guard, row vectors, the autodiff
adjoint, tags and the operator's cache."""

from __future__ import annotations

import pytest
import torch

from linop import (
    DenseMemoryError,
    DenseOperator,
    DeviceMismatchError,
    DTypeMismatchError,
    IdentityOperator,
    LinearOperator,
    ShapeMismatchError,
)
from linop.algebra import AdjointOperator
from linop.operator import OperatorCache
from linop.testing import check_operator

D64 = torch.float64


class MatrixFree(LinearOperator):
    """Implements only _matmat: the adjoint comes from autodiff."""

    def __init__(self, M):
        super().__init__(M.shape, M.dtype, M.device)
        self.M = M

    def _matmat(self, X):
        return torch.tanh(torch.zeros(())) + self.M @ X  # differentiable, linear


def test_minimal_subclass_gets_everything():
    M = torch.randn(4, 6, dtype=D64)
    op = MatrixFree(M)
    assert isinstance(op.T, AdjointOperator)
    assert op.T.T is op
    check_operator(op, M)


def test_wrong_shape_dtype_device_raise_typed_errors():
    A = DenseOperator(torch.randn(3, 4, dtype=D64))
    with pytest.raises(ShapeMismatchError, match=r"\(4,\)"):
        A @ torch.ones(3, dtype=D64)
    with pytest.raises(ShapeMismatchError, match=r"\(4, k\)"):
        A @ torch.ones(3, 2, dtype=D64)
    with pytest.raises(ShapeMismatchError):
        A @ torch.ones(4, 2, 2, dtype=D64)
    with pytest.raises(DTypeMismatchError, match="float32"):
        A @ torch.ones(4, dtype=torch.float32)
    with pytest.raises(ShapeMismatchError):
        torch.ones(4, dtype=D64) @ A
    with pytest.raises(TypeError):
        A.matvec([1.0, 2.0, 3.0, 4.0])
    meta = torch.ones(4, dtype=D64, device="meta")
    with pytest.raises(DeviceMismatchError, match="meta"):
        A @ meta


def test_incompatible_operators_do_not_combine():
    A = DenseOperator(torch.randn(3, 3, dtype=D64))
    with pytest.raises(ShapeMismatchError):
        A + DenseOperator(torch.randn(3, 4, dtype=D64))
    with pytest.raises(DTypeMismatchError):
        A + IdentityOperator(3, torch.float32)
    with pytest.raises(DeviceMismatchError):
        A + IdentityOperator(3, D64, device="meta")
    with pytest.raises(ShapeMismatchError, match="inner dimensions"):
        A @ DenseOperator(torch.randn(4, 2, dtype=D64))
    with pytest.raises(TypeError):
        A * A
    with pytest.raises(TypeError):
        A + 1.0
    with pytest.raises(ZeroDivisionError):
        A / 0


def test_to_dense_memory_guard():
    A = IdentityOperator(1000, D64)  # 8 MB dense
    with pytest.raises(DenseMemoryError, match=r"7\.6 MiB.*force=True"):
        A.to_dense(max_bytes=1 << 20)
    assert A.to_dense(max_bytes=1 << 20, force=True).shape == (1000, 1000)
    assert A.to_dense(max_bytes=1 << 24).shape == (1000, 1000)
    # a 10M-parameter Hessian-sized operator is refused at the default budget, without work
    big = IdentityOperator(10_000_000)
    with pytest.raises(MemoryError, match=r"TiB|GiB"):
        big.to_dense()


def test_with_tags_sets_symmetric_and_leaves_original():
    M = torch.randn(3, 3, dtype=D64)
    A = DenseOperator(M @ M.T + 1e-3)
    B = A.with_tags(psd=True)
    assert B.tags.psd and B.tags.symmetric and not A.tags.psd
    assert not B.with_tags(symmetric=False).tags.psd
    with pytest.raises(TypeError, match="unknown tag"):
        A.with_tags(positive=True)
    with pytest.raises(ShapeMismatchError):
        DenseOperator(torch.randn(2, 3, dtype=D64)).with_tags(symmetric=True)


def test_repr_names_the_operator():
    assert "DenseOperator(shape=(3, 3)" in repr(DenseOperator(torch.eye(3)))


def test_complex_operators_are_refused():
    with pytest.raises(DTypeMismatchError, match="complex operators are not supported"):
        DenseOperator(torch.ones(2, 2, dtype=torch.complex64))


def test_the_autodiff_adjoint_is_an_operator_of_its_own():
    """The AdjointOperator of a matrix-free operator against the transposed matrix."""
    M = torch.randn(4, 6, dtype=D64, generator=torch.Generator().manual_seed(1))
    adjoint = MatrixFree(M).T
    assert isinstance(adjoint, AdjointOperator) and adjoint.shape == (6, 4)
    check_operator(adjoint, M.T)


def test_operator_cache_computes_once_per_key():
    cache = OperatorCache()
    calls = []
    compute = lambda: calls.append(1) or len(calls)  # noqa: E731
    assert cache.get(("a", 1), compute) == 1 and cache.get(("a", 1), compute) == 1
    assert cache.get(("a", 2), compute) == 2 and len(cache) == 2 and ("a", 1) in cache
    cache.clear()
    assert len(cache) == 0 and ("a", 1) not in cache
    assert cache.get(("a", 1), compute) == 3


def test_every_operator_owns_its_cache_and_tag_copies_share_it():
    A = DenseOperator(torch.eye(3, dtype=D64))
    B = DenseOperator(torch.eye(3, dtype=D64))
    assert isinstance(A.cache, OperatorCache) and A.cache is not B.cache
    assert A.with_tags(psd=True).cache is A.cache  # the same matrix: the same set-up results
