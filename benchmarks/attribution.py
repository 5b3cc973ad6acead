"""Attribution quality on real data: leave-one-out retraining against influence estimates.

The protocol of BENCHMARKS.md, "Attribution quality on real data" (the user-facing example of the
same computation, without the evaluation, is ``examples/influence_digits.py``):

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
changes (measured on the default run: median |s| 4.6e-6, median |true change| 5.8e-6). The
printout, the optional plot and the ``diagnostics`` of :func:`run` show the prediction both raw
and plus ``s``; with ``s`` the median relative error falls from ≈ 1 to ≈ 1e-2 — a check of the
sign convention and of the ground truth.

Inverse methods live in :data:`METHODS`, a table of ``name -> f(problem) -> Estimate``: each gets
the :class:`Problem` (the model at its optimum, the training data, the gradients of the removed
and the test points) and returns the scores ``G_testᵀ A⁻¹ G_train`` with ``A`` the
:class:`linop.RegularizedOperator` ``H_data + λ I`` — through a lazy ``A.inverse(method,
**options)`` (explicit, CG, CG stopped at 10 iterations, CG deflated by Arnoldi, Arnoldi low-rank
inverses with and without the complement ``(I − VVᵀ)/λ``, LiSSA on minibatches of a dataset
operator), or through projected gradients (``ProjectionOperator.arnoldi``, a random projection of
CG-solved gradients), or scipy's CG as an independent check. Every method builds its own ``A`` so
that no method reuses eigenpairs another cached. The printed table gives, per method, the wall
time (set-up included), the mean Spearman correlation, the operator products (columns counted;
LiSSA's are minibatch products) and the relative distance of the scores to the explicit solve's;
below it, each solve's :class:`linop.SolveInfo`. Add an entry to compare another method.

``--model mlp`` attributes a 64-32-10 tanh MLP instead (2410 parameters, ``λ = 1e-2``: its data
Hessian is indefinite and ``λ = 1e-3`` leaves ``A`` too ill-conditioned; see ``_digits.MLP``),
with the same protocol; its leave-one-out retraining uses Newton steps preconditioned by the
full-data Hessian's Cholesky factor (``_digits.Model.retrain``). It runs in about 100 s
without its slow methods (:data:`MLP_SKIPPED`).

With ``--model mlp``, :data:`REFERENCE_METHODS` put the reference libraries' K-FAC and EK-FAC
next to linop's (``kfac type2``, ``ekfac mc``, ...): curvlinops 3.0.1 (in this process),
kronfluence 1.0.1 and dattri 0.2.0 (in subprocesses, from ``.ref/``), on the same MLP, data,
``λ`` and scores; see ``benchmarks/_kfac_references.py`` for their settings. They run only when
named in ``--methods`` and are refused at once where the library is not installed; their
seconds are the library's own work (without a subprocess's start-up, which the notes give).

Run ``python -m benchmarks.attribution`` from the repository root (about a minute on 2 CPU
cores, most of it LiSSA, which shows its own progress bar; ``--quick`` for a 15 s version,
``--help`` for options), or call :func:`run` with a list of arguments; it returns the results as a
dict. ``python -m benchmarks run --suite cpu`` runs it with the other CPU benchmarks. One JSON
line per method goes to ``benchmarks/out/attribution_cpu.jsonl`` (``--out``). ``--plot FILE.png``
draws the predictions against the truth; it needs matplotlib (``pip install -e ".[bench]"``),
which the test set-up does not install, so plotting is opt-in and refused at once without it.
"""

from __future__ import annotations

import argparse
import importlib.util
import textwrap
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import scipy.sparse.linalg as spla
import scipy.stats
import torch
from tqdm.auto import tqdm

from benchmarks import _kfac_references as refs
from benchmarks._digits import LOGISTIC, MODELS, Model, limit_threads, load_split, mlp_module
from benchmarks._harness import REPO_ROOT, ReferenceUnavailable, write_jsonl
from linop import (
    ConvergenceWarning,
    EKFACOperator,
    FisherOperator,
    GGNOperator,
    HessianOperator,
    IdentityOperator,
    KFACOperator,
    ProjectionOperator,
    RegularizedOperator,
    SolveInfo,
)

# ---------------------------------------------------------------------------------------------
# Inverse methods. Each takes the problem and returns the scores g_testᵀ A⁻¹ g_train for every
# (test point, removed point) pair, with A = H_data + λI the Hessian of the training objective.


@dataclass
class Problem:
    """What an inverse method may use: the model at its optimum and the gradients.

    ``G_train`` ``(p, R)``: per-example loss gradients of the removed points, as columns;
    ``G_test`` ``(p, T)``: those of the test points. ``X_test``, ``y_test``, ``X_removed``,
    ``y_removed``: the points themselves, for the reference libraries that compute their own
    gradients (:data:`REFERENCE_METHODS`).
    """

    model: Model
    theta: torch.Tensor
    X: torch.Tensor
    y: torch.Tensor
    G_train: torch.Tensor
    G_test: torch.Tensor
    X_test: torch.Tensor | None = None
    y_test: torch.Tensor | None = None
    X_removed: torch.Tensor | None = None
    y_removed: torch.Tensor | None = None

    def operator(self) -> RegularizedOperator:
        """A fresh ``A = H_data + λI`` (full-batch HVPs, never formed). Fresh for every method,
        so no method profits from eigenpairs another one cached on its operator."""
        return self.model.regularized_hessian(self.theta, self.X, self.y)

    def dataset_operator(self, batch_size: int) -> RegularizedOperator:
        """``A`` over the training set as a dataset, ``HessianOperator.from_data`` (batches of
        ``batch_size``) plus ``λI``: the form whose random minibatches LiSSA draws."""
        H = HessianOperator.from_data(
            self.model.mean_loss,
            self.theta,
            (self.X, self.y),
            batch_size=batch_size,
            psd=self.model.convex,
        )
        return H + self.model.lam * IdentityOperator.like(H)


@dataclass
class Estimate:
    """A method's answer: ``scores`` ``(T, R)`` ≈ ``G_testᵀ A⁻¹ G_train``, the
    :class:`linop.SolveInfo` of its solve (None for the non-solver rows), the operator products
    it made where known (columns counted, set-up included), and a note for the printout.
    ``seconds``: the time to report where the method measured its own work (the reference rows:
    without a subprocess's start-up and imports, nor the checks made after); None: the wall
    time of the call."""

    scores: torch.Tensor
    info: SolveInfo | None = None
    products: int | None = None
    note: str = ""
    seconds: float | None = None


def _apply(inv: Any, p: Problem, note: str = "") -> Estimate:
    """Score through a lazy inverse: ``G_testᵀ (inv @ G_train)``, all columns at once."""
    solved = inv @ p.G_train
    info = inv.info
    return Estimate(p.G_test.T @ solved, info, info.hvps, note)


def explicit(p: Problem) -> Estimate:
    """linop's ``A.inverse("explicit")``: materialise (p batched HVPs), Cholesky, substitute."""
    return _apply(p.operator().inverse("explicit"), p)


def cg(p: Problem) -> Estimate:
    """linop's batched CG, every column to ``‖r‖ ≤ 1e-8 ‖b‖``."""
    return _apply(p.operator().inverse("cg", rtol=1e-8), p)


def cg_10(p: Problem) -> Estimate:
    """CG stopped after 10 iterations (dattri's "CG 10 iterations"); the ConvergenceWarning it
    raises is expected and silenced here."""
    inv = p.operator().inverse("cg", rtol=1e-8, maxiter=10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return _apply(inv, p, "stopped at maxiter=10 by design")


#: Eigenpairs deflated by the preconditioned CG row.
DEFLATION_RANK = 20


def cg_deflated(p: Problem) -> Estimate:
    """CG to 1e-8 preconditioned by deflation of the top :data:`DEFLATION_RANK` eigenpairs
    (Lanczos; its products are counted in the set-up)."""
    inv = p.operator().inverse("cg", rtol=1e-8, preconditioner="arnoldi", rank=DEFLATION_RANK)
    return _apply(inv, p, f"rank {DEFLATION_RANK} deflation")


#: The Arnoldi rows: dattri's setting, top 50 eigenpairs from 100 Lanczos steps.
ARNOLDI_RANK, ARNOLDI_STEPS = 50, 100


def arnoldi(p: Problem) -> Estimate:
    """``V (Λ + λ)⁻¹ Vᵀ`` on the top 50 eigenpairs: it drops every direction outside them,
    where ``A⁻¹`` is largest, hence its poor score (dattri: 0.134)."""
    inv = p.operator().inverse("arnoldi", rank=ARNOLDI_RANK, maxiter=ARNOLDI_STEPS)
    return _apply(inv, p, f"top {ARNOLDI_RANK} of {ARNOLDI_STEPS} Lanczos steps")


def arnoldi_complement(p: Problem) -> Estimate:
    """The same eigenpairs plus ``(I − VVᵀ)/λ``: the unresolved directions are treated as if
    their eigenvalue of ``H`` were zero, which is where most of them nearly are."""
    inv = p.operator().inverse("arnoldi", rank=ARNOLDI_RANK, maxiter=ARNOLDI_STEPS, complement=True)
    return _apply(inv, p, f"top {ARNOLDI_RANK} of {ARNOLDI_STEPS} + (I − VVᵀ)/λ")


#: The larger low-rank row: rank and Lanczos steps.
ARNOLDI_LARGE_RANK, ARNOLDI_LARGE_STEPS = 300, 450


def arnoldi_large_complement(p: Problem) -> Estimate:
    """Top 300 eigenpairs (450 Lanczos steps) plus ``(I − VVᵀ)/λ``. This Hessian is far from low
    rank: on the default run 316 of the 650 eigenvalues of ``A`` exceed 1.5 λ and 595 exceed
    λ (the other 55 are exactly λ: the softmax null space), so the unresolved part is treated
    correctly only once the rank reaches about half of ``p``. Measured there with exact
    eigenpairs: top 200 + complement 0.74, top 300 0.92, top 400 0.99."""
    inv = p.operator().inverse(
        "arnoldi", rank=ARNOLDI_LARGE_RANK, maxiter=ARNOLDI_LARGE_STEPS, complement=True
    )
    return _apply(inv, p, f"top {ARNOLDI_LARGE_RANK} of {ARNOLDI_LARGE_STEPS} + (I − VVᵀ)/λ")


#: LiSSA's settings (see :func:`lissa`): minibatches of half the training set, 1000 steps, two
#: runs averaged, scale 1.5 λ_max(A).
LISSA = dict(batch_fraction=0.5, depth=1000, repeats=2, margin=1.5)


def lissa(p: Problem) -> Estimate:
    """LiSSA on the dataset operator ``HessianOperator.from_data(...) + λI``: ``depth`` steps of
    ``h ← b + h − (A_t h)/s`` with ``A_t`` the Hessian at a random minibatch, ``repeats`` runs
    averaged, the scale ``s`` = ``margin`` × ``λ_max(A)`` from ``A.eigh(1)`` (21 Lanczos
    products, not counted in the table).

    Why these numbers (measured on the default run, 1200 points, 60 right-hand sides, 1
    thread): the truncation error on the smallest eigenvalue ``λ`` of ``A`` is
    ``(1 − λ/s)^depth`` ≈ e^{-4.7} ≈ 1e-2 at depth 1000 (``s`` ≈ 0.21); the minibatch noise
    dominates — the relative error of the solves was 12-16 % with one run on minibatches of 200
    (Spearman 0.90-0.93), 5.2 % on minibatches of 600 (0.980) and 3.3 % with two such runs
    (0.987, about 35 s). Sampling half the data without replacement cuts the variance of ``A_t``
    by the finite-population factor ``1 − b/n``. The top eigenvalue of a minibatch Hessian
    reached 1.5× the full one at 200 examples and 2.3-3.4× at 100 (five draws each), hence
    ``margin`` 1.5 with batches of at least 200; the linop docs require ``s > λ_max``.
    """
    c = LISSA
    n = p.X.shape[0]
    batch = max(1, int(c["batch_fraction"] * n))
    top = float(p.operator().eigh(1).values[0])
    scale = c["margin"] * top
    inv = p.dataset_operator(batch).inverse(
        "lissa",
        depth=c["depth"],
        repeats=c["repeats"],
        batch_size=batch,
        scale=scale,
        seed=0,
        progress=True,  # the longest row: a bar of its own (steps × runs)
    )
    note = (
        f"minibatch {batch} of {n}, depth {c['depth']}, {c['repeats']} runs, scale "
        f"{scale:.3g} = {c['margin']:g} × λ_max(A) {top:.3g} from A.eigh(1); products are "
        f"minibatch HVPs"
    )
    return _apply(inv, p, note)


def arnoldi_projection(p: Problem) -> Estimate:
    """``P = ProjectionOperator.arnoldi(A, 50)`` = ``(Λ + λ)^{-1/2} Vᵀ``: scores are inner
    products of 50-dimensional projected gradients, ``(P g_test)ᵀ (P g_train)`` — what one would
    store per example. Mathematically the "arnoldi" row (no complement)."""
    P = ProjectionOperator.arnoldi(p.operator(), ARNOLDI_RANK, maxiter=ARNOLDI_STEPS)
    Z_train, Z_test = P @ p.G_train, P @ p.G_test  # (k, R), (k, T)
    return Estimate(
        Z_test.T @ Z_train,
        products=ARNOLDI_STEPS,
        note=f"k = {ARNOLDI_RANK}; products: the {ARNOLDI_STEPS} Lanczos steps",
    )


#: Output dimension of the random projection row.
RANDOM_PROJECTION_DIM = 256


def random_projection_cg(p: Problem) -> Estimate:
    """Preconditioned train gradients ``A⁻¹ g_train`` (CG to 1e-8), then a seeded Rademacher JL
    projection ``R`` (k × p, entries ±1/√k) of both sides: ``(R g_test)ᵀ (R A⁻¹ g_train)``, the
    storage scheme of TRAK-like pipelines. Inner products are preserved in expectation, with an
    error ≈ ‖g_test‖ ‖A⁻¹ g_train‖ / √k."""
    inv = p.operator().inverse("cg", rtol=1e-8)
    solved = inv @ p.G_train
    R = ProjectionOperator.random(
        p.G_train.shape[0], RANDOM_PROJECTION_DIM, dtype=p.G_train.dtype, seed=0
    )
    scores = (R @ p.G_test).T @ (R @ solved)
    return Estimate(scores, inv.info, inv.info.hvps, f"k = {RANDOM_PROJECTION_DIM}, rademacher")


def solve_cg_scipy(p: Problem, rtol: float = 1e-10) -> Estimate:
    """scipy's conjugate gradients on ``A.to_scipy()``, one column at a time, to ``rtol``: an
    implementation independent of linop's solvers."""
    A = p.operator()
    op = A.to_scipy()
    G = p.G_train
    out = np.empty(tuple(G.shape))
    iters = []
    for k in tqdm(range(G.shape[1]), desc="cg (scipy) columns", leave=False):
        count = [0]
        x, info = spla.cg(
            op,
            G[:, k].numpy(),
            rtol=rtol,
            atol=0.0,
            maxiter=20 * A.shape[0],
            callback=lambda _, count=count: count.__setitem__(0, count[0] + 1),
        )
        if info != 0:
            raise RuntimeError(f"scipy cg did not converge on column {k} (info={info})")
        out[:, k] = x
        iters.append(count[0])
    solved = torch.from_numpy(out).to(G.dtype)
    return Estimate(p.G_test.T @ solved, note=f"rtol 1e-10, max iterations {max(iters)}")


InverseMethod = Callable[[Problem], Estimate]

#: name -> method; the table printed by :func:`main` has one row per entry, in this order.
METHODS: dict[str, InverseMethod] = {
    "explicit": explicit,
    "cg": cg,
    "cg 10 iterations": cg_10,
    "cg + arnoldi deflation": cg_deflated,
    "arnoldi": arnoldi,
    "arnoldi + complement": arnoldi_complement,
    "arnoldi 300 + complement": arnoldi_large_complement,
    "lissa": lissa,
    "arnoldi projection": arnoldi_projection,
    "random projection of cg": random_projection_cg,
    "cg (scipy)": solve_cg_scipy,
}

# Curvature approximations: the same scores with the Hessian replaced by the Gauss-Newton matrix
# or the Fisher (each plus λI). For logistic regression the GGN is the Hessian (a linear model).


def _curvature(p: Problem, kind: str) -> RegularizedOperator:
    """``C + λI`` with ``C`` the GGN, the empirical Fisher or the MC Fisher of the mean loss at
    the optimum (full batch)."""
    loss = torch.nn.functional.cross_entropy
    batch = (p.X, p.y)
    if kind == "ggn":
        C = GGNOperator(p.model.logits, loss, p.theta, batch)
    elif kind == "mc":
        C = FisherOperator(p.model.logits, loss, p.theta, batch, kind="mc", mc_samples=8)
    else:
        C = FisherOperator(p.model.logits, loss, p.theta, batch)
    A = C + p.model.lam * IdentityOperator.like(C)
    assert isinstance(A, RegularizedOperator)
    return A


def _curvature_method(kind: str, method: str) -> InverseMethod:
    def solve(p: Problem) -> Estimate:
        options = {"rtol": 1e-8} if method == "cg" else {}
        return _apply(_curvature(p, kind).inverse(method, **options), p)

    what = {"ggn": "Gauss-Newton", "fisher": "empirical Fisher", "mc": "MC Fisher (8 samples)"}
    solve.__doc__ = f"``({what[kind]} + λI)⁻¹`` by linop's {method} solve."
    return solve


#: The curvature rows, run by default with ``--model mlp`` (for logistic regression the GGN is
#: the Hessian); ask for them by name otherwise.
CURVATURE_METHODS: dict[str, InverseMethod] = {
    f"{label} {method}": _curvature_method(kind, method)
    for kind, label in (("ggn", "ggn"), ("fisher", "empirical fisher"), ("mc", "mc fisher"))
    for method in ("explicit", "cg")
}


def _kronecker_method(cls: type[KFACOperator], kind: str) -> InverseMethod:
    def solve(p: Problem) -> Estimate:
        if p.model.name != "mlp":
            raise ValueError("the K-FAC rows attribute the MLP (--model mlp)")
        loss = torch.nn.CrossEntropyLoss()
        K = cls.from_module(mlp_module(p.theta), loss, (p.X, p.y), kind=kind, mc_samples=8)
        return _apply(K.regularize(p.model.lam).inverse(), p, f"{kind}; closed-form inverse")

    solve.__doc__ = f"``({cls.__name__[:-8]} {kind} + λI)⁻¹`` in closed form (linop)."
    return solve


#: K-FAC and EK-FAC of the MLP, by kind (``mc`` with 8 samples per example), each plus λI and
#: inverted in closed form; run by default with ``--model mlp``.
KRONECKER_METHODS: dict[str, InverseMethod] = {
    f"{name} {kind}": _kronecker_method(cls, kind)
    for name, cls in (("kfac", KFACOperator), ("ekfac", EKFACOperator))
    for kind in ("type2", "mc", "empirical")
}
CURVATURE_METHODS.update(KRONECKER_METHODS)

# The reference libraries' K-FAC and EK-FAC (benchmarks/_kfac_references.py), side by side with
# the rows above: same MLP, data, λ and scores g_testᵀ (C + λI)⁻¹ g_j. Run only when named in
# --methods.

#: linop's type-2 K-FAC/EK-FAC against curvlinops', dense, per problem (computed once).
_DENSE_AGREEMENT: dict[int, dict[str, Any]] = {}


def _curvlinops_method(ekfac: bool, fisher_type: str) -> InverseMethod:
    def solve(p: Problem) -> Estimate:
        scores, seconds = refs.curvlinops_scores(
            p.theta, p.X, p.y, p.G_test, p.G_train, p.model.lam, ekfac, fisher_type
        )
        samples = f", mc_samples {refs.MC_SAMPLES}" if fisher_type == "mc" else ""
        note = (
            f"{'EKFAC' if ekfac else 'KFAC'}LinearOperator, fisher_type {fisher_type}{samples}, "
            "separate_weight_and_bias=False (joint bias), expand; KFACInverseLinearOperator("
            "damping=λ, use_exact_damping=True)"
        )
        if id(p.theta) not in _DENSE_AGREEMENT:  # once per run, not timed
            _DENSE_AGREEMENT[id(p.theta)] = agree = refs.dense_agreement(p.theta, p.X, p.y)
            note += (
                "; dense vs linop's type2 (max |Δ| / max |linop|, rel. Frobenius): "
                + ", ".join(
                    f"{k.upper()} {v['max_rel']:.1e}, {v['fro_rel']:.1e}" for k, v in agree.items()
                )
            )
        return Estimate(scores, note=note, seconds=seconds)

    kind = "EK-FAC" if ekfac else "K-FAC"
    solve.__doc__ = f"curvlinops' {kind} ({fisher_type}) + λI, its own exact-damping inverse."
    return solve


def _data_points(p: Problem) -> tuple[torch.Tensor, ...]:
    """The test and removed points, for the rows that compute their own gradients."""
    if p.X_test is None or p.y_test is None or p.X_removed is None or p.y_removed is None:
        raise ValueError("this reference row needs the test and removed points in the Problem")
    return p.X_test, p.y_test, p.X_removed, p.y_removed


def _kronfluence_method(strategy: str) -> InverseMethod:
    def solve(p: Problem) -> Estimate:
        scores, seconds, record = refs.kronfluence_scores(
            p.theta, p.X, p.y, *_data_points(p), p.model.lam, strategy
        )
        note = (
            f"kronfluence {record['version']}, strategy {strategy}, MC Fisher with "
            f"{refs.MC_SAMPLES} sampled labels per example (the training set repeated: "
            f"{record['fit_examples']} examples), float64, damping_factor λ; "
            f"{record['wall_seconds']:.1f} s with the subprocess"
        )
        return Estimate(scores, note=note, seconds=seconds)

    solve.__doc__ = f"kronfluence 1.0.1's {strategy} pairwise scores (subprocess)."
    return solve


def dattri_ekfac(p: Problem) -> Estimate:
    """dattri 0.2.0's ``IFAttributorEKFAC(damping=λ)`` (subprocess): its factors come from the
    loss at the data's labels, the empirical Fisher. The check after the timed part compares
    the inverse it applies with the EK-FAC inverse of its own factors, and the scores with that
    inverse with linop's ``ekfac empirical`` (see ``_kfac_references._dattri_check``)."""
    scores, seconds, record = refs.dattri_ekfac_scores(
        p.theta, p.X, p.y, *_data_points(p), p.model.lam, check=True
    )
    loss = torch.nn.CrossEntropyLoss()
    K = EKFACOperator.from_module(mlp_module(p.theta), loss, (p.X, p.y), kind="empirical")
    ours = p.G_test.T @ (K.regularize(p.model.lam).inverse() @ p.G_train)
    fixed = record["corrected_scores"]
    layers = ", ".join(f"{v:.2f}" for v in record["check"].values())
    note = (
        f"dattri {record['version']}, damping λ, empirical Fisher (its loss at the data's "
        f"labels); {record['wall_seconds']:.1f} s with the subprocess. Its inverse is {layers} "
        "(rel. Frobenius, per layer) from the EK-FAC inverse of its own factors: it projects "
        "on the rows of eigh's eigenvector matrices, not the columns, and reshapes [vec(W), b] "
        "to (out, in + 1) without putting the bias in the last column. With that inverse its "
        f"scores are {float((fixed - ours).norm() / ours.norm()):.1e} from linop's ekfac "
        f"empirical (as given: {float((scores - ours).norm() / ours.norm()):.2f})"
    )
    return Estimate(scores, note=note, seconds=seconds)


#: The reference rows; never run by default (name them in ``--methods``; ``--model mlp`` only).
REFERENCE_METHODS: dict[str, InverseMethod] = {
    "curvlinops kfac type2": _curvlinops_method(False, "type-2"),
    "curvlinops kfac mc": _curvlinops_method(False, "mc"),
    "curvlinops ekfac type2": _curvlinops_method(True, "type-2"),
    "curvlinops ekfac mc": _curvlinops_method(True, "mc"),
    "kronfluence kfac": _kronfluence_method("kfac"),
    "kronfluence ekfac": _kronfluence_method("ekfac"),
    "dattri ekfac": dattri_ekfac,
}
#: The reference rows that compute their own gradients from the points (not ``G_train``).
OWN_GRADIENT_METHODS = ("kronfluence kfac", "kronfluence ekfac", "dattri ekfac")

#: Every method :func:`run` knows.
ALL_METHODS: dict[str, InverseMethod] = {**METHODS, **CURVATURE_METHODS, **REFERENCE_METHODS}

#: Methods left out by default with ``--model mlp`` (ask for them with ``--methods``): on its
#: ill-conditioned A (condition number 1.6e3, 2410 parameters) they took, measured on the default
#: run, LiSSA 108 s (Spearman 0.955), the random projection 27 s (0.217: its CG solve again)
#: and scipy's CG 32 s, against 4.6 s for the explicit solve.
MLP_SKIPPED = ("lissa", "random projection of cg", "cg (scipy)")

# ---------------------------------------------------------------------------------------------

DEFAULTS = dict(num_train=1200, num_test=200, num_removed=60)
QUICK = dict(num_train=300, num_test=50, num_removed=20)
LAMBDA = LOGISTIC.lam
#: Where :func:`run` writes its JSON lines unless ``--out`` says otherwise.
DEFAULT_OUT = REPO_ROOT / "benchmarks" / "out" / "attribution_cpu.jsonl"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.attribution",
        description="Leave-one-out retraining vs influence-function predictions on sklearn digits.",
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
        "--model",
        choices=list(MODELS),
        default="logistic",
        help="logistic: multinomial logistic regression, λ = 1e-3 (the protocol's model; "
        "default); mlp: a 64-32-10 tanh MLP, λ = 1e-2 (see _digits.MLP)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"a tiny configuration for tests: {QUICK['num_train']} training / "
        f"{QUICK['num_test']} test points, {QUICK['num_removed']} removed",
    )
    p.add_argument(
        "--methods",
        default=None,
        help=f"comma-separated inverse methods to compare (default: all of {', '.join(METHODS)}; "
        f"with --model mlp all but {', '.join(MLP_SKIPPED)}, plus {', '.join(CURVATURE_METHODS)}). "
        f"Only when named, with --model mlp: the reference libraries' rows "
        f"{', '.join(REFERENCE_METHODS)}",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch and BLAS threads (default 1: the problem is too small to gain from more; "
        "see _digits.limit_threads)",
    )
    p.add_argument(
        "--plot",
        default=None,
        metavar="FILE.png",
        help="also draw the predictions against the truth into FILE.png (needs matplotlib: "
        'pip install -e ".[bench]")',
    )
    p.add_argument(
        "--out",
        default=str(DEFAULT_OUT),
        help="the JSON lines file (one record per method; default benchmarks/out/"
        f"{DEFAULT_OUT.name}); an empty string writes none",
    )
    args = p.parse_args(argv)
    if args.plot is not None and importlib.util.find_spec("matplotlib") is None:
        p.error(
            '--plot needs matplotlib, which is not installed: pip install -e ".[bench]" '
            "(or run without --plot: the table and its diagnostics need no plotting)"
        )
    config = QUICK if args.quick else DEFAULTS
    args.num_train, args.num_test = config["num_train"], config["num_test"]
    if args.num_removed is None:
        args.num_removed = config["num_removed"]
    if args.threads < 1:
        p.error("--threads must be positive")
    if not 2 <= args.num_removed <= args.num_train:
        p.error(f"--num-removed must be between 2 and {args.num_train}")
    if args.methods is None:
        skipped = MLP_SKIPPED if args.model == "mlp" else ()
        extra = list(CURVATURE_METHODS) if args.model == "mlp" else []
        args.methods = ",".join([m for m in METHODS if m not in skipped] + extra)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not args.methods:
        p.error("--methods names no method")
    unknown = [m for m in args.methods if m not in ALL_METHODS]
    if unknown:
        p.error(f"unknown method(s) {unknown}; known: {list(ALL_METHODS)}")
    references = [m for m in args.methods if m in REFERENCE_METHODS]
    if references and args.model != "mlp":
        p.error(f"the reference rows {references} attribute the MLP: add --model mlp")
    for m in references:  # refuse now, not after the retraining
        try:
            refs.check_available(m.split()[0])
        except ReferenceUnavailable as e:
            p.error(f"{m}: {e}")
    return args


def spearman_per_row(actual: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """Spearman correlation of each row of ``actual`` with the same row of ``predicted``."""
    return np.array(
        [scipy.stats.spearmanr(a, p).statistic for a, p in zip(actual, predicted, strict=True)]
    )


def leave_one_out(
    model: Model, split: Any, theta: torch.Tensor, removed: np.ndarray
) -> tuple[np.ndarray, dict[str, float]]:
    """True test-loss changes ``(num_test, num_removed)`` from warm-started retraining."""
    X, y = split.X_train, split.y_train
    base = model.example_losses(theta, split.X_test, split.y_test)
    factor = None
    if not model.convex:  # the MLP's retraining steps with the full-data Hessian, factorised once
        dense = model.regularized_hessian(theta, X, y).to_dense()
        factor = torch.linalg.cholesky((dense + dense.T) / 2)
    changes = np.empty((split.X_test.shape[0], len(removed)))
    worst, iters, steps = 0.0, [], []
    for k, j in enumerate(tqdm(removed, desc="retraining without each point")):
        keep = torch.ones(X.shape[0], dtype=torch.bool)
        keep[int(j)] = False
        theta_j, info = model.retrain(X[keep], y[keep], theta, factor)
        changes[:, k] = (model.example_losses(theta_j, split.X_test, split.y_test) - base).numpy()
        worst = max(worst, info.grad_norm)
        iters.append(info.lbfgs_iterations)
        steps.append(info.newton_steps)
    return changes, {
        "max_grad_norm": worst,
        "mean_lbfgs_iterations": float(np.mean(iters)),
        "mean_newton_steps": float(np.mean(steps)),
    }


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
    for ax, (p, label) in zip(axes[:2], panels, strict=True):
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
    ax.set_title(f"test point {t} (median Spearman {rho[t]:.3f}), {R} removed points", fontsize=10)
    fig.suptitle(f"Influence on sklearn digits: mean Spearman {np.mean(rho):.4f} ({method})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the experiment; print the table and return the results.

    Returns a dict with ``config``, ``train`` (full-data fit), ``retrain`` (seconds and
    convergence), ``actual`` (true changes, ``(num_test, num_removed)``), ``methods`` (per method:
    ``seconds``, ``mean_spearman``, ``spearman`` per test point, ``predicted``, ``info`` (the
    :class:`linop.SolveInfo`, or None), ``products``, ``note`` and ``rel_error`` (relative
    Frobenius distance of ``predicted`` to the explicit method's, None without it)), ``table``
    (rows ``(method, seconds, mean_spearman)``), ``diagnostics`` (for the first method: pooled
    Pearson correlation, median relative errors raw and with the common shift ``s``),
    ``spectrum`` (the eigenvalue counts behind the Arnoldi note, or None), ``plot`` (the path
    written, or None), ``out`` (the JSON lines written, or None) and ``seconds`` (the whole run).
    """
    args = parse_args(argv)
    with limit_threads(args.threads):
        return _run(args)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m benchmarks.attribution``: :func:`run`, exit status 0."""
    run(argv)
    return 0


#: The methods whose rows the Arnoldi note under the table explains.
LOW_RANK_METHODS = ("arnoldi", "arnoldi + complement", "arnoldi projection")


def spectrum_counts(problem: Problem) -> dict[str, Any]:
    """How far from low rank ``A = H_data + λI`` is: its eigenvalues from the dense matrix
    (``num_params`` batched products; a second at 650 parameters), counted above ``1.5 λ`` —
    the directions where a low-rank inverse that drops them (or, with the complement, treats
    them as ``λ``) is off by more than a factor 1.5."""
    lam = problem.model.lam
    dense = problem.operator().to_dense()
    eig = torch.linalg.eigvalsh((dense + dense.T) / 2)
    return {
        "num_params": int(eig.numel()),
        "above_1.5_lambda": int((eig > 1.5 * lam).sum()),
        "largest_over_lambda": float(eig.max()) / lam,
    }


def _run(args: argparse.Namespace) -> dict[str, Any]:
    t_start = time.perf_counter()
    model = MODELS[args.model]
    split = load_split(args.num_train, args.num_test, args.seed)
    n = split.X_train.shape[0]
    removed = np.sort(
        np.random.default_rng(args.seed + 1).choice(n, size=args.num_removed, replace=False)
    )

    theta, info = model.train(split.X_train, split.y_train, seed=args.seed)
    accuracy = float(model.logits(theta, split.X_test).argmax(1).eq(split.y_test).double().mean())
    print(
        f"digits, {model.name} ({model.num_params} parameters, λ = {model.lam:g}): {n} train / "
        f"{split.X_test.shape[0]} test, {args.num_removed} removed, seed {args.seed}; full fit "
        f"in {info.seconds:.1f} s ({info.lbfgs_iterations} L-BFGS iterations + "
        f"{info.newton_steps} Newton, ‖∇‖ = {info.grad_norm:.1e}), test accuracy {accuracy:.3f}"
    )

    t0 = time.perf_counter()
    actual, retrain_info = leave_one_out(model, split, theta, removed)
    retrain_seconds = time.perf_counter() - t0
    print(
        f"ground truth: retrained without each of the {args.num_removed} removed points in "
        f"{retrain_seconds:.1f} s (max final ‖∇‖ {retrain_info['max_grad_norm']:.1e}); now "
        f"{len(args.methods)} inverse methods predict the same test-loss changes"
    )

    problem = Problem(
        model,
        theta,
        split.X_train,
        split.y_train,
        G_train=model.example_grads(theta, split.X_train[removed], split.y_train[removed]),
        G_test=model.example_grads(theta, split.X_test, split.y_test),
        X_test=split.X_test,
        y_test=split.y_test,
        X_removed=split.X_train[removed],
        y_removed=split.y_train[removed],
    )

    results: dict[str, dict[str, Any]] = {}
    bar = tqdm(args.methods, desc="inverse methods", leave=False)
    for name in bar:
        bar.set_postfix_str(name)
        t0 = time.perf_counter()
        est = ALL_METHODS[name](problem)
        seconds = time.perf_counter() - t0 if est.seconds is None else est.seconds
        predicted = est.scores.numpy() / n  # (T, R)
        rho = spearman_per_row(actual, predicted)
        results[name] = {
            "seconds": seconds,
            "mean_spearman": float(np.mean(rho)),
            "spearman": rho,
            "predicted": predicted,
            "info": est.info,
            "products": est.products,
            "note": est.note,
        }
    reference = results.get("explicit", {}).get("predicted")
    for r in results.values():  # relative Frobenius distance to the dense solve's predictions
        r["rel_error"] = (
            None
            if reference is None
            else float(np.linalg.norm(r["predicted"] - reference) / np.linalg.norm(reference))
        )

    # The term common to all removed points (see the module docstring), for the diagnostics:
    # the first method applied to the single right-hand side λθ (the explicit solve where that
    # method computes its own gradients from the points).
    first = next((m for m in args.methods if m not in OWN_GRADIENT_METHODS), args.methods[0])
    shifter = "explicit" if first in OWN_GRADIENT_METHODS else first
    s_scores = ALL_METHODS[shifter](replace(problem, G_train=(model.lam * theta)[:, None])).scores
    shift = s_scores[:, 0].numpy() / (n - 1)
    pred = results[first]["predicted"]
    rel = lambda p: float(np.median(np.abs(actual - p) / np.abs(actual)))  # noqa: E731
    diagnostics = {
        "method": first,
        "shift": shift,
        "pearson_pooled": float(np.corrcoef(actual.ravel(), pred.ravel())[0, 1]),
        "median_rel_error": rel(pred),
        "median_rel_error_with_shift": rel(pred + shift[:, None]),
    }
    low_rank = [m for m in LOW_RANK_METHODS if m in results]
    spectrum = spectrum_counts(problem) if low_rank else None

    table = [(m, r["seconds"], r["mean_spearman"]) for m, r in results.items()]
    print()
    print(format_table(results))
    print(legend(results, args.num_removed, n))
    if spectrum is not None:
        print(arnoldi_note(results, low_rank, spectrum, model.lam))
    details = [(m, r) for m, r in results.items() if r["info"] is not None or r["note"]]
    if details:
        print("\nsolver details (linop SolveInfo; products count columns, set-up included):")
        for m, r in details:
            line = str(r["info"]) if r["info"] is not None else ""
            print(f"  {m}: " + "; ".join(x for x in (line, r["note"]) if x))

    print(shift_note(diagnostics, actual))

    plot = None
    if args.plot is not None:
        write_plot(args.plot, actual, pred, shift, results[first]["spearman"], first)
        plot = args.plot
        print(f"plot: {plot}")
    else:
        print(
            "plot: none asked for (--plot FILE.png draws the predictions against the truth; it "
            'needs matplotlib: pip install -e ".[bench]")'
        )
    config = {
        "model": model.name,
        "num_train": n,
        "num_test": int(split.X_test.shape[0]),
        "num_removed": args.num_removed,
        "seed": args.seed,
        "lambda": model.lam,
        "threads": args.threads,
    }
    out = None
    if args.out:
        records = [
            {
                "benchmark": "attribution",
                **config,
                "method": m,
                "seconds": r["seconds"],
                "mean_spearman": r["mean_spearman"],
                "products": r["products"],
                "rel_error_vs_explicit": r["rel_error"],
                "note": r["note"],
            }
            for m, r in results.items()
        ]
        out = write_jsonl(args.out, records)
        print(f"wrote {out}")
    total = time.perf_counter() - t_start
    print(f"total: {total:.1f} s")

    return {
        "config": {**config, "removed": removed},
        "train": {"seconds": info.seconds, "grad_norm": info.grad_norm, "test_accuracy": accuracy},
        "retrain": {"seconds": retrain_seconds, **retrain_info},
        "actual": actual,
        "methods": results,
        "table": table,
        "diagnostics": diagnostics,
        "spectrum": spectrum,
        "plot": plot,
        "out": out,
        "seconds": total,
    }


def _paragraph(text: str) -> str:
    """``text`` wrapped to 100 columns, continuation lines indented, after a blank line."""
    return "\n" + textwrap.fill(text, width=100, subsequent_indent="  ", break_on_hyphens=False)


def legend(results: dict[str, dict[str, Any]], num_removed: int, n: int) -> str:
    """What the columns of :func:`format_table` mean, printed under it."""
    lissa = " (LiSSA's act on minibatches, each cheaper)" if "lissa" in results else ""
    return _paragraph(
        "columns: seconds = wall time of the method, set-up included. mean Spearman = for each "
        f"test point, the rank correlation across the {num_removed} removed training points "
        "between the predicted and the true (retrained) change of its loss, averaged over the "
        "test points (1: the same order). products = operator products, one per column, set-up "
        f'included{lissa}; "-": not counted. vs explicit = the relative distance '
        "‖P − P_explicit‖_F / ‖P_explicit‖_F of the predictions P to the explicit solve's "
        f"(0: identical). Predictions are g_testᵀ A⁻¹ g_j / n (n: the {n} training points), "
        "with A = H + λI the Hessian of the training objective."
    )


def arnoldi_note(
    results: dict[str, dict[str, Any]], low_rank: list[str], spectrum: dict[str, Any], lam: float
) -> str:
    """One line on why the low-rank rows score low: this Hessian is not low-rank."""
    rho = ", ".join(f"{m} {results[m]['mean_spearman']:.2f}" for m in low_rank)
    large = "arnoldi 300 + complement"
    better = (
        f"; the rank-{ARNOLDI_LARGE_RANK} row gets {results[large]['mean_spearman']:.2f}"
        if large in results
        else ""
    )
    many = spectrum["above_1.5_lambda"]
    return _paragraph(
        f"why the low-rank rows score low ({rho}): this Hessian is not low-rank. {many} of the "
        f"{spectrum['num_params']} eigenvalues of A exceed 1.5 λ (λ = {lam:g}); a "
        f"rank-{ARNOLDI_RANK} inverse keeps only the top {ARNOLDI_RANK} and drops the rest (or, "
        f"with the complement, treats them as λ), so only ranks near {many} can be "
        f"accurate{better}."
    )


def shift_note(diagnostics: dict[str, Any], actual: np.ndarray) -> str:
    """The first method against the truth, raw and with the common shift ``s``, explained."""
    d, shift = diagnostics, diagnostics["shift"]
    return _paragraph(
        f"{d['method']} against the truth: pooled Pearson {d['pearson_pooled']:.4f}; median "
        f"relative error {d['median_rel_error']:.3f} raw, {d['median_rel_error_with_shift']:.4f} "
        "after adding the common shift s. The retrained model minimises the mean over the n − 1 "
        "remaining points, which adds the same s = g_testᵀ A⁻¹ λθ / (n − 1) to the true change "
        "of a test point's loss whichever point was removed: s cannot change a ranking "
        f"(Spearman) but is as large as the smallest changes (median |s| "
        f"{np.median(np.abs(shift)):.1e}, median |true change| {np.median(np.abs(actual)):.1e})."
    )


def format_table(results: dict[str, dict[str, Any]]) -> str:
    """The printed table: seconds, mean Spearman, operator products (columns counted, set-up
    included; "-" where not counted), and the relative distance of the predictions to the
    explicit solve's (‖P − P_explicit‖_F / ‖P_explicit‖_F)."""
    width = max(len("method"), *(len(m) for m in results))
    lines = [
        f"{'method':<{width}}  {'seconds':>8}  {'mean Spearman':>13}  {'products':>8}  "
        f"{'vs explicit':>11}"
    ]
    for m, r in results.items():
        prod = "-" if r["products"] is None else str(r["products"])
        err = "-" if r["rel_error"] is None else f"{r['rel_error']:.1e}"
        lines.append(
            f"{m:<{width}}  {r['seconds']:8.2f}  {r['mean_spearman']:13.4f}  {prod:>8}  {err:>11}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
