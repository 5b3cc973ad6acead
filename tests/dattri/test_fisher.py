"""``dattri.func.fisher`` on linop: the explicit IFVPs solve with the empirical Fisher from
per-example gradients (0.2.0 solved with ``‖ḡ‖² 11ᵀ + λI``, shown side by side with the reference
in a child process); the EK-FAC helpers against covariances and corrected eigenvalues computed by
hand (0.2.0's eigenvalues, taken in a wrong basis, shown too); (loss, mask) outputs and sequence
inputs; usage errors; and dattri 0.2.0's own ``test_fisher.py`` run on our package."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad

from dattri.func.fisher import (
    IFVPUsageError,
    estimate_covariance,
    estimate_eigenvector,
    estimate_lambda,
    ifvp_at_x_explicit,
    ifvp_explicit,
)
from dattri.func.utils import flatten_func, flatten_params
from linop.testing import assert_close
from tests.dattri._reference import REPO, reference_path, run_reference
from tests.dattri.test_upstream import CONFTEST

D64 = torch.float64


def _regression(n: int = 30, d: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, dtype=D64, generator=g)
    y = torch.randn(n, dtype=D64, generator=g)
    w = torch.randn(d, dtype=D64, generator=g)
    v = torch.randn(3, d, dtype=D64, generator=g)
    return w, X, y, v


def linear_mse(w, X, y):
    return ((X @ w - y) ** 2).mean()


def _explicit_fisher(w, X, y):
    G = torch.stack([grad(linear_mse)(w, X[i : i + 1], y[i : i + 1]) for i in range(len(X))])
    return G.T @ G / len(X)


def test_explicit_ifvp_solves_with_the_empirical_fisher():
    w, X, y, v = _regression()
    lam = 0.1
    expected = torch.linalg.solve(_explicit_fisher(w, X, y) + lam * torch.eye(4, dtype=D64), v.T).T
    at_x = ifvp_at_x_explicit(linear_mse, w, X, y, regularization=lam)
    assert_close(at_x(v), expected)
    assert_close(at_x(v[0]), expected[0])
    assert_close(ifvp_explicit(linear_mse, regularization=lam)((w, X, y), v), expected)
    # argnums as a one-tuple, the parameters last
    last = ifvp_at_x_explicit(lambda X, y, w: linear_mse(w, X, y), X, y, w, argnums=(2,))
    fisher = _explicit_fisher(w, X, y)
    assert_close(fisher @ last(v[0]), v[0], 1e-8)


def test_nested_data_and_a_flattened_model():
    """The shape of dattri's own test: ``func(params, (data, labels))`` of a flattened model."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Tanh(), torch.nn.Linear(3, 2))
    model = model.double()
    X, y = torch.randn(12, 2, dtype=D64), torch.randint(0, 2, (12,))

    @flatten_func(model, param_num=0)
    def ce(params, data):
        return F.cross_entropy(functional_call(model, params, data[0]), data[1])

    p = flatten_params({k: q.detach() for k, q in model.named_parameters()})
    G = torch.stack([grad(ce)(p, (X[i : i + 1], y[i : i + 1])) for i in range(12)])
    fisher = G.T @ G / 12 + 0.05 * torch.eye(p.numel(), dtype=D64)
    v = torch.randn(2, p.numel(), dtype=D64)
    out = ifvp_explicit(ce, regularization=0.05)((p, (X, y)), v)
    assert_close(out, torch.linalg.solve(fisher, v.T).T)


@pytest.fixture(scope="module")
def reference():
    w, X, y, v = _regression()
    body = """
from dattri.func.fisher import ifvp_at_x_explicit
# float32: 0.2.0 builds its identity in float32 and fails on float64 inputs
w, X, y, v = (inputs[k].float() for k in ("w", "X", "y", "v"))
f = lambda w, X, y: ((X @ w - y) ** 2).mean()
outputs["ifvp"] = ifvp_at_x_explicit(f, w, X, y, regularization=0.1)(v).double()
"""
    return run_reference(body, {"w": w, "X": X, "y": y, "v": v})


def test_side_by_side_with_0_2_0_which_solves_with_no_fisher(reference):
    """0.2.0's "FIM" was ``g @ g.T`` of the 1-D mean gradient ``ḡ``: the scalar ``‖ḡ‖²``,
    broadcast into ``‖ḡ‖² 11ᵀ + λI`` (and only in float32: its identity is float32)."""
    w, X, y, v = _regression()
    g = grad(linear_mse)(w, X, y)
    what_0_2_0_solves = float(g @ g) * torch.ones(4, 4, dtype=D64) + 0.1 * torch.eye(4, dtype=D64)
    assert_close(reference["ifvp"], torch.linalg.solve(what_0_2_0_solves, v.T).T, 1e-4)
    ours = ifvp_at_x_explicit(linear_mse, w, X, y, regularization=0.1)(v)
    assert (ours - reference["ifvp"]).abs().max() > 0.1 * reference["ifvp"].abs().max()


# ---------------------------------------------------------------------- EK-FAC helpers
class _Hooked:
    """A bias MLP whose Linear layers cache (inputs with a column of ones, outputs), as dattri's
    EK-FAC attributor's hook does."""

    def __init__(self, seed: int = 0) -> None:
        torch.manual_seed(seed)
        self.model = torch.nn.Sequential(
            torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2)
        ).double()
        self.cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for name in ("0", "2"):
            self.model.get_submodule(name).register_forward_hook(self._hook(name))

    def _hook(self, name):
        def hook(module, inputs, outputs):
            x = inputs[0]
            x = torch.cat([x, torch.ones(*x.shape[:-1], 1, dtype=x.dtype)], dim=-1)
            outputs.retain_grad()
            self.cache[name] = (x, outputs)

        return hook

    def func(self, batch):
        X, y = batch
        return F.cross_entropy(self.model(X), y)


def _loader(n: int = 10, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    X, y = torch.randn(n, 3, dtype=D64, generator=g), torch.randint(0, 2, (n,), generator=g)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, y), batch_size=4), X, y


def _per_example_layer_gradients(hooked: _Hooked, X, y, name: str) -> torch.Tensor:
    """Example ``i``'s gradient of layer ``name``'s weight with its bias as a last column."""
    layer = hooked.model.get_submodule(name)
    rows = []
    for i in range(len(X)):
        hooked.model.zero_grad()
        F.cross_entropy(hooked.model(X[i : i + 1]), y[i : i + 1]).backward()
        rows.append(torch.cat([layer.weight.grad, layer.bias.grad[:, None]], dim=1))
    return torch.stack(rows)


def test_ekfac_helpers_against_explicit_statistics():
    hooked = _Hooked()
    loader, X, y = _loader()
    cov = estimate_covariance(hooked.func, loader, hooked.cache)
    for name in ("0", "2"):
        dtheta = _per_example_layer_gradients(hooked, X, y, name)
        inputs = torch.cat([X, torch.ones(10, 1, dtype=D64)], 1) if name == "0" else None
        if inputs is not None:
            assert_close(cov[name][0], inputs.T @ inputs / 10)
        # ds is the gradient of the layer's output: dθᵢ = dsᵢ aᵢᵀ, so S = E[ds dsᵀ]
        ds = dtheta[:, :, -1]  # the bias column of dθᵢ is dsᵢ
        assert_close(cov[name][1], ds.T @ ds / 10)
    vectors = estimate_eigenvector(cov)
    for name, (q_a, q_s) in vectors.items():
        for q, c in ((q_a, cov[name][0]), (q_s, cov[name][1])):  # one eigenvector per row
            rotated = q @ c @ q.T
            assert_close(rotated, torch.diag(torch.diagonal(rotated)))
    lambdas = estimate_lambda(hooked.func, loader, vectors, hooked.cache)
    for name, (q_a, q_s) in vectors.items():
        dtheta = _per_example_layer_gradients(hooked, X, y, name)
        # λ[o, i] is the empirical Fisher of the layer in the Kronecker eigenbasis, u_oiᵀ F u_oi
        fisher = torch.einsum("bij,bkl->ijkl", dtheta, dtheta) / 10
        basis = torch.einsum("oj,il->oijl", q_s, q_a)  # u_oi = q_s[o] ⊗ q_a[i], as matrices
        expected = torch.einsum("oijl,jlkm,oikm->oi", basis, fisher, basis)
        assert_close(lambdas[name], expected)


_EKFAC_BODY = """
import torch
import torch.nn.functional as F
from dattri.func.fisher import estimate_covariance, estimate_eigenvector, estimate_lambda
model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2)).double()
model.load_state_dict(inputs["state"])
cache = {}
def hook_for(name):
    def hook(module, ins, outs):
        x = ins[0]
        x = torch.cat([x, torch.ones(*x.shape[:-1], 1, dtype=x.dtype)], dim=-1)
        outs.retain_grad()
        cache[name] = (x, outs)
    return hook
for name in ("0", "2"):
    model.get_submodule(name).register_forward_hook(hook_for(name))
X, y = inputs["X"], inputs["y"]
loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, y), batch_size=4)
func = lambda batch: F.cross_entropy(model(batch[0]), batch[1])
cov = estimate_covariance(func, loader, cache)
outputs["cov"] = cov
outputs["lambda"] = estimate_lambda(func, loader, estimate_eigenvector(cov), cache)
"""


def test_ekfac_side_by_side_with_0_2_0():
    """The same covariances as 0.2.0; its corrected eigenvalues are not the Fisher's diagonal in
    the eigenbasis (eigenvectors used as rows where ``eigh`` returns columns); ours are (above)."""
    hooked = _Hooked()
    loader, X, y = _loader()
    ref = run_reference(_EKFAC_BODY, {"state": hooked.model.state_dict(), "X": X, "y": y})
    cov = estimate_covariance(hooked.func, loader, hooked.cache)
    lambdas = estimate_lambda(hooked.func, loader, estimate_eigenvector(cov), hooked.cache)
    for name in ("0", "2"):
        assert_close(cov[name][0], ref["cov"][name][0])
        assert_close(cov[name][1], ref["cov"][name][1])
        assert (lambdas[name] - ref["lambda"][name]).abs().max() > 1e-3 * lambdas[name].max()


def test_ekfac_loss_and_mask_and_sequences():
    """A func returning (loss, mask) with sequence inputs (B, t, d): masked positions count for
    nothing (0.2.0 multiplied the tuple, and failed on 3-d inputs)."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(3, 2, bias=False).double()
    cache = {}

    def hook(module, inputs, outputs):
        outputs.retain_grad()
        cache["layer"] = (inputs[0], outputs)

    layer.register_forward_hook(hook)
    g = torch.Generator().manual_seed(0)
    X = torch.randn(4, 5, 3, dtype=D64, generator=g)
    mask = torch.ones(4, 5, dtype=D64)
    mask[:, 3:] = 0  # the last two steps are padding

    def func(batch):
        (X,) = batch
        out = layer(X)
        return ((out**2).sum(-1) * mask).sum() / 4, mask

    loader = [(X,)]
    cov = estimate_covariance(func, loader, cache)
    kept = X[:, :3].reshape(-1, 3)
    assert_close(cov["layer"][0], kept.T @ kept / 12)
    vectors = estimate_eigenvector(cov)
    lambdas = estimate_lambda(func, loader, vectors, cache)
    assert lambdas["layer"].shape == (2, 3)
    assert bool(torch.isfinite(lambdas["layer"]).all())


def test_usage_errors():
    w, X, y, _ = _regression()
    with pytest.raises(IFVPUsageError, match="batch size mismatch"):
        ifvp_at_x_explicit(linear_mse, w, X, y[:5])
    with pytest.raises(IFVPUsageError, match="one argnums"):
        ifvp_at_x_explicit(linear_mse, w, X, y, argnums=(0, 1))
    with pytest.raises(IFVPUsageError, match="example dimension"):
        ifvp_at_x_explicit(lambda w: (w**2).sum(), w)
    with pytest.raises(IFVPUsageError, match="max_iter"):
        estimate_covariance(lambda b: b, [(X,)], {}, max_iter=0)
    assert issubclass(IFVPUsageError, ValueError)


def test_dattri_own_fisher_tests_pass_on_our_package(tmp_path: Path) -> None:
    source = reference_path() / "test" / "dattri" / "func" / "test_fisher.py"
    shutil.copy(source, tmp_path / "test_fisher.py")
    (tmp_path / "conftest.py").write_text(CONFTEST)
    env = dict(os.environ, PYTHONPATH=str(REPO))  # our dattri, never the reference
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=", "."],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr[-2000:]
    print(f"dattri 0.2.0's own fisher tests on our package: {summary}")
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert "1 passed" in summary, summary
