"""The dattri compatibility layer on small models with many right-hand sides, side by side with
dattri 0.2.0 itself.

Problem: sklearn's bundled digits (1200 training / 200 test points, standardised), a multinomial
logistic regression ``nn.Linear(64, 10)`` (650 parameters, float32, dattri's default dtype)
trained to convergence. Two copies of dattri 0.2.0's package run side by side in one process,
each under its own name:

- ``dattri_ref``: dattri 0.2.0 as published;
- ``dattri_ours``: dattri 0.2.0's package with its ``dattri.func`` (hessian, projection, utils)
  replaced by this repository's — so ``dattri.algorithm`` (the attributors) runs unchanged on
  linop.

Measured: ``ihvp_at_x_cg(..., max_iter=100)`` and ``ihvp_at_x_explicit`` on 200 test gradients
at once, and ``IFAttributorExplicit`` / ``IFAttributorCG`` (a fresh attributor's ``cache`` then
``attribute`` of 300 × 50 scores), with 1 and 2 torch threads, on an idle machine and with another
process busy on one core. Each side is warmed up, then the two sides' calls alternate (``--reps``
of each, 4 times as many for calls under a second; the side going first alternating too) and
each side's median is reported: on a shared machine the load drifts over minutes, and sides
measured one after the other differed by ±25 % between runs. The answers of both sides are
compared (relative difference).

Run ``python -m benchmarks.dattri_layer`` (a few minutes); JSON lines go to
``benchmarks/out/dattri_layer_cpu.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks._harness import DATTRI_REF, REPO_ROOT, ensure_reference, write_jsonl

# The script each side runs: it prints one JSON object of timings and answers.
SCRIPT = r"""
import importlib, json, statistics, sys, time, warnings
import numpy as np, torch
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader, TensorDataset

warnings.simplefilter("ignore")
threads, reps = int(sys.argv[1]), int(sys.argv[2])
SIDES = {"dattri": "dattri_ref", "ours": "dattri_ours"}
mods = {
    side: {part: importlib.import_module(f"{pkg}.{part}")
           for part in ("func.hessian", "algorithm.influence_function", "task")}
    for side, pkg in SIDES.items()
}
torch.set_num_threads(threads)
torch.manual_seed(0)
X, y = load_digits(return_X_y=True)
X = (X - X.mean(0)) / (X.std(0) + 1e-8)
perm = np.random.default_rng(0).permutation(len(X))
Xtr, ytr = torch.tensor(X[perm[:1200]], dtype=torch.float32), torch.tensor(y[perm[:1200]])
Xte, yte = torch.tensor(X[perm[1200:1400]], dtype=torch.float32), torch.tensor(y[perm[1200:1400]])
model = torch.nn.Linear(64, 10)
opt = torch.optim.LBFGS(
    model.parameters(), max_iter=500, tolerance_grad=1e-9, line_search_fn="strong_wolfe"
)
lam = 1e-3
def objective():
    opt.zero_grad()
    penalty = sum((p ** 2).sum() for p in model.parameters())
    loss = torch.nn.functional.cross_entropy(model(Xtr), ytr) + lam / 2 * penalty
    loss.backward()
    return loss
opt.step(objective)
theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

def loss_flat(t):
    W, b = t[:640].reshape(10, 64), t[640:]
    return torch.nn.functional.cross_entropy(Xtr @ W.T + b, ytr)

def per_example(t, x, yy):
    W, b = t[:640].reshape(10, 64), t[640:]
    return torch.nn.functional.cross_entropy((x @ W.T + b).unsqueeze(0), yy.unsqueeze(0))

G = torch.func.vmap(torch.func.grad(per_example), in_dims=(None, 0, 0))(theta, Xte, yte)

def f(params, pair):
    image, label = pair
    logits = torch.func.functional_call(model, params, image)
    return torch.nn.functional.cross_entropy(logits, label.long())

train = DataLoader(TensorDataset(Xtr[:300], ytr[:300]), batch_size=100)
test = DataLoader(TensorDataset(Xte[:50], yte[:50]), batch_size=50)

def works(m):
    hessian, influence = m["func.hessian"], m["algorithm.influence_function"]
    task = m["task"].AttributionTask(loss_func=f, model=model, checkpoints=model.state_dict())
    cg = hessian.ihvp_at_x_cg(loss_flat, theta, max_iter=100, regularization=lam)
    def attributor(cls):
        def attribute():  # a fresh attributor each call: cache, then attribute
            a = cls(task=task, device=torch.device("cpu"), regularization=lam)
            a.cache(train)
            return a.attribute(train, test)
        return attribute
    return {
        "cg": lambda: cg(G),
        "explicit": lambda: hessian.ihvp_at_x_explicit(loss_flat, theta, regularization=lam)(G),
        "if_explicit": attributor(influence.IFAttributorExplicit),
        "if_cg": attributor(influence.IFAttributorCG),
    }

calls = {side: works(m) for side, m in mods.items()}
out = {side: {"dattri": mods[side]["task"].__file__} for side in SIDES}
for work in calls["ours"]:
    samples = {side: [] for side in SIDES}
    began = time.perf_counter()
    for side in SIDES:  # warm-up; the answer
        out[side][work + "_answer"] = calls[side][work]().tolist()
    short = time.perf_counter() - began < 2.0  # calls under a second: 4 times the calls
    for rep in range(4 * reps if short else reps):
        for side in (list(SIDES) if rep % 2 == 0 else list(SIDES)[::-1]):
            t = time.perf_counter()
            calls[side][work]()
            samples[side].append(time.perf_counter() - t)
    for side in SIDES:
        out[side][work + "_seconds"] = statistics.median(samples[side])
print(json.dumps(out))
"""


def _renamed(folder: Path, reference: Path, name: str, ours: bool) -> None:
    """dattri 0.2.0's package as ``name`` in ``folder`` (its absolute imports renamed), with our
    ``dattri.func`` modules in place of its own when ``ours``."""
    package = folder / name
    shutil.copytree(reference / "dattri", package)
    if ours:
        for source in (REPO_ROOT / "dattri" / "func").glob("*.py"):
            if source.name != "__init__.py":
                shutil.copy(source, package / "func" / source.name)
    for source in package.rglob("*.py"):
        text = source.read_text(encoding="utf-8")
        renamed = re.sub(r"^(\s*)(from|import) dattri\b", rf"\1\2 {name}", text, flags=re.M)
        if renamed != text:
            source.write_text(renamed, encoding="utf-8")


def _burn(stop: Any) -> None:  # pragma: no cover - runs in a child process
    x = 0
    while not stop.is_set():
        x = (x * 1103515245 + 12345) % 2**31


def _sides(path: Path, threads: int, reps: int) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(path), str(REPO_ROOT)]))
    done = subprocess.run(
        [sys.executable, "-P", "-c", SCRIPT, str(threads), str(reps)],
        env=env,
        capture_output=True,
        text=True,
        timeout=3600,
        cwd=path,
    )
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-4000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def _relative(a: list, b: list) -> float:
    import torch

    ta, tb = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    return float((ta - tb).norm() / tb.norm())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.dattri_layer", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--reps", type=int, default=3, help="timed calls per measurement")
    parser.add_argument(
        "--out", default=str(REPO_ROOT / "benchmarks" / "out" / "dattri_layer_cpu.jsonl")
    )
    args = parser.parse_args(argv)
    reference = ensure_reference(DATTRI_REF)
    records = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, ours in (("dattri_ref", False), ("dattri_ours", True)):
            _renamed(Path(tmp), reference, name, ours)
        for load in ("idle", "busy"):
            stop = multiprocessing.Event()
            burner = multiprocessing.Process(target=_burn, args=(stop,)) if load == "busy" else None
            if burner:
                burner.start()
            try:
                for threads in (1, 2):
                    both = _sides(Path(tmp), threads, args.reps)
                    ref, ours = both["dattri"], both["ours"]
                    print(f"-- {load} machine, {threads} torch thread(s)")
                    for key, label in (
                        ("cg", "ihvp_at_x_cg, 200 vectors, max_iter=100"),
                        ("explicit", "ihvp_at_x_explicit, 200 vectors"),
                        ("if_explicit", "IFAttributorExplicit 300 x 50"),
                        ("if_cg", "IFAttributorCG 300 x 50"),
                    ):
                        diff = _relative(ours[key + "_answer"], ref[key + "_answer"])
                        t_ref, t_ours = ref[key + "_seconds"], ours[key + "_seconds"]
                        print(
                            f"   {label:42s} dattri {t_ref:8.3f} s  ours {t_ours:8.3f} s  "
                            f"dattri/ours {t_ref / t_ours:5.2f}x  answers differ by {diff:.1e}"
                        )
                        records.append(
                            {
                                "benchmark": "dattri_layer",
                                "load": load,
                                "threads": threads,
                                "work": key,
                                "dattri_seconds": t_ref,
                                "ours_seconds": t_ours,
                                "relative_difference": diff,
                            }
                        )
            finally:
                if burner:
                    stop.set()
                    burner.join()
    print(f"wrote {write_jsonl(args.out, records)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
