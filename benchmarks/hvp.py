"""Hessian-vector products: linop's HessianOperator against dattri 0.2.0 and curvlinops.

The problem of ``BENCHMARKS.md``: an MLP 784-512-512-10 (669,706 parameters) with tanh and
cross-entropy on a batch of 1024 random examples, float32, the loss a function of the flat
parameter vector. One run measures, side by side:

- the gradient (``torch.func.grad`` of the flat loss), the reference cost;
- linop ``HessianOperator(loss, (theta, X, y), mode=m)`` for ``m`` in rev-rev and rev-fwd:
  construction, first product, then one HVP (``H @ v``) and 16 (``H @ V``);
- dattri 0.2.0 ``hvp_at_x(f, (theta,), mode=m)`` and ``torch.func.vmap`` of it over 16 vectors,
  in a subprocess where the reference package shadows our ``dattri``;
- curvlinops ``HessianLinearOperator`` (forward-over-reverse) in a subprocess whose
  ``PYTHONPATH`` supplies the dependencies it needs (installed into ``.ref/curvlinops_deps``);
- plain ``torch.func`` recipes of the same products (no operator), to show any overhead;

and checks that the HVPs agree with each other and with a float64 HVP. Every process builds
the same problem from the same seed (:func:`make_problem`).

Usage::

    python -m benchmarks.hvp [--device cpu|cuda] [--reps N] [--out FILE]
                             [--warmup N] [--setup-reps N] [--rounds N] [--threads N]

``--rounds`` repeats ours and the references in turn and pools the samples, which evens out
drifting load on a shared machine; ``--threads`` sets torch's thread count in every process (on a
CPU shared with other work, using every core makes torch's threads wait on each other).
Exit status 1 if a correctness check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from functools import partial
from itertools import pairwise
from operator import matmul
from pathlib import Path
from typing import Any

import torch
from torch.func import grad, jvp, linearize, vjp, vmap

from benchmarks._harness import (
    REPO_ROOT,
    ReferenceUnavailable,
    ensure_reference,
    machine_info,
    run_reference,
    source_info,
    time_samples,
    write_jsonl,
)

SIZES = (784, 512, 512, 10)
BATCH = 1024
NUM_VECTORS = 16
SEED = 0
MODES = ("rev-rev", "rev-fwd")
#: curvlinops-for-pytorch is installed without its dependencies; these supply them.
CURVLINOPS_DEPS = REPO_ROOT / ".ref" / "curvlinops_deps"
CURVLINOPS_REQUIREMENTS = (
    "einops",
    "einconv",
    "linear_operator",
    "opt-einsum",
    "backpack-for-pytorch",
    "unfoldNd",
)
#: The subprocess side: call one function of this module on the JSON config, print its JSON.
_SCRIPT = (
    "import json, sys\n"
    "from benchmarks.hvp import {fn}\n"
    "print(json.dumps({fn}(json.loads(sys.argv[1]))))\n"
)
#: Relative error (max-abs difference over max-abs value) accepted between float32 HVPs.
TOLERANCE = 1e-4


# ---------------------------------------------------------------------- the problem
def mlp_loss(theta: torch.Tensor, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of the tanh MLP whose flat parameters are ``theta``.

    ``theta`` holds, layer by layer, the weight ``(out, in)`` row-major then the bias, the
    order of ``torch.nn.Linear.parameters()``.
    """
    i, h, last = 0, X, len(SIZES) - 2
    for layer, (fan_in, fan_out) in enumerate(pairwise(SIZES)):
        W = theta[i : i + fan_in * fan_out].view(fan_out, fan_in)
        i += fan_in * fan_out
        b = theta[i : i + fan_out]
        i += fan_out
        h = torch.nn.functional.linear(h, W, b)
        if layer < last:
            h = torch.tanh(h)
    return torch.nn.functional.cross_entropy(h, y)


def make_problem(device: str = "cpu", dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """The parameters, data and probe vectors, identical in every process for one seed.

    Everything is drawn on the CPU from one seeded generator, then moved to ``device``.

    Returns:
        A dict with ``theta`` (n,), ``X`` (1024, 784), ``y`` (1024,) integer labels, ``v`` (n,)
        and ``V`` (n, 16).
    """
    torch.manual_seed(SEED)
    g = torch.Generator().manual_seed(SEED)
    parts = []
    for fan_in, fan_out in pairwise(SIZES):  # torch.nn.Linear's default init
        bound = fan_in**-0.5
        parts.append((torch.rand(fan_out * fan_in, generator=g) * 2 - 1) * bound)
        parts.append((torch.rand(fan_out, generator=g) * 2 - 1) * bound)
    theta = torch.cat(parts)
    n = theta.numel()
    prob = {
        "theta": theta,
        "X": torch.randn(BATCH, SIZES[0], generator=g),
        "y": torch.randint(0, SIZES[-1], (BATCH,), generator=g),
        "v": torch.randn(n, generator=g),
        "V": torch.randn(n, NUM_VECTORS, generator=g),
    }
    return {
        k: t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype)
        for k, t in prob.items()
    }


def problem_info() -> dict[str, Any]:
    """The problem's description, for the records."""
    n = sum(i * o + o for i, o in pairwise(SIZES))
    return {
        "sizes": SIZES,
        "params": n,
        "batch": BATCH,
        "vectors": NUM_VECTORS,
        "seed": SEED,
        "activation": "tanh",
        "loss": "cross_entropy",
        "dtype": "float32",
    }


# ---------------------------------------------------------------------- measuring
def _measure(name: str, fn: Callable[[], Any], cfg: dict[str, Any], out: dict[str, Any]) -> None:
    samples = time_samples(fn, cfg["warmup"], cfg["reps"])
    out[name] = {"seconds": statistics.median(samples), "samples": samples}


def _measure_setup(
    name: str,
    build: Callable[[], Any],
    first: Callable[[Any], Any],
    cfg: dict[str, Any],
    out: dict[str, Any],
) -> Any:
    """Time ``build()`` and the first ``first(obj)`` separately, on fresh objects; return one."""
    sync = torch.cuda.synchronize if cfg["device"] == "cuda" else (lambda: None)
    built, firsts, obj = [], [], None
    for _ in range(cfg["setup_reps"]):
        obj = None  # free the previous one first
        sync()
        t0 = time.perf_counter()
        obj = build()
        sync()
        t1 = time.perf_counter()
        first(obj)
        sync()
        built.append(t1 - t0)
        firsts.append(time.perf_counter() - t1)
    out[f"{name}/construct"] = {"seconds": statistics.median(built), "samples": built}
    out[f"{name}/first_product"] = {"seconds": statistics.median(firsts), "samples": firsts}
    return obj


def _configure(cfg: dict[str, Any]) -> None:
    """Apply the run's settings in this process (the subprocesses call it too)."""
    if cfg.get("threads"):
        torch.set_num_threads(cfg["threads"])


def _save(cfg: dict[str, Any], name: str, **tensors: torch.Tensor) -> None:
    torch.save({k: t.detach().cpu() for k, t in tensors.items()}, Path(cfg["tmp"]) / f"{name}.pt")


def _gradient(prob: dict[str, Any], cfg: dict[str, Any], out: dict[str, Any]) -> None:
    g = grad(partial(mlp_loss, X=prob["X"], y=prob["y"]))
    _measure("gradient", lambda: g(prob["theta"]), cfg, out)


def measure_linop(prob: dict[str, Any], cfg: dict[str, Any]) -> dict[str, Any]:
    """Our side, in this process: linop's HessianOperator and plain torch.func recipes."""
    from linop import HessianOperator

    out: dict[str, Any] = {}
    theta, X, y, v, V = (prob[k] for k in ("theta", "X", "y", "v", "V"))
    _gradient(prob, cfg, out)
    for mode in MODES:
        H = _measure_setup(
            f"linop/{mode}",
            lambda mode=mode: HessianOperator(mlp_loss, (theta, X, y), mode=mode),
            lambda H: H @ v,
            cfg,
            out,
        )
        _measure(f"linop/{mode}/hvp_1", partial(matmul, H, v), cfg, out)
        _measure(f"linop/{mode}/hvp_16", partial(matmul, H, V), cfg, out)
        _save(cfg, f"linop_{mode}", hv=H @ v, HV=H @ V)
        del H

    # The same products without the operator: what linop builds on, called directly.
    g = grad(partial(mlp_loss, X=X, y=y))
    pullback = vjp(g, theta)[1]
    _measure("torch.func/rev-rev/hvp_1", lambda pb=pullback: pb(v)[0], cfg, out)
    _measure(
        "torch.func/rev-rev/hvp_16",
        lambda pb=pullback: vmap(lambda u: pb(u)[0], in_dims=1, out_dims=1)(V),
        cfg,
        out,
    )
    _measure(
        "torch.func/rev-rev/loop_16",
        lambda pb=pullback: torch.stack([pb(V[:, j])[0] for j in range(V.shape[1])], 1),
        cfg,
        out,
    )
    del pullback
    _measure("torch.func/rev-fwd/hvp_1", lambda: jvp(g, (theta,), (v,))[1], cfg, out)
    _measure(
        "torch.func/rev-fwd/hvp_16",
        lambda: vmap(lambda u: jvp(g, (theta,), (u,))[1], in_dims=1, out_dims=1)(V),
        cfg,
        out,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lin = linearize(g, theta)[1]
    _measure("torch.func/linearize/hvp_1", partial(lin, v), cfg, out)
    _measure(
        "torch.func/linearize/hvp_16", lambda lin=lin: vmap(lin, in_dims=1, out_dims=1)(V), cfg, out
    )
    del lin

    # Ground truth for the correctness check: the same HVP in float64.
    p64 = {k: (t.double() if t.is_floating_point() else t) for k, t in prob.items()}
    g64 = grad(partial(mlp_loss, X=p64["X"], y=p64["y"]))
    _save(cfg, "float64", hv=jvp(g64, (p64["theta"],), (p64["v"],))[1])
    return out


def reference_dattri(cfg: dict[str, Any]) -> dict[str, Any]:
    """The dattri 0.2.0 side; runs in the reference subprocess."""
    import dattri
    from dattri.func.hessian import hvp_at_x

    _configure(cfg)
    where = str(Path(dattri.__file__).resolve())
    if not where.startswith(str(Path(cfg["dattri_ref"]).resolve())):
        raise RuntimeError(f"dattri was imported from {where}, not from the reference")
    prob = make_problem(cfg["device"])
    theta, X, y, v, V = (prob[k] for k in ("theta", "X", "y", "v", "V"))
    f = partial(mlp_loss, X=X, y=y)
    out: dict[str, Any] = {"_info": {"dattri_file": where, "machine": machine_info()}}
    _gradient(prob, cfg, out)
    for mode in MODES:
        hvp = _measure_setup(
            f"dattri/{mode}",
            lambda mode=mode: hvp_at_x(f, (theta,), mode=mode),
            lambda h: h(v),
            cfg,
            out,
        )
        many = vmap(hvp, in_dims=1, out_dims=1)
        _measure(f"dattri/{mode}/hvp_1", partial(hvp, v), cfg, out)
        _measure(f"dattri/{mode}/hvp_16", partial(many, V), cfg, out)
        _save(cfg, f"dattri_{mode}", hv=hvp(v), HV=many(V))
        del hvp, many
    return out


def reference_curvlinops(cfg: dict[str, Any]) -> dict[str, Any]:
    """The curvlinops side; runs in a subprocess with its dependencies on the path."""
    import curvlinops
    from curvlinops import HessianLinearOperator

    _configure(cfg)
    prob = make_problem(cfg["device"])
    theta, X, y, v, V = (prob[k] for k in ("theta", "X", "y", "v", "V"))
    layers: list[torch.nn.Module] = []
    for fan_in, fan_out in pairwise(SIZES):
        layers += [torch.nn.Linear(fan_in, fan_out), torch.nn.Tanh()]
    model = torch.nn.Sequential(*layers[:-1]).to(cfg["device"])
    torch.nn.utils.vector_to_parameters(theta, model.parameters())
    params = list(model.parameters())
    version = getattr(curvlinops, "__version__", None)
    if version is None:
        from importlib.metadata import version as _v

        version = _v("curvlinops-for-pytorch")
    out: dict[str, Any] = {"_info": {"curvlinops": version, "machine": machine_info()}}
    _gradient(prob, cfg, out)
    H = _measure_setup(
        "curvlinops/rev-fwd",
        lambda: HessianLinearOperator(
            model,
            torch.nn.CrossEntropyLoss(),
            params,
            [(X, y)],
            check_deterministic=False,
            num_data=BATCH,
        ),
        lambda H: H @ v,
        cfg,
        out,
    )
    _measure("curvlinops/rev-fwd/hvp_1", lambda: H @ v, cfg, out)
    _measure("curvlinops/rev-fwd/hvp_16", lambda: H @ V, cfg, out)
    _save(cfg, "curvlinops_rev-fwd", hv=H @ v, HV=H @ V)
    return out


def _run_side(fn: str, cfg: dict[str, Any], pythonpath: list[Path]) -> dict[str, Any]:
    return run_reference(_SCRIPT.format(fn=fn), [json.dumps(cfg)], [*pythonpath, REPO_ROOT])


def _dattri_side(cfg: dict[str, Any]) -> dict[str, Any]:
    ref = ensure_reference()  # installs dattri 0.2.0 into .ref/dattri020 if missing
    return _run_side("reference_dattri", {**cfg, "dattri_ref": str(ref)}, [ref])


def _curvlinops_side(cfg: dict[str, Any]) -> dict[str, Any]:
    deps = ensure_reference(CURVLINOPS_DEPS, CURVLINOPS_REQUIREMENTS)
    return _run_side("reference_curvlinops", cfg, [deps])


def _merge(into: dict[str, Any], new: dict[str, Any]) -> None:
    """Pool one round's samples into the results so far (medians over all rounds)."""
    for key, entry in new.items():
        if key.startswith("_"):
            into.setdefault(key, []).append(entry)
        elif key in into:
            into[key]["samples"] += entry["samples"]
            into[key]["seconds"] = statistics.median(into[key]["samples"])
        else:
            into[key] = entry


# ---------------------------------------------------------------------- checking
def _compare(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    a, b = a.double(), b.double()
    diff = (a - b).abs()
    return {
        "rel_max": float(diff.max() / b.abs().max()),  # max |a - b| / max |b|
        "rel_l2": float(torch.linalg.norm(a - b) / torch.linalg.norm(b)),
        "rel_elementwise_max": float((diff / b.abs().clamp_min(1e-6 * b.abs().max())).max()),
    }


def check(tmp: Path) -> list[dict[str, Any]]:
    """Compare every saved HVP with linop's (same mode) and with the float64 HVP."""

    def load(name: str) -> dict[str, torch.Tensor] | None:
        path = tmp / f"{name}.pt"
        return torch.load(path) if path.exists() else None

    truth = load("float64")["hv"]
    rows = []
    for mode in MODES:
        ours = load(f"linop_{mode}")
        rows.append(
            {"a": f"linop/{mode}", "b": "float64", "vectors": 1, **_compare(ours["hv"], truth)}
        )
        for other in (f"dattri_{mode}", f"curvlinops_{mode}"):
            ref = load(other)
            if ref is None:
                continue
            name = other.replace("_", "/", 1)
            rows.append(
                {"a": f"linop/{mode}", "b": name, "vectors": 1, **_compare(ours["hv"], ref["hv"])}
            )
            rows.append(
                {
                    "a": f"linop/{mode}",
                    "b": name,
                    "vectors": NUM_VECTORS,
                    **_compare(ours["HV"], ref["HV"]),
                }
            )
            rows.append({"a": name, "b": "float64", "vectors": 1, **_compare(ref["hv"], truth)})
    for row in rows:
        row["ok"] = row["rel_max"] <= TOLERANCE
    return rows


# ---------------------------------------------------------------------- reporting
def _ms(entry: dict[str, Any] | None) -> float | None:
    return None if entry is None else entry["seconds"] * 1e3


def _fmt(x: float | None, unit: str = "") -> str:
    if x is None:
        return "—"
    if x >= 100:
        return f"{x:.0f}{unit}"
    return f"{x:.2f}{unit}" if x >= 1 else f"{x:.2g}{unit}"


def table(res: dict[str, Any]) -> str:
    """The readable table: work, ours, dattri, curvlinops, ours/gradient, dattri/ours (ms)."""
    head = ["work", "ours (ms)", "dattri (ms)", "curvlinops (ms)", "ours/gradient", "dattri/ours"]
    works = [("gradient (each process)", "gradient", "gradient", "gradient")]
    for mode in MODES:
        for work, label in (
            ("construct", "construction"),
            ("first_product", "first product"),
            ("hvp_1", "1 HVP"),
            ("hvp_16", "16 HVPs"),
        ):
            curv = f"curvlinops/{mode}/{work}"
            works.append((f"{mode} {label}", f"linop/{mode}/{work}", f"dattri/{mode}/{work}", curv))
    lines = [head]
    grad_ms = _ms(res["linop"].get("gradient"))
    for label, ours_key, dattri_key, curv_key in works:
        ours = _ms(res["linop"].get(ours_key))
        dattri = _ms(res["dattri"].get(dattri_key))
        curv = _ms(res["curvlinops"].get(curv_key))
        lines.append(
            [
                label,
                _fmt(ours),
                _fmt(dattri),
                _fmt(curv),
                _fmt(ours / grad_ms, "×") if ours and grad_ms else "—",
                _fmt(dattri / ours, "×") if ours and dattri else "—",
            ]
        )
    lines.append(["plain torch.func (no operator):", "", "", "", "", ""])
    for key in ("rev-rev", "rev-fwd", "linearize"):
        for work, label in (
            ("hvp_1", "1 HVP"),
            ("hvp_16", "16 HVPs (vmap)"),
            ("loop_16", "16 HVPs (loop)"),
        ):
            t = _ms(res["linop"].get(f"torch.func/{key}/{work}"))
            if t is None:
                continue
            ratio = _fmt(t / grad_ms, "×") if t and grad_ms else "—"
            lines.append([f"  {key} {label}", _fmt(t), "", "", ratio, ""])
    widths = [max(len(row[i]) for row in lines) for i in range(len(head))]

    def fmt(row: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=False))
        )

    return "\n".join([fmt(lines[0]), fmt(["-" * w for w in widths]), *map(fmt, lines[1:])])


def records(
    res: dict[str, Any],
    checks: list[dict[str, Any]],
    cfg: dict[str, Any],
    loads: dict[str, list[float]],
) -> list[dict[str, Any]]:
    """One JSON record per measurement, per correctness check and per unavailable reference."""
    common = {
        "benchmark": "hvp",
        "device": cfg["device"],
        "problem": problem_info(),
        "warmup": cfg["warmup"],
        "rounds": cfg["rounds"],
        "torch_threads": torch.get_num_threads(),
        "linop_source": cfg["linop_source"],
    }
    out = []
    for side, measured in res.items():
        if "error" in measured:
            out.append(
                {**common, "side": side, "status": "unavailable", "reason": measured["error"]}
            )
            continue
        extra = {"load_avg_1m_at_start": loads[side]}
        if "_info" in measured:
            extra["subprocess"] = measured["_info"]
        for key, entry in measured.items():
            if key.startswith("_"):
                continue
            impl, _, rest = key.partition("/")
            mode, _, work = rest.rpartition("/")
            out.append(
                {
                    **common,
                    "side": side,
                    "impl": impl if rest else "torch.func.grad",
                    "mode": mode or None,
                    "work": work or key,
                    "seconds": entry["seconds"],
                    "samples": entry["samples"],
                    "n_samples": len(entry["samples"]),
                    "process": "main" if side == "linop" else "subprocess",
                    **extra,
                }
            )
    for row in checks:
        out.append({**common, "work": "correctness", "tolerance": TOLERANCE, **row})
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print the table and the checks; write the JSON lines."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--reps", type=int, default=7, help="timed calls per measurement")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls first")
    parser.add_argument(
        "--setup-reps",
        type=int,
        default=3,
        help="fresh operators timed for construction and first product",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads in every process (default: torch's default); on a "
        "shared CPU, fewer threads than cores avoids oversubscription",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="repeat ours and the references in turn, pooling the samples",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="JSON-lines output (default: benchmarks/out/hvp_<device>.jsonl)",
    )
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available")
    out_path = args.out or REPO_ROOT / "benchmarks" / "out" / f"hvp_{args.device}.jsonl"

    with tempfile.TemporaryDirectory() as tmp:
        cfg = {
            "device": args.device,
            "reps": args.reps,
            "warmup": args.warmup,
            "setup_reps": args.setup_reps,
            "rounds": args.rounds,
            "threads": args.threads,
            "tmp": tmp,
        }
        _configure(cfg)
        import linop  # noqa: F401 - loaded now, so the hash below is of the code measured

        cfg["linop_source"] = source_info(REPO_ROOT / "linop")
        prob = make_problem(args.device)
        res: dict[str, Any] = {"linop": {}, "dattri": {}, "curvlinops": {}}
        loads: dict[str, list[float]] = {side: [] for side in res}
        for r in range(args.rounds):  # interleaved rounds even out drifting load on the machine
            print(f"round {r + 1}/{args.rounds}: linop ...", flush=True)
            loads["linop"].append(os.getloadavg()[0])
            _merge(res["linop"], measure_linop(prob, cfg))
            for side, fn in (("dattri", _dattri_side), ("curvlinops", _curvlinops_side)):
                if "error" in res[side]:
                    continue
                print(f"round {r + 1}/{args.rounds}: {side} (subprocess) ...", flush=True)
                loads[side].append(os.getloadavg()[0])
                try:
                    _merge(res[side], fn(cfg))
                except ReferenceUnavailable as e:
                    res[side] = {"error": str(e)}
        checks = check(Path(tmp))

    m = machine_info()
    print(
        f"\nHVP benchmark, {problem_info()['params']:,} parameters, batch {BATCH}, float32, "
        f"{args.device}; {m['cpu']}, {m['cores']} cores, torch {m['torch']} "
        f"(torch threads: {m['torch_threads']})"
        f"{', ' + m['cuda_device'] if m['cuda_device'] else ''}"
    )
    src = cfg["linop_source"]
    print(
        f"linop: commit {str(src['commit'])[:10]}{' + uncommitted edits' if src['dirty'] else ''}"
        f" (sources sha256 {src['sha256'][:12]})"
    )
    print(
        f"medians of {args.reps} calls after {args.warmup} warm-up, x {args.rounds} "
        f"interleaved round(s); construction and first product: medians over "
        f"{args.setup_reps} fresh operators per round"
    )
    print(
        "1-min load average when each side started, per round: "
        + "; ".join(
            f"{side} {', '.join(f'{x:.2f}' for x in xs)}" for side, xs in loads.items() if xs
        )
        + "\n"
    )
    print(table(res))
    print("\ncurvlinops is forward-over-reverse (jvp of jacrev); it appears in the rev-fwd rows.")
    for side in ("dattri", "curvlinops"):
        if "error" in res[side]:
            print(f"\n{side} UNAVAILABLE: {res[side]['error']}")
    print(f"\ncorrectness (tolerance: max|a-b|/max|b| <= {TOLERANCE:g}):")
    for row in checks:
        print(
            f"  {'ok  ' if row['ok'] else 'FAIL'} {row['a']:>16} vs {row['b']:<18} "
            f"{row['vectors']:>2} vec: max rel diff {row['rel_max']:.2e}, "
            f"rel L2 {row['rel_l2']:.2e}"
        )
    path = write_jsonl(out_path, records(res, checks, cfg, loads))
    print(f"\nwrote {path}")
    return 0 if all(row["ok"] for row in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
