"""Inverse-Hessian-vector products: time to accuracy, linop against dattri 0.2.0, in one run.

The problem of BENCHMARKS.md (the MLP 784-512-512-10 of :mod:`benchmarks.hvp`, batch 1024,
float32) with 8 right-hand sides and a shift ``λ`` (``H + λI``). The reference solution is linop's
CG run to a tight tolerance; every method's error is ``‖X − X_ref‖_F / ‖X_ref‖_F``.

- CG: dattri's ``ihvp_at_x_cg`` at several ``max_iter`` (it ignores ``tol``) against linop's CG at
  several ``rtol``; for each dattri point, the fastest linop run at least as accurate.
- Arnoldi: dattri's ``ihvp_at_x_arnoldi`` (100 iterations, rank 50) recomputes on every call;
  linop's set-up once, then the per-call time.
- LiSSA: depth 100, minibatch 64, 1 right-hand side, the same fixed point.

Run ``python -m benchmarks.inverse [--device cpu|cuda] [--quick]``; JSON lines go to
``benchmarks/out/inverse_<device>.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import warnings
from functools import partial
from operator import matmul
from pathlib import Path
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
from benchmarks.hvp import make_problem, mlp_loss, problem_info

RHS = 8
_SCRIPT = (
    "import json, sys\n"
    "from benchmarks.inverse import reference_dattri\n"
    "print(json.dumps(reference_dattri(json.loads(sys.argv[1]))))\n"
)


def _problem(device: str) -> tuple[dict[str, Any], torch.Tensor]:
    """The problem and the right-hand sides: the loss gradients of the first 8 examples
    (normalised), as influence functions use them."""
    prob = make_problem(device)
    theta, X, y = prob["theta"], prob["X"], prob["y"]
    B = torch.stack(
        [torch.func.grad(mlp_loss)(theta, X[i : i + 1], y[i : i + 1]) for i in range(RHS)], 1
    )
    return prob, B / B.norm(dim=0)


def _soft_loss(theta: torch.Tensor, X: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    """``mlp_loss`` with one-hot float targets: the same value, for dattri's LiSSA, whose rev-rev
    mode differentiates every input and so cannot take integer labels."""
    return mlp_loss(theta, X, Y)


def _error(X: torch.Tensor, ref: torch.Tensor) -> float:
    return float((X - ref).norm() / ref.norm())


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def _timed(fn: Any) -> tuple[Any, float]:
    import time

    _sync()
    start = time.perf_counter()
    out = fn()
    _sync()
    return out, time.perf_counter() - start


def reference_dattri(cfg: dict[str, Any]) -> dict[str, Any]:
    """The dattri 0.2.0 side (runs in the reference subprocess); saves its outputs for scoring."""
    from dattri.func.hessian import ihvp_at_x_arnoldi, ihvp_at_x_cg, ihvp_at_x_lissa

    torch.set_num_threads(cfg["threads"])
    prob, B = _problem(cfg["device"])
    theta, X, y = prob["theta"], prob["X"], prob["y"]
    f = partial(mlp_loss, X=X, y=y)
    lam, out, saved = cfg["lam"], {"machine": machine_info()}, {}
    for m in cfg["cg_iters"]:
        ihvp = ihvp_at_x_cg(f, theta, max_iter=m, regularization=lam)
        saved[f"cg_{m}"], out[f"cg_{m}"] = _timed(lambda ihvp=ihvp: ihvp(B.T))
    ihvp = ihvp_at_x_arnoldi(
        f, theta, max_iter=cfg["arnoldi_iters"], top_k=cfg["rank"], regularization=lam
    )
    saved["arnoldi"], out["arnoldi_first"] = _timed(lambda: ihvp(B.T))
    out["arnoldi_second"] = _timed(lambda: ihvp(B.T))[1]
    Y = torch.nn.functional.one_hot(y, 10).to(X.dtype)
    lissa = ihvp_at_x_lissa(
        _soft_loss,
        theta,
        X,
        Y,
        in_dims=(None, 0, 0),
        batch_size=64,
        num_repeat=1,
        recursion_depth=cfg["depth"],
        damping=lam / cfg["scale"],
        scaling=cfg["scale"],
    )
    saved["lissa"], out["lissa"] = _timed(lambda: lissa(B[:, :1].T))
    torch.save({k: v.cpu() for k, v in saved.items()}, cfg["save"])
    return out


def run(device: str, quick: bool, threads: int) -> list[dict[str, Any]]:
    import linop

    torch.set_num_threads(threads)
    prob, B = _problem(device)
    theta, X, y = prob["theta"], prob["X"], prob["y"]
    lam = 0.32  # the Hessian at init is indefinite (Lanczos: eigenvalues from -0.298 to 0.328)
    cfg = {
        "device": device,
        "threads": threads,
        "lam": lam,
        "rank": 50,
        "depth": 100,
        "scale": 50.0,
        "arnoldi_iters": 100,
        "cg_iters": [5, 10, 25] if quick else [10, 25, 50],
    }
    H = linop.HessianOperator(mlp_loss, (theta, X, y))
    A = H + lam * linop.IdentityOperator.like(H)
    records: list[dict[str, Any]] = []

    def record(side: str, method: str, seconds: float, error: float | None, **extra: Any) -> None:
        records.append(
            {
                "benchmark": "inverse",
                "device": device,
                "problem": problem_info(),
                "lam": lam,
                "rhs": RHS,
                "side": side,
                "method": method,
                "seconds": seconds,
                "rel_error": error,
                **extra,
            }
        )
        err = "" if error is None else f"  error {error:.2e}"
        print(f"{side:7s} {method:34s} {seconds:9.3f} s{err}", flush=True)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence warnings at loose tolerances are expected
        ref_inv = A.inverse("cg", rtol=1e-6, maxiter=2000)
        ref, seconds = _timed(lambda: ref_inv @ B)
        record(
            "linop",
            "reference cg rtol=1e-6",
            seconds,
            None,
            iterations=ref_inv.info.iterations.tolist(),
            reasons=ref_inv.info.reasons,
        )
        print(f"        reference: {ref_inv.info}", flush=True)
        # linop CG at several tolerances
        ours = []
        for rtol in [1e-1, 1e-2, 3e-3, 1e-3, 1e-4, 1e-5]:
            inv = A.inverse("cg", rtol=rtol, maxiter=500)
            X_, seconds = _timed(partial(matmul, inv, B))
            ours.append((seconds, _error(X_, ref)))
            record(
                "linop",
                f"cg rtol={rtol:g}",
                seconds,
                ours[-1][1],
                hvps=inv.info.hvps,
                iterations=inv.info.iterations.tolist(),
            )
            print(f"        iterations per column {inv.info.iterations.tolist()}", flush=True)
        # linop Arnoldi: set-up once, then per call
        inv = A.inverse("arnoldi", rank=cfg["rank"], maxiter=cfg["arnoldi_iters"])
        X_, setup = _timed(lambda: inv @ B)
        per_call = median_time(lambda: inv @ B, warmup=1, reps=5)
        record("linop", "arnoldi first call (set-up)", setup, _error(X_, ref))
        record("linop", "arnoldi later call", per_call, _error(X_, ref))
        inv = A.inverse("arnoldi", rank=cfg["rank"], maxiter=cfg["arnoldi_iters"], complement=True)
        X_, seconds = _timed(lambda: inv @ B)  # the eigenpairs are cached on H: no new products
        record("linop", "arnoldi + complement (cached)", seconds, _error(X_, ref))
        # linop LiSSA on the dataset operator, the same fixed point as dattri's
        Hd = linop.HessianOperator.from_data(mlp_loss, theta, (X, y), batch_size=1024)
        Ad = Hd + lam * linop.IdentityOperator.like(Hd)
        inv = Ad.inverse("lissa", depth=cfg["depth"] + 1, batch_size=64, scale=cfg["scale"])
        x_, seconds = _timed(lambda: inv @ B[:, 0])
        record("linop", "lissa depth 100, batch 64, 1 rhs", seconds, _error(x_, ref[:, 0]))

    # dattri 0.2.0, same problem, in its own process
    with tempfile.TemporaryDirectory() as tmp:
        cfg["save"] = str(Path(tmp) / "dattri.pt")
        refdir = ensure_reference()
        theirs = run_reference(_SCRIPT, [json.dumps(cfg)], [refdir, REPO_ROOT])
        saved = torch.load(cfg["save"])
    for m in cfg["cg_iters"]:
        err = _error(saved[f"cg_{m}"].T.to(device), ref)
        record("dattri", f"cg max_iter={m}", theirs[f"cg_{m}"], err)
        best = min((s for s, e in ours if e <= err), default=None)
        if best is not None:
            print(
                f"        -> linop reaches that accuracy in {best:.3f} s: "
                f"{theirs[f'cg_{m}'] / best:.1f}x faster",
                flush=True,
            )
            records[-1]["linop_seconds_at_equal_accuracy"] = best
    err = _error(saved["arnoldi"].T.to(device), ref)
    record("dattri", "arnoldi first call", theirs["arnoldi_first"], err)
    record("dattri", "arnoldi second call (recomputed)", theirs["arnoldi_second"], err)
    record(
        "dattri",
        "lissa depth 100, batch 64, 1 rhs",
        theirs["lissa"],
        _error(saved["lissa"].T.to(device)[:, 0], ref[:, 0]),
    )
    for r in records:
        r["machine"] = machine_info()
    return records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="fewer CG points")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    records = run(args.device, args.quick, args.threads)
    out = args.out or REPO_ROOT / "benchmarks" / "out" / f"inverse_{args.device}.jsonl"
    print(f"wrote {write_jsonl(out, records)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
