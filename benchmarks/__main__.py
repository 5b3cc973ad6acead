"""``python -m benchmarks run --suite cpu|gpu``: every benchmark, then the plots for the docs.

- ``cpu``: Hessian-vector products (:mod:`benchmarks.hvp`), inverse time-to-accuracy
  (:mod:`benchmarks.inverse`) and projection throughput (:mod:`benchmarks.projection`), each
  against dattri 0.2.0 (and curvlinops for HVPs) in the same run.
- ``gpu``: the same on CUDA (projection: the Triton kernel against plain torch).

JSON lines go to ``benchmarks/out/``; ``--publish`` copies them to ``docs/benchmarks/`` and draws
the plots there (:mod:`benchmarks.plots`).
"""

from __future__ import annotations

import argparse
import shutil

from benchmarks import hvp, inverse, plots, projection
from benchmarks._harness import REPO_ROOT


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__.splitlines()[0]
    )
    parser.add_argument("command", choices=["run", "plot"])
    parser.add_argument("--suite", choices=["cpu", "gpu"], default="cpu")
    parser.add_argument("--only", choices=["hvp", "inverse", "projection"], action="append")
    parser.add_argument("--publish", action="store_true", help="copy results and plots to docs/")
    args = parser.parse_args(argv)
    device = "cpu" if args.suite == "cpu" else "cuda"
    out = REPO_ROOT / "benchmarks" / "out"
    if args.command == "run":
        chosen = args.only or ["hvp", "inverse", "projection"]
        if "hvp" in chosen:
            hvp.main(["--device", device])
        if "inverse" in chosen:
            inverse.main(["--device", device])
        if "projection" in chosen:
            projection.main(["--device", device])
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
