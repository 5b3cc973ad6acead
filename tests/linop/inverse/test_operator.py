"""The inverse operator and solve (linop.inverse.operator, linop.inverse.base): every method
against a dense float64 solve and against each other (Hypothesis), typed options, why columns
stop, SolveInfo, the differentiable and vmappable ``inv @ v``, pickling. Each method's own
behaviour is in test_<method>.py."""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from linop import (
    METHODS,
    ArnoldiOptions,
    CGOptions,
    DenseOperator,
    ExplicitOptions,
    HessianOperator,
    IdentityOperator,
    InverseOperator,
    LissaOptions,
    NonFiniteError,
    SolveInfo,
    SolverOptions,
    StopReason,
    solve,
)
from linop.tags import Tags
from linop.testing import assert_close, check_operator
from tests.linop._helpers import Counting, assert_pickles, gen, spd

D64 = torch.float64
_gen, _spd = gen, spd


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
    assert_close(
        A.inverse("cg", rtol=1e-12, preconditioner="arnoldi", rank=max(1, n // 2)) @ B, ref, 1e-7
    )
    assert_close(A.inverse("arnoldi", rank=n, maxiter=n) @ B, ref, 1e-7)


def _mlp_problem(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 3)).to(
        D64
    )
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


def test_unknown_method_or_option_lists_the_valid_ones():
    A = DenseOperator(_spd(3, 0))
    with pytest.raises(ValueError, match="arnoldi, cg, eigen, explicit, lissa"):
        A.inverse("newton")
    with pytest.raises(TypeError, match="valid options: rtol"):
        A.inverse("cg", tol=1e-3)
    assert set(METHODS) == {"explicit", "cg", "arnoldi", "lissa", "nystrom", "eigen"}
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
        A.inverse("lissa", progress=True, scale=20.0, depth=300) @ b  # converged: no warning


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


# --------------------------------------------------------------------------------- typed options
OPTION_TYPES = {
    "explicit": ExplicitOptions,
    "cg": CGOptions,
    "arnoldi": ArnoldiOptions,
    "lissa": LissaOptions,
}


def _exact(method, n, top=10.0):
    """Options under which ``method`` is exact on an SPD operator of size n with spectrum ≤ top."""
    return {
        "explicit": {},
        "cg": {"rtol": 1e-13},
        "arnoldi": {"rank": n, "maxiter": n},
        # the series contracts by 1 − 1/scale per step at worst: 35·scale steps reach 1e-15
        "lissa": {"depth": int(35 * 1.2 * top), "scale": 1.2 * top},
    }[method]


@pytest.mark.parametrize("method", sorted(OPTION_TYPES))
def test_every_method_has_typed_options(method):
    assert METHODS[method].Options is OPTION_TYPES[method]
    assert OPTION_TYPES[method].method == method and issubclass(OPTION_TYPES[method], SolverOptions)
    with pytest.raises(dataclasses.FrozenInstanceError):
        OPTION_TYPES[method]().seed = 3


@pytest.mark.parametrize("method", sorted(OPTION_TYPES))
def test_an_unknown_option_is_a_type_error_listing_the_valid_ones(method):
    A = Counting(_spd(4, 0))
    with pytest.raises(TypeError, match="unknown option") as error:
        A.inverse(method, tolerance=1e-3)
    message = str(error.value)
    assert "tolerance" in message
    for field in dataclasses.fields(OPTION_TYPES[method]):
        assert f"{field.name}=" in message
    assert A.count == 0


INVALID = [
    ("cg", {"maxiter": -3}),
    ("cg", {"rtol": -1}),
    ("cg", {"atol": -1e-3}),
    ("cg", {"rtol": float("nan")}),
    ("cg", {"rank": 0}),
    ("cg", {"check_every": 0}),
    ("cg", {"preconditioner": "jacobi"}),
    ("explicit", {"chunk_size": 0}),
    ("explicit", {"max_bytes": -1}),
    ("arnoldi", {"rank": 0}),
    ("arnoldi", {"maxiter": 0}),
    ("arnoldi", {"which": "SA"}),
    ("arnoldi", {"cutoff": -1.0}),
    ("lissa", {"depth": 0}),
    ("lissa", {"scale": 0}),
    ("lissa", {"scale": -2.0}),
    ("lissa", {"repeats": 0}),
    ("lissa", {"batch_size": 0}),
    ("lissa", {"divergence_factor": 1.0}),
]


@pytest.mark.parametrize(
    "method,options",
    INVALID,
    ids=[f"{m}-{next(iter(o))}={next(iter(o.values()))}" for m, o in INVALID],
)
def test_an_invalid_value_is_a_value_error_before_any_product(method, options):
    A = Counting(_spd(4, 0))
    with pytest.raises(ValueError, match=next(iter(options))):
        A.inverse(method, **options)
    with pytest.raises(ValueError, match=next(iter(options))):
        OPTION_TYPES[method](**options)
    with pytest.raises(ValueError):
        solve(A, torch.ones(4, dtype=D64), method, **options)
    assert A.count == 0


@pytest.mark.parametrize("method", sorted(OPTION_TYPES))
def test_an_options_object_works_like_keywords(method):
    M = _spd(6, 1)
    A = DenseOperator(M, Tags(psd=True))
    B = torch.randn(6, 2, dtype=D64, generator=_gen(3))
    keywords = _exact(method, 6)
    options = OPTION_TYPES[method](**keywords)
    by_object = A.inverse(options)
    by_keywords = A.inverse(method, **keywords)
    assert by_object.method == by_keywords.method == method
    assert by_object.options == by_keywords.options == options
    assert isinstance(by_keywords.options, OPTION_TYPES[method])
    X = by_object @ B
    assert torch.equal(X, by_keywords @ B)
    assert torch.equal(solve(A, B, options), X)
    assert_close(X, torch.linalg.solve(M, B), 1e-8)


def test_an_options_object_and_keywords_together_are_a_type_error():
    A = DenseOperator(_spd(3, 0), Tags(psd=True))
    with pytest.raises(TypeError, match="not both"):
        A.inverse(CGOptions(rtol=1e-8), rtol=1e-3)
    with pytest.raises(TypeError, match="not both"):
        solve(A, torch.ones(3, dtype=D64), LissaOptions(), depth=3)


def test_the_options_report_what_differs_from_the_defaults():
    assert CGOptions().changed() == {}
    assert CGOptions(rtol=1e-8, maxiter=5).changed() == {"rtol": 1e-8, "maxiter": 5}


# ---------------------------------------------------------------------------------- stop reasons
def test_stop_reasons_are_str_enum_members():
    for reason in StopReason:
        assert reason == reason.value and str(reason) == reason.value
        assert StopReason(reason.value) is reason
    assert StopReason.CONVERGED.checked and StopReason.MAXITER.checked
    assert not StopReason.LOW_RANK.checked and not StopReason.FIXED_DEPTH.checked


@pytest.mark.parametrize(
    "method,reason",
    [
        ("explicit", StopReason.DIRECT),
        ("cg", StopReason.CONVERGED),
        ("arnoldi", StopReason.LOW_RANK),
        ("lissa", StopReason.FIXED_DEPTH),
    ],
)
def test_every_method_reports_stop_reason_members(method, reason):
    A = DenseOperator(_spd(5, 2), Tags(psd=True))
    inv = A.inverse(method, **_exact(method, 5))
    inv @ torch.randn(5, 3, dtype=D64, generator=_gen(0))
    info = inv.info
    assert isinstance(info, SolveInfo) and info.method == method
    assert len(info.reasons) == 3
    assert all(type(r) is StopReason and r is reason for r in info.reasons)
    assert info.reasons == [reason.value] * 3  # and they compare equal to their strings
    assert bool(info.converged.all())
    assert ("not checked" in str(info)) == (not reason.checked)


# ----------------------------------------------------------- differentiable and vmappable solves
METHODS_EXACT = ["explicit", "cg", "arnoldi", "lissa"]


def _spd_problem(n=5, seed=4):
    M = _spd(n, seed, 1.0, 4.0)
    return M, DenseOperator(M, Tags(psd=True))


@pytest.mark.parametrize("method", METHODS_EXACT)
def test_solves_pass_gradcheck(method):
    _, A = _spd_problem()
    inv = A.inverse(method, **_exact(method, 5, top=4.0))
    v = torch.randn(5, dtype=D64, generator=_gen(1), requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: inv @ v, (v,))
    V = torch.randn(5, 2, dtype=D64, generator=_gen(2), requires_grad=True)
    assert torch.autograd.gradcheck(lambda V: inv @ V, (V,))


@pytest.mark.parametrize("method", METHODS_EXACT)
def test_solves_under_vmap_grad_and_jacrev(method):
    M, A = _spd_problem()
    inv = A.inverse(method, **_exact(method, 5, top=4.0))
    V = torch.randn(4, 5, dtype=D64, generator=_gen(3))
    assert_close(torch.func.vmap(lambda v: inv @ v)(V), torch.linalg.solve(M, V.T).T, 1e-8)
    W = torch.randn(3, 5, 2, dtype=D64, generator=_gen(4))  # a batch of (n, k) right-hand sides
    assert_close(torch.func.vmap(lambda B: inv @ B)(W), torch.linalg.solve(M, W), 1e-8)
    v = V[0]
    ones = torch.ones(5, dtype=D64)
    assert_close(torch.func.grad(lambda v: (inv @ v).sum())(v), torch.linalg.solve(M, ones), 1e-8)
    assert_close(torch.func.jacrev(lambda v: inv @ v)(v), torch.linalg.inv(M), 1e-8)
    u = v.clone().requires_grad_()
    (inv @ u).sum().backward()
    assert_close(u.grad, torch.linalg.solve(M, ones), 1e-8)


def test_the_backward_of_a_non_symmetric_solve_is_the_adjoint_solve():
    N = torch.randn(5, 5, dtype=D64, generator=_gen(5)) + 4 * torch.eye(5, dtype=D64)
    inv = DenseOperator(N).inverse("explicit")
    assert not inv.tags.symmetric
    v = torch.randn(5, dtype=D64, generator=_gen(6), requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: inv @ v, (v,))
    ones = torch.ones(5, dtype=D64)
    assert_close(
        torch.func.grad(lambda v: (inv @ v).sum())(v.detach()), torch.linalg.solve(N.T, ones)
    )
    assert_close(torch.func.jacrev(lambda v: inv @ v)(v.detach()), torch.linalg.inv(N))
    V = torch.randn(3, 5, dtype=D64, generator=_gen(7))
    assert_close(torch.func.vmap(lambda v: inv @ v)(V), torch.linalg.solve(N, V.T).T)
    u = v.detach().clone().requires_grad_()
    (u @ inv).sum().backward()  # row vectors go through the adjoint's solve, and back
    assert_close(u.grad, torch.linalg.solve(N, ones))


def test_solves_of_a_hessian_are_differentiable_in_the_right_hand_side():
    H = _mlp_problem()
    n = H.shape[0]
    A = H + 2.0 * IdentityOperator.like(H)
    dense = H.to_dense() + 2.0 * torch.eye(n, dtype=D64)
    ones = torch.ones(n, dtype=D64)
    v = torch.randn(n, dtype=D64, generator=_gen(8))
    for method, options in [
        ("explicit", {}),
        ("cg", {"rtol": 1e-12}),
        ("arnoldi", {"rank": n, "maxiter": n}),
    ]:
        inv = A.inverse(method, **options)
        gradient = torch.func.grad(lambda v, inv=inv: (inv @ v).sum())(v)
        assert_close(gradient, torch.linalg.solve(dense, ones), 1e-7)


# ------------------------------------------------------------------------------------- pickling
@pytest.mark.parametrize(
    "method,options",
    [
        ("explicit", {}),
        ("cg", {"rtol": 1e-12}),
        ("cg", {"rtol": 1e-12, "preconditioner": "arnoldi", "rank": 3}),
        ("arnoldi", {"rank": 6, "maxiter": 6}),
        ("lissa", {"depth": 200, "scale": 12.0}),
    ],
)
def test_inverses_pickle_after_their_set_up(method, options):
    A = DenseOperator(_spd(6, 7), Tags(psd=True)) + 0.5 * IdentityOperator(6, D64)
    inv = A.inverse(method, **options)
    B = torch.randn(6, 2, dtype=D64, generator=_gen(9))
    copy = assert_pickles(inv, B)
    assert copy.options == inv.options and copy.method == method
    # the set-up travelled with it: the copy's products are the first call's less the set-up's
    assert copy.info.hvps == inv.info.hvps - inv.strategy.setup_hvps
    assert copy.info.hvps == 0 or method in ("cg", "lissa")
