"""A Triton kernel for the rademacher projection ``X Rᵀ`` on CUDA, no compiled extension needed.

Each program owns a tile of outputs and a slice of the input dimension, and computes the tile
transposed, ``R_tile @ X_tileᵀ``, so that the generated ±1 tile of ``R`` is the left operand of the
tensor-core product and can stay in registers. The tile is generated from the same counter-based
hash as :mod:`linop.kernels.hash`: one 32-bit hash per 32 entries, each entry's bit moved into the
sign bit of the constant 1.0 and reinterpreted as a float, with no integer-to-float conversion.
fp16 and bf16 inputs multiply in their own precision with fp32 accumulation; fp32 inputs multiply
in full fp32 precision. Slices of the input dimension run in parallel and meet by atomic addition.

The pure-torch path in :mod:`linop.projection` is the reference: :func:`project` checks the
kernel against it once per device and dtype, and returns None (with a
:class:`~linop.errors.KernelFallbackWarning`) when the kernel cannot be used, so the caller falls
back to the reference instead of returning wrong numbers.
"""

from __future__ import annotations

import functools

import torch

from linop._warn import warn
from linop.errors import KernelFallbackWarning
from linop.kernels.hash import seed_key

try:  # Triton is optional
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the environment
    triton = None

#: The bits of +1.0, and the sign bit, in each supported input dtype.
_ONE = {torch.float16: (0x3C00, 15), torch.bfloat16: (0x3F80, 15), torch.float32: (0x3F800000, 31)}


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
        ONE: tl.constexpr, SIGN: tl.constexpr,
    ):
        pid_k = tl.program_id(0)
        pid_b = tl.program_id(1)
        pid_s = tl.program_id(2)
        offs_b = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
        offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
        key = key.to(tl.uint32)
        row_term = offs_k.to(tl.uint32) * 0x9E3779B1  # hash.GOLDEN; (BLOCK_K,), wraps mod 2^32
        shifts = tl.arange(0, 32).to(tl.uint32)
        acc = tl.zeros((BLOCK_K, BLOCK_B), dtype=tl.float32)
        n_start = pid_s.to(tl.int64) * cols_per_split
        n_stop = tl.minimum(n_start + cols_per_split, N)
        x_row = x_ptr + offs_b.to(tl.int64)[None, :] * stride_xb
        for n0 in range(n_start, n_stop, BLOCK_N):
            offs_n = n0 + tl.arange(0, BLOCK_N)
            xt = tl.load(  # (BLOCK_N, BLOCK_B): the input tile, transposed
                x_row + offs_n[:, None],
                mask=(offs_n[:, None] < n_stop) & (offs_b[None, :] < B),
                other=0.0,
            )
            words = (n0 // 32 + tl.arange(0, BLOCK_N // 32)).to(tl.uint32)
            col_hash = _fmix32(words + key)  # (BLOCK_N // 32,)
            h = _fmix32(row_term[:, None] + col_hash[None, :])  # (BLOCK_K, BLOCK_N // 32)
            bits = (h[:, :, None] >> shifts[None, None, :]) << SIGN  # bit j%32 into the sign bit
            if SIGN == 31:
                r = (bits | ONE).to(tl.float32, bitcast=True)
            else:
                r = ((bits & 0x8000) | ONE).to(tl.uint16).to(xt.dtype, bitcast=True)
            r = tl.reshape(r, (BLOCK_K, BLOCK_N))
            if SIGN == 31:
                acc += tl.dot(r, xt, input_precision="ieee")
            else:
                acc += tl.dot(r, xt)
        mask = (offs_k[:, None] < K) & (offs_b[None, :] < B)
        out = out_ptr + offs_b[None, :] * stride_ob + offs_k[:, None]
        tl.atomic_add(out, acc, mask=mask)


def project(X: torch.Tensor, seed: int, k: int, block_k: int = 128, block_n: int = 64) -> torch.Tensor | None:
    """``X Rᵀ`` for ``X`` ``(B, n)`` on CUDA with the unscaled ±1 matrix ``R`` ``(k, n)``, as
    float32 ``(B, k)``; or None when the kernel cannot be used for this device and dtype (it
    failed to build or disagreed with the reference: see :func:`usable`)."""
    if not usable(str(X.device), X.dtype):
        return None
    return _launch(X, seed, k, block_k, block_n)


@functools.lru_cache(maxsize=None)
def usable(device: str, dtype: torch.dtype) -> bool:
    """Once per device and dtype: the kernel must build and agree with the pure-torch reference on
    a small problem whose sizes are not multiples of the tiles. Otherwise warn
    (:class:`~linop.errors.KernelFallbackWarning`) and return False, so the reference is used."""
    from linop.kernels.hash import rademacher_block

    if triton is None or dtype not in _ONE:
        return False
    g = torch.Generator().manual_seed(0)
    B, n, k = 5, 1000, 70
    X = torch.randn(B, n, generator=g).to(dtype)
    ref = X.float() @ rademacher_block(12345, k, 0, n, dtype=torch.float32).mT
    try:
        out = _launch(X.to(device), 12345, k, 32, 64).cpu()
    except Exception as exc:  # noqa: BLE001 - any failure to build or run means: use the reference
        problem = f"failed to run ({type(exc).__name__}: {str(exc)[:300]})"
    else:
        err = float((out - ref).abs().max() / ref.abs().max())
        if err <= 2e-2:
            return True
        problem = f"disagrees with the reference (relative error {err:.2e})"
    warn(
        f"the Triton projection kernel {problem} on {device} in {dtype}; the pure-torch path is "
        f"used instead (slower, same numbers). Pass use_kernel=False to silence this, and please "
        f"report it",
        KernelFallbackWarning,
    )
    return False


def _launch(X: torch.Tensor, seed: int, k: int, block_k: int, block_n: int) -> torch.Tensor:
    X = X.contiguous()
    B, n = X.shape
    out = torch.zeros(B, k, dtype=torch.float32, device=X.device)
    block_b = min(128, max(16, triton.next_power_of_2(B)))
    tiles = triton.cdiv(k, block_k) * triton.cdiv(B, block_b)
    sms = torch.cuda.get_device_properties(X.device).multi_processor_count if X.is_cuda else 4
    splits = max(1, min(triton.cdiv(n, block_n), (4 * sms) // max(1, tiles)))
    per_split = triton.cdiv(triton.cdiv(n, splits), block_n) * block_n  # a multiple of 32 too
    splits = triton.cdiv(n, per_split)
    grid = (triton.cdiv(k, block_k), triton.cdiv(B, block_b), splits)
    one, sign = _ONE[X.dtype]
    _project_kernel[grid](
        X, out, B, n, k, X.stride(0), out.stride(0), seed_key(seed), per_split,
        BLOCK_B=block_b, BLOCK_N=block_n, BLOCK_K=block_k, ONE=one, SIGN=sign,
        num_warps=8 if block_b * block_k >= 128 * 128 else 4,
    )
    return out
