"""Gauss-Newton and empirical-Fisher products: linop against curvlinops, side by side in one run.

The problem of :mod:`benchmarks.hvp` (MLP 784-512-512-10, tanh, cross-entropy, a batch of 1024
random examples, float32, :func:`benchmarks.hvp.make_problem`). Measured in turns, in one process,
``--rounds`` times (samples pooled, medians reported):

- the gradient of the mean loss (``torch.func.grad``), the reference cost;
- linop ``GGNOperator.from_module(model, CrossEntropyLoss(), (X, y))``: one product ``G @ v``
  and 16 (``G @ V``), after its first product (the linearisation, kept);
- plain ``torch.func`` ``jvp`` then the closed-form output Hessian then ``vjp`` (no caching);
- curvlinops 3 ``GGNLinearOperator`` (one and 16);
- linop ``FisherOperator`` (empirical) and curvlinops ``EFLinearOperator`` (one and 16).

The products are checked against each other (relative error) and curvlinops' empirical Fisher is
compared with ours to state its scaling convention. curvlinops is imported from this interpreter
(``pip install curvlinops-for-pytorch``; it is not in the test extra: its backpack dependency
pulls torchvision and a new torch); without it, its rows are reported missing.

Usage::

    python -m benchmarks.ggn [--rounds N] [--reps N] [--threads N] [--out FILE]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence
from itertools import pairwise
from typing import Any

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, jvp, vjp

from benchmarks._harness import REPO_ROOT, machine_info, time_samples, write_jsonl
from benchmarks.hvp import BATCH, SIZES, make_problem
from linop import FisherOperator, GGNOperator

DEFAULT_OUT = REPO_ROOT / "benchmarks" / "out" / "ggn_cpu.jsonl"


def build_model(theta: torch.Tensor) -> torch.nn.Module:
    """The tanh MLP of :data:`SIZES` holding the flat parameters ``theta`` (weight, bias per
    layer: the order of ``named_parameters()``)."""
    layers: list[torch.nn.Module] = []
    for fan_in, fan_out in pairwise(SIZES):
        layers += [torch.nn.Linear(fan_in, fan_out), torch.nn.Tanh()]
    model = torch.nn.Sequential(*layers[:-1]).to(theta.device, theta.dtype)
    torch.nn.utils.vector_to_parameters(theta, model.parameters())
    return model.eval()


def flat_outputs(model: torch.nn.Module, X: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """The model's outputs on ``X`` as a function of its flat parameters."""
    names = [k for k, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]

    def outputs(t: torch.Tensor) -> torch.Tensor:
        pieces = t.split([s.numel() for s in shapes])
        params = {k: p.view(s) for k, p, s in zip(names, pieces, shapes, strict=True)}
        return functional_call(model, params, (X,))

    return outputs


def plain_ggn(
    outputs: Callable[[torch.Tensor], torch.Tensor], theta: torch.Tensor
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``v ↦ Jᵀ H_out J v`` by ``torch.func``: a ``jvp`` and a ``vjp`` per product, nothing
    kept between products (cross-entropy's output Hessian in closed form)."""

    def product(v: torch.Tensor) -> torch.Tensor:
        out, Jv = jvp(outputs, (theta,), (v,))
        p = torch.softmax(out, -1)
        HJv = (p * Jv - p * (p * Jv).sum(-1, keepdim=True)) / out.shape[0]
        return vjp(outputs, theta)[1](HJv)[0]

    return product


def run(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.ggn", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    prob = make_problem("cpu")
    theta, X, y, v, V = (prob[k] for k in ("theta", "X", "y", "v", "V"))
    model = build_model(theta)
    loss_fn = torch.nn.CrossEntropyLoss()
    outputs = flat_outputs(model, X)

    def flat_loss(t: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(outputs(t), y)

    timed: dict[str, Callable[[], Any]] = {"gradient": lambda: grad(flat_loss)(theta)}
    time_samples(timed["gradient"], warmup=2, reps=1)  # torch's first-call costs, outside set-up
    t0 = time.perf_counter()
    G = GGNOperator.from_module(model, loss_fn, (X, y))
    G @ V, G @ V  # 32 columns: the pullback is kept and the forward map linearised (steady state)
    setup = {"linop GGN (to steady state)": time.perf_counter() - t0}
    timed["linop GGN 1"] = lambda: G @ v
    timed["linop GGN 16"] = lambda: G @ V
    plain = plain_ggn(outputs, theta)
    timed["plain jvp+vjp 1"] = lambda: plain(v)
    Fo = FisherOperator.from_module(model, loss_fn, (X, y))
    t0 = time.perf_counter()
    Fo @ V, Fo @ V
    setup["linop Fisher (to steady state)"] = time.perf_counter() - t0
    timed["linop EF 1"] = lambda: Fo @ v
    timed["linop EF 16"] = lambda: Fo @ V

    curvlinops_version = None
    try:
        import curvlinops
        from curvlinops import EFLinearOperator, GGNLinearOperator

        curvlinops_version = getattr(curvlinops, "__version__", "3.x")
        params = list(model.parameters())
        common = dict(check_deterministic=False, num_data=BATCH)
        t0 = time.perf_counter()
        CG = GGNLinearOperator(model, loss_fn, params, [(X, y)], **common)
        CG @ v
        setup["curvlinops GGN"] = time.perf_counter() - t0
        CE = EFLinearOperator(model, loss_fn, params, [(X, y)], **common)
        timed["curvlinops GGN 1"] = lambda: CG @ v
        timed["curvlinops GGN 16"] = lambda: CG @ V
        timed["curvlinops EF 1"] = lambda: CE @ v
        timed["curvlinops EF 16"] = lambda: CE @ V
    except ImportError as error:
        print(f"curvlinops unavailable ({error}): its rows are missing")

    samples: dict[str, list[float]] = {k: [] for k in timed}
    for _ in range(args.rounds):  # in turns: drifting load on a shared machine hits every row
        for name, fn in timed.items():
            samples[name] += time_samples(fn, warmup=1, reps=args.reps)
    median = {k: statistics.median(s) for k, s in samples.items()}
    g = median["gradient"]

    # agreement
    ref = G @ v
    checks = {"plain jvp+vjp vs linop GGN": float((plain(v) - ref).norm() / ref.norm())}
    ef = Fo @ v
    if curvlinops_version is not None:
        checks["curvlinops GGN vs linop GGN"] = float((CG @ v - ref).norm() / ref.norm())
        cef = CE @ v
        scale = float(cef @ ef / (ef @ ef))
        checks["curvlinops EF / linop EF (scale)"] = scale
        checks["curvlinops EF vs scale * linop EF"] = float((cef - scale * ef).norm() / cef.norm())

    print(
        f"GGN and empirical-Fisher products, MLP {'-'.join(map(str, SIZES))} "
        f"({theta.numel():,} parameters), batch {BATCH}, float32, {args.threads} thread(s), "
        f"{args.rounds} rounds × {args.reps} reps; shared machine (load "
        f"{machine_info().get('load_avg_1m')})"
    )
    print(f"{'product':<22}{'median ms':>12}{'× gradient':>12}")
    for name, t in median.items():
        print(f"{name:<22}{1e3 * t:>12.2f}{t / g:>12.2f}")
    for a, b in (
        ("linop GGN 1", "curvlinops GGN 1"),
        ("linop GGN 16", "curvlinops GGN 16"),
        ("linop EF 1", "curvlinops EF 1"),
        ("linop EF 16", "curvlinops EF 16"),
    ):
        if b in median:
            print(f"{a} / {b}: {median[a] / median[b]:.2f}")
    print(
        "set-up (first product included): "
        + ", ".join(f"{k} {1e3 * s:.0f} ms" for k, s in setup.items())
    )
    print("agreement: " + ", ".join(f"{k} {val:.2e}" for k, val in checks.items()))
    records = [
        {
            "name": k,
            "median_s": median[k],
            "ratio_to_gradient": median[k] / g,
            "samples": samples[k],
        }
        for k in median
    ]
    records.append(
        {
            "name": "checks",
            **checks,
            "setup_s": setup,
            "curvlinops": curvlinops_version,
            "threads": args.threads,
        }
    )
    if args.out:
        write_jsonl(args.out, records)
    return {"median": median, "checks": checks, "setup": setup}


def main(argv: Sequence[str] | None = None) -> int:
    run(argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
