"""Edge cases found by a bug hunt on the public API: each test failed before its fix."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from linop import (
    ConvergenceWarning,
    DenseOperator,
    DiagonalOperator,
    DivergenceError,
    DTypeMismatchError,
    HessianOperator,
    IdentityOperator,
    NegativeCurvatureWarning,
    NonFiniteError,
    ProjectionOperator,
    SingularOperatorError,
    Tags,
    solve,
)
from linop import hvp
from linop.testing import assert_close

D64 = torch.float64


def test_scaling_a_rectangular_operator_by_zero_keeps_its_transpose_rectangular():
    A = DenseOperator(torch.randn(2, 3, dtype=D64))
    Z = 0 * A
    assert Z.T.shape == (3, 2) and not Z.tags.symmetric
    assert_close(Z.T @ torch.ones(2, dtype=D64), torch.zeros(3, dtype=D64))


def test_complex_operators_are_refused():
    with pytest.raises(DTypeMismatchError, match="complex operators are not supported"):
        DenseOperator(torch.ones(2, 2, dtype=torch.complex64))


def test_non_finite_scalars_and_shifts_are_refused():
    A = DenseOperator(torch.eye(3, dtype=D64))
    with pytest.raises(NonFiniteError):
        float("nan") * A
    with pytest.raises(NonFiniteError):
        A + float("inf") * IdentityOperator.like(A)
    with pytest.raises(NonFiniteError):
        A.regularize(float("nan"))


@pytest.mark.parametrize("dtype,small", [(torch.float16, 2.0**-12), (torch.bfloat16, 2.0**-10), (torch.float32, 1e-8)])
def test_cg_solves_ill_conditioned_diagonals_resolvable_in_the_dtype(dtype, small):
    x = solve(DiagonalOperator(torch.tensor([1.0, small], dtype=dtype)), torch.ones(2, dtype=dtype), "cg", rtol=1e-2)
    assert_close(x.double(), torch.tensor([1.0, 1 / small], dtype=D64), 1e-2)


def test_explicit_solves_a_well_posed_ill_conditioned_float32_matrix():
    d = torch.logspace(0, -4, 1000)
    x = solve(DiagonalOperator(d), torch.ones(1000), "explicit")
    assert_close(x.double(), 1 / d.double(), 1e-5)


def test_cg_through_negative_curvature_only_when_asked():
    A = DiagonalOperator(torch.tensor([-1.0, 2.0], dtype=D64))
    b = torch.tensor([1.0, 1.0], dtype=D64)
    with pytest.warns(NegativeCurvatureWarning):
        x, info = solve(A, b, "cg", return_info=True)
    assert not bool(info.converged[0])
    x, info = solve(A, b, "cg", indefinite=True, return_info=True)
    assert_close(x, torch.tensor([-1.0, 0.5], dtype=D64)) and bool(info.converged[0])


def test_cg_on_a_singular_psd_matrix_stops_finite_and_warns():
    A = DiagonalOperator(torch.tensor([1.0, 2.0, 0.0, 3.0], dtype=D64))
    with pytest.warns(NegativeCurvatureWarning):
        x, info = solve(A, torch.ones(4, dtype=D64), "cg", return_info=True)
    assert torch.isfinite(x).all() and torch.isfinite(info.residuals).all()
    assert not bool(info.converged[0])


def test_cg_reports_the_true_residual_and_says_when_rounding_limits_it():
    g = torch.Generator().manual_seed(0)
    Q = torch.linalg.qr(torch.randn(200, 200, generator=g)).Q
    M = (Q * torch.logspace(0, 4, 200)) @ Q.T
    M = (M + M.T) / 2
    b = torch.randn(200, generator=g)
    with pytest.warns(ConvergenceWarning, match="true residual"):
        x, info = solve(DenseOperator(M, Tags(psd=True)), b, "cg", return_info=True)
    true = float((b - M @ x).norm() / b.norm())
    assert float(info.residuals[0]) == pytest.approx(true, rel=1e-3)
    assert not bool(info.converged[0]) and "attainable accuracy" in info.reasons[0]


def test_a_float32_preconditioner_for_a_float64_solve_is_a_dtype_error():
    A = DenseOperator(torch.eye(3, dtype=D64), Tags(psd=True))
    with pytest.raises(DTypeMismatchError, match="preconditioner"):
        A.inverse("cg", preconditioner=DenseOperator(torch.eye(3))) @ torch.ones(3, dtype=D64)


def test_explicit_judges_singularity_at_the_operators_own_precision():
    g = torch.Generator().manual_seed(0)
    X, y = torch.randn(40, 4, generator=g), torch.randint(0, 3, (40,), generator=g)
    H = HessianOperator(lambda w, X, y: F.cross_entropy(X @ w.reshape(4, 3), y), (torch.zeros(12), X, y))
    with pytest.raises(SingularOperatorError):  # softmax: an exact null space, in float32
        solve(H, torch.randn(12, generator=g), "explicit")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_explicit_and_lanczos(dtype):
    M = torch.diag(torch.arange(1.0, 11.0, dtype=D64))
    A = DenseOperator(M.to(dtype), Tags(psd=True))
    assert A.eigh(3).values.tolist() == [10.0, 9.0, 8.0]
    b = torch.ones(10, dtype=dtype)
    for method, options in [("explicit", {}), ("arnoldi", {"rank": 10, "maxiter": 10})]:
        x = A.inverse(method, **options) @ b
        assert x.dtype == dtype
        assert_close(x.double(), 1 / torch.arange(1.0, 11.0, dtype=D64), 1e-2)


def test_lissa_on_an_indefinite_operator_raises_instead_of_answering():
    b = torch.ones(2, dtype=D64)
    with pytest.raises(DivergenceError, match="not positive definite"):
        solve(DiagonalOperator(torch.tensor([1.0, -0.5], dtype=D64)), b, "lissa")
    D = DiagonalOperator(torch.tensor([1.0, 3.0], dtype=D64))
    with pytest.raises(DivergenceError):
        solve(D - 1.5 * IdentityOperator.like(D), b, "lissa")
    assert_close(solve(D, b, "lissa", depth=2000), torch.tensor([1.0, 1 / 3], dtype=D64))
    H = HessianOperator(lambda w, M: 0.5 * w @ M @ w, (torch.zeros(2, dtype=D64), torch.diag(torch.tensor([1.0, -0.5], dtype=D64))))
    with pytest.raises(DivergenceError):  # a one-batch Hessian has no data to draw: deterministic
        solve(H, b, "lissa", depth=30, scale=2.0)


def test_a_nan_in_a_later_batch_of_a_dataset_hessian_is_an_error():
    X, y = torch.randn(30, 4, dtype=D64), torch.randint(0, 3, (30,))
    X[15, 0] = float("nan")
    loss = lambda w, X, y: F.cross_entropy(X @ w.reshape(4, 3), y)  # noqa: E731
    H = HessianOperator.from_data(loss, torch.zeros(12, dtype=D64), (X, y), 10)
    with pytest.raises(NonFiniteError, match="not finite"):
        H @ torch.ones(12, dtype=D64)
    with pytest.raises(NonFiniteError):
        H.gradient()


def test_from_module_refuses_only_what_training_mode_makes_random_or_stateful():
    X, y = torch.randn(16, 4, dtype=D64), torch.randint(0, 3, (16,))
    lin = lambda: torch.nn.Linear(4, 5)  # noqa: E731
    for layer in (torch.nn.BatchNorm1d(5), torch.nn.Dropout(0.5)):
        m = torch.nn.Sequential(lin(), layer, torch.nn.Linear(5, 3)).double()
        before = {k: b.clone() for k, b in m.named_buffers()}
        with pytest.raises(ValueError, match="model.eval"):  # before touching the model
            HessianOperator.from_module(m, F.cross_entropy, (X, y))
        assert all(torch.equal(before[k], b) for k, b in m.named_buffers())
        m.eval()
        n = sum(p.numel() for p in m.parameters())
        assert HessianOperator.from_module(m, F.cross_entropy, (X, y)).to_dense().shape == (n, n)
    for layer in (torch.nn.Dropout(0.0), torch.nn.InstanceNorm1d(1)):  # deterministic in training
        m = torch.nn.Sequential(lin(), torch.nn.Unflatten(1, (1, 5)), layer, torch.nn.Flatten(), torch.nn.Linear(5, 3))
        HessianOperator.from_module(m.double(), F.cross_entropy, (X, y))


def test_projections_of_empty_batches():
    for kind in ("rademacher", "gaussian", "sjlt"):
        P = ProjectionOperator.random(50, 8, kind=kind)
        assert P.project(torch.zeros(0, 50)).shape == (0, 8)
        assert (P @ torch.zeros(50, 0)).shape == (8, 0)
    P = ProjectionOperator.random(30, 8)
    assert P.project({"w": torch.zeros(0, 20), "b": torch.zeros(0, 10)}).shape == (0, 8)


def test_scipy_view_accepts_arrays_with_negative_strides():
    M = torch.randn(4, 4, dtype=D64)
    X = np.arange(8.0).reshape(4, 2)[::-1]
    np.testing.assert_allclose(DenseOperator(M).to_scipy().matmat(X), M.numpy() @ X)


def test_functional_hvp_with_a_negative_argnums():
    f = lambda a, b: (a * b**3).sum()  # noqa: E731
    out = hvp(f, (torch.ones(2), torch.tensor([1.0, 2.0])), torch.ones(2), argnums=-1)
    assert out.tolist() == [6.0, 12.0]
