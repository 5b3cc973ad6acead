"""Compile the Triton projection kernel for an H100 (sm_90) on a machine without a GPU, and read
what the compiler made of it: registers, spills, tensor-core instructions and the size of the
inner loop. Triton ships the CUDA assembler (ptxas) it needs, so this runs anywhere Triton is
installed; it checks that the kernel builds for the GPU and lets its code be inspected, but it
measures no speed.

Run ``python -m tests._kernel_asm`` for a table of the tiles that products use.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import torch

from linop.kernels import triton_projection as tp

_PTR = {torch.float16: "*fp16", torch.bfloat16: "*bf16", torch.float32: "*fp32"}
#: The tiles ``_launch`` picks: (batch tile, warps), from a batch of at most 16 to one above 64.
PRODUCT_TILES = [(16, 4), (32, 4), (64, 4), (128, 8)]


def compile_sm90(
    dtype: torch.dtype, block_b: int, warps: int, block_n: int = 64, block_k: int = 128
) -> dict[str, Any]:
    """Compile the kernel for sm_90 with these tiles; return its PTX statistics and ptxas's
    register and spill counts."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    one, sign = tp._ONE[dtype]
    signature = {
        "x_ptr": _PTR[dtype],
        "out_ptr": "*fp32",
        "B": "i32",
        "N": "i32",
        "K": "i32",
        "stride_xb": "i32",
        "stride_ob": "i32",
        "key": "i32",
        "cols_per_split": "i32",
        "BLOCK_B": "constexpr",
        "BLOCK_N": "constexpr",
        "BLOCK_K": "constexpr",
        "ONE": "constexpr",
        "SIGN": "constexpr",
    }
    constants = {
        "BLOCK_B": block_b,
        "BLOCK_N": block_n,
        "BLOCK_K": block_k,
        "ONE": one,
        "SIGN": sign,
    }
    aligned = {(i,): [["tt.divisibility", 16]] for i in (0, 1, 5, 6, 8)}
    src = ASTSource(tp._project_kernel, signature, constants, aligned)
    kernel = triton.compile(
        src,
        target=GPUTarget("cuda", 90, 32),
        options={"num_warps": warps, "enable_fp_fusion": False},
    )
    ptx = kernel.asm["ptx"]
    loop = _inner_loop(ptx)
    return {
        "dtype": str(dtype).removeprefix("torch."),
        "block_b": block_b,
        "warps": warps,
        "loop_instructions": len(loop),
        "loop_mul": sum("mul.lo" in line for line in loop),
        "wgmma": len(re.findall(r"wgmma\.mma_async", ptx)),
        "fma": len(re.findall(r"\bfma\.rn\.f32", ptx)),
        **_ptxas_usage(ptx),
    }


def _inner_loop(ptx: str) -> list[str]:
    """The instructions of the kernel's main loop (between its header label and back-branch)."""
    lines = ptx.splitlines()
    head = next(i for i, line in enumerate(lines) if "Inner Loop Header" in line)
    label = lines[head].split(":")[0]
    end = next(
        i
        for i in range(head + 1, len(lines))
        if f"bra \t{label};" in lines[i] or f"bra {label};" in lines[i]
    )
    body = lines[head + 1 : end]
    skip = ("//", "$", "{", "}", ".loc")
    return [line for line in body if line.strip() and not line.strip().startswith(skip)]


def _ptxas_usage(ptx: str) -> dict[str, int]:
    from triton.backends.nvidia.compiler import get_ptxas

    ptxas = get_ptxas(90).path  # the assembler Triton itself uses for sm_90
    path = Path("/tmp") / f"linop_kernel_{abs(hash(ptx))}.ptx"
    path.write_text(ptx)
    try:
        err = subprocess.run(
            [str(ptxas), "--gpu-name", "sm_90a", "-v", str(path), "-o", "/dev/null"],
            capture_output=True,
            text=True,
            check=True,
        ).stderr
    finally:
        path.unlink(missing_ok=True)
    regs = re.search(r"Used (\d+) registers", err)
    spills = re.findall(r"(\d+) bytes spill (?:stores|loads)", err)
    return {"registers": int(regs.group(1)) if regs else -1, "spill_bytes": sum(map(int, spills))}


if __name__ == "__main__":
    for dtype in _PTR:
        for block_b, warps in PRODUCT_TILES:
            print(compile_sm90(dtype, block_b, warps))
