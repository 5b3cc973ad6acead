"""A Triton kernel for the rademacher projection ``X Rᵀ`` on CUDA, no compiled extension needed.

Each program owns a tile of outputs ``(BLOCK_B, BLOCK_K)`` and a slice of the input dimension. It
generates the ±1 tile of ``R`` in registers from the same counter-based hash as
:mod:`linop.kernels.hash` — one 32-bit hash per 32 entries, its bits expanded in registers — and
feeds it with the input tile to the tensor cores (fp16/bf16 inputs, fp32 accumulation; fp32 inputs
in full precision). Slices of the input dimension run in parallel and meet by atomic addition.

The pure-torch path in :mod:`linop.projection` is the reference this kernel is tested against.
"""

from __future__ import annotations

import functools

import torch

from linop.kernels.hash import seed_key

try:  # Triton is optional
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the environment
    triton = None


@functools.lru_cache(maxsize=None)
def available() -> bool:
    """Whether the kernel can run: Triton importable and a CUDA device present."""
    return triton is not None and torch.cuda.is_available()


if triton is not None:
    @triton.jit
    def _fmix32(x):
        x = x ^ (x >> 16)
        x = x * 0x85EBCA6B
        x = x ^ (x >> 13)
        x = x * 0xC2B2AE35
        return x ^ (x >> 16)

    @triton.jit
    def _project_kernel(
        x_ptr, out_ptr, B, N, K, stride_xb, stride_ob, key,
        cols_per_split,
        BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
        FP32: tl.constexpr,
    ):
        pid_k = tl.program_id(0)
        pid_b = tl.program_id(1)
        pid_s = tl.program_id(2)
        offs_b = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
        offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
        key = key.to(tl.uint32)
        rows = offs_k.to(tl.uint32)
        row_term = rows * 0x9E3779B1  # hash.GOLDEN; (BLOCK_K,), wraps mod 2^32
        shifts = tl.arange(0, 32).to(tl.uint32)
        acc = tl.zeros((BLOCK_B, BLOCK_K), dtype=tl.float32)
        n_start = pid_s.to(tl.int64) * cols_per_split
        n_stop = tl.minimum(n_start + cols_per_split, N)
        x_row = x_ptr + offs_b.to(tl.int64)[:, None] * stride_xb
        for n0 in range(n_start, n_stop, BLOCK_N):
            offs_n = n0 + tl.arange(0, BLOCK_N)
            x = tl.load(
                x_row + offs_n[None, :],
                mask=(offs_b[:, None] < B) & (offs_n[None, :] < n_stop),
                other=0.0,
            )
            words = (n0 // 32 + tl.arange(0, BLOCK_N // 32)).to(tl.uint32)
            col_hash = _fmix32(words + key)  # (BLOCK_N // 32,)
            h = _fmix32(col_hash[:, None] + row_term[None, :])  # (BLOCK_N // 32, BLOCK_K)
            bits = (h[:, None, :] >> shifts[None, :, None]) & 1  # (BLOCK_N // 32, 32, BLOCK_K)
            bits = tl.reshape(bits, (BLOCK_N, BLOCK_K))
            r = 1.0 - 2.0 * bits.to(tl.float32)
            if FP32:
                acc += tl.dot(x, r, input_precision="ieee")
            else:
                acc += tl.dot(x, r.to(x.dtype))
        mask = (offs_b[:, None] < B) & (offs_k[None, :] < K)
        out = out_ptr + offs_b[:, None] * stride_ob + offs_k[None, :]
        tl.atomic_add(out, acc, mask=mask)


@functools.lru_cache(maxsize=None)
def self_test(device: str, dtype: torch.dtype) -> None:
    """Once per device and dtype: the kernel must agree with the pure-torch reference on a small
    problem whose sizes are not multiples of the tiles; otherwise raise, never return wrong
    numbers."""
    from linop.kernels.hash import rademacher_block

    g = torch.Generator().manual_seed(0)
    B, n, k = 5, 1000, 70
    X = torch.randn(B, n, generator=g).to(dtype)
    ref = X.float() @ rademacher_block(12345, k, 0, n, dtype=torch.float32).mT
    out = _launch(X.to(device), 12345, k, 128, 128).cpu()
    err = float((out - ref).abs().max() / ref.abs().max())
    if not err <= 2e-2:
        raise RuntimeError(
            f"the Triton projection kernel disagrees with the reference on {device} in {dtype} "
            f"(relative error {err:.2e}); use ProjectionOperator.random(..., use_kernel=False) "
            f"and please report this"
        )


def project(X: torch.Tensor, seed: int, k: int, block_k: int = 128, block_n: int = 128) -> torch.Tensor:
    """``X Rᵀ`` for ``X`` ``(B, n)`` on CUDA with the unscaled ±1 matrix ``R`` ``(k, n)``;
    returns float32 ``(B, k)``. The first call per device and dtype runs :func:`self_test`."""
    if triton is None:  # pragma: no cover
        raise RuntimeError("Triton is not installed")
    self_test(str(X.device), X.dtype)
    return _launch(X, seed, k, block_k, block_n)


def _launch(X: torch.Tensor, seed: int, k: int, block_k: int, block_n: int) -> torch.Tensor:
    X = X.contiguous()
    B, n = X.shape
    out = torch.zeros(B, k, dtype=torch.float32, device=X.device)
    block_b = 16 if B <= 16 else 32 if B <= 32 else 64
    tiles = triton.cdiv(k, block_k) * triton.cdiv(B, block_b)
    sms = torch.cuda.get_device_properties(X.device).multi_processor_count if X.is_cuda else 4
    splits = max(1, min(triton.cdiv(n, block_n), (4 * sms) // max(1, tiles)))
    per_split = triton.cdiv(triton.cdiv(n, splits), 32) * 32
    per_split = triton.cdiv(per_split, block_n) * block_n
    splits = triton.cdiv(n, per_split)
    grid = (triton.cdiv(k, block_k), triton.cdiv(B, block_b), splits)
    _project_kernel[grid](
        X, out, B, n, k, X.stride(0), out.stride(0), seed_key(seed), per_split,
        BLOCK_B=block_b, BLOCK_N=block_n, BLOCK_K=block_k, FP32=X.dtype == torch.float32,
    )
    return out
