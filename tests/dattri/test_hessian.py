"""dattri.func.hessian compatibility: closed forms, dattri's documented behaviour, fixed bugs, and
incompatibilities found by a differential hunt against dattri 0.2.0 (where dattri's answer is the
specification, it is computed by the reference, in one child process: the ``reference``
fixture)."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch.func import grad, vmap

from dattri.func.hessian import (
    IHVPUsageError,
    hvp,
    hvp_at_x,
    ihvp_arnoldi,
    ihvp_at_x_arnoldi,
    ihvp_at_x_cg,
    ihvp_at_x_explicit,
    ihvp_at_x_lissa,
    ihvp_cg,
    ihvp_explicit,
    ihvp_lissa,
)
from linop import SingularOperatorError
from linop.testing import assert_close
from tests.dattri._reference import run_reference

D64 = torch.float64


def sin_sum(x):
    return torch.sin(x).sum()


def _x(seed=0, n=4):
    # away from the zeros of sin so the Hessian diag(-sin x) is well conditioned
    g = torch.Generator().manual_seed(seed)
    return (0.5 + torch.rand(n, dtype=D64, generator=g)) * torch.where(
        torch.rand(n, generator=g) > 0.5, 1.0, -1.0
    ).to(D64)


@pytest.mark.parametrize("mode", ["rev-rev", "rev-fwd"])
def test_hvp_closed_form_and_vmap(mode):
    x, v = _x(), torch.randn(4, dtype=D64)
    expected = -x.sin() * v
    assert torch.allclose(hvp(sin_sum, mode=mode)((x,), v), expected)
    assert torch.allclose(hvp(sin_sum, mode=mode, regularization=0.5)((x,), v), expected + 0.5 * v)
    assert torch.allclose(hvp_at_x(sin_sum, (x,), mode=mode)(v), expected)
    V = torch.randn(3, 4, dtype=D64)
    assert torch.allclose(vmap(hvp_at_x(sin_sum, (x,), mode=mode))(V), -x.sin() * V)
    X = torch.randn(5, 4, dtype=D64)
    out = vmap(lambda xi: hvp(sin_sum, mode=mode)((xi,), v))(X)
    assert torch.allclose(out, -X.sin() * v)


def test_argnums_and_non_tensor_inputs():
    y, v = _x(1), torch.randn(4, dtype=D64)
    f = lambda a, y: torch.sin(a + y).sum()  # noqa: E731
    assert torch.allclose(hvp_at_x(f, (2, y), argnums=1)(v), -(2 + y).sin() * v)
    ihvp = ihvp_at_x_explicit(f, 2, y, argnums=1)
    assert torch.allclose(ihvp(v), -v / (2 + y).sin())


def test_integer_labels_in_rev_rev():
    """dattri 0.2.0 makes every input differentiable in rev-rev, so integer labels fail there."""
    g = torch.Generator().manual_seed(0)
    X, y = torch.randn(10, 3, dtype=D64, generator=g), torch.randint(0, 2, (10,), generator=g)
    w = torch.zeros(6, dtype=D64)
    loss = lambda w, X, y: torch.nn.functional.cross_entropy(X @ w.reshape(3, 2), y)  # noqa: E731
    ref = torch.func.hessian(loss)(w, X, y)
    v = torch.randn(6, dtype=D64)
    for mode in ["rev-rev", "rev-fwd"]:
        assert torch.allclose(hvp(loss, mode=mode)((w, X, y), v), ref @ v)
        assert torch.allclose(hvp_at_x(loss, (w, X, y), mode=mode)(v), ref @ v)


def test_explicit_shapes_and_regularization():
    x = _x(2)
    H = torch.diag(-x.sin())
    v1, V = torch.randn(4, dtype=D64), torch.randn(3, 4, dtype=D64)
    f = ihvp_explicit(sin_sum, regularization=0.1)
    out1, outV = f((x,), v1), f((x,), V)
    assert out1.shape == (4,) and outV.shape == (3, 4)
    ref = torch.linalg.solve(H + 0.1 * torch.eye(4, dtype=D64), V.T).T
    assert torch.allclose(outV, ref)
    assert torch.allclose(ihvp_at_x_explicit(sin_sum, x, regularization=0.1)(V), ref)


def test_cg_shapes_start_and_tolerance():
    x = _x(3).abs()  # in (0.5, 1.5): -sin is convex there
    A = torch.diag(x.sin())
    f = lambda x: -torch.sin(x).sum()  # noqa: E731
    v = torch.randn(4, dtype=D64)
    out = ihvp_at_x_cg(f, x, max_iter=50, tol=1e-12)(v)
    assert out.shape == (1, 4)
    assert torch.allclose(out[0], torch.linalg.solve(A, v))
    assert ihvp_cg(f, max_iter=50)((x,), torch.randn(3, 4, dtype=D64)).shape == (3, 4)
    # dattri starts from x0 = v: zero iterations return v itself
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert torch.allclose(ihvp_at_x_cg(f, x, max_iter=0)(v), v.unsqueeze(0))


def test_cg_honours_tol_and_never_returns_nan():
    """dattri 0.2.0 ignores tol and divides 0/0 after convergence, returning NaN."""
    f = lambda x: 0.5 * (x**2).sum()  # noqa: E731 - the Hessian is I: CG converges in one step
    x = torch.ones(5, dtype=D64)
    v = torch.randn(2, 5, dtype=D64)
    out = ihvp_at_x_cg(f, x, max_iter=100, tol=1e-7)(v)
    assert torch.isfinite(out).all()
    assert torch.allclose(out, v)
    # a loose tol stops early: the answer is less accurate than with a tight one
    g = lambda x: 0.5 * (x * torch.arange(1.0, 21.0, dtype=D64) * x).sum()  # noqa: E731
    x20, b = torch.ones(20, dtype=D64), torch.ones(20, dtype=D64)
    exact = b / torch.arange(1.0, 21.0, dtype=D64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loose = ihvp_at_x_cg(g, x20, max_iter=100, tol=1.0)(b)[0]
        tight = ihvp_at_x_cg(g, x20, max_iter=100, tol=1e-10)(b)[0]
    assert torch.allclose(tight, exact)
    assert (loose - exact).norm() > 1e-3 > (tight - exact).norm()


def test_arnoldi_once_seeded_and_independent_of_norm_constant():
    """dattri 0.2.0 reruns Arnoldi from an unseeded start on every call, and norm_constant != 1
    changes its answer."""
    calls = {"n": 0}

    def counted(x):
        calls["n"] += 1
        return -torch.sin(x).sum()

    x = _x(4, 6)
    V = torch.randn(3, 6, dtype=D64)
    ref = torch.linalg.solve(torch.diag(x.sin()), V.T).T
    f = ihvp_at_x_arnoldi(counted, x, max_iter=20, top_k=6, mode="rev-rev")
    out = f(V)
    n_after_first = calls["n"]
    assert torch.allclose(out, ref)
    assert torch.equal(f(V), out)  # same numbers again...
    assert calls["n"] == n_after_first  # ...and no new Hessian work
    for c in [0.1, 10.0, 1e4]:
        g = ihvp_at_x_arnoldi(counted, x, max_iter=20, top_k=6, norm_constant=c, mode="rev-rev")
        assert torch.allclose(g(V), ref)
    assert torch.allclose(ihvp_arnoldi(counted, max_iter=20)((x,), V), ref)
    assert f(V[0]).shape == (1, 6)


def _mse_problem(n=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    xs = torch.randn(n, 2, dtype=D64, generator=g)
    theta = torch.randn(2, dtype=D64, generator=g)
    ys = xs @ theta + 0.05 * torch.randn(n, dtype=D64, generator=g)
    return xs, ys, theta


def mse(xs, ys, theta):
    return torch.mean((xs @ theta - ys) ** 2)


def test_lissa_fixed_point_and_argument_order():
    """The fixed point is (H + damping·scaling·I)⁻¹ v; batch_size and num_repeat reach the
    right places (dattri 0.2.0's ihvp_at_x_lissa swaps them)."""
    xs, ys, theta = _mse_problem()
    H = torch.func.hessian(mse, argnums=2)(xs, ys, theta)
    v = torch.randn(1, 2, dtype=D64)
    damping, scaling = 0.01, 10.0
    ref = torch.linalg.solve(H + damping * scaling * torch.eye(2, dtype=D64), v.T).T
    torch.manual_seed(0)
    f = ihvp_at_x_lissa(
        mse,
        xs,
        ys,
        theta,
        in_dims=(0, 0, None),
        argnums=2,
        batch_size=200,
        num_repeat=1,
        recursion_depth=400,
        damping=damping,
        scaling=scaling,
    )
    assert torch.allclose(f(v), ref, atol=1e-6)
    g = ihvp_lissa(
        mse,
        argnums=2,
        batch_size=20,
        num_repeat=4,
        recursion_depth=300,
        damping=damping,
        scaling=scaling,
    )
    out = g((xs, ys, theta), v, in_dims=(0, 0, None))
    assert out.shape == (1, 2)
    assert float((out - ref).norm() / ref.norm()) < 0.1


def test_lissa_batch_size_larger_than_num_repeat_is_respected():
    """With the swap, batch_size=150 would become num_repeat=150 (slow) and batch_size=1 (noisy)."""
    xs, ys, theta = _mse_problem(150)
    f = ihvp_at_x_lissa(
        mse,
        xs,
        ys,
        theta,
        in_dims=(0, 0, None),
        argnums=2,
        batch_size=150,
        num_repeat=1,
        recursion_depth=200,
        scaling=10.0,
    )
    H = torch.func.hessian(mse, argnums=2)(xs, ys, theta)
    v = torch.randn(2, dtype=D64)
    assert torch.allclose(f(v)[0], torch.linalg.solve(H, v), atol=1e-6)


def test_usage_errors():
    x = _x()
    for make in [
        lambda: hvp(sin_sum, mode="fwd"),
        lambda: hvp_at_x(sin_sum, (x,), mode="fwd"),
        lambda: ihvp_at_x_cg(sin_sum, x, mode="fwd"),
        lambda: ihvp_at_x_arnoldi(sin_sum, x, mode="fwd"),
        lambda: ihvp_lissa(sin_sum, mode="fwd"),
        lambda: ihvp_cg(sin_sum, mode="fwd")((x,), x),
        lambda: ihvp_arnoldi(sin_sum, mode="fwd")((x,), x),
    ]:
        with pytest.raises(IHVPUsageError, match="rev-rev"):
            make()
    xs, ys, theta = _mse_problem(10)
    with pytest.raises(IHVPUsageError, match="in_dim"):
        ihvp_at_x_lissa(mse, xs, ys, theta, in_dims=(0, 0), argnums=2)(theta)
    with pytest.raises(IHVPUsageError, match="mismatch"):
        ihvp_at_x_lissa(mse, xs, ys[:5], theta, in_dims=(0, 0, None), argnums=2)(theta)
    assert issubclass(IHVPUsageError, Exception)


# ------------------------------------------------- incompatibilities found against dattri 0.2.0
def quartic(w):
    return (w**4).sum() + (w**2).sum()


def _regression():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(20, 6, dtype=D64, generator=g)
    y = torch.randn(20, dtype=D64, generator=g)
    w = 0.1 * torch.randn(6, dtype=D64, generator=g)
    v = torch.randn(6, dtype=D64, generator=g)
    return w, X, y, v


def linear_mse(w, X, y):
    return ((X @ w - y) ** 2).mean()


@pytest.fixture(scope="module")
def reference():
    w, _, _, v = _regression()
    body = """
from torch.func import grad
from dattri.func.hessian import hvp_at_x
w, v = inputs["w"], inputs["v"]
f = lambda w: (w ** 4).sum() + (w ** 2).sum()
outputs["hvp_grad_x"] = grad(lambda w_: hvp_at_x(f, (w_,))(v).sum())(w)
"""
    return run_reference(body, {"w": w[:3].clone(), "v": v[:3].clone()})


def test_hvp_at_x_is_differentiable_in_x(reference):
    w, v = _regression()[0][:3].clone(), _regression()[3][:3].clone()
    assert_close(grad(lambda w_: hvp_at_x(quartic, (w_,))(v).sum())(w), reference["hvp_grad_x"])
    assert hvp_at_x(quartic, (w.clone().requires_grad_(),))(v).requires_grad


def test_ihvp_is_differentiable_in_v_with_autograd():
    w, v = _regression()[0][:3].clone(), _regression()[3][:3].clone()
    expected = torch.linalg.solve(torch.func.hessian(quartic)(w), torch.ones(3, dtype=D64))
    for make in (
        lambda: ihvp_at_x_cg(quartic, w, max_iter=20),
        lambda: ihvp_at_x_explicit(quartic, w),
    ):
        vr = v.clone().requires_grad_()
        make()(vr).sum().backward()
        assert_close(vr.grad, expected)


def test_ihvp_transforms_over_v_work_and_over_x_are_a_clear_error_not_silent_zeros():
    w, v = _regression()[0][:3].clone(), _regression()[3][:3].clone()
    V = torch.randn(4, 3, dtype=D64, generator=torch.Generator().manual_seed(2))
    H = torch.func.hessian(quartic)(w)
    expected = torch.linalg.solve(H, V.T).T
    # as dattri: the explicit closure maps (d,) to (d,), the iterative ones to (1, d)
    assert_close(vmap(ihvp_at_x_explicit(quartic, w))(V), expected)
    assert_close(vmap(ihvp_at_x_cg(quartic, w, max_iter=20))(V), expected.unsqueeze(1))
    assert_close(
        grad(lambda u: ihvp_at_x_cg(quartic, w, max_iter=20)(u).sum())(v),
        torch.linalg.solve(H, torch.ones(3, dtype=D64)),
    )
    with pytest.raises(IHVPUsageError, match=r"torch\.func transforms"):
        grad(lambda w_: ihvp_explicit(quartic)((w_,), v).sum())(w)


def test_lissa_batch_larger_than_the_data_uses_all_of_it():
    w, X, y, v = _regression()
    ref = ihvp_explicit(linear_mse)((w, X, y), v)
    out = ihvp_lissa(linear_mse, batch_size=50, recursion_depth=300, scaling=10.0)(
        (w, X, y), v, in_dims=(None, 0, 0)
    )
    assert out.shape == (1, 6)
    assert_close(out[0], ref, 1e-8)


def test_lissa_argnums_names_an_argument_of_func_after_collate():
    w, X, y, v = _regression()
    ref = ihvp_explicit(linear_mse)((w, X, y), v)
    collate = lambda raw: (raw[2], raw[0], raw[1])  # noqa: E731 - raw (X, y, w) -> linear_mse(w, X, y)
    solver = ihvp_lissa(
        linear_mse, argnums=0, batch_size=20, recursion_depth=300, scaling=10.0, collate_fn=collate
    )
    assert_close(solver((X, y, w), v, in_dims=(0, 0, None))[0], ref, 1e-8)


def test_lissa_checks_the_batch_size_of_every_input():
    w, X, y, v = _regression()
    with pytest.raises(IHVPUsageError, match="batch size mismatch"):
        ihvp_lissa(linear_mse)((w, X, y), v)  # default in_dims: w's 6 rows against 20 examples


def test_a_singular_explicit_hessian_is_also_a_torch_linalg_error():
    w = torch.zeros(3, dtype=D64)
    with pytest.raises(torch.linalg.LinAlgError):
        ihvp_at_x_explicit(lambda w: (w[:2] ** 2).sum(), w)(torch.ones(3, dtype=D64))
    assert issubclass(SingularOperatorError, torch.linalg.LinAlgError)


def test_cg_goes_through_negative_curvature_as_dattri_does():
    """dattri 0.2.0's own test: CG on the Hessian of sin(x + y), which is indefinite or negative
    definite for most y (its closed-form inverse is diag(−1 / sin(1 + y)))."""
    g = torch.Generator().manual_seed(3)
    for _ in range(10):
        y, vec = torch.randn(2, generator=g), torch.randn(5, 2, generator=g)
        ihvp = ihvp_at_x_cg(
            lambda x, y: torch.sin(x + y).sum(), torch.ones(1), y, argnums=1, max_iter=2
        )
        assert_close(ihvp(vec), (torch.diag(-1 / (1 + y).sin()) @ vec.T).T, 1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (run on the device)")
def test_cuda_rev_fwd_and_explicit():
    """dattri 0.2.0 builds zero tangents and the explicit identity on the CPU: both fail on CUDA."""
    x, y = _x().cuda(), _x(1).cuda()
    f = lambda a, b: torch.sin(a * b).sum()  # noqa: E731
    v = torch.randn(4, dtype=D64, device="cuda")
    out = hvp_at_x(f, (x, y), argnums=1, mode="rev-fwd")(v)
    assert out.device.type == "cuda"
    assert torch.allclose(out, -(x * x) * (x * y).sin() * v)
    assert ihvp_at_x_explicit(f, x, y, argnums=1, regularization=1.0)(v).device.type == "cuda"


def test_cg_with_dattri_budgets_is_quiet_like_dattri():
    """dattri's max_iter is a budget, not a failure: IFAttributorCG's defaults (max_iter=10)
    stop before convergence on every call, and dattri says nothing; neither do we."""
    A = torch.diag(torch.logspace(0, 3, 30, dtype=torch.float64))
    f = lambda x: 0.5 * x @ A @ x  # noqa: E731
    vec = torch.randn(4, 30, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = ihvp_at_x_cg(f, torch.zeros(30, dtype=torch.float64), max_iter=3)(vec)
    assert out.shape == (4, 30) and torch.isfinite(out).all()
