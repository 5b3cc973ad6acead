"""The counter-based hash behind random projections, in pure torch (the reference).

Every entry is a function of ``(seed, row, column)`` through 32-bit unsigned arithmetic (the
murmur3 finaliser), evaluated here in int64 tensors masked to 32 bits, and in the Triton kernel in
uint32 registers: the bits are the same on every device.

- rademacher: entry ``(i, j)`` is bit ``j mod 32`` of ``word(i, j // 32)`` mapped to ±1, so one
  hash serves 32 entries;
- gaussian: Box–Muller on two hashes of ``(i, j)``;
- sjlt: the ``k`` outputs are split into ``nnz`` nearly equal bands; input coordinate ``j`` goes
  to one bucket ``h(j, t) mod |band t|`` in every band ``t`` (so its buckets are distinct and its
  column has exactly ``nnz`` non-zeros), with the sign taken from the hash's top bit.

Example:
    >>> from linop.kernels.hash import rademacher_block
    >>> rademacher_block(0, 2, 0, 4).tolist() == rademacher_block(0, 2, 0, 4).tolist()
    True
"""

from __future__ import annotations

import sys
from typing import overload

import torch

M32 = 0xFFFFFFFF
GOLDEN = 0x9E3779B1
_C1, _C2 = 0x85EBCA6B, 0xC2B2AE35


@overload
def fmix32(x: int) -> int: ...
@overload
def fmix32(x: torch.Tensor) -> torch.Tensor: ...
def fmix32(x: torch.Tensor | int) -> torch.Tensor | int:
    """The murmur3 32-bit finaliser on values in ``[0, 2³²)`` (int64 tensors or Python ints)."""
    x = x ^ (x >> 16)
    x = (x * _C1) & M32
    x = x ^ (x >> 13)
    x = (x * _C2) & M32
    return x ^ (x >> 16)


def seed_key(seed: int, stream: int = 0) -> int:
    """A 32-bit key from the user's seed and a stream number (one stream per use)."""
    return fmix32((fmix32(seed & M32) ^ (stream * GOLDEN)) & M32)


def word(seed: int, rows: torch.Tensor, cols: torch.Tensor, stream: int = 0) -> torch.Tensor:
    """The 32-bit hash of every ``(row, col)`` pair (broadcast), as int64 in ``[0, 2³²)``."""
    col_hash = fmix32((cols + seed_key(seed, stream)) & M32)
    return fmix32((rows * GOLDEN + col_hash) & M32)


def rademacher_bytes(
    seed: int, k: int, start: int, stop: int, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """The ±1 signs of columns ``32⌊start/32⌋`` to ``stop`` packed 8 to a byte, ``(k, 4W)`` uint8
    for the ``W`` words spanned: bit ``b`` of byte ``j`` is column ``32⌊start/32⌋ + 8j + b``
    (bit 1 means −1). An eighth of the memory of int8 signs; `signs_from_bytes` expands it."""
    w0, w1 = start // 32, (stop + 31) // 32
    rows = torch.arange(k, device=device).unsqueeze(1)
    words = word(seed, rows, torch.arange(w0, w1, device=device).unsqueeze(0))  # (k, W)
    if sys.byteorder == "little":  # the four bytes of every word, low byte first
        signed = (words ^ 0x80000000) - 0x80000000  # the same 32 bits, in int32's range
        return signed.to(torch.int32).view(torch.uint8)
    return (
        torch.stack([(words >> s) & 255 for s in (0, 8, 16, 24)], dim=-1)
        .reshape(k, -1)
        .to(torch.uint8)
    )


def signs_from_bytes(
    packed: torch.Tensor, offset: int, width: int, dtype: torch.dtype
) -> torch.Tensor:
    """Columns ``offset:offset + width`` of the ±1 matrix packed by `rademacher_bytes`,
    each byte looked up as 8 signs, in ``dtype``."""
    k = packed.shape[0]
    table = _sign_table(packed.device)
    index = packed.to(torch.int32).reshape(-1)  # one pass, even from a strided view of the cache
    signs = torch.nn.functional.embedding(index, table).reshape(k, -1)
    return signs[:, offset : offset + width].to(dtype)


def rademacher_block(
    seed: int,
    k: int,
    start: int,
    stop: int,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.int8,
) -> torch.Tensor:
    """Columns ``start:stop`` of the ``(k, n)`` ±1 matrix, in ``dtype``."""
    packed = rademacher_bytes(seed, k, start, stop, device)
    return signs_from_bytes(packed, start % 32, stop - start, dtype)


_TABLES: dict[str, torch.Tensor] = {}


def _sign_table(device: torch.device | str) -> torch.Tensor:
    key = str(device)
    if key not in _TABLES:
        bits = (torch.arange(256).unsqueeze(1) >> torch.arange(8)) & 1
        _TABLES[key] = (1 - 2 * bits).to(torch.float32).to(device)
    return _TABLES[key]


def gaussian_block(
    seed: int,
    k: int,
    start: int,
    stop: int,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Columns ``start:stop`` of the ``(k, n)`` N(0, 1) matrix (Box–Muller on two hashes)."""
    rows = torch.arange(k, device=device).unsqueeze(1)
    cols = torch.arange(start, stop, device=device).unsqueeze(0)
    h1 = word(seed, rows, cols, stream=1)
    h2 = fmix32(h1 ^ seed_key(seed, 2))
    u1 = ((h1 >> 8).to(torch.float64) + 0.5) * 2.0**-24  # in (0, 1): the log is finite
    u2 = (h2 >> 8).to(torch.float64) * 2.0**-24
    z = torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2 * torch.pi * u2)
    return z.to(dtype)


def sjlt_buckets(
    seed: int, start: int, stop: int, nnz: int, k: int, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """For input coordinates ``start:stop``: ``(nnz, cols)`` output rows and ±1 signs (int8)."""
    t = torch.arange(nnz, device=device).unsqueeze(1)
    cols = torch.arange(start, stop, device=device).unsqueeze(0)
    h = word(seed, t, cols, stream=3)
    lo, hi = (t * k) // nnz, ((t + 1) * k) // nnz
    rows = lo + (h & 0x7FFFFFFF) % (hi - lo)
    signs = (1 - 2 * (h >> 31)).to(torch.int8)
    return rows, signs
