"""Incompatibilities found by a differential hunt against dattri 0.2.0: each test failed before
its fix. Where dattri's answer is the specification, it is computed by the reference."""

import pytest
import torch
from torch.func import grad, vmap

from dattri.func.hessian import IHVPUsageError, hvp_at_x, ihvp_at_x_cg, ihvp_at_x_explicit, ihvp_explicit, ihvp_lissa
from dattri.func.projection import BasicProjector, arnoldi_project
from linop import SingularOperatorError
from linop.testing import assert_close
from tests.dattri._reference import run_reference

D64 = torch.float64


def f(w):
    return (w**4).sum() + (w**2).sum()


def _data():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(20, 6, dtype=D64, generator=g)
    y = torch.randn(20, dtype=D64, generator=g)
    w = 0.1 * torch.randn(6, dtype=D64, generator=g)
    v = torch.randn(6, dtype=D64, generator=g)
    return w, X, y, v


def mse(w, X, y):
    return ((X @ w - y) ** 2).mean()


@pytest.fixture(scope="module")
def reference():
    w, X, y, v = _data()
    body = """
from torch.func import grad
from dattri.func.hessian import hvp_at_x
from dattri.func.projection import BasicProjector
w, v, g = inputs["w"], inputs["v"], inputs["g"]
f = lambda w: (w ** 4).sum() + (w ** 2).sum()
outputs["hvp_grad_x"] = grad(lambda w_: hvp_at_x(f, (w_,))(v).sum())(w)
outputs["project_1d"] = BasicProjector(300, 20, 11, "normal", "cpu").project(g[0], 0)
"""
    g = torch.randn(3, 300, generator=torch.Generator().manual_seed(1))
    return run_reference(body, {"w": w[:3].clone(), "v": v[:3].clone(), "g": g}) | {"g": g}


def test_hvp_at_x_is_differentiable_in_x(reference):
    w, v = _data()[0][:3].clone(), _data()[3][:3].clone()
    assert_close(grad(lambda w_: hvp_at_x(f, (w_,))(v).sum())(w), reference["hvp_grad_x"])
    assert hvp_at_x(f, (w.clone().requires_grad_(),))(v).requires_grad


def test_ihvp_is_differentiable_in_v_with_autograd():
    w, v = _data()[0][:3].clone(), _data()[3][:3].clone()
    expected = torch.linalg.solve(torch.func.hessian(f)(w), torch.ones(3, dtype=D64))
    for make in (lambda: ihvp_at_x_cg(f, w, max_iter=20), lambda: ihvp_at_x_explicit(f, w)):
        vr = v.clone().requires_grad_()
        make()(vr).sum().backward()
        assert_close(vr.grad, expected)


def test_ihvp_transforms_over_v_work_and_over_x_are_a_clear_error_not_silent_zeros():
    w, v = _data()[0][:3].clone(), _data()[3][:3].clone()
    V = torch.randn(4, 3, dtype=D64, generator=torch.Generator().manual_seed(2))
    H = torch.func.hessian(f)(w)
    expected = torch.linalg.solve(H, V.T).T
    # as dattri: the explicit closure maps (d,) to (d,), the iterative ones to (1, d)
    assert_close(vmap(ihvp_at_x_explicit(f, w))(V), expected)
    assert_close(vmap(ihvp_at_x_cg(f, w, max_iter=20))(V), expected.unsqueeze(1))
    assert_close(grad(lambda u: ihvp_at_x_cg(f, w, max_iter=20)(u).sum())(v),
                 torch.linalg.solve(H, torch.ones(3, dtype=D64)))
    with pytest.raises(IHVPUsageError, match="torch.func transforms"):
        grad(lambda w_: ihvp_explicit(f)((w_,), v).sum())(w)


def test_lissa_batch_larger_than_the_data_uses_all_of_it():
    w, X, y, v = _data()
    ref = ihvp_explicit(mse)((w, X, y), v)
    out = ihvp_lissa(mse, batch_size=50, recursion_depth=300, scaling=10.0)((w, X, y), v, in_dims=(None, 0, 0))
    assert out.shape == (1, 6)
    assert_close(out[0], ref, 1e-8)


def test_lissa_argnums_names_an_argument_of_func_after_collate():
    w, X, y, v = _data()
    ref = ihvp_explicit(mse)((w, X, y), v)
    collate = lambda raw: (raw[2], raw[0], raw[1])  # noqa: E731 - raw (X, y, w) -> mse(w, X, y)
    solver = ihvp_lissa(mse, argnums=0, batch_size=20, recursion_depth=300, scaling=10.0, collate_fn=collate)
    assert_close(solver((X, y, w), v, in_dims=(0, 0, None))[0], ref, 1e-8)


def test_lissa_checks_the_batch_size_of_every_input():
    w, X, y, v = _data()
    with pytest.raises(IHVPUsageError, match="batch size mismatch"):
        ihvp_lissa(mse)((w, X, y), v)  # default in_dims: w's 6 rows against 20 examples


def test_projectors_take_one_vector(reference):
    g = reference["g"]
    out = BasicProjector(300, 20, 11, "normal", "cpu").project(g[0], 0)
    assert out.shape == (20,)
    assert_close(out, reference["project_1d"])
    P = arnoldi_project(6, lambda w: mse(w, *_data()[1:3]), _data()[0], max_iter=6, proj_dim=4)
    assert P(torch.randn(6, dtype=D64)).shape == (1, 4)


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
        ihvp = ihvp_at_x_cg(lambda x, y: torch.sin(x + y).sum(), torch.ones(1), y, argnums=1, max_iter=2)
        assert_close(ihvp(vec), (torch.diag(-1 / (1 + y).sin()) @ vec.T).T, 1e-4)
