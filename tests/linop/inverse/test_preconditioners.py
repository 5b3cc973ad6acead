"""CG's preconditioners as operators (linop.inverse.preconditioners): the deflation
preconditioner against its dense formula, its cached set-up, and what ``preconditioner=``
accepts."""

from __future__ import annotations

import pytest
import torch

from linop import DenseOperator, DTypeMismatchError, IdentityOperator, ShapeMismatchError
from linop.inverse.preconditioners import as_preconditioner, deflation_preconditioner
from linop.tags import Tags
from linop.testing import assert_close, check_operator
from tests.linop._helpers import Counting, gen, spd

D64 = torch.float64
_gen, _spd = gen, spd


def test_a_float32_preconditioner_for_a_float64_solve_is_a_dtype_error():
    A = DenseOperator(torch.eye(3, dtype=D64), Tags(psd=True))
    with pytest.raises(DTypeMismatchError, match="preconditioner"):
        A.inverse("cg", preconditioner=DenseOperator(torch.eye(3))) @ torch.ones(3, dtype=D64)


def _deflation_dense(M, rank):
    """``V diag(1/d − 1/σ) Vᵀ + I/σ`` from the top ``rank`` eigenpairs of ``M``, by
    torch.linalg.eigh."""
    d, U = torch.linalg.eigh(M)
    d, U = d.flip(0)[:rank], U.flip(1)[:, :rank]
    sigma = d.min()
    n = M.shape[0]
    return (U * (1 / d - 1 / sigma)) @ U.T + torch.eye(n, dtype=M.dtype) / sigma


@pytest.mark.parametrize("shift", [0.0, 0.5])
def test_deflation_preconditioner_against_dense(shift):
    n, rank = 12, 4
    M = _spd(n, 6, 0.1, 20.0)
    C = Counting(M)
    A = C + shift * IdentityOperator.like(C) if shift else C
    P, products = deflation_preconditioner(A, rank=rank, maxiter=n, seed=1)
    assert products == n and P.tags.symmetric
    shifted = M + shift * torch.eye(n, dtype=D64)
    dense = _deflation_dense(shifted, rank)
    check_operator(P, dense, rtol=1e-8)
    assert float(torch.linalg.eigvalsh(dense).min()) > 0  # symmetric positive definite
    top = torch.linalg.eigh(shifted).eigenvectors.flip(1)[:, :rank]
    assert_close(P @ (shifted @ top), top, 1e-8)  # the resolved eigenvalues are mapped to one
    again, products = deflation_preconditioner(A, rank=rank, maxiter=n, seed=1)
    assert products == 0 and C.count == n  # cached by the operator they describe
    assert_close(again @ torch.eye(n, dtype=D64), dense, 1e-8)


def test_deflation_preconditioner_needs_a_positive_definite_operator():
    A = DenseOperator(torch.diag(torch.tensor([3.0, -1.0, 2.0], dtype=D64)))
    with pytest.raises(ValueError, match="positive definite"):
        deflation_preconditioner(A, rank=3, maxiter=3)


def test_what_preconditioner_accepts():
    M = _spd(5, 2)
    A = DenseOperator(M, Tags(psd=True))
    assert as_preconditioner(None, A, 3, None, 0) == (None, 0)
    D = DenseOperator(torch.diag(1 / torch.diag(M)), Tags(psd=True))
    assert as_preconditioner(D, A, 3, None, 0) == (D, 0)
    fn, products = as_preconditioner(lambda R: R / torch.diag(M).unsqueeze(1), A, 3, None, 0)
    assert products == 0 and fn.tags.psd
    check_operator(fn, torch.diag(1 / torch.diag(M)))
    named, products = as_preconditioner("arnoldi", A, 2, 5, 0)
    check_operator(named, _deflation_dense(M, 2), rtol=1e-8)
    with pytest.raises(ShapeMismatchError):
        as_preconditioner(IdentityOperator(4, D64), A, 3, None, 0)
