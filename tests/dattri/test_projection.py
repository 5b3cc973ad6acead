"""Tests of dattri.func.projection (linop-backed) and its SeededBlockProjection.

Closed-form tests need nothing else; differential tests compare with dattri 0.2.0, whose outputs
for every case are computed in one child process (the ``reference`` fixture).
"""

from __future__ import annotations

import math
import sys

import pytest
import torch

from dattri.func._seeded_projection import SeededBlockProjection
from dattri.func.projection import (
    ArnoldiProjector,
    BasicProjector,
    ChunkedCudaProjector,
    CudaProjector,
    ProjectionType,
    arnoldi_project,
    make_random_projector,
    random_project,
)
from linop import NegativeCurvatureWarning, ProjectionOperator
from linop.testing import assert_close, check_operator
from tests.dattri._reference import run_reference

# ---------------------------------------------------------------------------------------- cases
# Losses for the Arnoldi cases, executed here and in the reference process alike.
LOSSES_SRC = """
import torch
def _logreg(w):
    X, y = DATA["X"], DATA["y"]
    return torch.nn.functional.binary_cross_entropy_with_logits(X @ w, y) + 0.05 * (w ** 2).sum()
def _sin(x):
    return torch.sin(x).sum()
LOSSES = {"logreg": _logreg, "sin": _sin}
"""


def _data() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    X = torch.randn(40, 8, generator=g)
    return {"X": X, "y": (torch.rand(40, generator=g) > 0.5).float()}


def _losses() -> dict:
    namespace: dict = {"DATA": _data()}
    exec(LOSSES_SRC, namespace)  # our own source, shared with the reference
    return namespace["LOSSES"]


def _features() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    grads = {
        "conv.weight": torch.randn(6, 4, 3, 3, generator=g),
        "conv.bias": torch.randn(6, 4, generator=g),
        "fc.weight": torch.randn(6, 10, 20, generator=g),
        "scale": torch.randn(6, generator=g),
    }
    return {
        "t1000": torch.randn(8, 1000, generator=g),
        "t3000": torch.randn(5, 3000, generator=g),
        "t500_f64": torch.randn(4, 500, generator=g, dtype=torch.float64),
        "dict": grads,
    }


F = _features()
# id: (feature, batch, proj_dim, seed, use_half_precision, ensemble ids)
RANDOM_CASES = {
    "tensor-1block-half": (F["t1000"], 8, 64, 0, True, [0, 1]),
    "tensor-1block-f32": (F["t1000"], 8, 64, 7, False, [0]),
    "tensor-3blocks-half": (F["t3000"], 5, 250, 3, True, [0, 2]),
    "tensor-3blocks-f32": (F["t3000"], 5, 250, 3, False, [0, 2]),
    "dict-2blocks-f32": (F["dict"], 6, 128, 11, False, [0, 1]),
    "dict-2blocks-half": (F["dict"], 6, 128, 11, True, [0]),
    "float64-input-f32": (F["t500_f64"], 4, 100, 5, False, [0]),
}
# id: (n, k, seed, proj_type, dtype, block_size, ensemble_id); the reference projects eye(n)
BASIC_CASES = {
    "normal-f32": (300, 250, 5, "normal", torch.float32, 100, 0),
    "normal-f16": (300, 250, 5, "normal", torch.float16, 100, 0),
    "normal-f32-block30-ens3": (211, 100, 9, "normal", torch.float32, 30, 3),
    "normal-f64": (50, 20, 1, "normal", torch.float64, 100, 0),
    "rademacher-f32": (301, 64, 2, "rademacher", torch.float32, 100, 0),
    "rademacher-f32-block25": (120, 60, 4, "rademacher", torch.float32, 25, 1),
}
# id: (loss, proj_dim, max_iter, norm_constant, regularization, seed)
ARNOLDI_CASES = {
    "logreg-full": ("logreg", 8, 9, 1.0, 0.0, 0),
    "logreg-reg": ("logreg", 8, 9, 1.0, 0.1, 3),
    "logreg-c3": ("logreg", 8, 9, 3.0, 0.0, 0),
    "sin-negative": ("sin", 8, 9, 1.0, 0.0, 0),
    "sin-reg1": ("sin", 8, 9, 1.0, 1.0, 0),
}
ARNOLDI_X = {"logreg": torch.zeros(8), "sin": torch.linspace(-3.0, 3.0, 8) + 0.1}
ARNOLDI_G = torch.randn(6, 8, generator=torch.Generator().manual_seed(2))
G_1D = torch.randn(300, generator=torch.Generator().manual_seed(1))  # one vector, not a batch

REFERENCE_BODY = """
import warnings
from dattri.func.projection import BasicProjector, ArnoldiProjector, random_project
for name, (feature, batch, k, seed, half, ensembles) in inputs["random"].items():
    project = random_project(feature, batch, k, 32, "cpu", seed, use_half_precision=half)
    outputs["random", name] = [project(feature, ensemble_id=e) for e in ensembles]
for name, (n, k, seed, kind, dtype, block, ens) in inputs["basic"].items():
    P = BasicProjector(n, k, seed, kind, "cpu", block_size=block, dtype=dtype, ensemble_id=ens)
    outputs["basic", name] = P.project(torch.eye(n, dtype=dtype), ens)
DATA = inputs["data"]
exec(inputs["losses"])
for name, (loss, k, max_iter, c, reg, seed) in inputs["arnoldi"].items():
    x = inputs["x"][loss].clone()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        P = ArnoldiProjector(8, k, LOSSES[loss], x, max_iter=max_iter, norm_constant=c,
                             regularization=reg, seed=seed)
        outputs["arnoldi", name] = (P.project(inputs["g"]), P.eigvals)
outputs["project_1d"] = BasicProjector(300, 20, 11, "normal", "cpu").project(inputs["g_1d"], 0)
"""


@pytest.fixture(scope="module")
def reference() -> dict:
    inputs = {
        "random": RANDOM_CASES,
        "basic": BASIC_CASES,
        "arnoldi": ARNOLDI_CASES,
        "data": _data(),
        "losses": LOSSES_SRC,
        "x": ARNOLDI_X,
        "g": ARNOLDI_G,
        "g_1d": G_1D,
    }
    return run_reference(REFERENCE_BODY, inputs)


def _relative_error(ours: torch.Tensor, ref: torch.Tensor) -> float:
    ours, ref = ours.double(), ref.double()
    return float((ours - ref).abs().max() / ref.abs().max())


def _ours_arnoldi(name: str, **overrides) -> ArnoldiProjector:
    loss, k, max_iter, c, reg, seed = ARNOLDI_CASES[name]
    args = dict(max_iter=max_iter, norm_constant=c, regularization=reg, seed=seed) | overrides
    return ArnoldiProjector(8, k, _losses()[loss], ARNOLDI_X[loss].clone(), **args)


# ------------------------------------------------------------------- differential: random
@pytest.mark.parametrize("name", list(RANDOM_CASES))
def test_random_project_matches_dattri_on_cpu(reference, name):
    feature, batch, k, seed, half, ensembles = RANDOM_CASES[name]
    project = random_project(feature, batch, k, 32, "cpu", seed, use_half_precision=half)
    for ensemble, expected in zip(ensembles, reference["random", name], strict=True):
        out = project(feature, ensemble_id=ensemble)
        assert out.shape == expected.shape and out.dtype == expected.dtype
        err = _relative_error(out, expected)
        # float32: both compute in float32 from the same matrix (only summation order may
        # differ); float16: dattri rounds inputs and matrix products in float16, we round once
        tol = 2e-3 if half else 1e-5
        print(f"random_project {name} ensemble {ensemble}: max|diff|/max|ref| = {err:.2e}")
        assert err <= tol


@pytest.mark.parametrize("name", list(BASIC_CASES))
def test_basic_projector_matrix_is_dattri_s_exactly(reference, name):
    n, k, seed, kind, dtype, block, ensemble = BASIC_CASES[name]
    P = BasicProjector(n, k, seed, kind, "cpu", block_size=block, dtype=dtype)
    ours = P.project(torch.eye(n, dtype=dtype), ensemble)  # switching ensembles on the way
    expected = reference["basic", name]
    assert ours.dtype == expected.dtype
    assert torch.equal(ours, expected)


# ------------------------------------------------------------------ differential: arnoldi
@pytest.mark.parametrize("name", ["logreg-full", "logreg-reg", "sin-reg1"])
def test_arnoldi_matches_dattri_where_dattri_is_right(reference, name):
    Z_ref, values_ref = reference["arnoldi", name]
    loss, *_, reg, _ = ARNOLDI_CASES[name]
    exact = _exact_inverse_products(loss, reg)
    P = _ours_arnoldi(name)
    Z = P.project(ARNOLDI_G)
    ours, theirs = Z.double() @ Z.double().T, Z_ref.double() @ Z_ref.double().T
    print(
        f"arnoldi {name}: inner products vs exact: ours {_relative_error(ours, exact):.1e}, "
        f"dattri {_relative_error(theirs, exact):.1e}; ours vs dattri "
        f"{_relative_error(ours, theirs):.1e}; "
        f"eigenvalues {_relative_error(P.eigvals, values_ref):.1e}"
    )
    # dattri orthogonalises once in float32 and drifts by 1e-2 to 3e-2 here (it depends on the
    # BLAS's float32 rounding); ours is exact, so ours and dattri's differ by dattri's own error
    assert _relative_error(ours, exact) <= 1e-5
    assert _relative_error(ours, theirs) <= 1.05 * _relative_error(theirs, exact) + 1e-5
    assert _relative_error(P.eigvals, values_ref) <= 5e-3


def test_arnoldi_negative_eigenvalues_nan_in_dattri_finite_here(reference):
    Z_ref, values_ref = reference["arnoldi", "sin-negative"]
    negative = values_ref < 0
    assert negative.any() and torch.isnan(Z_ref[:, negative]).all()  # the dattri bug
    with pytest.warns(NegativeCurvatureWarning):
        Z = _ours_arnoldi("sin-negative").project(ARNOLDI_G)
    assert torch.isfinite(Z).all()
    assert (Z[:, negative] == 0).all()
    assert _relative_error(Z[:, ~negative].abs(), Z_ref[:, ~negative].abs()) <= 1e-4


def test_arnoldi_norm_constant_changes_nothing_where_dattri_is_wrong(reference):
    Z1_ref, values1_ref = reference["arnoldi", "logreg-full"]
    Z3_ref, values3_ref = reference["arnoldi", "logreg-c3"]
    P3 = _ours_arnoldi("logreg-c3")
    Z3 = P3.project(ARNOLDI_G)
    theirs = Z1_ref.double() @ Z1_ref.double().T
    exact = _exact_inverse_products(
        ARNOLDI_CASES["logreg-full"][0], ARNOLDI_CASES["logreg-full"][4]
    )
    assert _relative_error(Z3 @ Z3.T, exact) <= 1e-5  # norm_constant changes nothing in ours
    assert _relative_error(Z3 @ Z3.T, theirs) <= 1.05 * _relative_error(theirs, exact) + 1e-5
    assert _relative_error(P3.eigvals, values1_ref) <= 5e-3
    # dattri divides part of its iteration by c² and gets other eigenvalues and products
    assert not torch.allclose(values3_ref, values1_ref, rtol=1e-2)
    assert not torch.allclose(Z3_ref @ Z3_ref.T, Z1_ref @ Z1_ref.T, rtol=1e-2)


def test_projectors_take_one_vector(reference):
    out = BasicProjector(300, 20, 11, "normal", "cpu").project(G_1D, 0)
    assert out.shape == (20,)
    assert_close(out, reference["project_1d"])

    def linear_mse(w: torch.Tensor) -> torch.Tensor:
        g = torch.Generator().manual_seed(0)
        X, y = (
            torch.randn(20, 6, dtype=torch.float64, generator=g),
            torch.randn(20, dtype=torch.float64, generator=g),
        )
        return ((X @ w - y) ** 2).mean()

    P = arnoldi_project(
        6, linear_mse, 0.1 * torch.randn(6, dtype=torch.float64), max_iter=6, proj_dim=4
    )
    assert P(torch.randn(6, dtype=torch.float64)).shape == (1, 4)


# --------------------------------------------------------- closed form: SeededBlockProjection
def _oracle(n: int, k: int, seed: int, block: int, sample: torch.dtype, kind: str) -> torch.Tensor:
    """The documented construction, straight from torch: rows in blocks of seeded draws."""
    b = min(k, block)
    rows = []
    for i in range(math.ceil(k / b)):
        g = torch.Generator().manual_seed(seed + 1000 * i)
        draw = torch.empty(n, b, dtype=sample)
        if kind == "gaussian":
            draw.normal_(generator=g)
        else:
            draw = draw.bernoulli_(0.5, generator=g) * 2 - 1
        rows.append(draw[:, : min(b, k - i * b)].T)
    return torch.cat(rows).double()


@pytest.mark.parametrize("kind", ["gaussian", "rademacher"])
@pytest.mark.parametrize("cache_bytes", [0, None])
def test_seeded_block_projection_contract(kind, cache_bytes):
    P = SeededBlockProjection(
        53,
        30,
        seed=4,
        dtype=torch.float64,
        kind=kind,
        sample_dtype=torch.float32,
        block_size=7,
        chunk_rows=16,
        cache_bytes=cache_bytes,
    )
    check_operator(P, _oracle(53, 30, 4, 7, torch.float32, kind))


@pytest.mark.parametrize("sample", [torch.float32, torch.float16])
def test_chunked_cached_and_whole_draws_are_the_same_matrix(sample):
    n, k = 1037, 130  # (n·b) not a multiple of 16: torch's tail rule is exercised
    dense = [
        SeededBlockProjection(
            n, k, seed=3, sample_dtype=sample, chunk_rows=rows, cache_bytes=cb
        ).to_dense()
        for rows, cb in [(16, 0), (48, 0), (10**6, 0), (16, None)]
    ]
    for other in dense[1:]:
        assert torch.equal(dense[0], other)
    assert torch.equal(dense[0].double(), _oracle(n, k, 3, 100, sample, "gaussian"))


def test_seeded_block_projection_scale_and_bad_input():
    P = SeededBlockProjection(20, 10, seed=1, scale="jl")
    raw = SeededBlockProjection(20, 10, seed=1)
    torch.testing.assert_close(P.to_dense(), raw.to_dense() / math.sqrt(10))
    with pytest.raises(ValueError, match="kind"):
        SeededBlockProjection(20, 10, kind="sjlt")
    with pytest.raises(ValueError, match="positive"):
        SeededBlockProjection(0, 10)
    with pytest.raises(IndexError):
        raw.block(1)


# ------------------------------------------------------------ closed form: random_project
def test_half_precision_is_computed_in_float32_and_rounded_once():
    X = F["t3000"]
    out = random_project(X, 5, 250, 32, "cpu", 3)(X)
    P = SeededBlockProjection(3000, 250, seed=3, sample_dtype=torch.float16)
    assert out.dtype == torch.float16
    assert torch.equal(out, P.project(X).to(torch.float16))


def test_dict_features_equal_the_concatenated_tensor_and_dtypes():
    grads = F["dict"]
    flat = torch.cat([g.reshape(6, -1) for g in grads.values()], dim=1)
    project = random_project(grads, 6, 40, 32, "cpu", use_half_precision=False)
    torch.testing.assert_close(project(grads), project(flat), rtol=0, atol=0)
    assert project(flat.double()).dtype == torch.float32
    other = project(flat, ensemble_id=1)
    assert not torch.allclose(other, project(flat))
    assert torch.equal(project(flat, ensemble_id=1), other)


def test_make_random_projector_and_projector_api():
    P = make_random_projector([600, 400], 8, 32, 32, "cpu", 5, use_half_precision=False)
    assert isinstance(P, BasicProjector) and P.feature_dim == 1000 and P.dtype == torch.float32
    assert P.proj_type == ProjectionType.normal and P.num_blocks == 1
    X = torch.randn(3, 1000)
    before = P.project(X, 0)
    P.free_memory()
    assert torch.equal(P.project(X, 0), before)
    with pytest.raises(KeyError):
        BasicProjector(10, 5, 0, "sjlt", "cpu")
    with pytest.raises(ValueError, match="CUDA"):
        CudaProjector(10, 5, 0, "rademacher", "cpu", 32)


def test_chunked_projector_sums_the_chunks():
    chunks = [BasicProjector(30, 16, s, "normal", "cpu") for s in (1, 2)]
    P = ChunkedCudaProjector(chunks, 30, [30, 30], 4, 32, "cpu", torch.float32)
    X = torch.randn(4, 60)
    expected = chunks[0].project(X[:, :30], 0) + chunks[1].project(X[:, 30:], 0)
    torch.testing.assert_close(P.project(X, 0), expected)
    with pytest.raises(ValueError, match="dimension"):
        P.project(torch.randn(4, 59), 0)


def test_cuda_projector_logic_without_fast_jl(monkeypatch):
    """The CUDA path, run on the CPU by pointing a constructed CudaProjector at it."""
    monkeypatch.setitem(sys.modules, "fast_jl", None)  # importing it now fails
    P = CudaProjector(
        500, 40, 7, ProjectionType.rademacher, "cuda", max_batch_size=8, dtype=torch.float16
    )
    P.device = "cpu"
    X = torch.randn(20, 500)
    expected = ProjectionOperator.random(500, 40, "rademacher", seed=7 + 10_000 * 2, scale=None)
    out = P.project(X, ensemble_id=2)
    assert out.dtype == torch.float16
    torch.testing.assert_close(out, expected.project(X).half())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_random_project_on_cuda_needs_no_fast_jl(monkeypatch):
    monkeypatch.setitem(sys.modules, "fast_jl", None)
    X = torch.randn(70, 5000, device="cuda")
    project = random_project(X, 70, 256, 32, "cuda", 1)
    out = project(X)
    assert out.shape == (70, 256) and out.dtype == torch.float16 and out.is_cuda
    ref = ProjectionOperator.random(5000, 256, "rademacher", seed=1, scale=None)
    torch.testing.assert_close(out.float().cpu(), ref.project(X.cpu()), rtol=2e-3, atol=0.5)
    grads = {"w": X[:, :3000].reshape(70, 30, 100), "b": X[:, 3000:]}
    torch.testing.assert_close(project(grads), out)


# ----------------------------------------------------------------- closed form: arnoldi
def _exact_inverse_products(loss: str, reg: float) -> torch.Tensor:
    H = torch.func.hessian(_losses()[loss])(ARNOLDI_X[loss].clone()).double()
    A = H + reg * torch.eye(8, dtype=torch.float64)
    return ARNOLDI_G.double() @ torch.linalg.solve(A, ARNOLDI_G.double().T)


@pytest.mark.parametrize("name", ["logreg-full", "logreg-reg", "sin-reg1"])
@pytest.mark.parametrize("mode", ["rev-fwd", "rev-rev"])
def test_arnoldi_inner_products_are_inverse_hessian_products(name, mode):
    loss, *_, reg, _ = ARNOLDI_CASES[name]
    Z = _ours_arnoldi(name, mode=mode).project(ARNOLDI_G).double()
    torch.testing.assert_close(Z @ Z.T, _exact_inverse_products(loss, reg), rtol=1e-3, atol=1e-3)


def test_arnoldi_is_computed_once_and_seeded():
    P = _ours_arnoldi("logreg-full")
    calls = []
    original = P.hessian._matmat
    P.hessian._matmat = lambda X: (calls.append(X.shape[1]), original(X))[1]
    first = P.project(ARNOLDI_G)
    used = len(calls)
    assert used == 8  # max_iter − 1 Lanczos steps
    second = P.project(ARNOLDI_G)
    assert len(calls) == used and torch.equal(first, second)
    assert torch.equal(_ours_arnoldi("logreg-full").project(ARNOLDI_G), first)


def test_arnoldi_negative_eigenvalues_give_zero_columns_not_nan():
    with pytest.warns(NegativeCurvatureWarning):
        project = arnoldi_project(8, _losses()["sin"], ARNOLDI_X["sin"], proj_dim=8, max_iter=20)
        Z = project(ARNOLDI_G)
    assert torch.isfinite(Z).all()
    values = -torch.sin(ARNOLDI_X["sin"])
    assert int((Z.abs().sum(0) == 0).sum()) == int((values < 0).sum())


@pytest.mark.parametrize("c", [1e-3, 3.0, 1e4])
def test_arnoldi_result_does_not_depend_on_norm_constant(c):
    Z1 = _ours_arnoldi("logreg-full").project(ARNOLDI_G)
    P = _ours_arnoldi("logreg-full", norm_constant=c)
    assert torch.equal(P.project(ARNOLDI_G), Z1)
    torch.testing.assert_close(P.eigvecs @ P.eigvecs.T, torch.eye(8), rtol=0, atol=1e-5)


def test_arnoldi_accepts_dicts_and_reports_its_shape():
    P = _ours_arnoldi("logreg-full", max_iter=5)  # 4 Lanczos steps: 4 columns
    G = ARNOLDI_G
    out = P.project({"a": G[:, :5], "b": G[:, 5:7], "c": G[:, 7]})
    assert out.shape == (6, 4)
    torch.testing.assert_close(out, P.project(G))
    with pytest.raises(ValueError, match="feature_dim"):
        ArnoldiProjector(9, 3, _losses()["logreg"], ARNOLDI_X["logreg"])
