"""The explicit method (linop.inverse.explicit): materialise, factorise once (Cholesky, else LU),
refuse singular matrices at the operator's own precision."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from linop import (
    DenseMemoryError,
    DenseOperator,
    DiagonalOperator,
    ExplicitOptions,
    HessianOperator,
    IdentityOperator,
    NegativeCurvatureWarning,
    SingularOperatorError,
    StopReason,
    solve,
)
from linop.tags import Tags
from linop.testing import assert_close, check_operator
from tests.linop._helpers import Counting, gen, spd

D64 = torch.float64
_gen, _spd = gen, spd


def test_explicit_singular_and_indefinite():
    S = torch.diag(torch.tensor([1.0, 2.0, 0.0], dtype=D64))
    with pytest.raises(SingularOperatorError, match="lam"):
        DenseOperator(S).inverse("explicit") @ torch.ones(3, dtype=D64)
    ones = DenseOperator(torch.ones(3, 3, dtype=D64))  # rank 1, range: the multiples of 1
    with pytest.raises(SingularOperatorError, match="not in its range"):
        ones.inverse("explicit") @ torch.tensor([1.0, 0.0, 0.0], dtype=D64)
    with pytest.warns(NegativeCurvatureWarning, match="minimum-norm"):  # consistent: answered
        x = ones.inverse("explicit") @ torch.ones(3, dtype=D64)
    assert_close(x, torch.full((3,), 1 / 3, dtype=D64))
    indefinite = DenseOperator(torch.diag(torch.tensor([1.0, -2.0], dtype=D64)))
    with pytest.warns(NegativeCurvatureWarning, match="LU"):
        x = indefinite.inverse("explicit") @ torch.ones(2, dtype=D64)
    assert_close(x, torch.tensor([1.0, -0.5], dtype=D64))
    with pytest.raises(DenseMemoryError):
        IdentityOperator(5000, D64).inverse("explicit", max_bytes=1000) @ torch.ones(
            5000, dtype=D64
        )


def test_explicit_float32_retries_in_float64():
    M = _spd(6, 8, 1e-7, 1.0).float()
    A = DenseOperator(M, Tags(psd=True))
    x = A.inverse("explicit") @ torch.ones(6)
    assert x.dtype == torch.float32 and torch.isfinite(x).all()


def test_explicit_solves_a_well_posed_ill_conditioned_float32_matrix():
    d = torch.logspace(0, -4, 1000)
    x = solve(DiagonalOperator(d), torch.ones(1000), "explicit")
    assert_close(x.double(), 1 / d.double(), 1e-5)


def test_explicit_judges_singularity_at_the_operators_own_precision():
    g = torch.Generator().manual_seed(0)
    X, y = torch.randn(40, 4, generator=g), torch.randint(0, 3, (40,), generator=g)
    H = HessianOperator(
        lambda w, X, y: F.cross_entropy(X @ w.reshape(4, 3), y), (torch.zeros(12), X, y)
    )
    with pytest.raises(SingularOperatorError):  # softmax: an exact null space, in float32
        solve(H, torch.randn(12, generator=g), "explicit")


def test_explicit_inverses_against_dense():
    M = _spd(6, 3)
    check_operator(
        DenseOperator(M, Tags(psd=True)).inverse("explicit"), torch.linalg.inv(M), rtol=1e-8
    )
    R = DenseOperator(M, Tags(psd=True)) - 0.5 * IdentityOperator(6, D64)  # shifted, still SPD
    check_operator(
        R.inverse("explicit"), torch.linalg.inv(M - 0.5 * torch.eye(6, dtype=D64)), rtol=1e-8
    )
    N = torch.randn(5, 5, dtype=D64, generator=_gen(4)) + 5 * torch.eye(5, dtype=D64)
    inv = DenseOperator(N).inverse("explicit")
    check_operator(inv, torch.linalg.inv(N), rtol=1e-8)
    assert inv.strategy.kind == "lu" and inv.info.extra["factorization"] == "lu"


def test_explicit_options_change_how_not_what():
    C = Counting(_spd(8, 5))
    B = torch.randn(8, 2, dtype=D64, generator=_gen(1))
    ref = torch.linalg.solve(C.M, B)
    inv = C.inverse(ExplicitOptions(chunk_size=3))
    assert_close(inv @ B, ref, 1e-9)
    assert C.count == 8 and inv.info.hvps == 8 and inv.info.reasons == [StopReason.DIRECT] * 2
    assert inv.strategy.kind == "cholesky"
    with pytest.raises(DenseMemoryError):
        C.inverse("explicit", max_bytes=8 * 8 * 8 - 1) @ B
    assert_close(C.inverse("explicit", max_bytes=10, force=True) @ B, ref, 1e-9)


def test_a_singular_matrix_is_refused_by_solve_too():
    with pytest.raises(SingularOperatorError, match="singular"):
        solve(
            DiagonalOperator(torch.tensor([1.0, 0.0], dtype=D64)),
            torch.ones(2, dtype=D64),
            "explicit",
        )


def _softmax_regression(n=60, d=4, c=3, seed=0):
    """A softmax regression with an unpenalised bias: its Hessian has an exact null space."""
    g = torch.Generator().manual_seed(seed)
    X, y = torch.randn(n, d, dtype=D64, generator=g), torch.randint(0, c, (n,), generator=g)

    def loss(theta, X, y):
        W, b = theta[: d * c].reshape(d, c), theta[d * c :]
        return torch.nn.functional.cross_entropy(X @ W + b, y)

    theta = 0.1 * torch.randn(d * c + c, dtype=D64, generator=g)
    return loss, theta, X, y


def test_explicit_answers_singular_consistent_systems_with_the_minimum_norm_solution():
    """Per-example gradients of a softmax model lie in the range of its singular Hessian: the
    explicit method returns the minimum-norm solution (as dattri 0.2.0 answers them) with a
    warning, and refuses a right-hand side outside the range."""
    loss, theta, X, y = _softmax_regression()
    H = HessianOperator(loss, (theta, X, y))
    dense = torch.func.hessian(loss)(theta, X, y)
    assert int(torch.linalg.matrix_rank(dense)) < dense.shape[0]  # singular indeed
    G = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0, 0))(
        theta, X[:5].unsqueeze(1), y[:5].unsqueeze(1)
    ).T  # 5 per-example gradients as columns
    with pytest.warns(NegativeCurvatureWarning, match="minimum-norm"):
        x = H.inverse("explicit") @ G
    assert_close(x, torch.linalg.pinv(dense, hermitian=True) @ G, 1e-8)
    b = torch.randn(theta.numel(), dtype=D64, generator=torch.Generator().manual_seed(1))
    with pytest.raises(SingularOperatorError, match="not in its range"):
        H.inverse("explicit") @ b


@pytest.mark.parametrize("dtype,condition", [(torch.bfloat16, 20.0), (torch.float16, 200.0)])
def test_explicit_solves_well_conditioned_half_precision_matrices(dtype, condition):
    d = torch.linspace(1.0, condition, 6, dtype=D64)
    Q = torch.linalg.qr(torch.randn(6, 6, dtype=D64, generator=torch.Generator().manual_seed(0))).Q
    A = DenseOperator(((Q * d) @ Q.T).to(dtype), Tags(psd=True))
    b = torch.ones(6, dtype=dtype)
    x = A.inverse("explicit") @ b  # no SingularOperatorError: condition 20 / 200 is regular
    exact = torch.linalg.solve(A.to_dense().double(), b.double())
    assert float((x.double() - exact).norm() / exact.norm()) < 0.1


def test_explicit_residuals_false_reports_none_and_keeps_only_the_factor():
    """``residuals=False`` gives the same solutions and warnings, NaN residuals said "not
    computed", and no copy of the matrix; a singular matrix's range test still runs."""
    B = torch.randn(8, 3, dtype=D64, generator=_gen(2))
    Q = torch.linalg.qr(torch.randn(8, 8, dtype=D64, generator=_gen(3))).Q
    indefinite = Q @ torch.diag(torch.linspace(-2, 3, 8, dtype=D64)) @ Q.T
    for M, kind in ((_spd(8, 4), "cholesky"), ((indefinite + indefinite.T) / 2, "lu")):
        A = DenseOperator(M, Tags(symmetric=True))
        answers, said = [], []
        for residuals in (True, False):
            inv = A.inverse("explicit", residuals=residuals)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                answers.append(inv @ B)
            said.append([type(w.message) for w in caught])
            assert inv.strategy.kind == kind
            assert (inv.strategy.matrix is None) == (not residuals)
            if residuals:
                expected = (B - M @ answers[0]).norm(dim=0) / B.norm(dim=0)
                torch.testing.assert_close(inv.info.residuals, expected, rtol=1e-6, atol=1e-14)
            else:
                assert bool(torch.isnan(inv.info.residuals).all())
                assert "max relative residual not computed" in str(inv.info)
        assert_close(answers[1], answers[0], 1e-12)
        assert said[0] == said[1] == ([NegativeCurvatureWarning] if kind == "lu" else [])
    loss, theta, X, y = _softmax_regression()
    H = HessianOperator(loss, (theta, X, y))
    b = torch.randn(theta.numel(), dtype=D64, generator=torch.Generator().manual_seed(1))
    with pytest.raises(SingularOperatorError, match="not in its range"):
        H.inverse("explicit", residuals=False) @ b
