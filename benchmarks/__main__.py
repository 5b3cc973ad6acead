"""``python -m benchmarks run --suite cpu|gpu``: every benchmark, then the plots for the docs.

- ``cpu``: Hessian-vector products (:mod:`benchmarks.hvp`), inverse time-to-accuracy
  (:mod:`benchmarks.inverse`) and projection throughput (:mod:`benchmarks.projection`), each
  against dattri 0.2.0 (and curvlinops for HVPs) in the same run; then attribution quality on
  real data (:mod:`benchmarks.attribution`, about a minute): leave-one-out retraining on
  sklearn's digits against the predictions of 11 inverse methods.
- ``gpu``: the same on CUDA (projection: the Triton kernel against plain torch), without the
  attribution benchmark (a float64 650-parameter model: a CPU job).

``--only NAME`` (repeatable) runs just the named ones, e.g. ``--only attribution``; two CPU
benchmarks run only when named: ``many_rhs`` (:mod:`benchmarks.many_rhs`, inverse-Hessian
products of 100 right-hand sides against dattri, pyDVL and curvlinops, the better part of an hour)
and ``estimators`` (:mod:`benchmarks.estimators`, trace, diagonal and spectral density).

JSON lines go to ``benchmarks/out/``; ``--publish`` copies them to ``docs/benchmarks/`` and draws
the plots there (:mod:`benchmarks.plots`).
"""

from __future__ import annotations

import argparse
import shutil

from benchmarks import attribution, estimators, hvp, inverse, many_rhs, plots, projection
from benchmarks._harness import REPO_ROOT


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__.splitlines()[0]
    )
    parser.add_argument("command", choices=["run", "plot"])
    parser.add_argument("--suite", choices=["cpu", "gpu"], default="cpu")
    parser.add_argument(
        "--only",
        choices=["hvp", "inverse", "projection", "attribution", "many_rhs", "estimators"],
        action="append",
    )
    parser.add_argument("--publish", action="store_true", help="copy results and plots to docs/")
    args = parser.parse_args(argv)
    device = "cpu" if args.suite == "cpu" else "cuda"
    out = REPO_ROOT / "benchmarks" / "out"
    if args.command == "run":
        default = ["hvp", "inverse", "projection"] + (["attribution"] if device == "cpu" else [])
        chosen = args.only or default
        if "attribution" in chosen and device != "cpu":
            parser.error("attribution runs on the CPU only: use --suite cpu")
        if "hvp" in chosen:
            hvp.main(["--device", device])
        if "inverse" in chosen:
            inverse.main(["--device", device])
        if "projection" in chosen:
            projection.main(["--device", device])
        if "attribution" in chosen:
            attribution.main([])
        if "many_rhs" in chosen:
            many_rhs.main([])
        if "estimators" in chosen:
            estimators.main([])
    if args.publish or args.command == "plot":
        docs = REPO_ROOT / "docs" / "benchmarks"
        docs.mkdir(parents=True, exist_ok=True)
        for path in out.glob(f"*_{device}.jsonl"):
            shutil.copy(path, docs / path.name)
        for png in plots.draw(docs, device):
            print(f"plot: {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
