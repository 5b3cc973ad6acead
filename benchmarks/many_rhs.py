"""Many right-hand sides: inverse-Hessian products of 100 test gradients, linop's solvers against
dattri 0.2.0, pyDVL 0.10.0 and curvlinops, in wall time and operator products to a given accuracy.

Problems (:mod:`benchmarks._mlp_problems`): the digits MLP 64-128-10 (9,610 parameters, 1,200
training points) and a 784-256-10 MLP on a synthetic teacher problem (203,530 parameters), both
trained, float64; ``A = H + λI`` with ``H`` the Hessian of the mean training loss, for
``λ = 1e-2`` and ``1e-3``; right-hand sides: the loss gradients of test points.

Accuracy: the maximum over columns of ``‖x − x*‖ / ‖x*‖`` against a tight reference ``x*`` (an
explicit float64 solve on the digits MLP; linop's CG to a relative residual of 1e-11 on the
big one). For each target (1e-2, 1e-4) every method gets the *loosest* setting of its one
tolerance knob that reaches it, searched on the same half-decade ladder (relative residual 1e-1,
3e-2, ..., 1e-10; pyDVL's rtol is the square root, as it stops at ``‖r‖ < rtol²‖b‖``; dattri's
CG takes no tolerance, so its knob is ``max_iter``; the Nyström inverse has none, so its knob is
the rank). Nothing else is tuned. Time and products include every set-up (sketches, Lanczos): the
operators' caches are cleared before each run. One run per setting (no repeats), 1 torch thread
by default, on a machine that may be shared: compare the ratios within one run.

References (each in its own subprocess; one that is missing is reported "unavailable"):

- dattri 0.2.0: ``pip install --no-deps --target .ref/dattri020 dattri==0.2.0``.
- pyDVL 0.10.0 (without touching torch): ``pip install --no-deps --target .ref/pydvl010
  pydvl==0.10.0 dask distributed toolz importlib_metadata lazy_importer tornado psutil tblib
  msgpack locket zict zarr donfig numcodecs google_crc32c pandas pyDeprecate``, or pass
  ``--pydvl DIR``.
- curvlinops: ``pip install curvlinops-for-pytorch``.

Run ``python -m benchmarks.many_rhs [--quick] [--problems digits,teacher] [--rhs-teacher K]
[--libraries ours,dattri,pydvl,curvlinops]``; JSON lines go to
``benchmarks/out/many_rhs_cpu.jsonl``.
"""

from __future__ import annotations

import argparse
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

from benchmarks import _mlp_problems as problems
from benchmarks._digits import limit_threads
from benchmarks._harness import (
    DATTRI_REF,
    REPO_ROOT,
    ReferenceUnavailable,
    run_reference,
    write_jsonl,
)
from benchmarks._rhs_references import LADDER, RANK, TARGETS, search, timed

_SCRIPT = (
    "import json, sys\n"
    "from benchmarks._rhs_references import reference_main\n"
    "print(json.dumps(reference_main(sys.argv[1], sys.argv[2])))\n"
)
NYSTROM_RANKS = [50, 100, 200, 400, 800, 1600]


def vouched(A: Any) -> Any:
    """``H + λI`` with ``H`` vouched positive semi-definite, as the Nyström methods need (the
    Hessian of a trained MLP is nearly so; the sketch warns about negative curvature it meets)."""
    return A.base.with_tags(psd=True).regularize(A.shift)


#: Our methods: name -> (knob, knobs, how to build the inverse of A for a knob value).
OURS: dict[str, tuple[str, list[Any], Any]] = {
    "linop CG": ("rtol", LADDER, lambda A, r: A.inverse("cg", rtol=r)),
    "linop block CG": ("rtol", LADDER, lambda A, r: A.inverse("cg", rtol=r, block=True)),
    f"linop CG + Arnoldi deflation (rank {RANK})": (
        "rtol",
        LADDER,
        lambda A, r: A.inverse("cg", rtol=r, preconditioner="arnoldi", rank=RANK),
    ),
    f"linop CG + Nyström (rank {RANK})": (
        "rtol",
        LADDER,
        lambda A, r: vouched(A).inverse("cg", rtol=r, preconditioner="nystrom", rank=RANK, seed=0),
    ),
    "linop block CG + Nyström (adaptive rank)": (
        "rtol",
        LADDER,
        lambda A, r: vouched(A).inverse("cg", rtol=r, preconditioner="nystrom", block=True),
    ),
    f"linop block CG + Nyström (rank {RANK})": (
        "rtol",
        LADDER,
        lambda A, r: vouched(A).inverse(
            "cg", rtol=r, preconditioner="nystrom", rank=RANK, seed=0, block=True
        ),
    ),
    "linop Nyström inverse": (
        "rank",
        NYSTROM_RANKS,
        lambda A, k: vouched(A).inverse("nystrom", rank=k, seed=0),
    ),
}

FULL = {
    "problems": {"digits": {"num_rhs": 100}, "teacher": {"num_rhs": 100, "num_train": 1000}},
    "lams": [1e-2, 1e-3],
}
QUICK = {
    "problems": {"digits": {"num_rhs": 4, "num_train": 200, "steps": 300, "hidden": 16}},
    "lams": [1e-2],
}


def _operator(problem: dict[str, Any], lam: float) -> Any:
    import linop

    model = problems.build_model(problem["sizes"], problem["state"])
    H = linop.HessianOperator.from_module(
        model, torch.nn.functional.cross_entropy, (problem["X"], problem["y"])
    )
    return H, H + lam * linop.IdentityOperator.like(H)


def reference_solutions(problem: dict[str, Any], lams: list[float]) -> dict[str, Any]:
    """``x*`` per ``λ``: an explicit float64 solve up to 20,000 parameters, else CG to 1e-11.
    Returns the solutions and how each was obtained."""
    G = problem["rhs"]
    H, _ = _operator(problem, lams[0])
    n = H.shape[0]
    refs, how = {}, {}
    if n <= 20_000:
        dense = H.to_dense()
        for lam in lams:
            M = dense + lam * torch.eye(n, dtype=dense.dtype)
            L, info = torch.linalg.cholesky_ex(M)
            if int(info) == 0:
                refs[lam], how[lam] = torch.cholesky_solve(G, L), "Cholesky (H + λI is pd)"
            else:
                refs[lam], how[lam] = torch.linalg.solve(M, G), "LU (H + λI is indefinite)"
            residual = float(((M @ refs[lam] - G).norm(dim=0) / G.norm(dim=0)).max())
            how[lam] += f", max relative residual {residual:.1e}"
    else:
        for lam in lams:
            _, A = _operator(problem, lam)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                inv = A.inverse("cg", rtol=1e-11, maxiter=20 * n)
                refs[lam] = inv @ G
            res = float(inv.info.residuals.max())
            how[lam] = f"linop CG rtol 1e-11: {inv.info.hvps} products, max residual {res:.1e}"
    return {"reference": refs, "how": how}


def run_ours(problem: dict[str, Any], lam: float) -> list[dict[str, Any]]:
    """Our methods on one problem and ``λ``: each one's trials, or why it is not available."""
    G, ref = problem["rhs"], problem["reference"][lam]
    rows = []
    for method, (knob_name, knobs, make) in OURS.items():
        H, A = _operator(problem, lam)
        try:
            make(A, knobs[0])
        except (TypeError, ValueError) as e:  # an option this branch does not have yet
            rows.append({"lam": lam, "method": method, "unavailable": f"{type(e).__name__}: {e}"})
            print(f"    {method}: not available ({e})", flush=True)
            continue
        print(f"    {method}", flush=True)

        def run(knob: Any, H: Any = H, A: Any = A, make: Any = make) -> tuple:
            H.cache.clear()  # set-up (Lanczos, Nyström sketches) counted in every run
            inv = make(A, knob)
            X, seconds = timed(lambda: inv @ G)
            return X, seconds, inv.info.hvps

        rows.append(
            {
                "lam": lam,
                "method": method,
                "knob_name": knob_name,
                "trials": search(run, knobs, ref),
            }
        )
    return rows


def run_reference_library(library: str, path: Path, pydvl: Path) -> list[dict[str, Any]]:
    paths = {"dattri": [DATTRI_REF, REPO_ROOT], "pydvl": [pydvl, REPO_ROOT]}
    pythonpath = paths.get(library, [REPO_ROOT])
    missing = [p for p in pythonpath[:-1] if not Path(p).is_dir()]
    if missing:
        raise ReferenceUnavailable(f"{missing[0]} does not exist: see this module's docstring")
    return run_reference(_SCRIPT, [library, str(path)], pythonpath, timeout=4 * 3600)["rows"]


def reached(trials: list[dict[str, Any]], target: float) -> dict[str, Any] | None:
    """The first (loosest) trial at or below ``target``."""
    return next((t for t in trials if t["max_rel_error"] <= target), None)


def summarise(rows: list[dict[str, Any]], name: str, lam: float) -> list[str]:
    """The table of one problem and ``λ``, and the verdict on the issue's targets."""
    lines = [f"\n{name}, λ = {lam:g}: seconds / operator products (setting) to reach each target"]
    lines.append(f"  {'method':46s}" + "".join(f"{'to ' + format(t, 'g'):>34s}" for t in TARGETS))
    best: dict[tuple[str, float], dict[str, Any]] = {}
    for row in rows:
        if row["lam"] != lam:
            continue
        cells = []
        for target in TARGETS:
            if "unavailable" in row:  # the reason is in the JSON record
                cells.append("not available" if row["library"] == "linop" else "unavailable")
                continue
            hit = reached(row["trials"], target)
            if hit is None:
                err = min(t["max_rel_error"] for t in row["trials"])
                cells.append(f"not reached (best {err:.1e})")
            else:
                cells.append(
                    f"{hit['seconds']:.1f} s / {hit['products']} ({row['knob_name']} "
                    f"{hit['knob']:.3g})"
                )
                best[(row["method"], target)] = hit
        lines.append(f"  {row['method']:46s}" + "".join(f"{c:>34s}" for c in cells))
    target = min(TARGETS)
    ours = {m: h for (m, t), h in best.items() if t == target and m.startswith("linop")}
    if ours:
        top_p = min(ours, key=lambda m: ours[m]["products"])
        top_t = min(ours, key=lambda m: ours[m]["seconds"])
        lines.append(f"  targets at {target:g}:")
        lines.append(f"    fewest products, ours: {top_p} ({ours[top_p]['products']})")
        lines.append(f"    fastest, ours: {top_t} ({ours[top_t]['seconds']:.1f} s)")

        def verdict(label: str, method: str, key: str, factor: float) -> None:
            other = best.get((method, target))
            if other is None:
                lines.append(f"    {label}: no figure ({method} did not reach {target:g})")
                return
            mine = ours[top_p if key == "products" else top_t][key]
            ratio = other[key] / mine
            ok = "met" if ratio >= factor else "MISSED"
            lines.append(f"    {label}: {ratio:.3f}× (target ≥ {factor:g}×) {ok}")

        verdict("plain CG products / our fewest", "linop CG", "products", 3)
        verdict("pyDVL block CG products / our fewest", "pyDVL 0.10 block CG", "products", 1.0001)
        verdict("dattri CG time / our fastest", "dattri 0.2.0 CG (ihvp_at_x_cg)", "seconds", 5)
        dvl = [m for (m, t) in best if t == target and m.startswith("pyDVL")]
        if dvl:
            fastest = min(dvl, key=lambda m: best[(m, target)]["seconds"])
            verdict(f"pyDVL's best ({fastest}) time / our fastest", fastest, "seconds", 2)
    return lines


def run(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny digits MLP, 4 RHS, one λ")
    parser.add_argument("--problems", default=None, help="comma-separated: digits,teacher")
    parser.add_argument("--rhs-teacher", type=int, default=None, help="RHS of the big problem")
    parser.add_argument("--libraries", default="ours,dattri,pydvl,curvlinops")
    parser.add_argument("--pydvl", default=str(REPO_ROOT / ".ref" / "pydvl010"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    with limit_threads(args.threads):  # restored afterwards (the tests run this in-process)
        return _measure(args)


def _measure(args: argparse.Namespace) -> dict[str, Any]:
    config = QUICK if args.quick else FULL
    chosen = args.problems.split(",") if args.problems else list(config["problems"])
    libraries = args.libraries.split(",")
    records, lines, results = [], [], {}
    for name in chosen:
        spec = dict(config["problems"][name])
        if name == "teacher" and args.rhs_teacher:
            spec["num_rhs"] = args.rhs_teacher
        print(f"{name}: training {spec}", flush=True)
        problem = problems.make_problem(name, **spec)
        refs, seconds = timed(lambda p=problem: reference_solutions(p, config["lams"]))
        problem.update(refs, lams=config["lams"], threads=args.threads)
        n, k = problem["rhs"].shape
        print(f"  {n} parameters, {k} RHS; reference in {seconds:.0f} s: {refs['how']}")
        rows = []
        for lam in config["lams"] if "ours" in libraries else []:
            print(f"  ours, λ = {lam:g}", flush=True)
            rows += [{**r, "library": "linop"} for r in run_ours(problem, lam)]
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "problem.pt"
            problems.save(problem, path)
            for library in [lib for lib in libraries if lib != "ours"]:
                print(f"  {library} (subprocess)", flush=True)
                try:
                    got = run_reference_library(library, path, Path(args.pydvl))
                    rows += [{**r, "library": library} for r in got]
                except ReferenceUnavailable as e:
                    reason = f"unavailable: {e}"
                    print(f"    {reason}", flush=True)
                    for lam in config["lams"]:
                        rows.append(
                            {
                                "lam": lam,
                                "method": library,
                                "unavailable": reason,
                                "library": library,
                            }
                        )
        info = {
            "problem": name,
            "parameters": n,
            "rhs": k,
            "train_loss": problem["train_loss"],
            "reference": {str(lam): how for lam, how in refs["how"].items()},
        }
        records += [{"benchmark": "many_rhs", **info, **row} for row in rows]
        for lam in config["lams"]:
            lines += summarise(rows, f"{name} ({n} parameters, {k} RHS)", lam)
        results[name] = {"info": info, "rows": rows}
    print("\n".join(lines))
    out = args.out or REPO_ROOT / "benchmarks" / "out" / "many_rhs_cpu.jsonl"
    print(f"wrote {write_jsonl(out, records, source=REPO_ROOT / 'linop')}")
    return {"results": results, "table": lines, "config": config}


def main(argv: list[str] | None = None) -> int:
    run(argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
