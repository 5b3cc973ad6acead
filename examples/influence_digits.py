"""Influence functions on real data: leave-one-out retraining vs inverse-Hessian predictions.

The protocol of BENCHMARKS.md, "Attribution quality on real data":

* sklearn's bundled digits (no download), standardised; 1200 training / 200 test points drawn with
  a fixed seed;
* multinomial logistic regression (64×10 weights + 10 biases, one flat float64 vector of 650)
  trained in float64 on ``mean cross-entropy + (λ/2)‖θ‖²``, ``λ = 1e-3`` (the bias is penalised
  too; see ``_digits.py`` for why), to convergence (L-BFGS, then a Newton polish to ‖∇‖ ≈ 1e-16);
* ground truth: retrain without each of 60 training points (warm-started from the full-data
  optimum) and record every test point's loss change ``ℓ_test(θ₋ⱼ) − ℓ_test(θ)``;
* prediction: ``g_testᵀ H⁻¹ g_j / n`` with ``H`` the Hessian of the full training objective at the
  optimum (``linop.HessianOperator`` of the mean loss, plus ``λ I``) and ``g`` per-example loss
  gradients (``torch.func``: vmap of grad). Sign: removing point ``j`` moves the optimum by
  ``Δθ ≈ +H⁻¹ g_j / n``, so the test loss changes by ``≈ g_testᵀ H⁻¹ g_j / n``;
* score: for each test point, the Spearman correlation across the removed points between the true
  change and the prediction; the mean over test points is reported.

The retrained model minimises the mean over the n − 1 remaining points, so a Newton step from θ
gives ``Δθ ≈ H⁻¹ (g_j + λθ) / (n − 1)``: besides the influence term there is a term common to every
removed point (renormalising the data mean to n − 1 points weakens the penalty relative to the
data). For a test point it shifts all true changes by the same ``s = g_testᵀ H⁻¹ λθ / (n − 1)``,
which cannot change a Spearman correlation across removed points but dominates the smallest
changes (measured on the default run: median |s| 4.6e-6, median |true change| 5.8e-6). The plot
and the ``diagnostics`` of :func:`main` show the prediction both raw and plus ``s``; with ``s`` the
median relative error falls from ≈ 1 to ≈ 1e-2 — a check of the sign convention and of the
ground truth.

Inverse methods live in :data:`METHODS`, a table of ``name -> f(A, G) -> A⁻¹ G`` with ``A`` the
:class:`linop.RegularizedOperator` ``H_data + λ I`` and ``G`` the training gradients as columns;
add an entry to compare another method.

Run ``python examples/influence_digits.py`` (a few minutes on 2 CPU cores; ``--help`` for
options), or call :func:`main` with a list of arguments; it returns the results as a dict.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse.linalg as spla
import scipy.stats
import torch
from tqdm.auto import tqdm

_HERE = Path(__file__).resolve().parent
for _p in (_HERE, _HERE.parent):  # _digits next to this file; linop from the checkout if needed
    if str(_p) not in sys.path:
        sys.path.insert(0 if _p == _HERE else len(sys.path), str(_p))

from _digits import (  # noqa: E402
    example_grads,
    example_losses,
    limit_threads,
    load_split,
    logits,
    regularized_hessian,
    train,
)

from linop import RegularizedOperator  # noqa: E402

# ---------------------------------------------------------------------------------------------
# Inverse methods: (A = H_data + λI, G with one right-hand side per column) -> A⁻¹ G


def solve_explicit(A: RegularizedOperator, G: torch.Tensor) -> torch.Tensor:
    """Materialise ``A`` (650 HVPs, batched) and solve densely."""
    return torch.linalg.solve(A.to_dense(), G)


def solve_cg_scipy(A: RegularizedOperator, G: torch.Tensor, rtol: float = 1e-10) -> torch.Tensor:
    """scipy's conjugate gradients on ``A.to_scipy()``, one column at a time, to ``rtol``."""
    op = A.to_scipy()
    out = np.empty(tuple(G.shape))
    for k in tqdm(range(G.shape[1]), desc="cg (scipy) columns", leave=False):
        x, info = spla.cg(op, G[:, k].numpy(), rtol=rtol, atol=0.0, maxiter=20 * A.shape[0])
        if info != 0:
            raise RuntimeError(f"scipy cg did not converge on column {k} (info={info})")
        out[:, k] = x
    return torch.from_numpy(out).to(G.dtype)


InverseMethod = Callable[[RegularizedOperator, torch.Tensor], torch.Tensor]

#: name -> method; the table printed by :func:`main` has one row per entry, in this order.
METHODS: dict[str, InverseMethod] = {
    "explicit": solve_explicit,
    "cg (scipy)": solve_cg_scipy,
}

# ---------------------------------------------------------------------------------------------

DEFAULTS = dict(num_train=1200, num_test=200, num_removed=60)
QUICK = dict(num_train=300, num_test=50, num_removed=20)
LAMBDA = 1e-3


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Leave-one-out retraining vs influence-function predictions on sklearn digits."
    )
    p.add_argument(
        "--num-removed",
        type=int,
        default=None,
        help=f"training points to retrain without (default {DEFAULTS['num_removed']}; "
        f"{QUICK['num_removed']} with --quick)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the split and the removed points")
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"a tiny configuration for tests: {QUICK['num_train']} training / "
        f"{QUICK['num_test']} test points, {QUICK['num_removed']} removed",
    )
    p.add_argument(
        "--methods",
        default=",".join(METHODS),
        help=f"comma-separated inverse methods to compare (default: all of {', '.join(METHODS)})",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch and BLAS threads (default 1: the problem is too small to gain from more; "
        "see _digits.limit_threads)",
    )
    p.add_argument("--plot", default="influence_digits.png", help="where to write the plot")
    p.add_argument("--no-plot", action="store_true", help="do not write a plot")
    args = p.parse_args(argv)
    config = QUICK if args.quick else DEFAULTS
    args.num_train, args.num_test = config["num_train"], config["num_test"]
    if args.num_removed is None:
        args.num_removed = config["num_removed"]
    if args.threads < 1:
        p.error("--threads must be positive")
    if not 2 <= args.num_removed <= args.num_train:
        p.error(f"--num-removed must be between 2 and {args.num_train}")
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
        p.error(f"unknown method(s) {unknown}; known: {list(METHODS)}")
    return args


def spearman_per_row(actual: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """Spearman correlation of each row of ``actual`` with the same row of ``predicted``."""
    return np.array([scipy.stats.spearmanr(a, p).statistic for a, p in zip(actual, predicted)])


def leave_one_out(
    split: Any, theta: torch.Tensor, removed: np.ndarray
) -> tuple[np.ndarray, dict[str, float]]:
    """True test-loss changes ``(num_test, num_removed)`` from warm-started retraining."""
    X, y = split.X_train, split.y_train
    base = example_losses(theta, split.X_test, split.y_test)
    changes = np.empty((split.X_test.shape[0], len(removed)))
    worst, iters = 0.0, []
    for k, j in enumerate(tqdm(removed, desc="retraining without each point")):
        keep = torch.ones(X.shape[0], dtype=torch.bool)
        keep[int(j)] = False
        theta_j, info = train(X[keep], y[keep], LAMBDA, theta0=theta)
        changes[:, k] = (example_losses(theta_j, split.X_test, split.y_test) - base).numpy()
        worst, iters = max(worst, info.grad_norm), iters + [info.lbfgs_iterations]
    return changes, {"max_grad_norm": worst, "mean_lbfgs_iterations": float(np.mean(iters))}


def write_plot(
    path: str,
    actual: np.ndarray,
    predicted: np.ndarray,
    shift: np.ndarray,
    rho: np.ndarray,
    method: str,
) -> None:
    """Three panels: pooled raw predictions, pooled predictions plus the per-test-point common
    shift ``s``, and the test point with the median Spearman correlation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def diagonal(ax: Any, a: np.ndarray, p: np.ndarray) -> None:
        lo, hi = min(a.min(), p.min()), max(a.max(), p.max())
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8, label="y = x")
        ax.legend(loc="upper left")

    T, R = actual.shape
    fig, axes = plt.subplots(1, 3, figsize=(16, 5))
    panels = [
        (predicted, f"{method}: g_testᵀ H⁻¹ g_j / n"),
        (predicted + shift[:, None], f"{method} + common shift s (n−1 renormalisation)"),
    ]
    for ax, (p, label) in zip(axes[:2], panels):
        ax.scatter(actual.ravel(), p.ravel(), s=3, alpha=0.3)
        diagonal(ax, actual, p)
        ax.set_xscale("symlog", linthresh=1e-5)
        ax.set_yscale("symlog", linthresh=1e-5)
        ax.set_xlabel("actual test-loss change (leave-one-out retraining)")
        ax.set_ylabel("predicted change")
        ax.set_title(f"{label}\nall {T} test × {R} removed points", fontsize=10)

    t = int(np.argsort(rho)[T // 2])  # the test point with the median Spearman correlation
    ax = axes[2]
    ax.scatter(actual[t], predicted[t], s=14, label="raw")
    ax.scatter(actual[t], predicted[t] + shift[t], s=14, marker="x", label="+ s")
    diagonal(ax, actual[t], predicted[t])
    ax.set_xlabel("actual test-loss change")
    ax.set_ylabel("predicted change")
    ax.set_title(f"test point {t} (median Spearman {rho[t]:.3f}), {R} removed points",
                 fontsize=10)
    fig.suptitle(f"Influence on sklearn digits: mean Spearman {np.mean(rho):.4f} ({method})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the experiment; print the table and return the results.

    Returns a dict with ``config``, ``train`` (full-data fit), ``retrain`` (seconds and
    convergence), ``actual`` (true changes, ``(num_test, num_removed)``), ``methods`` (per method:
    ``seconds``, ``mean_spearman``, ``spearman`` per test point, ``predicted``), ``table`` (rows
    ``(method, seconds, mean_spearman)``), ``diagnostics`` (for the first method: pooled Pearson
    correlation, median relative errors raw and with the common shift ``s``), ``plot`` (the path
    written, or None) and ``seconds`` (the whole run).
    """
    args = parse_args(argv)
    with limit_threads(args.threads):
        return _run(args)


def _run(args: argparse.Namespace) -> dict[str, Any]:
    t_start = time.perf_counter()
    split = load_split(args.num_train, args.num_test, args.seed)
    n = split.X_train.shape[0]
    removed = np.sort(
        np.random.default_rng(args.seed + 1).choice(n, size=args.num_removed, replace=False)
    )

    theta, info = train(split.X_train, split.y_train, LAMBDA)
    accuracy = float(logits(theta, split.X_test).argmax(1).eq(split.y_test).double().mean())
    print(
        f"digits: {n} train / {split.X_test.shape[0]} test, {args.num_removed} removed, "
        f"seed {args.seed}; full fit in {info.seconds:.1f} s "
        f"({info.lbfgs_iterations} L-BFGS iterations + {info.newton_steps} Newton, "
        f"‖∇‖ = {info.grad_norm:.1e}), test accuracy {accuracy:.3f}"
    )

    t0 = time.perf_counter()
    actual, retrain_info = leave_one_out(split, theta, removed)
    retrain_seconds = time.perf_counter() - t0

    A = regularized_hessian(theta, split.X_train, split.y_train, LAMBDA)
    G_train = example_grads(theta, split.X_train[removed], split.y_train[removed])  # (650, R)
    G_test = example_grads(theta, split.X_test, split.y_test)  # (650, T)

    results: dict[str, dict[str, Any]] = {}
    for name in tqdm(args.methods, desc="inverse methods", leave=False):
        t0 = time.perf_counter()
        solved = METHODS[name](A, G_train)
        seconds = time.perf_counter() - t0
        predicted = (G_test.T @ solved).numpy() / n  # (T, R)
        rho = spearman_per_row(actual, predicted)
        results[name] = {
            "seconds": seconds,
            "mean_spearman": float(np.mean(rho)),
            "spearman": rho,
            "predicted": predicted,
        }

    # The term common to all removed points (see the module docstring), for the diagnostics.
    first = args.methods[0]
    s_dir = METHODS[first](A, (LAMBDA * theta)[:, None])[:, 0]
    shift = (G_test.T @ s_dir).numpy() / (n - 1)
    pred = results[first]["predicted"]
    rel = lambda p: float(np.median(np.abs(actual - p) / np.abs(actual)))  # noqa: E731
    diagnostics = {
        "method": first,
        "shift": shift,
        "pearson_pooled": float(np.corrcoef(actual.ravel(), pred.ravel())[0, 1]),
        "median_rel_error": rel(pred),
        "median_rel_error_with_shift": rel(pred + shift[:, None]),
    }

    table = [(m, r["seconds"], r["mean_spearman"]) for m, r in results.items()]
    width = max(len("method"), *(len(m) for m in results))
    print(f"\nleave-one-out retraining: {retrain_seconds:.1f} s "
          f"(max final ‖∇‖ {retrain_info['max_grad_norm']:.1e})")
    print(f"{'method':<{width}}  {'seconds':>8}  {'mean Spearman':>13}")
    for m, sec, rho in table:
        print(f"{m:<{width}}  {sec:8.2f}  {rho:13.4f}")

    print(
        f"{first}: pooled Pearson {diagnostics['pearson_pooled']:.4f}; median relative error "
        f"{diagnostics['median_rel_error']:.3f} raw, "
        f"{diagnostics['median_rel_error_with_shift']:.4f} with the common shift"
    )

    plot = None
    if not args.no_plot:
        write_plot(args.plot, actual, pred, shift, results[first]["spearman"], first)
        plot = args.plot
        print(f"plot: {plot}")
    total = time.perf_counter() - t_start
    print(f"total: {total:.1f} s")

    return {
        "config": {
            "num_train": n,
            "num_test": int(split.X_test.shape[0]),
            "num_removed": args.num_removed,
            "seed": args.seed,
            "lambda": LAMBDA,
            "removed": removed,
        },
        "train": {"seconds": info.seconds, "grad_norm": info.grad_norm, "test_accuracy": accuracy},
        "retrain": {"seconds": retrain_seconds, **retrain_info},
        "actual": actual,
        "methods": results,
        "table": table,
        "diagnostics": diagnostics,
        "plot": plot,
        "seconds": total,
    }


if __name__ == "__main__":
    main(sys.argv[1:])
