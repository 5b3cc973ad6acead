"""Conjugate gradient (linop.inverse.cg): every column stops on its own, for the reason its
SolveInfo names; x0, preconditioners, negative and zero curvature, rounding-limited accuracy."""

from __future__ import annotations

import warnings

import pytest
import torch

from linop import (
    AttainableAccuracyWarning,
    CGOptions,
    ConvergenceWarning,
    DenseOperator,
    DiagonalOperator,
    NegativeCurvatureWarning,
    NonFiniteError,
    StopReason,
    Tags,
    solve,
)
from linop.testing import assert_close, check_operator
from tests.linop._helpers import gen, spd

D64 = torch.float64
_gen, _spd = gen, spd


def test_deflated_cg_needs_fewer_iterations():
    M = _spd(60, 3, 1e-3, 1.0)
    V = torch.linalg.qr(torch.randn(60, 5, dtype=D64, generator=_gen(9))).Q
    M = M + (V * torch.tensor([1e3, 5e2, 2e2, 1e2, 50.0], dtype=D64)) @ V.T
    A = DenseOperator(M, Tags(psd=True))
    B = torch.randn(60, 2, dtype=D64)
    plain = A.inverse("cg", rtol=1e-8)
    deflated = A.inverse("cg", rtol=1e-8, preconditioner="arnoldi", rank=8, arnoldi_maxiter=40)
    X1, X2 = plain @ B, deflated @ B
    assert_close(X1, X2, 1e-6)
    assert int(deflated.info.iterations.max()) < int(plain.info.iterations.max())


def test_cg_stops_each_column_and_never_returns_nan():
    A = DenseOperator(_spd(10, 4), Tags(psd=True))
    B = torch.randn(10, 3, dtype=D64)
    B[:, 1] = 0.0  # converged from the start
    inv = A.inverse("cg", rtol=1e-10, maxiter=1000)  # far more iterations than needed
    X = inv @ B
    assert torch.isfinite(X).all()
    assert torch.equal(X[:, 1], torch.zeros(10, dtype=D64))
    info = inv.info
    assert info.converged.all() and int(info.iterations[1]) == 0
    assert (info.residuals <= 1e-10).all()
    assert info.reasons == ["converged"] * 3
    # atol: a loose absolute tolerance stops early
    loose = A.inverse("cg", rtol=0.0, atol=1.0)
    loose @ B
    assert int(loose.info.iterations.max()) < int(info.iterations.max())


def test_cg_x0_and_preconditioner_operator_or_callable():
    M = _spd(12, 5)
    A = DenseOperator(M, Tags(psd=True))
    b = torch.randn(12, dtype=D64)
    ref = torch.linalg.solve(M, b)
    warm = A.inverse("cg", rtol=1e-10, x0=ref + 1e-6)
    cold = A.inverse("cg", rtol=1e-10)
    assert_close(warm @ b, ref, 1e-8)
    cold @ b
    assert int(warm.info.iterations[0]) < int(cold.info.iterations[0])
    exact = DenseOperator(torch.linalg.inv(M))
    pre = A.inverse("cg", rtol=1e-10, preconditioner=exact)
    assert_close(pre @ b, ref, 1e-8)
    assert int(pre.info.iterations[0]) <= 2
    fn = A.inverse("cg", rtol=1e-10, preconditioner=lambda R: R / torch.diag(M).unsqueeze(1))
    assert_close(fn @ b, ref, 1e-8)


def test_cg_on_an_indefinite_matrix_warns_and_keeps_finite_iterates():
    M = torch.diag(torch.tensor([3.0, 2.0, -1.0, 1.0], dtype=D64))
    A = DenseOperator(M)
    with pytest.warns(NegativeCurvatureWarning, match="not positive definite") as record:
        inv = A.inverse("cg")
        X = inv @ torch.ones(4, 2, dtype=D64)
    assert record[0].filename == __file__  # the warning points at the caller's line
    assert torch.isfinite(X).all()
    assert not inv.info.converged.any()
    assert "curvature" in inv.info.reasons[0]


def test_cg_that_does_not_converge_warns():
    A = DenseOperator(_spd(30, 6, 1e-4, 1.0), Tags(psd=True))
    with pytest.warns(ConvergenceWarning, match="maxiter"):
        inv = A.inverse("cg", rtol=1e-12, maxiter=3)
        inv @ torch.randn(30, dtype=D64)
    assert not inv.info.converged.any() and inv.info.reasons == ["maxiter reached"]
    assert int(inv.info.iterations[0]) == 3


@pytest.mark.parametrize(
    "dtype,small", [(torch.float16, 2.0**-12), (torch.bfloat16, 2.0**-10), (torch.float32, 1e-8)]
)
def test_cg_solves_ill_conditioned_diagonals_resolvable_in_the_dtype(dtype, small):
    x = solve(
        DiagonalOperator(torch.tensor([1.0, small], dtype=dtype)),
        torch.ones(2, dtype=dtype),
        "cg",
        rtol=1e-2,
    )
    assert_close(x.double(), torch.tensor([1.0, 1 / small], dtype=D64), 1e-2)


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


def test_cg_inverse_against_dense():
    M = _spd(6, 8)
    inv = DenseOperator(M, Tags(psd=True)).inverse("cg", rtol=1e-13)
    check_operator(inv, torch.linalg.inv(M), rtol=1e-8)


def test_cg_stop_reasons_are_the_right_members():
    M = _spd(30, 6, 1e-4, 1.0)
    A = DenseOperator(M, Tags(psd=True))
    b = torch.randn(30, dtype=D64, generator=_gen(0))
    _, info = solve(A, b, "cg", rtol=1e-10, return_info=True)
    assert info.reasons == [StopReason.CONVERGED] and type(info.reasons[0]) is StopReason
    with pytest.warns(ConvergenceWarning, match="maxiter"):
        _, info = solve(A, b, "cg", rtol=1e-12, maxiter=3, return_info=True)
    assert info.reasons[0] is StopReason.MAXITER and not bool(info.converged[0])
    indefinite = DiagonalOperator(torch.tensor([2.0, -1.0, 1.0], dtype=D64))
    with pytest.warns(NegativeCurvatureWarning):
        _, info = solve(indefinite, torch.ones(3, dtype=D64), "cg", return_info=True)
    assert info.reasons[0] is StopReason.NEGATIVE_CURVATURE and not bool(info.converged[0])
    singular = DiagonalOperator(torch.tensor([1.0, 0.0, 2.0], dtype=D64))
    with pytest.warns(NegativeCurvatureWarning, match="zero curvature"):
        _, info = solve(singular, torch.ones(3, dtype=D64), "cg", indefinite=True, return_info=True)
    assert info.reasons[0] is StopReason.ZERO_CURVATURE and not bool(info.converged[0])


def _ill_conditioned_float32(seed=0):
    g = _gen(seed)
    Q = torch.linalg.qr(torch.randn(200, 200, generator=g)).Q
    M = (Q * torch.logspace(0, 4, 200)) @ Q.T
    return DenseOperator((M + M.T) / 2, Tags(psd=True)), torch.randn(200, generator=g)


def test_rounding_limited_accuracy_is_its_own_reason_and_warning():
    A, b = _ill_conditioned_float32()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        x, info = solve(A, b, "cg", return_info=True)
    assert (
        info.reasons[0] is StopReason.ATTAINABLE_ACCURACY
        and info.reasons[0] == "attainable accuracy reached"
    )
    categories = [w.category for w in caught]
    assert categories == [AttainableAccuracyWarning]
    assert issubclass(categories[0], ConvergenceWarning)
    with pytest.warns(
        ConvergenceWarning, match="true residual"
    ):  # a ConvergenceWarning filter sees it
        solve(A, b, "cg")
    true = float((b - A @ x).norm() / b.norm())
    assert true > 1e-5 and float(info.residuals[0]) == pytest.approx(true, rel=1e-3)


def test_cg_x0_may_be_a_function_of_the_right_hand_sides():
    M = _spd(10, 9)
    A = DenseOperator(M, Tags(psd=True))
    B = torch.randn(10, 3, dtype=D64, generator=_gen(2))
    seen = []

    def start(R):
        seen.append(R.shape)
        return torch.linalg.solve(M, R) + 1e-7

    warm = A.inverse(CGOptions(rtol=1e-10, x0=start))
    assert_close(warm @ B, torch.linalg.solve(M, B), 1e-8)
    assert seen == [(10, 3)]
    cold = A.inverse("cg", rtol=1e-10)
    cold @ B
    assert int(warm.info.iterations.max()) < int(cold.info.iterations.max())
    with pytest.raises(ValueError, match="x0"):
        A.inverse("cg", x0=torch.zeros(9, dtype=D64)) @ B
    with pytest.raises(TypeError, match="x0"):
        A.inverse("cg", x0="zeros")


@pytest.mark.parametrize("every", [1, 3])
def test_columns_that_stop_at_different_times_get_their_own_solves(every):
    # columns leave the batch at different iterations (one at once, one early, the rest late):
    # each must end as it would alone, whatever the compaction of the active set
    M = _spd(40, 5, 1e-2, 1.0)
    A = DenseOperator(M, Tags(psd=True))
    B = torch.randn(40, 5, dtype=D64, generator=_gen(3))
    B[:, 1] = 0.0
    B[:, 3] = torch.linalg.eigh(M)[1][:, [4, 30]].sum(1)  # two eigenvectors: two steps
    inv = A.inverse("cg", rtol=1e-9, check_every=every)
    X = inv @ B
    for j in range(5):
        alone = A.inverse("cg", rtol=1e-9, check_every=every)
        x = alone @ B[:, j]
        assert_close(X[:, j], x, 1e-12)
        assert int(inv.info.iterations[j]) == int(alone.info.iterations[0])
    iters = inv.info.iterations.tolist()
    assert iters[1] == 0 and iters[3] < min(iters[0], iters[2], iters[4])
    assert_close(A @ X, B, 1e-7)


def test_true_residual_false_saves_one_product_per_column_and_reports_the_recursive_one():
    A = DenseOperator(_spd(30, 6), Tags(psd=True))
    B = torch.randn(30, 4, dtype=D64, generator=_gen(5))
    checked = A.inverse("cg", rtol=1e-8)
    unchecked = A.inverse("cg", rtol=1e-8, true_residual=False)
    X1, X2 = checked @ B, unchecked @ B
    assert torch.equal(X1, X2)
    assert unchecked.info.hvps == checked.info.hvps - 4
    assert unchecked.info.converged.all() and (unchecked.info.residuals <= 1e-8).all()
    true = (B - A @ X2).norm(dim=0) / B.norm(dim=0)
    assert_close(unchecked.info.residuals, true, 1e-6)  # recursive ≈ true here


class _BreaksAfter(DenseOperator):
    """A symmetric positive definite matrix whose products turn ``value`` (NaN or infinite) in
    column ``column`` from the ``after``-th product on: a user ``_matmat`` that fails mid-solve."""

    def __init__(self, matrix: torch.Tensor, column: int, after: int, value: float) -> None:
        super().__init__(matrix, Tags(psd=True))
        self.column, self.after, self.value, self.calls = column, after, value, 0

    def _matmat(self, X: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        out = super()._matmat(X)
        if self.calls > self.after and out.shape[1] > self.column:
            out[0, self.column] = self.value
        return out


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("every", [1, 4])
def test_products_that_turn_non_finite_mid_solve_raise_naming_the_columns(value, every):
    A = _BreaksAfter(_spd(20, 7), column=2, after=3, value=value)
    B = torch.randn(20, 4, dtype=D64, generator=_gen(11))
    with pytest.raises(NonFiniteError, match=r"in 1 column\(s\).*not finite"):
        A.inverse("cg", rtol=1e-12, check_every=every) @ B


@pytest.mark.parametrize("layout", ["rows", "columns"])
def test_cg_answers_do_not_depend_on_the_memory_layout_nor_alias_the_input(layout):
    A = DenseOperator(_spd(25, 8), Tags(psd=True))
    B = torch.randn(6, 25, dtype=D64, generator=_gen(12)).T  # each column contiguous
    B = B.contiguous() if layout == "rows" else B
    before = B.clone()
    X = A.inverse("cg", rtol=1e-10) @ B
    assert_close(X, torch.linalg.solve(A.matrix, before), 1e-8)
    # zero iterations from x0 = B: the answer is B's values in a tensor of its own
    same = A.inverse("cg", x0=lambda B: B, maxiter=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        X0 = same @ B
    assert torch.equal(X0, before)
    X0.add_(1.0)
    assert torch.equal(B, before)
