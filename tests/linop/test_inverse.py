"""Every inverse method against a dense float64 solve; SolveInfo; the documented errors."""

import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.func import hessian

from linop import (
    METHODS,
    ConvergenceWarning,
    DenseMemoryError,
    DenseOperator,
    DivergenceError,
    HessianOperator,
    IdentityOperator,
    InverseOperator,
    LinearOperator,
    LowRankOperator,
    NegativeCurvatureWarning,
    NonFiniteError,
    SingularOperatorError,
    solve,
)
from linop.tags import Tags
from linop.testing import assert_close, check_operator

D64 = torch.float64


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _spd(n, seed, low=1.0, high=10.0):
    """A random SPD matrix with eigenvalues in [low, high]."""
    Q = torch.linalg.qr(torch.randn(n, n, dtype=D64, generator=_gen(seed))).Q
    eig = low + (high - low) * torch.rand(n, dtype=D64, generator=_gen(seed + 1))
    eig[0], eig[-1] = low, high
    return (Q * eig) @ Q.T


class Counting(LinearOperator):
    """Counts the columns it is applied to."""

    def __init__(self, M, tags=None):
        super().__init__(M.shape, M.dtype, M.device, tags or Tags(psd=True))
        self.M, self.count = M, 0

    def _matmat(self, X):
        self.count += X.shape[1]
        return self.M @ X


OPTIONS = {
    "explicit": {},
    "cg": {"rtol": 1e-12},
    "arnoldi": {},  # rank and maxiter set to n below: exact
    "lissa": {"depth": 600},  # scale set from the spectrum below
}


def _options(method, n, top):
    o = dict(OPTIONS[method])
    if method == "arnoldi":
        o.update(rank=n, maxiter=n)
    if method == "lissa":
        o.update(scale=1.1 * top)
    return o


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(2, 10),
    k=st.integers(1, 3),
    lam=st.floats(0.0, 2.0),
    seed=st.integers(0, 1000),
    method=st.sampled_from(sorted(OPTIONS)),
)
def test_every_method_agrees_with_a_dense_solve(n, k, lam, seed, method):
    M = _spd(n, seed)
    A = DenseOperator(M, Tags(psd=True)) + lam * IdentityOperator(n, D64)
    B = torch.randn(n, k, dtype=D64, generator=_gen(seed + 2))
    ref = torch.linalg.solve(M + lam * torch.eye(n, dtype=D64), B)
    inv = A.inverse(method, **_options(method, n, 10.0 + lam))
    X = inv @ B
    assert X.shape == (n, k)
    assert_close(X, ref, 1e-8)
    x1 = inv @ B[:, 0]
    assert x1.shape == (n,)
    assert_close(x1, ref[:, 0], 1e-8)
    assert inv.info is not None and len(inv.info.reasons) == 1


@settings(max_examples=20, deadline=None)
@given(n=st.integers(3, 12), seed=st.integers(0, 1000), lam=st.floats(0.01, 1.0))
def test_methods_agree_with_each_other(n, seed, lam):
    """Solver agreement: cg and deflated cg reach explicit's answer; arnoldi too at full rank."""
    A = DenseOperator(_spd(n, seed, 0.01, 5.0), Tags(psd=True)).regularize(lam)
    B = torch.randn(n, 2, dtype=D64, generator=_gen(seed))
    ref = A.inverse("explicit") @ B
    assert_close(A.inverse("cg", rtol=1e-12) @ B, ref, 1e-7)
    assert_close(A.inverse("cg", rtol=1e-12, preconditioner="arnoldi", rank=max(1, n // 2)) @ B, ref, 1e-7)
    assert_close(A.inverse("arnoldi", rank=n, maxiter=n) @ B, ref, 1e-7)


def _mlp_problem(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 3)).to(D64)
    g = _gen(seed)
    X, y = torch.randn(40, 3, dtype=D64, generator=g), torch.randint(0, 3, (40,), generator=g)
    return HessianOperator.from_module(model, torch.nn.functional.cross_entropy, (X, y))


@pytest.mark.parametrize("method", ["explicit", "cg", "arnoldi"])
def test_small_network_with_shift(method):
    H = _mlp_problem()
    n = H.shape[0]
    dense = H.to_dense()
    lam = 0.5 + float(torch.linalg.eigvalsh(dense).min().abs())  # make H + λI positive definite
    A = H + lam * IdentityOperator.like(H)
    B = torch.randn(n, 3, dtype=D64, generator=_gen(5))
    ref = torch.linalg.solve(dense + lam * torch.eye(n, dtype=D64), B)
    opts = {"cg": {"rtol": 1e-12}, "arnoldi": {"rank": n, "maxiter": n}, "explicit": {}}[method]
    assert_close(A.inverse(method, **opts) @ B, ref, 1e-7)


def test_inverse_operator_contract():
    M = _spd(6, 3)
    A = DenseOperator(M, Tags(psd=True))
    check_operator(A.inverse("explicit"), torch.linalg.inv(M), rtol=1e-8)
    check_operator(A.inverse("arnoldi", rank=6, maxiter=6), torch.linalg.inv(M), rtol=1e-8)
    N = torch.randn(5, 5, dtype=D64, generator=_gen(1)) + 5 * torch.eye(5, dtype=D64)
    check_operator(DenseOperator(N).inverse("explicit"), torch.linalg.inv(N), rtol=1e-8)


def test_inverse_of_inverse_and_lazy_setup_once():
    C = Counting(_spd(8, 0))
    inv = C.inverse("explicit")
    assert C.count == 0  # lazy
    assert inv.inverse() is C
    B = torch.randn(8, 2, dtype=D64)
    inv @ B
    assert C.count == 8 and inv.info.hvps == 8
    inv @ B
    assert C.count == 8 and inv.info.hvps == 0  # the factorisation is reused


def test_arnoldi_lambda_sweep_makes_no_new_products():
    C = Counting(_spd(20, 1, 0.001, 10.0))
    B = torch.randn(20, 3, dtype=D64)
    results = []
    for lam in [1e-3, 1e-2, 1e-1, 1.0]:
        inv = (C + lam * IdentityOperator.like(C)).inverse("arnoldi", rank=20, maxiter=20)
        results.append(inv @ B)
        if lam == 1e-3:
            first = C.count
            assert first == 20 and inv.info.hvps == 20
        else:
            assert inv.info.hvps == 0
    assert C.count == first
    ref = torch.linalg.solve(C.M + torch.eye(20, dtype=D64), B)
    assert_close(results[-1], ref, 1e-8)
    # eigh is public and cached on the operator
    low = C.eigh(20, maxiter=20)
    assert isinstance(low, LowRankOperator) and C.count == first


def test_arnoldi_low_rank_and_complement():
    M = _spd(30, 2, 0.5, 1.0)
    M[:3] = 0
    M[:, :3] = 0
    V = torch.linalg.qr(torch.randn(30, 4, dtype=D64, generator=_gen(0))).Q
    top = (V * torch.tensor([50.0, 40.0, 30.0, 20.0], dtype=D64)) @ V.T
    A = DenseOperator(top + 0.01 * torch.eye(30, dtype=D64), Tags(psd=True))
    lam = 1.0
    R = A.regularize(lam)
    B = torch.randn(30, 2, dtype=D64)
    ref = torch.linalg.solve(R.to_dense(), B)
    plain = R.inverse("arnoldi", rank=4, maxiter=30) @ B
    full = R.inverse("arnoldi", rank=4, maxiter=30, complement=True) @ B
    err = lambda X: float((X - ref).norm() / ref.norm())  # noqa: E731
    assert err(full) < 0.02 < err(plain)
    with pytest.raises(ValueError, match="λ > 0"):
        A.inverse("arnoldi", complement=True) @ B


def test_eigh_matches_dense_and_survives_breakdown():
    # a rank-3 operator: Lanczos finds the invariant subspace after 3 steps and must restart
    V = torch.linalg.qr(torch.randn(25, 3, dtype=D64, generator=_gen(4))).Q
    L = LowRankOperator(V, torch.tensor([5.0, -3.0, 1.0], dtype=D64))
    low = L.eigh(5, maxiter=25)
    assert torch.isfinite(low.vectors).all()
    assert_close(low.values[:3], torch.tensor([5.0, -3.0, 1.0], dtype=D64), 1e-10)
    assert_close(low.values[3:], torch.zeros(2, dtype=D64), 1e-10)
    assert_close((low.vectors.T @ low.vectors), torch.eye(5, dtype=D64), 1e-10)
    la = L.eigh(1, maxiter=25, which="LA")
    assert_close(la.values, torch.tensor([5.0], dtype=D64), 1e-10)


def test_eigh_on_a_softmax_hessian_with_a_null_space():
    g = _gen(7)
    X, y = torch.randn(50, 4, dtype=D64, generator=g), torch.randint(0, 3, (50,), generator=g)
    loss = lambda w: torch.nn.functional.cross_entropy(X @ w.reshape(4, 3), y)  # noqa: E731
    w = torch.zeros(12, dtype=D64)
    H = HessianOperator(loss, (w,))
    dense = hessian(loss)(w)
    ref = torch.linalg.eigvalsh(dense).flip(0)
    low = H.eigh(12, maxiter=12)
    assert_close(low.values.sort(descending=True).values, ref, 1e-9)
    assert torch.isfinite(low.vectors).all()


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


def test_explicit_singular_and_indefinite():
    S = torch.diag(torch.tensor([1.0, 2.0, 0.0], dtype=D64))
    with pytest.raises(SingularOperatorError, match="lam"):
        DenseOperator(S).inverse("explicit") @ torch.ones(3, dtype=D64)
    with pytest.raises(SingularOperatorError):
        DenseOperator(torch.ones(3, 3, dtype=D64) + torch.triu(torch.ones(3, 3, dtype=D64)) * 0).inverse(
            "explicit"
        ) @ torch.ones(3, dtype=D64)
    indefinite = DenseOperator(torch.diag(torch.tensor([1.0, -2.0], dtype=D64)))
    with pytest.warns(NegativeCurvatureWarning, match="LU"):
        x = indefinite.inverse("explicit") @ torch.ones(2, dtype=D64)
    assert_close(x, torch.tensor([1.0, -0.5], dtype=D64))
    with pytest.raises(DenseMemoryError):
        IdentityOperator(5000, D64).inverse("explicit", max_bytes=1000) @ torch.ones(5000, dtype=D64)


def test_explicit_float32_retries_in_float64():
    M = _spd(6, 8, 1e-7, 1.0).float()
    A = DenseOperator(M, Tags(psd=True))
    x = A.inverse("explicit") @ torch.ones(6)
    assert x.dtype == torch.float32 and torch.isfinite(x).all()


def test_arnoldi_negative_and_zero_eigenvalues_warn_not_nan():
    M = torch.diag(torch.tensor([4.0, 2.0, -1.0, 0.0], dtype=D64))
    A = DenseOperator(M)
    with pytest.warns(NegativeCurvatureWarning, match="1 eigenvalue.*dropped.*1 negative"):
        x = A.inverse("arnoldi", rank=4, maxiter=4) @ torch.ones(4, dtype=D64)
    assert_close(x, torch.tensor([0.25, 0.5, -1.0, 0.0], dtype=D64), 1e-10)


def test_lissa_converges_on_a_dataset_operator():
    g = _gen(11)
    X, y = torch.randn(64, 3, dtype=D64, generator=g), torch.randint(0, 2, (64,), generator=g)
    loss = lambda w, X, y: torch.nn.functional.cross_entropy(X @ w.reshape(3, 2), y)  # noqa: E731
    w = torch.zeros(6, dtype=D64)
    H = HessianOperator.from_data(loss, w, (X, y), batch_size=64)
    lam = 0.1
    A = H + lam * IdentityOperator.like(H)
    b = torch.randn(6, dtype=D64, generator=g)
    ref = torch.linalg.solve(hessian(loss)(w, X, y) + lam * torch.eye(6, dtype=D64), b)
    inv = A.inverse("lissa", batch_size=16, depth=300, repeats=8, scale=2.0, seed=0)
    x = inv @ b
    # stochastic: minibatches of 16 of 64 examples; the mean over 8 repeats is within 10 %
    assert float((x - ref).norm() / ref.norm()) < 0.10
    assert_close(inv @ b, x)  # seeded: the same answer on every call
    assert inv.info.hvps == 299 * 8
    full = HessianOperator(loss, (w, X, y)) + lam * IdentityOperator.like(H)
    det = full.inverse("lissa", depth=2000, scale=2.0) @ b  # no data to draw from: exact series
    assert_close(det, ref, 1e-8)


def test_lissa_divergence_is_detected_and_explained():
    A = DenseOperator(torch.diag(torch.tensor([1.0, 50.0], dtype=D64)), Tags(psd=True))
    with pytest.raises(DivergenceError, match="increase scale"):
        A.inverse("lissa", scale=10.0, depth=500) @ torch.ones(2, dtype=D64)


def test_unknown_method_or_option_lists_the_valid_ones():
    A = DenseOperator(_spd(3, 0))
    with pytest.raises(ValueError, match="arnoldi, cg, explicit, lissa"):
        A.inverse("newton")
    with pytest.raises(TypeError, match="valid options: rtol"):
        A.inverse("cg", tol=1e-3)
    assert set(METHODS) == {"explicit", "cg", "arnoldi", "lissa"}
    with pytest.raises(ValueError, match="square"):
        DenseOperator(torch.ones(2, 3, dtype=D64)).inverse()


def test_nan_right_hand_side_is_refused():
    A = DenseOperator(_spd(3, 0))
    with pytest.raises(NonFiniteError):
        A.inverse("cg") @ torch.tensor([1.0, float("nan"), 0.0], dtype=D64)


def test_solve_returns_info():
    A = DenseOperator(_spd(5, 0), Tags(psd=True))
    b = torch.randn(5, 2, dtype=D64)
    x, info = solve(A, b, method="cg", rtol=1e-10, return_info=True)
    assert_close(A @ x, b, 1e-8)
    assert info.method == "cg" and info.hvps >= 2 and info.seconds > 0
    assert "2/2 columns converged" in str(info)
    assert isinstance(A.inverse(), InverseOperator)


def test_progress_bars_do_not_change_results():
    A = DenseOperator(_spd(5, 0), Tags(psd=True))
    b = torch.randn(5, dtype=D64)
    assert_close(A.inverse("cg", progress=True, rtol=1e-12) @ b, A.inverse("cg", rtol=1e-12) @ b)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        A.inverse("lissa", progress=True, scale=20.0, depth=10) @ b


def test_eigh_of_a_regularized_operator_ranks_the_shifted_values():
    H = DenseOperator(torch.diag(torch.tensor([-3.0, -1.5, 1.0, 2.0], dtype=D64)))
    R = H + 2.5 * IdentityOperator.like(H)
    assert_close(R.eigh(2, maxiter=4).values, torch.tensor([4.5, 3.5], dtype=D64), 1e-10)
    assert_close(H.eigh(2, maxiter=4).values, torch.tensor([-3.0, 2.0], dtype=D64), 1e-10)
