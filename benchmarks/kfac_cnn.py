"""EK-FAC and K-FAC of a small residual CNN: linop against kronfluence 1.0.1, side by side.

Problem: sklearn's bundled 8×8 digits (:func:`benchmarks._digits.load_split`, seed 0: 1,200
training and 200 test images, standardised with the training set's pixel statistics, 1 channel),
and a ResNet-style CNN in float64 (:class:`ResNet`): a 3×3 ``Conv2d`` stem to ``c = 16``
channels, two residual blocks ``relu(x + conv2(relu(conv1(x))))`` of 3×3 ``Conv2d`` layers with
padding 1 (so every convolution has ``R = 64`` output locations), global average pooling and a
``Linear(c, 10)`` head; no batch norm; every layer with a bias (9,610 parameters). Trained in
float64 by 400 Adam steps (learning rate 3e-3, minibatches of 128 drawn with replacement) on the
mean cross-entropy: train accuracy 0.942, test 0.900.

Curvature: the empirical Fisher of the mean training loss, ``(1/N) Σ_n ∇ℓ_n ∇ℓ_nᵀ``, and the MC
Fisher, approximated by linop (``EKFACOperator`` / ``KFACOperator.from_module(model,
CrossEntropyLoss(), batches, kind="empirical" | "mc")``, ``mc_samples=1``) and by kronfluence
1.0.1 (strategies ``"ekfac"`` / ``"kfac"``) on the same model, data and damping ``λ = 1e-3``.
Scores: ``g_testᵀ (C + λI)⁻¹ g_train`` for 20 test points × all 1,200 training points, ``g``
the per-example loss gradients (linop: ``module_per_example_gradients``, ``named_parameters``
order, and the closed-form inverse ``C.regularize(λ).inverse()``; kronfluence:
``compute_pairwise_scores`` with the test loss as measurement).

kronfluence runs in one subprocess (``PYTHONPATH`` = ``.ref/kronfluence101`` only, as in
:mod:`benchmarks._kfac_references`; the subprocess runs this file as a script), everything in
float64 (``FactorArguments``' and ``ScoreArguments``' dtypes), ``damping_factor = λ``
(absolute), ``covariance_max_examples = lambda_max_examples = None``, summed losses (so one
example's loss gradient is its own), ``use_empirical_fisher=True`` for the empirical rows; its MC
rows draw one label per example and pass (``torch.manual_seed(0)``), as linop's ``kind="mc"``
does (seed 0; other draws). Both sides fit on batches of 200 and use one thread.

Times (seconds, the fastest of 3 runs): "fit" is the factors, their eigendecompositions and, for
EK-FAC, the eigenvalue correction (linop: ``from_module``; kronfluence: ``fit_all_factors``,
which also writes the factors to a temporary folder); "score" is the per-example gradients of
the scored training and test points, the damped inverse and the score matrix (linop: the
gradients, ``regularize(λ).inverse()`` applied to the test gradients, one product; kronfluence:
``compute_pairwise_scores``, which reads the factors back, and ``load_pairwise_scores``).
Neither includes imports, the subprocess's start-up or the model's construction.

Agreement: ``‖S_kron − S_linop‖_F / ‖S_linop‖_F``, the largest entry difference over the largest
entry, the Spearman correlation of all entries and its mean over the test points (rows).

Convention found (the factor table it prints): kronfluence 1.0.1 averages a ``Conv2d``'s
output-gradient covariance ``G`` over the ``R`` output locations, as it does the activation
covariance ``A``: ``TrackedConv2d.get_flattened_gradient`` (``module/conv2d.py``) returns
``(b o1 o2, c)`` rows with count ``B R``, ``CovarianceTracker`` adds that count to
``num_gradient_covariance_processed`` and ``factor/eigen.py`` divides the sum by it. linop sums
``G`` over the locations and averages ``A`` (the "expand" setting of Eschenhagen et al., 2023).
So kronfluence's conv ``G``, and its conv K-FAC blocks ``G ⊗ A``, are linop's divided by ``R``
(measured: ``A`` equal to 4e-16, ``G_kron = G_linop / 64`` to 5e-16; the linear head, ``R = 1``,
equal): a per-layer scaling, not one of the whole matrix, so damped K-FAC scores differ (27×
in norm, Spearman 0.91), while linop's K-FAC with each ``G`` divided by ``R`` (the "conv G / R"
rows) reproduces kronfluence's scores to 7e-16. EK-FAC is unaffected: its eigenbasis does not
depend on the factors' scale, and both refit the eigenvalues to the same per-example gradients
(agreement 2e-15). The MC rows differ from "conv G / R" by 0.17 (Spearman 0.973), as much as
linop's own seed 1 differs from its seed 0 (0.24, 0.975): sampling noise. The trace columns
compare each K-FAC block's trace with the exact empirical Fisher block's (EK-FAC's eigenvalue
sum): linop's conv blocks have 0.06-0.24 of it, kronfluence's 64 times less.

Measured (2 CPU cores shared with other jobs, 1 thread; two runs of the benchmark): fit EK-FAC
1.8 s (linop) / 2.5-2.8 s (kronfluence), K-FAC 0.9 / 1.4-1.6 s; scores 0.7-0.8 / 1.8-2.0 s; the
whole run about 100 s (training 22 s, kronfluence's subprocess 40-42 s).

Run ``python -m benchmarks.kfac_cnn [--quick] [--kronfluence DIR] [--repeats K] [--scored R]
[--threads 1] [--out F]`` (``--quick``: 150 training points, a 4-channel model, 100 steps at
learning rate 1e-2, 5 × 40 scores, one run; seconds). JSON lines go to
``benchmarks/out/kfac_cnn_cpu.jsonl``. Where kronfluence is not installed in ``DIR`` (default
``.ref/kronfluence101``), its rows say "unavailable" and linop's still run.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

#: The repository root; computed here (not imported) because this file also runs as a script in
#: kronfluence's subprocess, where the repository is not on the path.
REPO_ROOT = Path(__file__).resolve().parent.parent
KRONFLUENCE_REF = REPO_ROOT / ".ref" / "kronfluence101"
KRONFLUENCE_INSTALL = (
    "pip install --no-deps --target .ref/kronfluence101 kronfluence==1.0.1 accelerate==1.15.0 "
    "safetensors==0.8.0 psutil==7.2.2"
)

FULL = {
    "num_train": 1200,
    "num_test": 200,
    "num_query": 20,
    "num_scored": 1200,
    "channels": 16,
    "steps": 400,
    "train_batch": 128,
    "lr": 3e-3,
    "fit_batch": 200,
    "lam": 1e-3,
    "seed": 0,
    "repeats": 3,
}
QUICK = {
    **FULL,
    "num_train": 150,
    "num_test": 50,
    "num_query": 5,
    "num_scored": 40,
    "channels": 4,
    "steps": 100,
    "lr": 1e-2,
    "fit_batch": 75,
    "repeats": 1,
}

#: The rows: name -> (linop class, kind, kronfluence strategy, kronfluence empirical Fisher).
METHODS = {
    "EK-FAC empirical": ("EKFACOperator", "empirical", "ekfac", True),
    "K-FAC empirical": ("KFACOperator", "empirical", "kfac", True),
    "K-FAC mc": ("KFACOperator", "mc", "kfac", False),
}


# ---------------------------------------------------------------------------------------------
# The model (also built in kronfluence's subprocess, from its state)


class Block(torch.nn.Module):
    """``relu(x + conv2(relu(conv1(x))))``: two 3×3 convolutions with padding 1 and a skip."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.conv2(torch.relu(self.conv1(x))))


class ResNet(torch.nn.Module):
    """A 3×3 conv stem to ``channels``, two :class:`Block`, global average pooling, a linear head
    to 10 classes; inputs ``(B, 1, 8, 8)``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.stem = torch.nn.Conv2d(1, channels, 3, padding=1)
        self.block1 = Block(channels)
        self.block2 = Block(channels)
        self.head = torch.nn.Linear(channels, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block2(self.block1(torch.relu(self.stem(x))))
        return self.head(x.mean(dim=(2, 3)))


def build_model(channels: int, state: dict[str, torch.Tensor] | None = None) -> ResNet:
    """The float64 :class:`ResNet` (seeded initialisation, or ``state``), in eval mode; the
    global random state is left as it was."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = ResNet(channels).double()
    if state is not None:
        model.load_state_dict(state)
    return model.eval()


# ---------------------------------------------------------------------------------------------
# Problem, linop's side and the comparisons


def make_problem(cfg: dict[str, Any]) -> dict[str, Any]:
    """The split (images ``(N, 1, 8, 8)``), the trained model's state and its accuracies."""
    from benchmarks._digits import load_split

    split = load_split(cfg["num_train"], cfg["num_test"], cfg["seed"])
    X, X_test = split.X_train.reshape(-1, 1, 8, 8), split.X_test.reshape(-1, 1, 8, 8)
    y, y_test = split.y_train, split.y_test
    model = build_model(cfg["channels"]).train()
    opt = torch.optim.Adam(model.parameters(), lr=cfg["lr"])
    gen = torch.Generator().manual_seed(cfg["seed"])
    start = time.perf_counter()
    for _ in range(cfg["steps"]):
        idx = torch.randint(0, X.shape[0], (cfg["train_batch"],), generator=gen)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(X[idx]), y[idx]).backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        out, out_test = model(X), model(X_test)
    return {
        "X": X,
        "y": y,
        "X_test": X_test,
        "y_test": y_test,
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "train_seconds": time.perf_counter() - start,
        "train_loss": float(torch.nn.functional.cross_entropy(out, y)),
        "train_accuracy": float((out.argmax(1) == y).double().mean()),
        "test_accuracy": float((out_test.argmax(1) == y_test).double().mean()),
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def batches(X: torch.Tensor, y: torch.Tensor, size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(X[i : i + size], y[i : i + size]) for i in range(0, X.shape[0], size)]


def locations(model: torch.nn.Module, x: torch.Tensor) -> dict[str, int]:
    """The weight-sharing locations ``R`` of each ``Conv2d`` / ``Linear`` (its output pixels; 1
    for a linear layer on flat inputs), from one forward pass of ``x`` (one example)."""
    found: dict[str, int] = {}
    handles = []
    for name, m in model.named_modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):

            def hook(m: Any, args: Any, out: torch.Tensor, name: str = name) -> None:
                found[name] = out[0].numel() // out.shape[1]

            handles.append(m.register_forward_hook(hook))
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return found


def linop_scores(
    problem: dict[str, Any], cfg: dict[str, Any], cls_name: str, kind: str, seed: int = 0
) -> dict[str, Any]:
    """linop's operator, the scores ``(T, R)``, and the fitting and scoring seconds of each of
    ``cfg["repeats"]`` runs (``seed``: of the sampled labels of ``kind="mc"``)."""
    import linop

    loss = torch.nn.CrossEntropyLoss()
    data = batches(problem["X"], problem["y"], cfg["fit_batch"])
    fits, scores_s = [], []
    for _ in range(cfg["repeats"]):
        model = build_model(cfg["channels"], problem["state"])
        start = time.perf_counter()
        C = getattr(linop, cls_name).from_module(model, loss, data, kind=kind, seed=seed)
        fits.append(time.perf_counter() - start)
        scores, seconds = score_with(C, problem, cfg)
        scores_s.append(seconds)
    return {"operator": C, "scores": scores, "fit_samples": fits, "score_samples": scores_s}


def score_with(C: Any, problem: dict[str, Any], cfg: dict[str, Any]) -> tuple[torch.Tensor, float]:
    """``G_test (C + λI)⁻¹ G_scoredᵀ`` ``(T, R)`` and its seconds (gradients included)."""
    import linop

    model = build_model(cfg["channels"], problem["state"])
    loss = torch.nn.CrossEntropyLoss()
    T, R = cfg["num_query"], cfg["num_scored"]
    start = time.perf_counter()
    G_train = linop.module_per_example_gradients(model, loss, (problem["X"][:R], problem["y"][:R]))
    G_test = linop.module_per_example_gradients(
        model, loss, (problem["X_test"][:T], problem["y_test"][:T])
    )
    solved = C.regularize(cfg["lam"]).inverse() @ G_test.T.contiguous()  # (n, T)
    scores = (G_train @ solved).T.contiguous()
    return scores, time.perf_counter() - start


def rescaled_kfac(K: Any, R: dict[str, int]) -> Any:
    """linop's K-FAC ``K`` with each layer's ``G`` divided by its locations ``R``: the matrix
    kronfluence 1.0.1 builds (it averages ``G`` over a convolution's locations)."""
    from dataclasses import replace

    import linop

    blocks = [
        replace(b, G=b.G / R[b.layer.name], values=b.values / R[b.layer.name]) for b in K.blocks
    ]
    return linop.KFACOperator(blocks, K.names, K.dtype, K.kind)


def compare(S: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
    """How far scores ``S`` ``(T, R)`` are from ``ref``: relative Frobenius distance, largest
    entry difference over the largest entry, Spearman of all entries and its mean over rows."""
    from scipy.stats import spearmanr

    a, b = S.numpy(), ref.numpy()
    rows = [spearmanr(x, z).statistic for x, z in zip(a, b, strict=True)]
    return {
        "rel_fro": float((S - ref).norm() / ref.norm()),
        "max_rel": float((S - ref).abs().max() / ref.abs().max()),
        "spearman": float(spearmanr(a.ravel(), b.ravel()).statistic),
        "row_spearman": float(sum(rows) / len(rows)),
    }


def factor_table(
    C: Any, kron: dict[str, Any], R: dict[str, int], exact: dict[str, float]
) -> list[dict[str, Any]]:
    """Per layer: linop's ``(A, G)`` against kronfluence's normalised covariances — the relative
    distance of ``A``, the least-squares scale ``s`` of ``G_kron ≈ s G_linop``, ``s R``, the
    relative residual after that scale — and the trace of each one's K-FAC block ``tr G tr A``
    over ``exact``, the trace of the exact empirical Fisher block (EK-FAC's eigenvalue sum)."""
    rows = []
    for name, (A, G) in C.factors().items():
        A_k, G_k = kron["A"][name], kron["G"][name]
        s = float((G_k * G).sum() / (G * G).sum())
        rows.append(
            {
                "layer": name,
                "R": R[name],
                "A_rel": float((A_k - A).norm() / A.norm()),
                "G_scale": s,
                "G_scale_times_R": s * R[name],
                "G_rel_after_scale": float((G_k - s * G).norm() / (s * G).norm()),
                "rows_counted": kron["counts"][name],
                "trace_ratio_linop": float(G.trace() * A.trace()) / exact[name],
                "trace_ratio_kronfluence": float(G_k.trace() * A_k.trace()) / exact[name],
            }
        )
    return rows


# ---------------------------------------------------------------------------------------------
# kronfluence, in a subprocess


def kronfluence_runs(
    problem: dict[str, Any], cfg: dict[str, Any], ref: Path, threads: int
) -> dict[str, Any]:
    """Every :data:`METHODS` row with kronfluence 1.0.1 installed in ``ref``, in one subprocess:
    per row its scores, fit and score seconds, and (empirical rows) its normalised factors.
    Raises ``ReferenceUnavailable`` where kronfluence is not in ``ref`` or its run fails."""
    from benchmarks._harness import ReferenceUnavailable, run_reference

    if not (ref / "kronfluence" / "__init__.py").is_file():
        raise ReferenceUnavailable(f"kronfluence is not installed in {ref}: {KRONFLUENCE_INSTALL}")
    T, R = cfg["num_query"], cfg["num_scored"]
    side = {
        "state": problem["state"],
        "channels": cfg["channels"],
        "X": problem["X"],
        "y": problem["y"],
        "X_query": problem["X_test"][:T],
        "y_query": problem["y_test"][:T],
        "X_scored": problem["X"][:R],
        "y_scored": problem["y"][:R],
        "lam": cfg["lam"],
        "fit_batch": cfg["fit_batch"],
        "threads": threads,
        "repeats": cfg["repeats"],
        "runs": {name: (m[2], m[3]) for name, m in METHODS.items()},
    }
    with tempfile.TemporaryDirectory() as tmp:
        cfg_path, out_path = Path(tmp) / "cfg.pt", Path(tmp) / "out.pt"
        torch.save({**side, "out": str(out_path)}, cfg_path)
        start = time.perf_counter()
        record = run_reference(Path(__file__), ["--kronfluence-side", cfg_path], [ref], 1800)
        record["wall_seconds"] = time.perf_counter() - start
        saved = torch.load(out_path)
    return {"record": record, "runs": saved}


def _kronfluence_side(cfg: dict[str, Any]) -> dict[str, Any]:
    """The subprocess: imports only torch, kronfluence and this file's model."""
    from kronfluence.version import __version__

    try:
        from benchmarks._kfac_references import (
            kronfluence_analyzer,
            kronfluence_arguments,
            kronfluence_pairwise,
        )
    except ImportError:  # run as a script in front of kronfluence: this folder is on the path
        from _kfac_references import (  # type: ignore[no-redef]
            kronfluence_analyzer,
            kronfluence_arguments,
            kronfluence_pairwise,
        )

    f64 = torch.float64
    out: dict[str, Any] = {}
    record: dict[str, Any] = {"version": __version__}
    for i, (name, (strategy, empirical)) in enumerate(cfg["runs"].items()):
        fits, scorings = [], []
        for rep in range(cfg["repeats"]):
            torch.manual_seed(0)  # the sampled labels of the MC Fisher
            with tempfile.TemporaryDirectory() as tmp:
                model = build_model(cfg["channels"], cfg["state"])
                analyzer = kronfluence_analyzer(f"cnn{i}_{rep}", model, tmp)
                factor_args, score_args = kronfluence_arguments(strategy, empirical, cfg["lam"])
                start = time.perf_counter()
                analyzer.fit_all_factors(
                    "factors",
                    torch.utils.data.TensorDataset(cfg["X"], cfg["y"]),
                    per_device_batch_size=cfg["fit_batch"],
                    factor_args=factor_args,
                    overwrite_output_dir=True,
                )
                fits.append(time.perf_counter() - start)
                start = time.perf_counter()
                scores = kronfluence_pairwise(
                    analyzer,
                    score_args,
                    (cfg["X_query"], cfg["y_query"]),
                    (cfg["X_scored"], cfg["y_scored"]),
                )  # (T, R)
                scorings.append(time.perf_counter() - start)
                cov = analyzer.load_covariance_matrices("factors")
        A, G, counts = {}, {}, {}
        for module, S in cov["activation_covariance"].items():
            n_a = cov["num_activation_covariance_processed"][module]
            n_g = cov["num_gradient_covariance_processed"][module]
            A[module] = (S / n_a).to(f64)
            G[module] = (cov["gradient_covariance"][module] / n_g).to(f64)
            counts[module] = [int(n_a), int(n_g)]
        out[name] = {"scores": scores.detach().to(f64), "A": A, "G": G, "counts": counts}
        record[name] = {"fit_samples": fits, "score_samples": scorings}
    torch.save(out, cfg["out"])
    return record


# ---------------------------------------------------------------------------------------------
# The benchmark


def _fmt(x: float | None, spec: str) -> str:
    return "—" if x is None else format(x, spec)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    cfg = dict(QUICK if args.quick else FULL)
    if args.repeats is not None:
        cfg["repeats"] = args.repeats
    if args.scored is not None:
        cfg["num_scored"] = min(args.scored, cfg["num_train"])
    print(f"kfac_cnn: training the CNN ({cfg['channels']} channels, {cfg['steps']} Adam steps)")
    problem = make_problem(cfg)
    R = locations(build_model(cfg["channels"], problem["state"]), problem["X"][:1])
    print(
        f"  {problem['parameters']} parameters, {cfg['num_train']} training points: train "
        f"accuracy {problem['train_accuracy']:.3f}, test {problem['test_accuracy']:.3f}, "
        f"loss {problem['train_loss']:.3f} ({problem['train_seconds']:.1f} s)",
        flush=True,
    )
    ours = {}
    for name, (cls_name, kind, _, _) in METHODS.items():
        ours[name] = linop_scores(problem, cfg, cls_name, kind)
        print(f"  linop {name}: fit {min(ours[name]['fit_samples']):.2f} s", flush=True)
    # linop's K-FAC with kronfluence's scale of G (divided by R): the convention, isolated
    scaled = {
        name: score_with(rescaled_kfac(ours[name]["operator"], R), problem, cfg)[0]
        for name in ("K-FAC empirical", "K-FAC mc")
    }
    # the noise of the MC Fisher: other sampled labels (seed 1), against seed 0
    other = linop_scores(problem, cfg, "KFACOperator", "mc", seed=1)
    other_scaled = score_with(rescaled_kfac(other["operator"], R), problem, cfg)[0]
    E = ours["EK-FAC empirical"]["operator"]
    exact = {b.layer.name: float(b.values.sum()) for b in E.blocks}  # = tr of the exact block

    from benchmarks._harness import ReferenceUnavailable, write_jsonl

    kron: dict[str, Any] | None = None
    unavailable = None
    print(f"  kronfluence 1.0.1 (subprocess, {args.kronfluence})", flush=True)
    try:
        kron = kronfluence_runs(problem, cfg, Path(args.kronfluence), args.threads)
    except ReferenceUnavailable as e:
        unavailable = f"unavailable: {e}"
        print(f"    {unavailable}", flush=True)

    rows: list[dict[str, Any]] = []
    for name in METHODS:
        mine = ours[name]
        rows.append(
            {
                "method": name,
                "library": "linop",
                **_times(mine["fit_samples"], mine["score_samples"]),
            }
        )
        if name == "K-FAC mc":
            rows.append(
                {
                    "method": name,
                    "library": "linop, seed 1",
                    "note": "other sampled labels: the noise of the MC Fisher",
                    **_times(other["fit_samples"], other["score_samples"]),
                    "vs_linop": compare(other["scores"], mine["scores"]),
                    "vs_linop_conv_G_over_R": compare(other_scaled, scaled[name]),
                }
            )
        if name in scaled:
            rows.append(
                {
                    "method": name,
                    "library": "linop, conv G / R",
                    "note": "linop's K-FAC with each layer's G divided by its R (kronfluence's)",
                    "vs_linop": compare(scaled[name], mine["scores"]),
                }
            )
        if kron is None:
            rows.append({"method": name, "library": "kronfluence", "unavailable": unavailable})
            continue
        theirs = kron["runs"][name]
        times = kron["record"][name]
        row = {
            "method": name,
            "library": "kronfluence",
            **_times(times["fit_samples"], times["score_samples"]),
            "vs_linop": compare(theirs["scores"], mine["scores"]),
        }
        if name in scaled:
            row["vs_linop_conv_G_over_R"] = compare(theirs["scores"], scaled[name])
        if name in ("EK-FAC empirical", "K-FAC empirical"):
            row["factors"] = factor_table(mine["operator"], theirs, R, exact)
        rows.append(row)

    lines = table(rows, problem, cfg, kron)
    print("\n".join(lines))
    info = {
        "benchmark": "kfac_cnn",
        "config": cfg,
        "parameters": problem["parameters"],
        "train_accuracy": problem["train_accuracy"],
        "test_accuracy": problem["test_accuracy"],
        "locations": R,
        "kronfluence_wall_seconds": None if kron is None else kron["record"]["wall_seconds"],
    }
    out = args.out or REPO_ROOT / "benchmarks" / "out" / "kfac_cnn_cpu.jsonl"
    print(f"wrote {write_jsonl(out, [{**info, **r} for r in rows], source=REPO_ROOT / 'linop')}")
    return {"rows": rows, "table": lines, "config": cfg, "problem": problem, "locations": R}


def _times(fits: list[float], scorings: list[float]) -> dict[str, Any]:
    """The fastest of the repeats, and all of them."""
    return {
        "fit_seconds": min(fits),
        "score_seconds": min(scorings),
        "fit_samples": fits,
        "score_samples": scorings,
    }


def table(
    rows: list[dict[str, Any]],
    problem: dict[str, Any],
    cfg: dict[str, Any],
    kron: dict[str, Any] | None,
) -> list[str]:
    """The printed report: times and agreement per row, then kronfluence's factors against
    linop's, layer by layer."""
    T, R = cfg["num_query"], cfg["num_scored"]
    lines = [
        "",
        f"K-FAC / EK-FAC of a residual CNN on digits: {problem['parameters']} parameters, "
        f"float64, fitted on {cfg['num_train']} training points (batches of {cfg['fit_batch']}), "
        f"λ = {cfg['lam']:g}, scores of {T} test × {R} training points; 1 thread, fastest of "
        f"{cfg['repeats']} run(s)",
        f"{'method':17} {'library':18} {'fit s':>7} {'score s':>7} "
        f"{'rel diff':>9} {'max diff':>9} {'Spearman':>9} {'row Spear':>9}",
    ]
    for r in rows:
        if "unavailable" in r:
            lines.append(f"{r['method']:17} {r['library']:18} {r['unavailable']}")
            continue
        v = r.get("vs_linop", {})
        lines.append(
            f"{r['method']:17} {r['library']:18} {_fmt(r.get('fit_seconds'), '7.2f'):>7} "
            f"{_fmt(r.get('score_seconds'), '7.2f'):>7} {_fmt(v.get('rel_fro'), '9.2e'):>9} "
            f"{_fmt(v.get('max_rel'), '9.2e'):>9} {_fmt(v.get('spearman'), '9.6f'):>9} "
            f"{_fmt(v.get('row_spearman'), '9.6f'):>9}"
        )
        if "vs_linop_conv_G_over_R" in r:
            v = r["vs_linop_conv_G_over_R"]
            lines.append(
                f"{'':17} {'  vs conv G / R':18} {'':>7} {'':>7} {v['rel_fro']:9.2e} "
                f"{v['max_rel']:9.2e} {v['spearman']:9.6f} {v['row_spearman']:9.6f}"
            )
    lines.append(
        "(diff and Spearman: against linop's row of the same method; 'vs conv G / R': against "
        "linop's K-FAC with each layer's G divided by its R output locations — for 'linop, "
        "seed 1', both sides so divided)"
    )
    if kron is None:
        return lines
    lines.append(
        f"kronfluence's subprocess: {kron['record']['wall_seconds']:.1f} s in all (start-up, "
        f"imports, every fit and scoring)"
    )
    for r in rows:
        if r["method"] != "K-FAC empirical" or "factors" not in r:
            continue  # (its EK-FAC run's factors are the same: both in the JSON lines)
        lines += [
            "kronfluence's empirical-Fisher factors against linop's, per layer (trace: tr G tr A "
            "of each one's K-FAC block / tr of the exact empirical Fisher block)",
            f"  {'layer':13} {'R':>3} {'A rel diff':>10} {'G scale s':>10} {'s × R':>7} "
            f"{'G diff after s':>14} {'rows (A, G)':>15} {'tr linop':>9} {'tr kron':>9}",
        ]
        for f in r["factors"]:
            lines.append(
                f"  {f['layer']:13} {f['R']:3d} {f['A_rel']:10.2e} {f['G_scale']:10.4g} "
                f"{f['G_scale_times_R']:7.4f} {f['G_rel_after_scale']:14.2e} "
                f"{tuple(f['rows_counted'])!s:>15} {f['trace_ratio_linop']:9.3f} "
                f"{f['trace_ratio_kronfluence']:9.4f}"
            )
    return lines


def run(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny model and data, seconds")
    parser.add_argument(
        "--kronfluence", default=str(KRONFLUENCE_REF), help="where kronfluence 1.0.1 is installed"
    )
    parser.add_argument("--repeats", type=int, default=None, help="timed runs (the fastest)")
    parser.add_argument("--scored", type=int, default=None, help="training points scored")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    from benchmarks._digits import limit_threads

    with limit_threads(args.threads):  # restored afterwards (the tests run this in-process)
        return measure(args)


def main(argv: list[str] | None = None) -> int:
    run(argv)
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--kronfluence-side"]:  # kronfluence's subprocess
        side_cfg = torch.load(sys.argv[2])
        torch.set_num_threads(int(side_cfg["threads"]))
        print(json.dumps(_kronfluence_side(side_cfg)))
        raise SystemExit(0)
    raise SystemExit(main())
