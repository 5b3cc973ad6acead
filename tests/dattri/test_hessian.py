"""dattri.func.hessian compatibility: closed forms, dattri's documented behaviour, fixed bugs."""

import warnings

import pytest
import torch
from torch.func import vmap

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
    f = ihvp_at_x_lissa(mse, xs, ys, theta, in_dims=(0, 0, None), argnums=2, batch_size=200,
                        num_repeat=1, recursion_depth=400, damping=damping, scaling=scaling)
    assert torch.allclose(f(v), ref, atol=1e-6)
    g = ihvp_lissa(mse, argnums=2, batch_size=20, num_repeat=4, recursion_depth=300,
                   damping=damping, scaling=scaling)
    out = g((xs, ys, theta), v, in_dims=(0, 0, None))
    assert out.shape == (1, 2)
    assert float((out - ref).norm() / ref.norm()) < 0.1


def test_lissa_batch_size_larger_than_num_repeat_is_respected():
    """With the swap, batch_size=150 would become num_repeat=150 (slow) and batch_size=1 (noisy)."""
    xs, ys, theta = _mse_problem(150)
    f = ihvp_at_x_lissa(mse, xs, ys, theta, in_dims=(0, 0, None), argnums=2, batch_size=150,
                        num_repeat=1, recursion_depth=200, scaling=10.0)
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
