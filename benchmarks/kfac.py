"""K-FAC and EK-FAC as preconditioners of CG on the Hessian, and the cost of fitting them.

Problems (:mod:`benchmarks._mlp_problems`, as :mod:`benchmarks.many_rhs`): the digits MLP
64-128-10 (9,610 parameters, 1,200 training points, 100 test gradients) and the teacher MLP
784-256-10 (203,530 parameters, 1,000 training points; 10 test gradients by default: its
reference solve is CG to 1e-11). ``A = H + λI``, ``H`` the Hessian of the mean training loss,
``λ = 1e-2`` and ``1e-3``. Methods: plain CG, block CG, and both preconditioned by
``(K + λI)⁻¹`` for K-FAC (type-2, MC with one sample) and EK-FAC (type-2) of the same model and
data, inverted in closed form. Every method gets the loosest relative-residual tolerance of the
ladder (1e-1, 3e-2, ... 1e-10) that reaches each accuracy target (max over columns of
``‖x − x*‖ / ‖x*‖`` ≤ 1e-2, 1e-4), as in :mod:`benchmarks.many_rhs`. Products are
Hessian-vector products (columns counted); the preconditioner makes none, but fitting it costs
passes over the data, counted in the time ("fit" column: K-FAC one pass, EK-FAC two).

``--curvlinops`` also times curvlinops' ``KFACLinearOperator`` (type-2, joint weight and bias)
on the same model and data: fitting, and one product with 100 columns, next to ours.

Run ``python -m benchmarks.kfac [--quick] [--problems digits,teacher] [--rhs-teacher K]
[--curvlinops]``; JSON lines go to ``benchmarks/out/kfac_cpu.jsonl``.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch

from benchmarks import _mlp_problems as problems
from benchmarks._digits import limit_threads
from benchmarks._harness import REPO_ROOT, write_jsonl
from benchmarks._rhs_references import LADDER, TARGETS, search, timed
from benchmarks.many_rhs import reference_solutions

FULL = {
    "problems": {"digits": {"num_rhs": 100}, "teacher": {"num_rhs": 10, "num_train": 1000}},
    "lams": [1e-2, 1e-3],
}
QUICK = {
    "problems": {"digits": {"num_rhs": 4, "num_train": 200, "steps": 300, "hidden": 16}},
    "lams": [1e-2],
}

#: The preconditioners: name -> (operator class name, kind).
PRECONDITIONERS = {
    "K-FAC type-2": ("KFACOperator", "type2"),
    "K-FAC mc": ("KFACOperator", "mc"),
    "EK-FAC type-2": ("EKFACOperator", "type2"),
}


def _model(problem: dict[str, Any]) -> torch.nn.Module:
    return problems.build_model(problem["sizes"], problem["state"]).eval()


def fit(problem: dict[str, Any], name: str) -> tuple[Any, float]:
    """The K-FAC-type operator ``name`` of the problem's model and data, and its fitting time."""
    import linop

    cls, kind = PRECONDITIONERS[name]
    make = getattr(linop, cls).from_module
    data = (problem["X"], problem["y"])
    return timed(lambda: make(_model(problem), torch.nn.CrossEntropyLoss(), data, kind=kind))


def run_problem(problem: dict[str, Any], lam: float) -> list[dict[str, Any]]:
    """Every method's trials at one ``λ``."""
    import linop

    G, ref = problem["rhs"], problem["reference"][lam]
    H = linop.HessianOperator.from_module(
        _model(problem), torch.nn.functional.cross_entropy, (problem["X"], problem["y"])
    )
    A = H.regularize(lam)
    rows = []
    fitted = {name: fit(problem, name) for name in PRECONDITIONERS}
    methods: dict[str, tuple[Any, float]] = {"CG": (None, 0.0)}
    for name, (K, seconds) in fitted.items():
        methods[f"CG + {name}"] = (K.regularize(lam).inverse(), seconds)
    for method, (M, fit_seconds) in list(methods.items()):
        for block in (False, True):
            label = ("block " if block else "") + method
            print(f"    {label}", flush=True)

            def run(rtol: float, M: Any = M, block: bool = block) -> tuple:
                inv = A.inverse("cg", rtol=rtol, preconditioner=M, block=block)
                X, seconds = timed(lambda: inv @ G)
                return X, seconds, inv.info.hvps

            trials = search(run, LADDER, ref)
            rows.append({"lam": lam, "method": label, "fit_seconds": fit_seconds, "trials": trials})
    return rows


def curvlinops_costs(problem: dict[str, Any]) -> dict[str, Any]:
    """Fitting time and one 100-column product: linop's K-FAC against curvlinops'."""
    import linop

    try:
        from curvlinops import KFACLinearOperator
    except ImportError as e:
        return {"unavailable": f"curvlinops is not installed ({e})"}
    model, data = _model(problem), (problem["X"], problem["y"])
    loss = torch.nn.CrossEntropyLoss()
    params = [p for p in model.parameters() if p.requires_grad]
    n = sum(p.numel() for p in params)
    V = torch.randn(n, 100, dtype=torch.float64, generator=torch.Generator().manual_seed(0))

    def theirs() -> Any:
        K = KFACLinearOperator(
            model, loss, params, [data], fisher_type="type-2", separate_weight_and_bias=False,
            check_deterministic=False,
        )  # fmt: skip
        K.compute_kronecker_factors() if hasattr(K, "compute_kronecker_factors") else None
        return K

    ours_op, ours_fit = timed(
        lambda: linop.KFACOperator.from_module(model, loss, data, kind="type2")
    )
    their_op, their_fit = timed(theirs)
    _, ours_apply = timed(lambda: ours_op @ V)
    _, their_apply = timed(lambda: their_op @ V)
    return {
        "parameters": n,
        "ours_fit_seconds": ours_fit,
        "curvlinops_fit_seconds": their_fit,
        "ours_product_seconds": ours_apply,
        "curvlinops_product_seconds": their_apply,
    }


def summarise(rows: list[dict[str, Any]], title: str, lam: float) -> list[str]:
    lines = [f"\n{title}, λ = {lam:g}: seconds (fit + solve) / Hessian products to reach"]
    lines.append(f"  {'method':34s}" + "".join(f"{'to ' + format(t, 'g'):>26s}" for t in TARGETS))
    base: dict[float, int] = {}
    for row in [r for r in rows if r["lam"] == lam]:
        cells = []
        for t in TARGETS:
            hit = next((x for x in row["trials"] if x["max_rel_error"] <= t), None)
            if hit is None:
                cells.append(f"{'not reached':>26s}")
                continue
            if row["method"] == "CG":
                base[t] = hit["products"]
            share = f" ({hit['products'] / base[t]:.2f}×)" if t in base else ""
            seconds = row["fit_seconds"] + hit["seconds"]
            cells.append(f"{seconds:8.2f} s {hit['products']:6d}{share:>9s}")
        lines.append(f"  {row['method']:34s}" + "".join(cells))
    return lines


def run(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny digits MLP, 4 RHS, one λ")
    parser.add_argument("--problems", default=None, help="comma-separated: digits,teacher")
    parser.add_argument("--rhs-teacher", type=int, default=None, help="RHS of the big problem")
    parser.add_argument("--curvlinops", action="store_true", help="also time curvlinops' K-FAC")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    with limit_threads(args.threads):
        return _measure(args)


def _measure(args: argparse.Namespace) -> dict[str, Any]:
    config = QUICK if args.quick else FULL
    chosen = args.problems.split(",") if args.problems else list(config["problems"])
    records, lines, results = [], [], {}
    for name in chosen:
        spec = dict(config["problems"][name])
        if name == "teacher" and args.rhs_teacher:
            spec["num_rhs"] = args.rhs_teacher
        print(f"{name}: training {spec}", flush=True)
        problem = problems.make_problem(name, **spec)
        refs, seconds = timed(lambda p=problem: reference_solutions(p, config["lams"]))
        problem.update(refs)
        n, k = problem["rhs"].shape
        print(f"  {n} parameters, {k} RHS; reference in {seconds:.0f} s: {refs['how']}")
        rows = []
        for lam in config["lams"]:
            print(f"  λ = {lam:g}", flush=True)
            rows += run_problem(problem, lam)
        costs = curvlinops_costs(problem) if args.curvlinops else {}
        if costs:
            lines.append(f"\n{name}: fitting K-FAC type-2 and one 100-column product: {costs}")
        for lam in config["lams"]:
            lines += summarise(rows, f"{name} ({n} parameters, {k} RHS)", lam)
        records += [{"benchmark": "kfac", "problem": name, "parameters": n, **r} for r in rows]
        if costs:
            records.append({"benchmark": "kfac", "problem": name, "curvlinops": costs})
        results[name] = {"rows": rows, "costs": costs}
    print("\n".join(lines))
    out = args.out or REPO_ROOT / "benchmarks" / "out" / "kfac_cpu.jsonl"
    print(f"wrote {write_jsonl(out, records, source=REPO_ROOT / 'linop')}")
    return {"results": results, "table": lines}


def main(argv: list[str] | None = None) -> int:
    run(argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
