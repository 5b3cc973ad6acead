"""Random and Arnoldi projections (linop.projection): JL statistics, determinism, the hash,
dtypes, bad input."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from linop import (
    DenseOperator,
    DTypeMismatchError,
    IdentityOperator,
    NegativeCurvatureWarning,
    ProjectionOperator,
    ShapeMismatchError,
)
from linop.kernels import hash as khash
from linop.projection import _cache_budget
from linop.tags import Tags
from linop.testing import assert_close, check_operator
from tests.linop._helpers import assert_pickles

D64 = torch.float64
KINDS = ["rademacher", "gaussian", "sjlt"]


def _dense(P):
    return torch.cat([P.block(a, b) for a, b in P._blocks()], 1) * P.scale


@pytest.mark.parametrize("kind", KINDS)
def test_contract_against_the_generated_matrix(kind):
    P = ProjectionOperator.random(300, 40, kind=kind, seed=3, dtype=D64, block_size=64)
    check_operator(P, _dense(P))


@pytest.mark.parametrize("kind", KINDS)
def test_johnson_lindenstrauss(kind):
    """Squared pairwise distances are preserved in expectation with relative spread ≈ √(2/k).

    k = 512 gives a standard deviation of about 0.0625 per pair for the dense kinds (sjlt's is no
    larger for nnz=4 here); the mean over 190 pairs is within 0.03 of 1 (≈ 5 standard errors even
    with the pairs' correlation), and no single pair is off by more than 0.35 (≈ 5.6 sd).
    """
    g = torch.Generator().manual_seed(0)
    X = torch.randn(20, 5000, dtype=D64, generator=g)
    P = ProjectionOperator.random(5000, 512, kind=kind, seed=1, dtype=D64)
    Z = P.project(X)
    i, j = torch.triu_indices(20, 20, 1)
    ratio = (Z[i] - Z[j]).pow(2).sum(1) / (X[i] - X[j]).pow(2).sum(1)
    assert abs(float(ratio.mean()) - 1) < 0.03
    assert float((ratio - 1).abs().max()) < 0.35


def test_entries_follow_the_documented_hash():
    """The torch path equals a plain-Python evaluation of the hash, even for columns past 2³¹."""

    def py_word(seed, r, c, stream=0):
        return khash.fmix32(
            (r * khash.GOLDEN + khash.fmix32((c + khash.seed_key(seed, stream)) & khash.M32))
            & khash.M32
        )

    P = ProjectionOperator.random(2**40, 8, seed=5, scale=None)
    for start in [0, 100, 2**31 - 40, 2**33 + 7]:
        block = P.block(start, start + 70)
        for i in range(8):
            for c in [0, 1, 33, 69]:
                j = start + c
                bit = (py_word(5, i, j // 32) >> (j % 32)) & 1
                assert int(block[i, c]) == 1 - 2 * bit


def test_packed_signs_do_not_depend_on_the_byte_order(monkeypatch):
    """The fast little-endian reinterpretation and the portable shifts pack the same bytes."""
    fast = khash.rademacher_bytes(3, 7, 64, 200)
    monkeypatch.setattr(sys, "byteorder", "big")
    assert torch.equal(khash.rademacher_bytes(3, 7, 64, 200), fast)
    assert fast.shape == (7, 4 * 5) and fast.dtype == torch.uint8


def test_the_same_seed_gives_the_same_matrix_in_another_process():
    code = (
        "import torch; from linop import ProjectionOperator as P;"
        "x = torch.arange(3000, dtype=torch.float64).reshape(3, 1000) / 1000;"
        "print([round(v, 10) for k in ('rademacher', 'gaussian', 'sjlt') "
        "for v in P.random(1000, 16, kind=k, seed=9, dtype=torch.float64)"
        ".project(x).flatten().tolist()])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    x = torch.arange(3000, dtype=D64).reshape(3, 1000) / 1000
    here = [
        round(v, 10)
        for k in KINDS
        for v in ProjectionOperator.random(1000, 16, kind=k, seed=9, dtype=D64)
        .project(x)
        .flatten()
        .tolist()
    ]
    assert out.stdout.strip() == str(here)
    other = ProjectionOperator.random(1000, 16, seed=10, dtype=D64).project(x)
    assert not torch.allclose(
        other, ProjectionOperator.random(1000, 16, seed=9, dtype=D64).project(x)
    )


@pytest.mark.parametrize("kind", KINDS)
def test_blocks_and_cache_do_not_change_results(kind):
    X = torch.randn(5, 1001)
    ref = ProjectionOperator.random(
        1001, 33, kind=kind, seed=2, block_size=8192, cache_bytes=0
    ).project(X)
    for block in [32, 96, 1000, None]:
        P = ProjectionOperator.random(
            1001, 33, kind=kind, seed=2, block_size=block, cache_bytes=1 << 20
        )
        assert_close(P.project(X), ref, 1e-5)
        assert bool(P._filled) == (kind != "sjlt")  # the dense kinds kept their blocks
        assert_close(P.project(X), ref, 1e-5)  # second call: from the cache


def test_default_block_size_and_cache():
    """Blocks of about 16 MiB; a cache of 1 GiB on the CPU, none on other devices."""
    assert ProjectionOperator.random(10**6, 512).block_size == 8192
    assert ProjectionOperator.random(10**6, 512, dtype=D64).block_size == 4096
    assert ProjectionOperator.random(10**6, 10**6).block_size == 32
    assert ProjectionOperator.random(100, 8).cache_bytes == 1 << 30
    assert _cache_budget(None, torch.device("cuda")) == 0  # generating beats reading there
    assert ProjectionOperator.random(100, 8, cache_bytes=5).cache_bytes == 5


def test_the_cache_keeps_rademacher_signs_packed_and_respects_its_budget():
    n, k = 1000, 64
    packed = k * 1024 // 8  # one bit per entry, whole 32-bit words: n rounded up to 1024
    X = torch.randn(3, n)
    P = ProjectionOperator.random(n, k, seed=1, block_size=256, cache_bytes=packed)
    Z = P.project(X)
    assert (
        P._store.dtype == torch.uint8
        and P._store.numel() == packed
        and P._filled == {0, 256, 512, 768}
    )
    assert_close(
        P.block(3, 70), ProjectionOperator.random(n, k, seed=1, cache_bytes=0).block(3, 70)
    )
    assert P._filled == {0, 256, 512, 768}  # not one of the product's blocks: not kept
    assert_close(P.project(X), Z)
    P.clear_cache()
    assert P._store is None and not P._filled
    small = ProjectionOperator.random(n, k, seed=1, block_size=256, cache_bytes=packed - 1)
    assert_close(small.project(X), Z)
    assert small._store is None
    G = ProjectionOperator.random(
        n, k, kind="gaussian", seed=1, block_size=256, cache_bytes=n * k * 4
    )
    G.project(X)
    assert G._store.numel() * G._store.element_size() == n * k * 4


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_dtypes_are_preserved_and_half_is_computed_in_float32(dtype):
    X = torch.randn(4, 700)
    P = ProjectionOperator.random(700, 64, seed=0, dtype=dtype)
    out = P.project(X.to(dtype))
    assert out.dtype == dtype and out.shape == (4, 64)
    ref = ProjectionOperator.random(700, 64, seed=0).project(X.to(dtype).float())
    tol = {torch.float16: 1e-3, torch.bfloat16: 1e-2}.get(dtype, 1e-6)
    torch.testing.assert_close(out.float(), ref, rtol=tol, atol=tol * float(ref.abs().max()))


def test_dict_features_equal_the_concatenated_tensor():
    g = {"w": torch.randn(6, 4, 5), "b": torch.randn(6, 4)}
    flat = torch.cat([g["w"].reshape(6, -1), g["b"]], dim=1)
    P = ProjectionOperator.random(24, 8, seed=0)
    assert_close(P.project(g), P.project(flat), 1e-6)
    assert_close(P.project(flat), (P @ flat.T).T, 1e-6)


def test_scaling():
    P_raw = ProjectionOperator.random(100, 16, seed=0, scale=None, dtype=D64)
    P_jl = ProjectionOperator.random(100, 16, seed=0, dtype=D64)
    assert set(P_raw.to_dense().unique().tolist()) == {-1.0, 1.0}
    assert_close(P_jl.to_dense(), P_raw.to_dense() / 4)
    S = ProjectionOperator.random(100, 16, kind="sjlt", nnz=4, seed=0, dtype=D64)
    assert_close(S.to_dense().pow(2).sum(0), torch.ones(100, dtype=D64))  # unit columns: 1/√c
    assert_close(
        ProjectionOperator.random(100, 16, seed=0, scale=2.0, dtype=D64).to_dense(),
        2 * P_raw.to_dense(),
    )


def test_composes_with_other_operators():
    P = ProjectionOperator.random(50, 6, seed=0, dtype=D64)
    M = torch.randn(50, 50, dtype=D64)
    H = DenseOperator(M @ M.T)
    check_operator(P @ H @ P.T, P.to_dense() @ (M @ M.T) @ P.to_dense().T)


def test_bad_input():
    P = ProjectionOperator.random(100, 8)
    with pytest.raises(ShapeMismatchError, match="dimension 99"):
        P.project(torch.randn(3, 99))
    with pytest.raises(ShapeMismatchError, match="batch"):
        P.project({"a": torch.randn(3, 50), "b": torch.randn(4, 50)})
    with pytest.raises(DTypeMismatchError):
        P.project(torch.randn(3, 100, dtype=D64))
    with pytest.raises(ShapeMismatchError):
        P.project(torch.randn(100))
    with pytest.raises(ValueError, match="valid kinds"):
        ProjectionOperator.random(100, 8, kind="fourier")
    with pytest.raises(DTypeMismatchError, match="unsupported dtype"):
        ProjectionOperator.random(100, 8, dtype=torch.int32)
    with pytest.raises(ValueError, match="scale"):
        ProjectionOperator.random(100, 8, scale="auto")


def test_arnoldi_projection_inner_products():
    g = torch.Generator().manual_seed(0)
    Q = torch.linalg.qr(torch.randn(12, 12, dtype=D64, generator=g)).Q
    M = (Q * torch.linspace(0.5, 5.0, 12, dtype=D64)) @ Q.T
    H = DenseOperator(M, Tags(psd=True))
    lam = 0.1
    P = ProjectionOperator.arnoldi(H + lam * IdentityOperator.like(H), 12, maxiter=12)
    G = torch.randn(3, 12, dtype=D64, generator=g)
    Z = P.project(G)
    assert_close(Z @ Z.T, G @ torch.linalg.solve(M + lam * torch.eye(12, dtype=D64), G.T), 1e-8)
    check_operator(P, P.to_dense())


def test_arnoldi_projection_with_negative_eigenvalues_is_finite():
    H = DenseOperator(torch.diag(torch.tensor([3.0, 1.0, -2.0, 0.0], dtype=D64)))
    with pytest.warns(NegativeCurvatureWarning, match="weight zero"):
        P = ProjectionOperator.arnoldi(H, 4, maxiter=4)
    Z = P.project(torch.ones(2, 4, dtype=D64))
    assert torch.isfinite(Z).all()
    assert_close((Z @ Z.T)[0, 0], torch.tensor(1 / 3 + 1.0, dtype=D64))


@pytest.mark.parametrize("k", [3, 8])
def test_arnoldi_projection_against_the_dense_eigendecomposition(k):
    """P = Λ^{-1/2} Vᵀ from the top-k eigenpairs of H + λI, against torch.linalg.eigh (each row is
    determined up to its sign, taken from P; the spectrum is distinct)."""
    g = torch.Generator().manual_seed(3)
    Q = torch.linalg.qr(torch.randn(8, 8, dtype=D64, generator=g)).Q
    M = (Q * torch.linspace(0.5, 6.0, 8, dtype=D64)) @ Q.T
    M = (M + M.T) / 2
    lam = 0.2
    P = ProjectionOperator.arnoldi(
        DenseOperator(M, Tags(psd=True)) + lam * IdentityOperator(8, D64), k, maxiter=8
    )
    theta, U = torch.linalg.eigh(M + lam * torch.eye(8, dtype=D64))
    theta, U = theta.flip(0)[:k], U.flip(1)[:, :k]
    expected = theta.rsqrt().unsqueeze(1) * U.T
    signs = torch.sign((P.to_dense() * expected).sum(1))
    assert P.shape == (k, 8)
    check_operator(P, signs.unsqueeze(1) * expected, rtol=1e-8)


def test_projections_of_empty_batches():
    for kind in ("rademacher", "gaussian", "sjlt"):
        P = ProjectionOperator.random(50, 8, kind=kind)
        assert P.project(torch.zeros(0, 50)).shape == (0, 8)
        assert (P @ torch.zeros(50, 0)).shape == (8, 0)
    P = ProjectionOperator.random(30, 8)
    assert P.project({"w": torch.zeros(0, 20), "b": torch.zeros(0, 10)}).shape == (0, 8)


@pytest.mark.parametrize("kind", KINDS)
def test_random_projection_pickles(kind):
    P = ProjectionOperator.random(200, 16, kind=kind, seed=4, dtype=D64, block_size=64)
    X = torch.randn(200, 3, dtype=D64)
    Q = assert_pickles(P, X)  # after a product: the kept blocks travel too, or are regenerated
    assert_close(Q.T @ torch.ones(16, dtype=D64), P.T @ torch.ones(16, dtype=D64))
    H = DenseOperator(torch.diag(torch.arange(1.0, 7.0, dtype=D64)))
    assert_pickles(ProjectionOperator.arnoldi(H, 3, maxiter=6), X[:6])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (run on the device)")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cuda_matches_the_cpu_reference(dtype):
    X = torch.randn(8, 100_003)
    for kind in KINDS:
        cpu = ProjectionOperator.random(100_003, 256, kind=kind, seed=4).project(X)
        gpu = ProjectionOperator.random(100_003, 256, kind=kind, seed=4, dtype=dtype, device="cuda")
        out = gpu.project(X.to(dtype).cuda()).float().cpu()
        tol = 2e-2 if dtype != torch.float32 else 1e-3
        torch.testing.assert_close(out, cpu, rtol=tol, atol=tol * float(cpu.abs().max()))


@pytest.mark.skipif(
    not (sys.platform == "linux" and __import__("platform").machine() == "x86_64"),
    reason="Triton is a test dependency only on Linux x86_64",
)
def test_triton_kernel_logic_in_the_interpreter():
    """The Triton kernel's hash, sign construction, tiling and split-n atomics equal the torch
    reference, run by Triton's CPU interpreter (the GPU test above checks the compiled kernel on
    the device); and a kernel that disagrees with the reference, or fails to run, is refused with
    a KernelFallbackWarning (``project`` returns None, and the caller uses the reference).

    bf16 is not checked here: the interpreter itself gets bf16 wrong (a plain ``tl.dot`` of two
    loaded bf16 tiles returns garbage in it), so the bf16 kernel is checked on the device only."""
    code = (
        "import warnings, torch\n"
        "from linop.kernels import triton_projection as tp\n"
        "from linop import KernelFallbackWarning, ProjectionOperator\n"
        "cases = [(5, 1000, 40, torch.float32, 32, 64), (3, 300, 130, torch.float16, 32, 64),\n"
        "         (17, 2000, 64, torch.float16, 64, 128), (40, 333, 20, torch.float32, 32, 32)]\n"
        "for B, n, k, dt, bk, bn in cases:\n"
        "    X = torch.randn(B, n, generator=torch.Generator().manual_seed(0)).to(dt)\n"
        "    out = tp._launch(X, 7, k, bk, bn)\n"
        "    ref = ProjectionOperator.random(n, k, seed=7, scale=None).project(X.float())\n"
        "    assert out.shape == (B, k) and out.dtype == torch.float32\n"
        "    assert (out - ref).abs().max() <= 1e-4 * ref.abs().max(), (B, n, k, dt)\n"
        "assert tp.usable('cpu', torch.float16) and not tp.usable('cpu', torch.float64)\n"
        "good = tp._launch\n"
        "for broken in [lambda X, seed, k, bk, bn: torch.zeros(X.shape[0], k),\n"
        "               lambda X, seed, k, bk, bn: 1 / 0]:\n"
        "    tp._VERDICTS.clear(); tp._launch = broken\n"
        "    with warnings.catch_warnings(record=True) as w:\n"
        "        warnings.simplefilter('always')\n"
        "        assert tp.project(torch.randn(2, 100), 0, 8) is None\n"
        "    assert [x.category for x in w] == [KernelFallbackWarning], w\n"
        "    assert 'use_kernel=False' in str(w[0].message)\n"
        "tp._launch = good\n"
        "assert tp._launch(torch.randn(0, 100), 0, 8, 128, 64).shape == (0, 8)\n"
        "try:\n"
        "    tp._launch(torch.randn(2, 100), 0, 8, 128, 48)\n"
        "except ValueError as e:\n"
        "    assert 'power of two' in str(e)\n"
        "else:\n"
        "    raise AssertionError('block_n=48 must be refused')\n"
        "print('ok')\n"
    )
    env = {**__import__("os").environ, "TRITON_INTERPRET": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


@pytest.mark.skipif(
    not (sys.platform == "linux" and __import__("platform").machine() == "x86_64"),
    reason="Triton is a test dependency only on Linux x86_64",
)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_the_kernel_builds_for_an_h100(dtype):
    """Compiled ahead of time for sm_90 with Triton's own assembler (no GPU needed), with every
    tile that products use: it builds, multiplies on the tensor cores (wgmma; fp32 as two tf32
    products), spills no registers, and hashes each 32-bit word once per thread — a few
    multiplications per loop iteration, where expanding bits across lanes would take ~130."""
    from tests._kernel_asm import PRODUCT_TILES, compile_sm90

    for block_b, warps in PRODUCT_TILES:
        stats = compile_sm90(dtype, block_b, warps)
        assert stats["wgmma"] > 0 and stats["fma"] == 0, stats
        assert stats["spill_bytes"] == 0, stats
        assert stats["loop_mul"] <= 16, stats
