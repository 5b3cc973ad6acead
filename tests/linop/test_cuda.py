"""CUDA paths (skipped without a GPU; run on the device): Hessians in both modes, every inverse
method, and the device checks, against the CPU results."""

from __future__ import annotations

import pytest
import torch
from torch.func import hessian

from linop import DeviceMismatchError, HessianOperator, IdentityOperator
from linop.testing import assert_close

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA (run on the device)"
)
D64 = torch.float64


def _problem(device):
    g = torch.Generator().manual_seed(0)
    X = torch.randn(64, 5, dtype=D64, generator=g)
    y = torch.randint(0, 3, (64,), generator=g)
    w = 0.1 * torch.randn(15, dtype=D64, generator=g)
    return w.to(device), X.to(device), y.to(device)


def loss(w, X, y):
    return torch.nn.functional.cross_entropy(X @ w.reshape(5, 3), y)


@pytest.mark.parametrize("mode", ["rev-rev", "rev-fwd"])
def test_hessian_on_cuda_equals_cpu(mode):
    w, X, y = _problem("cuda")
    H = HessianOperator(loss, (w, X, y), mode=mode)
    V = torch.randn(15, 4, dtype=D64, device="cuda")
    out = H @ V
    assert out.device.type == "cuda"
    ref = hessian(loss)(*(t.cpu() for t in (w, X, y))) @ V.cpu()
    assert_close(out.cpu(), ref)
    with pytest.raises(DeviceMismatchError):
        H @ V.cpu()


@pytest.mark.parametrize(
    "method,options",
    [
        ("explicit", {}),
        ("cg", {"rtol": 1e-12}),
        ("cg", {"rtol": 1e-12, "preconditioner": "arnoldi", "rank": 5}),
        ("arnoldi", {"rank": 15, "maxiter": 15}),
    ],
)
def test_inverse_methods_on_cuda(method, options):
    w, X, y = _problem("cuda")
    H = HessianOperator(loss, (w, X, y))
    A = H + 0.1 * IdentityOperator.like(H)
    B = torch.randn(15, 3, dtype=D64, device="cuda")
    ref = torch.linalg.solve(H.to_dense() + 0.1 * torch.eye(15, dtype=D64, device="cuda"), B)
    X_ = A.inverse(method, **options) @ B
    assert X_.device.type == "cuda"
    assert_close(X_, ref, 1e-8)


def test_lissa_and_dataset_operator_on_cuda():
    w, X, y = _problem("cuda")
    Hd = HessianOperator.from_data(loss, w, (X, y), batch_size=16)
    A = Hd + 0.1 * IdentityOperator.like(Hd)
    b = torch.randn(15, dtype=D64, device="cuda")
    full = HessianOperator(loss, (w, X, y))
    assert_close(Hd @ b, full @ b)
    x = (full + 0.1 * IdentityOperator.like(full)).inverse("lissa", depth=3000, scale=2.0) @ b
    assert_close(x, A.inverse("explicit") @ b, 1e-8)
