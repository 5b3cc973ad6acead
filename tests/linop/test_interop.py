"""scipy interoperability (linop.interop), both ways."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse
import scipy.sparse.linalg as spla
import torch

from linop import DenseOperator, ScipyOperator, aslinearoperator, to_scipy
from linop.tags import Tags
from linop.testing import check_operator

D64 = torch.float64


def test_numpy_and_tensor_become_dense_operators():
    M = np.random.default_rng(0).standard_normal((4, 3))
    op = aslinearoperator(M)
    assert isinstance(op, DenseOperator) and op.dtype == D64
    check_operator(op, torch.from_numpy(M))
    op32 = aslinearoperator(torch.from_numpy(M), dtype=torch.float32)
    assert op32.dtype == torch.float32
    assert aslinearoperator(op) is op


def test_scipy_sparse_and_linear_operator_import():
    S = scipy.sparse.random(6, 6, density=0.5, random_state=0, format="csr")
    S = S + S.T
    op = aslinearoperator(S)
    assert isinstance(op, ScipyOperator)
    check_operator(op, torch.from_numpy(S.toarray()))
    R = scipy.sparse.random(5, 3, density=0.6, random_state=1, format="csr")
    check_operator(aslinearoperator(spla.aslinearoperator(R)), torch.from_numpy(R.toarray()))


def test_to_scipy_dtype_and_float32():
    M = torch.randn(4, 4)
    S = to_scipy(DenseOperator(M))
    assert S.dtype == np.float32
    out = S.matvec(np.ones(4, dtype=np.float64))
    np.testing.assert_allclose(out, (M @ torch.ones(4)).numpy(), rtol=1e-6)


def test_unsupported_objects_raise():
    with pytest.raises(TypeError, match="cannot make a LinearOperator"):
        aslinearoperator([[1.0, 0.0], [0.0, 1.0]])
    with pytest.raises(ValueError, match="CPU"):
        aslinearoperator(scipy.sparse.eye(3), device="meta")


def test_scipy_view_accepts_arrays_with_negative_strides():
    M = torch.randn(4, 4, dtype=D64)
    X = np.arange(8.0).reshape(4, 2)[::-1]
    np.testing.assert_allclose(DenseOperator(M).to_scipy().matmat(X), M.numpy() @ X)


def test_scipy_operator_without_explicit_adjoint_and_with_tags():
    """A ScipyOperator of a non-symmetric scipy LinearOperator uses scipy's adjoint; one whose
    caller vouches for symmetry is its own adjoint."""
    M = np.random.default_rng(1).standard_normal((5, 5))
    op = ScipyOperator(spla.aslinearoperator(M))
    check_operator(op, torch.from_numpy(M))
    S = M + M.T
    sym = ScipyOperator(S, tags=Tags(symmetric=True))
    assert sym.T is sym
    check_operator(sym, torch.from_numpy(S))
