"""The operator contract, checked in one call: for anyone who writes ``_matmat``.

[`check_operator`][linop.testing.check_operator] applies an operator to random vectors and compares
everything the base class derives from ``_matmat`` — products with vectors and matrices, row-vector
products, the adjoint identity ``⟨Ax, y⟩ = ⟨x, Aᵀy⟩``, scaling, sums, products, ``A + λI``,
``to_dense``, the soundness of its tags, and the scipy view with scipy's own solvers — against the
operator's dense matrix, in float64 on a small size. Every operator in linop's own tests goes
through it.

Example:
    >>> import torch
    >>> from linop import LinearOperator
    >>> from linop.testing import check_operator
    >>> class Shift(LinearOperator):
    ...     def __init__(self, n):
    ...         super().__init__((n, n), torch.float64, "cpu")
    ...     def _matmat(self, X):
    ...         return torch.roll(X, 1, dims=0)
    >>> check_operator(Shift(4), torch.roll(torch.eye(4, dtype=torch.float64), 1, dims=0))
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse.linalg as spla
import torch

from linop.interop import aslinearoperator
from linop.operator import LinearOperator
from linop.structured import IdentityOperator

__all__ = ["assert_close", "check_operator"]


def assert_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-9) -> None:
    """``torch.testing.assert_close`` with ``rtol`` relative to the largest entry of ``expected``
    (at least 1) as the absolute tolerance too."""
    scale = max(1.0, float(expected.abs().max())) if expected.numel() else 1.0
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * scale)


def check_operator(
    op: LinearOperator, dense: torch.Tensor, rtol: float = 1e-9, seed: int = 0
) -> None:
    """Check ``op`` against its ``(m, n)`` matrix ``dense`` (float64 recommended): matvec,
    matmat, row-vector products, the adjoint identity, the algebra, to_dense, its tags, and
    to_scipy with scipy's ``eigsh`` and ``cg`` on square symmetric ones.

    Args:
        op: the operator.
        dense: its matrix.
        rtol: the relative tolerance of the comparisons.
        seed: the seed of the random vectors.

    Raises:
        AssertionError: on the first disagreement.
    """
    if not isinstance(op, LinearOperator):
        raise TypeError(f"check_operator checks a LinearOperator, got {type(op).__name__}")
    if not isinstance(dense, torch.Tensor) or dense.ndim != 2:
        raise TypeError(f"dense must be the operator's matrix as a 2-D torch.Tensor, got {dense!r}")
    if rtol < 0:
        raise ValueError(f"rtol must be non-negative, got {rtol}")
    g = torch.Generator().manual_seed(seed)
    m, n = dense.shape
    assert op.shape == (m, n), f"the operator's shape is {op.shape}, its matrix's {(m, n)}"
    assert op.dtype == dense.dtype, (
        f"the operator's dtype is {op.dtype}, its matrix's {dense.dtype}"
    )
    kw: dict[str, Any] = {"dtype": op.dtype, "generator": g}
    x, X = torch.randn(n, **kw), torch.randn(n, 3, **kw)
    y, Y = torch.randn(m, **kw), torch.randn(m, 3, **kw)

    # products
    out = op @ x
    assert out.shape == (m,), f"op @ x has shape {tuple(out.shape)}, expected {(m,)}"
    assert_close(out, dense @ x, rtol)
    assert_close(op @ X, dense @ X, rtol)
    assert_close(y @ op, y @ dense, rtol)
    assert_close(Y.T @ op, Y.T @ dense, rtol)

    # adjoint: <A x, y> = <x, Aᵀ y>, and Aᵀ equals the transposed matrix
    assert op.T.shape == (n, m)
    assert_close(torch.dot(op @ x, y), torch.dot(x, op.T @ y), rtol)
    assert_close(op.T @ Y, dense.T @ Y, rtol)
    assert_close(op.T.T @ X, dense @ X, rtol)

    # to_dense
    assert_close(op.to_dense(), dense, rtol)
    assert_close(op.to_dense(chunk_size=2), dense, rtol)

    # algebra
    assert_close((2.5 * op) @ X, 2.5 * (dense @ X), rtol)
    assert_close((op / 4) @ X, (dense @ X) / 4, rtol)
    assert_close((-op) @ X, -(dense @ X), rtol)
    assert_close((op + op) @ X, 2 * (dense @ X), rtol)
    assert_close((op - 0.5 * op) @ X, 0.5 * (dense @ X), rtol)
    assert_close((op @ op.T) @ Y, dense @ (dense.T @ Y), rtol)
    if m == n:
        lam = 0.7
        R = op + lam * IdentityOperator.like(op)
        assert_close(R @ X, dense @ X + lam * X, rtol)
        assert_close(
            op.regularize(lam).to_dense(), dense + lam * torch.eye(n, dtype=dense.dtype), rtol
        )

    # tags are sound for the dense matrix
    if op.tags.symmetric:
        assert_close(dense, dense.T, rtol)
    if op.tags.psd or op.tags.nsd:
        eig = torch.linalg.eigvalsh((dense + dense.T) / 2)
        tol = 1e-8 * max(1.0, float(eig.abs().max()))
        if op.tags.psd:
            assert float(eig.min()) >= -tol
        if op.tags.nsd:
            assert float(eig.max()) <= tol

    # scipy round trip
    S = op.to_scipy()
    assert S.shape == (m, n)
    xn, yn = x.numpy(), y.numpy()
    np.testing.assert_allclose(S.matvec(xn), (dense @ x).numpy(), rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(S.rmatvec(yn), (dense.T @ y).numpy(), rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(S.matmat(X.numpy()), (dense @ X).numpy(), rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(S.rmatmat(Y.numpy()), (dense.T @ Y).numpy(), rtol=1e-7, atol=1e-9)
    assert_close(aslinearoperator(S) @ X, dense @ X, rtol)

    # scipy solvers on the view, for square operators
    if m == n and n >= 3 and op.tags.symmetric:
        k = 1
        vals = spla.eigsh(S, k=k, which="LA", return_eigenvectors=False)
        ref = float(torch.linalg.eigvalsh(dense).max())
        assert abs(float(vals[-1]) - ref) <= 1e-6 * max(1.0, abs(ref))
        shift = float(torch.linalg.eigvalsh(dense).min().abs()) + 1.0
        spd = (op + shift * IdentityOperator.like(op)).to_scipy()
        sol, info = spla.cg(spd, yn, rtol=1e-12, atol=0.0, maxiter=10 * n)
        assert info == 0
        ref_sol = torch.linalg.solve(dense + shift * torch.eye(n, dtype=dense.dtype), y)
        np.testing.assert_allclose(sol, ref_sol.numpy(), rtol=1e-6, atol=1e-8)
