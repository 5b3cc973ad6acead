"""A Triton kernel for the rademacher projection ``X Rᵀ`` on CUDA, no compiled extension needed.

Each program owns a tile of outputs and a slice of the input dimension, and computes the tile
transposed, ``R_tile @ X_tileᵀ``, with the generated ±1 tile of ``R`` as the left operand of the
tensor-core product. The tile comes from the same counter-based hash as
`linop.kernels.hash`: one 32-bit hash per 32 entries, computed once per word in each thread,
whose bits are spread over the 32 entries by five in-register doublings (``tl.join``) and moved
into the sign bit of the constant 1.0, reinterpreted as a float: no integer-to-float conversion.
fp16 and bf16 inputs multiply in their own precision with fp32 accumulation; fp32 inputs are
split as ``x = hi + lo`` and multiplied as two tf32 products (the ±1 entries are exact in tf32),
which is about as accurate as an fp32 product. Slices of the input dimension run in parallel and
meet by atomic addition.

The pure-torch path in `linop.projection` is the reference: `project` checks the
kernel against it once per device and dtype, and returns None (with a
[`KernelFallbackWarning`][linop.errors.KernelFallbackWarning]) when the kernel cannot be used, so
the caller falls back to the reference instead of returning wrong numbers. ``tests/_kernel_asm.py``
compiles the kernel for sm_90 without a GPU, to check what the compiler makes of it.
"""

from __future__ import annotations

import contextlib
import functools

import torch

from linop._warn import warn
from linop.errors import KernelFallbackWarning
from linop.kernels.hash import rademacher_block, seed_key

try:  # Triton is optional
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the environment
    triton = None

#: The bits of +1.0, and the sign bit, in each supported input dtype.
_ONE = {torch.float16: (0x3C00, 15), torch.bfloat16: (0x3F80, 15), torch.float32: (0x3F800000, 31)}


@functools.cache
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

    @triton.jit(do_not_specialize=["key"])  # a key equal to 1 must not become a constant
    def _project_kernel(
        x_ptr,
        out_ptr,
        B,
        N,
        K,
        stride_xb,
        stride_ob,
        key,
        cols_per_split,
        BLOCK_B: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr,
        ONE: tl.constexpr,
        SIGN: tl.constexpr,
    ):
        pid_k = tl.program_id(0)
        pid_b = tl.program_id(1)
        pid_s = tl.program_id(2)
        offs_b = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
        offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
        key = key.to(tl.uint32)
        row_term = offs_k.to(tl.uint32) * 0x9E3779B1  # hash.GOLDEN; (BLOCK_K,), wraps mod 2^32
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
            # Each word's 32 bits, spread by five doublings inside each thread (so the hash is
            # computed once per word): after them, entry [.., b0, .., b4] holds bit
            # s = 16 b0 + 8 b1 + 4 b2 + 2 b3 + b4 of h at bit SIGN (16-bit inputs: bit 15, reached
            # by starting from h << 15 and h >> 1) or at bit 0 (fp32, shifted up at the end).
            v = tl.join(h, h >> 16)
            v = tl.join(v, v >> 8)
            v = tl.join(v, v >> 4)
            v = tl.join(v, v >> 2)
            v = tl.join(v, v >> 1)
            if SIGN == 31:  # that bit becomes the sign of +1.0
                r = ((v << 31) | ONE).to(tl.float32, bitcast=True)
            else:
                r = (((v << 15) & 0x8000) | ONE).to(tl.uint16).to(xt.dtype, bitcast=True)
            r = tl.reshape(r, (BLOCK_K, BLOCK_N))
            if SIGN == 31:  # fp32: x = hi + lo, each exact enough in tf32 (±1 is exact): two
                # tensor-core products with about 2⁻²⁰ relative error per term, not 2⁻¹¹
                hi = (xt.to(tl.uint32, bitcast=True) & 0xFFFFE000).to(tl.float32, bitcast=True)
                acc += tl.dot(r, hi, input_precision="tf32")
                acc += tl.dot(r, xt - hi, input_precision="tf32")
            else:
                acc += tl.dot(r, xt)
        mask = (offs_k[:, None] < K) & (offs_b[None, :] < B)
        out = out_ptr + offs_b.to(tl.int64)[None, :] * stride_ob + offs_k[:, None]
        tl.atomic_add(out, acc, mask=mask, sem="relaxed")  # only the sum matters, not the order


def project(
    X: torch.Tensor, seed: int, k: int, block_k: int = 128, block_n: int = 64
) -> torch.Tensor | None:
    """``X Rᵀ`` for ``X`` ``(B, n)`` on CUDA with the unscaled ±1 matrix ``R`` ``(k, n)``, as
    float32 ``(B, k)``; or None when the kernel cannot be used for this device and dtype: it
    failed to build or to run, or disagreed with the reference (see `usable`), and a
    [`KernelFallbackWarning`][linop.errors.KernelFallbackWarning] said so once."""
    where = (str(X.device), X.dtype)
    if not usable(*where):
        return None
    try:
        return _launch(X, seed, k, block_k, block_n)
    except Exception as exc:  # noqa: BLE001 - a failure to build or run means: use the reference
        _refuse(where, _failed(exc))
        return None


#: Per (device, dtype): whether the kernel may be used, once `usable` has judged it.
_VERDICTS: dict[tuple[str, torch.dtype], bool] = {}


def _failed(exc: Exception) -> str:
    return f"failed to run ({type(exc).__name__}: {str(exc)[:300]})"


def _refuse(where: tuple[str, torch.dtype], problem: str) -> None:
    _VERDICTS[where] = False
    warn(
        f"the Triton projection kernel {problem} on {where[0]} in {where[1]}; the pure-torch path "
        f"is used instead (slower, same numbers). Pass use_kernel=False to silence this, and "
        f"please report it",
        KernelFallbackWarning,
    )


def usable(device: str, dtype: torch.dtype) -> bool:
    """Once per device and dtype: the kernel, with the tiles that products use, must build and
    agree with the pure-torch reference on problems whose sizes are not multiples of the tiles
    (a small and a large batch, which take different tiles). Otherwise warn
    ([`KernelFallbackWarning`][linop.errors.KernelFallbackWarning]) and return False, so the
    reference is used."""
    where = (device, dtype)
    if where not in _VERDICTS:
        if triton is None or dtype not in _ONE:
            _VERDICTS[where] = False
        else:
            problem = _self_test(device, dtype)
            _VERDICTS[where] = problem is None
            if problem is not None:
                _refuse(where, problem)
    return _VERDICTS[where]


def _self_test(device: str, dtype: torch.dtype) -> str | None:
    """What is wrong with the kernel on this device and dtype, or None."""
    g = torch.Generator().manual_seed(0)
    n, k, seed = 1000, 150, 2  # seed 2's key is above 2³¹: the unsigned half is covered
    R = rademacher_block(seed, k, 0, n, dtype=torch.float32)
    for B in (5, 130):
        X = torch.randn(B, n, generator=g).to(dtype)
        ref = X.float() @ R.mT
        try:
            out = _launch(X.to(device), seed, k, 128, 64).cpu()
        except Exception as exc:  # noqa: BLE001 - any failure to build or run: use the reference
            return _failed(exc)
        err = float((out - ref).abs().max() / ref.abs().max())
        if not err <= 2e-2:
            return f"disagrees with the reference (relative error {err:.2e})"
    return None


def _launch(X: torch.Tensor, seed: int, k: int, block_k: int, block_n: int) -> torch.Tensor:
    if block_n < 32 or block_n & (block_n - 1) or block_k < 16 or block_k & (block_k - 1):
        raise ValueError(
            f"block_n must be a power of two ≥ 32 and block_k one ≥ 16, got {block_n}, {block_k}"
        )
    X = X.contiguous()
    B, n = X.shape
    out = torch.zeros(B, k, dtype=torch.float32, device=X.device)
    if B == 0 or n == 0 or k == 0:
        return out
    block_b = min(128, max(16, triton.next_power_of_2(B)))
    tiles = triton.cdiv(k, block_k) * triton.cdiv(B, block_b)
    sms = torch.cuda.get_device_properties(X.device).multi_processor_count if X.is_cuda else 4
    splits = max(1, min(triton.cdiv(n, block_n), (4 * sms) // max(1, tiles)))
    per_split = triton.cdiv(triton.cdiv(n, splits), block_n) * block_n  # a multiple of 32 too
    splits = triton.cdiv(n, per_split)
    grid = (triton.cdiv(k, block_k), triton.cdiv(B, block_b), splits)
    one, sign = _ONE[X.dtype]
    key = seed_key(seed)
    key = key - (1 << 32) if key >= 1 << 31 else key  # the same 32 bits, signed: one signature
    # on X's GPU, not the current one
    with torch.cuda.device(X.device) if X.is_cuda else contextlib.nullcontext():
        _project_kernel[grid](
            X,
            out,
            B,
            n,
            k,
            X.stride(0),
            out.stride(0),
            key,
            per_split,
            BLOCK_B=block_b,
            BLOCK_N=block_n,
            BLOCK_K=block_k,
            ONE=one,
            SIGN=sign,
            num_warps=8 if block_b * block_k >= 128 * 128 else 4,
            enable_fp_fusion=False,  # nothing to fuse; saying so keeps Triton 3.9 from warning
        )
    return out
