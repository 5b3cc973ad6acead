"""Data, models and training for the attribution benchmark (:mod:`benchmarks.attribution`).

Model (the default, :data:`LOGISTIC`; the optional MLP is :data:`MLP`, at the end): multinomial
logistic regression on sklearn's bundled 8×8 digits, a flat float64 parameter
vector ``theta`` of 650 entries (a 64×10 weight matrix, row-major, then a bias of 10).

Training objective: ``mean cross-entropy + (λ/2)‖theta‖²`` with ``λ = 1e-3``, so its Hessian is
exactly ``H_data + λ I`` — a :class:`linop.RegularizedOperator` that knows ``λ``.

Documented choice: the penalty covers the bias too. With an unpenalised bias the objective is
invariant to adding the same constant to every bias entry (softmax shift invariance), so its
Hessian is singular along that direction and an explicit solve is ill-posed. Penalising the 10
bias entries with the same small ``λ`` removes that null direction (the smallest eigenvalue of the
objective's Hessian is then ``λ``) and keeps the Hessian a pure ``H_data + λ I``.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import scipy.optimize
import torch
from torch.func import grad, vmap

from linop import (
    ConvergenceWarning,
    HessianOperator,
    IdentityOperator,
    NegativeCurvatureWarning,
    RegularizedOperator,
)

NUM_FEATURES = 64
NUM_CLASSES = 10
NUM_PARAMS = NUM_FEATURES * NUM_CLASSES + NUM_CLASSES
DTYPE = torch.float64


@dataclass
class Split:
    """Standardised train/test tensors (float64 features, int64 labels)."""

    X_train: torch.Tensor
    y_train: torch.Tensor
    X_test: torch.Tensor
    y_test: torch.Tensor


def load_split(num_train: int, num_test: int, seed: int) -> Split:
    """A random train/test split of sklearn's bundled digits (no download).

    Features are standardised with the training set's mean and standard deviation (pixels that
    are constant on the training set are left centred, with scale 1).
    """
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    if num_train + num_test > len(X):
        raise ValueError(f"only {len(X)} digits, asked for {num_train} + {num_test}")
    order = np.random.default_rng(seed).permutation(len(X))
    tr, te = order[:num_train], order[num_train : num_train + num_test]
    mean, std = X[tr].mean(axis=0), X[tr].std(axis=0)
    std[std == 0] = 1.0

    def feats(idx: np.ndarray) -> torch.Tensor:
        return torch.as_tensor((X[idx] - mean) / std, dtype=DTYPE)

    def labels(idx: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(y[idx], dtype=torch.int64)

    return Split(feats(tr), labels(tr), feats(te), labels(te))


def logits(theta: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    """``X W + b`` for a flat ``theta`` (works for one example ``x`` of shape ``(64,)`` too)."""
    W = theta[: NUM_FEATURES * NUM_CLASSES].reshape(NUM_FEATURES, NUM_CLASSES)
    b = theta[NUM_FEATURES * NUM_CLASSES :]
    return X @ W + b


def mean_loss(theta: torch.Tensor, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over a batch (the data term of the objective)."""
    return torch.nn.functional.cross_entropy(logits(theta, X), y)


def example_loss(theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of one example ``x`` (shape ``(64,)``), ``y`` a 0-d label."""
    return torch.nn.functional.cross_entropy(logits(theta, x)[None], y[None])


def objective(theta: torch.Tensor, X: torch.Tensor, y: torch.Tensor, lam: float) -> torch.Tensor:
    """The training objective: mean cross-entropy + (λ/2)‖theta‖²."""
    return mean_loss(theta, X, y) + 0.5 * lam * theta.dot(theta)


def example_losses(theta: torch.Tensor, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-example cross-entropies, shape ``(N,)``."""
    return torch.nn.functional.cross_entropy(logits(theta, X), y, reduction="none")


def example_grads(theta: torch.Tensor, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-example loss gradients ``∇θ ℓ(θ; x_i, y_i)`` as columns, shape ``(650, N)``
    (``torch.func``: vmap of grad over the examples)."""
    return vmap(grad(example_loss), in_dims=(None, 0, 0))(theta, X, y).T.contiguous()


def objective_and_grad(
    theta: torch.Tensor, X: torch.Tensor, y: torch.Tensor, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The objective and its gradient in closed form (no autograd: the training loop calls it
    thousands of times, and autograd's overhead would dominate at this size):
    ``∇ = (1/N) X̃ᵀ (softmax(Z) − onehot(y)) + λθ``, laid out like ``theta``."""
    n = X.shape[0]
    Z = logits(theta, X)
    logZ = torch.logsumexp(Z, dim=1, keepdim=True)
    value = (logZ[:, 0] - Z.gather(1, y[:, None])[:, 0]).mean() + 0.5 * lam * theta.dot(theta)
    R = torch.exp(Z - logZ)
    R[torch.arange(n), y] -= 1.0
    gW = X.T @ R / n
    gb = R.mean(dim=0)
    return value, torch.cat([gW.reshape(-1), gb]) + lam * theta


@contextlib.contextmanager
def limit_threads(num_threads: int = 1) -> Iterator[None]:
    """Limit torch's intra-op pool and the BLAS/OpenMP pools (through threadpoolctl, which
    scikit-learn installs) to ``num_threads`` inside the block.

    This problem is tiny (650 parameters): its calls take well under a millisecond, where a thread
    pool only adds overhead — and on a 2-core machine shared with other processes a great deal of
    it (measured while other jobs held both cores: objective+gradient 0.35 ms on 1 thread vs 85 ms
    on 2; one Hessian-vector product 0.9 ms vs 55 ms; a warm-started retraining 0.10 s vs 0.31 s
    with scipy's BLAS on 2 threads).
    """
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(num_threads)
    try:
        with threadpool_limits(num_threads):
            yield
    finally:
        torch.set_num_threads(before)


@dataclass
class TrainInfo:
    lbfgs_iterations: int
    lbfgs_grad_norm: float  # ‖∇objective‖ where L-BFGS stopped
    newton_steps: int
    grad_norm: float  # ‖∇objective‖ at the returned parameters
    seconds: float


def data_hessian_dense(theta: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    """The Hessian of the mean cross-entropy, in closed form, ``(650, 650)``.

    ``(1/N) Σ_i (x̃_i x̃_iᵀ) ⊗ (diag p_i − p_i p_iᵀ)`` with ``x̃_i = [x_i, 1]`` and ``p_i`` the
    softmax of the logits, in the layout of ``theta`` (feature-major, class-minor, bias last). It
    does not depend on the labels. Used for the Newton polish of training and as an independent
    check of ``linop.HessianOperator`` in the tests.
    """
    n = X.shape[0]
    P = torch.softmax(logits(theta, X), dim=1)  # (N, C)
    Xa = torch.cat([X, torch.ones(n, 1, dtype=X.dtype)], dim=1)  # (N, F+1)
    F1, C = Xa.shape[1], NUM_CLASSES
    M = (Xa[:, :, None] * P[:, None, :]).reshape(n, F1 * C)  # rows x̃_i ⊗ p_i
    # diagonal-in-class part: block (f, c), (g, c) = (1/N) Σ_i x̃_if x̃_ig p_ic
    diag = (Xa.T @ M / n).reshape(F1, F1, C)  # [f, g, c]
    H = torch.zeros(F1, C, F1, C, dtype=X.dtype)
    idx = torch.arange(C)
    H[:, idx, :, idx] = diag.permute(2, 0, 1)  # advanced indices first: [c, f, g]
    return H.reshape(F1 * C, F1 * C) - M.T @ M / n


def newton_polish(
    theta: torch.Tensor, X: torch.Tensor, y: torch.Tensor, lam: float, max_steps: int = 5
) -> tuple[torch.Tensor, int, float]:
    """Newton steps (closed-form Hessian, dense solve) from a point already near the optimum,
    until the gradient stops shrinking. Returns ``(theta, steps, final gradient norm)``."""
    g = objective_and_grad(theta, X, y, lam)[1]
    norm, steps = float(g.norm()), 0
    eye = torch.eye(NUM_PARAMS, dtype=theta.dtype)
    while steps < max_steps:
        step = torch.linalg.solve(data_hessian_dense(theta, X) + lam * eye, g)
        candidate = theta - step
        g_new = objective_and_grad(candidate, X, y, lam)[1]
        if not float(g_new.norm()) < norm:
            break
        theta, g, norm, steps = candidate, g_new, float(g_new.norm()), steps + 1
        if norm < 1e-15:
            break
    return theta, steps, norm


def train(
    X: torch.Tensor,
    y: torch.Tensor,
    lam: float,
    theta0: torch.Tensor | None = None,
    gtol: float = 1e-10,
    max_iter: int = 20_000,
) -> tuple[torch.Tensor, TrainInfo]:
    """Minimise the objective in float64: scipy's L-BFGS-B from ``theta0`` (default zero), then
    a Newton polish to the float64 floor.

    Why the polish: L-BFGS-B's line search compares objective values, and it stalls once the
    decrease falls below the objective's rounding error — here at ‖∇‖ ≈ 1e-9, i.e. parameter
    errors up to ‖∇‖/λ ≈ 1e-6 and test-loss errors ≈ 2e-7 (measured), while the median
    leave-one-out test-loss change is only ≈ 4e-6. One Newton step from there brings ‖∇‖ to
    ≈ 2e-16 (measured), so the retrained differences are accurate to many digits.
    """

    def fun(t: np.ndarray) -> tuple[float, np.ndarray]:
        f, g = objective_and_grad(torch.from_numpy(t), X, y, lam)
        return float(f), g.numpy()

    start = np.zeros(NUM_PARAMS) if theta0 is None else theta0.detach().numpy().copy()
    t0 = time.perf_counter()
    with limit_threads(1):
        res = scipy.optimize.minimize(
            fun,
            start,
            jac=True,
            method="L-BFGS-B",
            options={"maxiter": max_iter, "gtol": gtol, "ftol": 0.0, "maxcor": 30},
        )
        theta = torch.from_numpy(res.x)
        lbfgs_norm = float(objective_and_grad(theta, X, y, lam)[1].norm())
        theta, steps, norm = newton_polish(theta, X, y, lam)
    seconds = time.perf_counter() - t0
    return theta, TrainInfo(int(res.nit), lbfgs_norm, steps, norm, seconds)


def regularized_hessian(
    theta: torch.Tensor, X: torch.Tensor, y: torch.Tensor, lam: float
) -> RegularizedOperator:
    """The Hessian of the training objective at ``theta``: ``H_data + λ I``.

    ``H_data`` is ``linop.HessianOperator(mean_loss, (theta, X, y))`` (never formed); adding
    ``λ I`` gives a :class:`linop.RegularizedOperator` whose ``shift`` is ``λ``.
    """
    H = HessianOperator(mean_loss, (theta, X, y), psd=True)
    A = H + lam * IdentityOperator.like(H)
    assert isinstance(A, RegularizedOperator) and A.shift == lam
    return A


# ---------------------------------------------------------------------------------------------
# The models the benchmark can attribute: the default logistic regression above, and a small MLP.

MLP_HIDDEN = 32
#: 64×32 + 32 + 32×10 + 10 entries: W1 (row-major), b1, W2 (row-major), b2.
MLP_PARAMS = NUM_FEATURES * MLP_HIDDEN + MLP_HIDDEN + MLP_HIDDEN * NUM_CLASSES + NUM_CLASSES


def mlp_logits(theta: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    """``tanh(X W1 + b1) W2 + b2`` for a flat ``theta`` of :data:`MLP_PARAMS` entries (works for
    one example ``x`` of shape ``(64,)`` too)."""
    F, Hd, C = NUM_FEATURES, MLP_HIDDEN, NUM_CLASSES
    i = 0
    W1 = theta[i : i + F * Hd].reshape(F, Hd)
    i += F * Hd
    b1 = theta[i : i + Hd]
    i += Hd
    W2 = theta[i : i + Hd * C].reshape(Hd, C)
    i += Hd * C
    b2 = theta[i:]
    return torch.tanh(X @ W1 + b1) @ W2 + b2


class Conv1D(torch.nn.Module):
    """``x @ weight + bias`` with ``weight`` stored ``(in, out)``: GPT-2's transposed linear
    layer, which K-FAC takes as such (its class name is ``Conv1D``)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(weight.detach().clone())
        self.bias = torch.nn.Parameter(bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight + self.bias


def mlp_module(theta: torch.Tensor) -> torch.nn.Module:
    """The MLP at ``theta`` as an ``nn.Module`` whose flat parameters (``named_parameters``
    order) are ``theta`` itself: two :class:`Conv1D` layers around a tanh."""
    F, Hd, C = NUM_FEATURES, MLP_HIDDEN, NUM_CLASSES
    sizes = [F * Hd, Hd, Hd * C, C]
    W1, b1, W2, b2 = torch.split(theta.detach(), sizes)
    return torch.nn.Sequential(
        Conv1D(W1.reshape(F, Hd), b1), torch.nn.Tanh(), Conv1D(W2.reshape(Hd, C), b2)
    ).eval()


@dataclass(frozen=True)
class Model:
    """A classifier with a flat float64 parameter vector, trained on
    ``mean cross-entropy + (lam/2)‖theta‖²``.

    Attributes:
        name: ``"logistic"`` or ``"mlp"``.
        num_params: the length of ``theta``.
        logits: ``(theta, X) -> logits`` (also for one example).
        lam: the L2 weight of the training objective; its Hessian is ``H_data + lam I``.
        convex: whether ``H_data`` is positive semi-definite everywhere (logistic regression);
            the MLP's is not (see :data:`MLP`).
    """

    name: str
    num_params: int
    logits: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    lam: float
    convex: bool

    def mean_loss(self, theta: torch.Tensor, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(self.logits(theta, X), y)

    def example_loss(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(self.logits(theta, x)[None], y[None])

    def example_losses(self, theta: torch.Tensor, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(self.logits(theta, X), y, reduction="none")

    def example_grads(self, theta: torch.Tensor, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-example loss gradients as columns, ``(num_params, N)``."""
        return vmap(grad(self.example_loss), in_dims=(None, 0, 0))(theta, X, y).T.contiguous()

    def objective(self, theta: torch.Tensor, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.mean_loss(theta, X, y) + 0.5 * self.lam * theta.dot(theta)

    def objective_and_grad(
        self, theta: torch.Tensor, X: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.name == "logistic":
            return objective_and_grad(theta, X, y, self.lam)
        t = theta.detach().requires_grad_(True)
        value = self.objective(t, X, y)
        (g,) = torch.autograd.grad(value, t)
        return value.detach(), g

    def data_hessian(
        self, theta: torch.Tensor, X: torch.Tensor, y: torch.Tensor
    ) -> HessianOperator:
        """``H_data``, the Hessian of the mean loss (never formed)."""
        return HessianOperator(self.mean_loss, (theta, X, y), psd=self.convex)

    def regularized_hessian(
        self, theta: torch.Tensor, X: torch.Tensor, y: torch.Tensor
    ) -> RegularizedOperator:
        """The Hessian of the training objective, ``H_data + lam I``."""
        H = self.data_hessian(theta, X, y)
        A = H + self.lam * IdentityOperator.like(H)
        assert isinstance(A, RegularizedOperator) and A.shift == self.lam
        return A

    def init(self, seed: int) -> torch.Tensor:
        """The starting point of the full-data fit: zero for the convex model, a seeded small
        random point for the MLP (zero is a saddle of it)."""
        if self.convex:
            return torch.zeros(self.num_params, dtype=DTYPE)
        g = torch.Generator().manual_seed(seed)
        return 0.3 * torch.randn(self.num_params, dtype=DTYPE, generator=g)

    def train(
        self, X: torch.Tensor, y: torch.Tensor, seed: int = 0
    ) -> tuple[torch.Tensor, TrainInfo]:
        """The full-data fit (see :func:`train` and, for the MLP, :func:`train_mlp`)."""
        if self.name == "logistic":
            return train(X, y, self.lam)
        return train_mlp(self, X, y, self.init(seed))

    def retrain(
        self, X: torch.Tensor, y: torch.Tensor, theta: torch.Tensor, factor: torch.Tensor | None
    ) -> tuple[torch.Tensor, TrainInfo]:
        """Retraining on a subset, warm-started from the full-data optimum ``theta``.

        Logistic regression: :func:`train` (L-BFGS, then a Newton polish). The MLP, no L-BFGS:
        frozen-Newton (chord) steps ``θ ← θ − A₀⁻¹ ∇`` with ``factor`` the Cholesky factor of the
        full-data objective Hessian ``A₀`` at ``theta`` (:func:`chord_polish`), then, where those
        have not reached the float64 floor, Newton steps (:func:`newton_cg_polish`), and where
        even those fail (the removed point mattered too much for ``A₀``: seen on 300-point
        training sets), :func:`train_mlp` from there. ``newton_steps`` counts all the steps.
        """
        if self.name == "logistic":
            return train(X, y, self.lam, theta0=theta)
        assert factor is not None
        t0 = time.perf_counter()
        theta, chord, norm = chord_polish(self, theta, X, y, factor, max_steps=30)
        newton = 0
        if norm >= 1e-15:  # slow linear convergence on a few points: finish with Newton steps
            theta, newton, norm = newton_cg_polish(self, theta, X, y, factor)
        if norm > 1e-13:  # too far for the full-data Hessian: L-BFGS, then a fresh Hessian
            theta, info = train_mlp(self, X, y, theta)
            info.newton_steps += chord + newton
            info.seconds = time.perf_counter() - t0
            return theta, info
        return theta, TrainInfo(0, float("nan"), chord + newton, norm, time.perf_counter() - t0)


#: The default model: multinomial logistic regression (650 parameters), λ = 1e-3.
LOGISTIC = Model("logistic", NUM_PARAMS, logits, 1e-3, convex=True)

#: A 64-32-10 tanh MLP (2410 parameters), λ = 1e-2. Its data Hessian ``H_data`` is indefinite
#: at the optimum: measured on the default split, 365 of its 2410 eigenvalues are negative, the
#: smallest −9.6e-3 ≈ −λ (the penalty pulls the weights to where the data curvature bends down).
#: At an exact local minimum ``A = H_data + λI`` is positive semi-definite for any ``λ``, but its
#: smallest eigenvalues sit just above zero: ``λ = 1e-3`` gave ``A`` eigenvalues in
#: [1.1e-5, 0.166] (condition number 1.5e4), ``λ = 1e-2`` [3.6e-4, 0.563] (1.6e3, test accuracy
#: 0.980 vs 0.975), which every inverse method needs: hence ``λ = 1e-2``.
MLP = Model("mlp", MLP_PARAMS, mlp_logits, 1e-2, convex=False)

MODELS = {"logistic": LOGISTIC, "mlp": MLP}


def objective_hessian_dense(
    model: Model, theta: torch.Tensor, X: torch.Tensor, y: torch.Tensor
) -> torch.Tensor:
    """The dense Hessian of the training objective (``num_params`` batched HVPs via linop)."""
    return model.regularized_hessian(theta, X, y).to_dense()


def _polish(
    model: Model,
    theta: torch.Tensor,
    X: torch.Tensor,
    y: torch.Tensor,
    step: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    max_steps: int,
    patience: int,
    floor: float,
) -> tuple[torch.Tensor, int, float]:
    """Iterate ``θ ← step(θ, ∇f(θ))``; return the iterate with the smallest gradient, the steps
    taken to it and its ‖∇‖. Stops at ``floor``, on a non-finite gradient, after ``patience``
    steps without a new best, or at ``max_steps``."""
    g = model.objective_and_grad(theta, X, y)[1]
    best, best_norm, best_step = theta, float(g.norm()), 0
    for k in range(1, max_steps + 1):
        if best_norm < floor:
            break
        theta = step(theta, g)
        g = model.objective_and_grad(theta, X, y)[1]
        norm = float(g.norm())
        if not np.isfinite(norm):
            break
        if norm < best_norm:
            best, best_norm, best_step = theta, norm, k
        elif k - best_step >= patience:
            break
    return best, best_step, best_norm


def chord_polish(
    model: Model,
    theta: torch.Tensor,
    X: torch.Tensor,
    y: torch.Tensor,
    factor: torch.Tensor,
    max_steps: int = 60,
    patience: int = 3,
) -> tuple[torch.Tensor, int, float]:
    """Newton steps with a frozen Hessian, ``θ ← θ − A₀⁻¹ ∇f(θ)`` (``factor`` = Cholesky of
    ``A₀``); returns the iterate with the smallest gradient, the steps taken to it and its ‖∇‖.

    Near the optimum of a slightly different problem (one point fewer) this converges linearly at
    rate ``‖I − A₀⁻¹ A‖`` (small), to the float64 floor, at the cost of one gradient and two
    triangular solves per step. The answer is the exact stationary point of ``f``: the frozen
    Hessian only sets the speed, not the limit. The gradient norm need not fall at every step
    (measured on the MLP: occasional small rises), so it stops after ``patience`` steps without a
    new best, or at ``max_steps``.
    """

    def step(theta: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return theta - torch.cholesky_solve(g[:, None], factor)[:, 0]

    return _polish(model, theta, X, y, step, max_steps, patience, 1e-16)


def newton_cg_polish(
    model: Model,
    theta: torch.Tensor,
    X: torch.Tensor,
    y: torch.Tensor,
    factor: torch.Tensor,
    max_steps: int = 12,
) -> tuple[torch.Tensor, int, float]:
    """Newton steps ``θ ← θ − A(θ)⁻¹ ∇f(θ)`` with ``A(θ)`` the objective Hessian at the current
    point as a linop operator, solved by linop's CG to ``rtol`` 1e-10 preconditioned by the
    frozen Cholesky factor of ``A₀`` (measured: 11-17 CG iterations per step; quadratic
    convergence to ‖∇‖ ≈ 1e-16 in 5-7 steps where chord steps crawled). Returns the iterate with
    the smallest gradient, its step count and its ‖∇‖."""
    precondition = lambda R: torch.cholesky_solve(R, factor)  # noqa: E731

    def step(theta: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        A = model.regularized_hessian(theta, X, y)
        with warnings.catch_warnings():  # judged by the gradient norm, not by CG's flags
            warnings.simplefilter("ignore", ConvergenceWarning)
            warnings.simplefilter("ignore", NegativeCurvatureWarning)
            return theta - A.inverse("cg", rtol=1e-10, preconditioner=precondition) @ g

    return _polish(model, theta, X, y, step, max_steps, 2, 1e-15)


def train_mlp(
    model: Model,
    X: torch.Tensor,
    y: torch.Tensor,
    theta0: torch.Tensor,
    factor: torch.Tensor | None = None,
    gtol: float = 1e-9,
    max_iter: int = 20_000,
) -> tuple[torch.Tensor, TrainInfo]:
    """L-BFGS-B from ``theta0``, then a polish to the float64 floor by chord steps
    (:func:`chord_polish`) with ``factor``, or, when none is given, with the Cholesky factor of
    the dense objective Hessian where L-BFGS stopped (``num_params`` batched HVPs)."""

    def fun(t: np.ndarray) -> tuple[float, np.ndarray]:
        f, g = model.objective_and_grad(torch.from_numpy(t), X, y)
        return float(f), g.numpy()

    t0 = time.perf_counter()
    res = scipy.optimize.minimize(
        fun,
        theta0.detach().numpy().copy(),
        jac=True,
        method="L-BFGS-B",
        options={"maxiter": max_iter, "gtol": gtol, "ftol": 0.0, "maxcor": 30},
    )
    theta = torch.from_numpy(res.x)
    lbfgs_norm = float(model.objective_and_grad(theta, X, y)[1].norm())
    if factor is None:
        factor, info = torch.linalg.cholesky_ex(objective_hessian_dense(model, theta, X, y))
        if int(info) != 0:
            raise RuntimeError(
                "the objective Hessian is not positive definite where L-BFGS "
                "stopped: not a local minimum"
            )
    theta, steps, norm = chord_polish(model, theta, X, y, factor)
    return theta, TrainInfo(int(res.nit), lbfgs_norm, steps, norm, time.perf_counter() - t0)
