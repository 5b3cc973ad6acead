"""Random projection throughput: linop against dattri 0.2.0 (CPU) or plain torch (CUDA).

Features ``(B, d)`` in float16 projected to ``k`` dimensions, as in BENCHMARKS.md.

- CPU: ``ProjectionOperator.random(d, k).project(X)`` — the first call (the matrix generated from
  the hash, its signs kept packed 8 to a byte within the 1 GiB budget) and later calls — against
  dattri 0.2.0's ``random_project(..., device="cpu")`` (its default ``use_half_precision=True``),
  one call each side, in separate processes; the extra memory of each side is its peak resident
  size minus the size before the call.
- CUDA: linop's Triton kernel against linop's pure-torch path (regenerate blocks + matmul) and,
  when it is importable, TRAK's fast_jl kernel called directly (``project_rademacher_{8,16,32}``
  with one feature tile per SM, as TRAK's CudaProjector calls it), for the four shapes of
  BENCHMARKS.md. ``benchmarks/build_fast_jl.sh`` builds fast_jl for sm_90 from its source package.

Run ``python -m benchmarks.projection [--device cpu|cuda] [--shape B,d,k]``.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from functools import partial
from typing import Any

import torch

from benchmarks._harness import (
    REPO_ROOT,
    ensure_reference,
    machine_info,
    median_time,
    run_reference,
    write_jsonl,
)

CPU_SHAPES = [(32, 100_000, 512), (32, 1_000_000, 512)]
GPU_SHAPES = [
    (32, 1_000_000, 512),
    (32, 1_000_000, 4096),
    (32, 10_000_000, 2048),
    (256, 10_000_000, 2048),
]
_SCRIPT = (
    "import json, sys\n"
    "from benchmarks.projection import {fn}\n"
    "print(json.dumps({fn}(*json.loads(sys.argv[1]))))\n"
)


def _features(B: int, d: int, device: str = "cpu") -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn(B, d, generator=g, dtype=torch.float16).to(device)  # no float32 peak


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def linop_cpu(B: int, d: int, k: int) -> dict[str, Any]:
    """Our side, in a fresh process: first call, later calls, extra peak memory."""
    from linop import ProjectionOperator

    X = _features(B, d)
    before = _rss_mib()
    P = ProjectionOperator.random(d, k, dtype=torch.float16)
    start = time.perf_counter()
    P.project(X)
    first = time.perf_counter() - start
    later = median_time(lambda: P.project(X), warmup=0, reps=3)
    return {"first": first, "later": later, "extra_mib": _rss_mib() - before}


def dattri_cpu(B: int, d: int, k: int) -> dict[str, Any]:
    """dattri 0.2.0's side, in a fresh process (the reference on PYTHONPATH)."""
    from dattri.func.projection import random_project

    X = _features(B, d)
    before = _rss_mib()
    project = random_project(X, B, k, 32, "cpu")
    start = time.perf_counter()
    project(X)
    first = time.perf_counter() - start
    return {"first": first, "extra_mib": _rss_mib() - before}


def run_cpu(shapes: list[tuple[int, int, int]]) -> list[dict[str, Any]]:
    records = []
    ref = ensure_reference()
    for B, d, k in shapes:
        ours = run_reference(_SCRIPT.format(fn="linop_cpu"), [json.dumps([B, d, k])], [REPO_ROOT])
        theirs = run_reference(
            _SCRIPT.format(fn="dattri_cpu"), [json.dumps([B, d, k])], [ref, REPO_ROOT]
        )
        rec = {
            "benchmark": "projection",
            "device": "cpu",
            "shape": [B, d, k],
            "dtype": "float16",
            "linop_first_s": ours["first"],
            "linop_later_s": ours["later"],
            "linop_extra_mib": ours["extra_mib"],
            "dattri_s": theirs["first"],
            "dattri_extra_mib": theirs["extra_mib"],
            "machine": machine_info(),
        }
        records.append(rec)
        print(
            f"({B}, {d}, {k}): linop first {ours['first']:.3f} s, later {ours['later']:.3f} s "
            f"(+{ours['extra_mib']:.0f} MiB); dattri {theirs['first']:.3f} s "
            f"(+{theirs['extra_mib']:.0f} MiB); speed-up {theirs['first'] / ours['first']:.1f}x "
            f"first call, {theirs['first'] / ours['later']:.1f}x later calls",
            flush=True,
        )
    return records


def _fast_jl(X: torch.Tensor, k: int, seed: int = 0):  # noqa: ANN202
    """fast_jl's rademacher kernel on ``X`` as a no-argument call, or None if it is not built."""
    try:
        import fast_jl
    except ImportError:
        return None
    B = X.shape[0]
    fn = getattr(fast_jl, f"project_rademacher_{8 if B <= 8 else 16 if B <= 16 else 32}")
    sms = torch.cuda.get_device_properties(X.device).multi_processor_count
    return lambda: fn(X, k, seed, sms)


def run_cuda(shapes: list[tuple[int, int, int]]) -> list[dict[str, Any]]:
    from linop import ProjectionOperator

    records = []
    for B, d, k in shapes:
        X = _features(B, d, "cuda")
        kernel = ProjectionOperator.random(d, k, dtype=torch.float16, device="cuda")
        torch_path = ProjectionOperator.random(
            d, k, dtype=torch.float16, device="cuda", use_kernel=False
        )
        rec: dict[str, Any] = {"benchmark": "projection", "device": "cuda", "shape": [B, d, k]}
        rec["triton_s"] = median_time(partial(kernel.project, X), warmup=3, reps=10)
        rec["torch_s"] = median_time(partial(torch_path.project, X), warmup=1, reps=3)
        a, b = kernel.project(X).float(), torch_path.project(X).float()
        rec["max_rel_diff"] = float((a - b).abs().max() / b.abs().max())
        theirs = _fast_jl(X, k)
        rec["fast_jl_s"] = median_time(theirs, warmup=3, reps=10) if theirs else None
        rec["machine"] = machine_info()
        records.append(rec)
        fj = f"{rec['fast_jl_s'] * 1e3:.2f} ms" if theirs else "not built"
        print(
            f"({B}, {d}, {k}): triton {rec['triton_s'] * 1e3:.2f} ms, "
            f"torch {rec['torch_s'] * 1e3:.2f} ms, "
            f"fast_jl {fj}, max rel diff {rec['max_rel_diff']:.1e}",
            flush=True,
        )
    return records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--shape", action="append", help="B,d,k (repeatable)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    shapes = [tuple(int(x) for x in s.split(",")) for s in args.shape] if args.shape else None
    if args.device == "cpu":
        records = run_cpu(shapes or CPU_SHAPES)
    else:
        records = run_cuda(shapes or GPU_SHAPES)
    out = args.out or REPO_ROOT / "benchmarks" / "out" / f"projection_{args.device}.jsonl"
    print(f"wrote {write_jsonl(out, records)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
