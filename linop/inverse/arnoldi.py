"""Lanczos (symmetric Arnoldi) eigenpairs, the low-rank inverse, and deflation for CG.

:func:`eigh` runs Lanczos with full reorthogonalisation from a seeded start, restarting with a
fresh vector orthogonal to the basis whenever it finds an invariant subspace early (the common
case for softmax losses, whose Hessians have an exact null space). The result is cached on the
operator, so ``(H + λI).inverse(method="arnoldi")`` for a sweep of ``λ`` costs no new products.

Handling of small and negative eigenvalues (never NaN): for ``(H + λI)⁻¹ ≈ V (Λ + λ)⁻¹ Vᵀ``
eigenpairs with ``|θ + λ| ≤ cutoff · max|θ + λ|`` are dropped (a pseudo-inverse on the resolved
subspace) with a :class:`~linop.errors.NegativeCurvatureWarning`; negative ``θ + λ`` beyond the
cutoff are inverted as they are (the exact inverse on their eigenvector) with the same warning.
"""

from __future__ import annotations

from typing import Any

import torch

from linop._warn import warn

from linop.errors import NegativeCurvatureWarning, ShapeMismatchError
from linop.inverse import SolveInfo, Strategy, register
from linop.operator import LinearOperator
from linop.structured import LowRankOperator


def _lanczos(A: LinearOperator, steps: int, seed: int, tol: float | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``steps`` Lanczos steps with full reorthogonalisation; returns ``(Q, alpha, beta)``."""
    n = A.shape[0]
    steps = min(steps, n)
    g = torch.Generator().manual_seed(seed)
    threshold = 100 * torch.finfo(A.dtype).eps if tol is None else tol

    def fresh(Q: torch.Tensor) -> torch.Tensor:
        q = torch.randn(n, 1, generator=g, dtype=torch.float64).to(A.device, A.dtype)
        for _ in range(2):
            q = q - Q @ (Q.mT @ q)
        return q / q.norm()

    Q = torch.empty(n, steps, dtype=A.dtype, device=A.device)
    alpha = torch.zeros(steps, dtype=torch.float64)
    beta = torch.zeros(steps, dtype=torch.float64)
    q = fresh(Q[:, :0])
    scale = 0.0
    for j in range(steps):
        Q[:, j : j + 1] = q
        w = A._matmat(q)
        a = float((q.mT @ w).squeeze())
        alpha[j] = a
        basis = Q[:, : j + 1]
        for _ in range(2):  # full reorthogonalisation, twice is enough
            w = w - basis @ (basis.mT @ w)
        b = float(w.norm())
        scale = max(scale, abs(a), b)
        if j + 1 == steps:
            break
        if b <= threshold * scale:
            q = fresh(basis)  # invariant subspace found: restart orthogonally, T decouples
            beta[j] = 0.0
        else:
            q = w / b
            beta[j] = b
    return Q, alpha, beta[: steps - 1]


def eigh(
    A: LinearOperator,
    k: int,
    *,
    maxiter: int | None = None,
    seed: int = 0,
    tol: float | None = None,
    which: str = "LM",
) -> tuple[LowRankOperator, int]:
    """The top-``k`` eigenpairs of a symmetric operator and the products it cost (0 when cached).

    Args:
        A: a symmetric operator.
        k: how many eigenpairs.
        maxiter: Lanczos steps (default ``max(2k, k + 20)``, at most ``n``); more steps resolve
            the top eigenpairs more accurately.
        seed: the seed of the start vector (and of restarts).
        tol: the relative breakdown threshold: a new direction shorter than ``tol`` times the
            largest entry of ``T`` so far means an invariant subspace was found, and Lanczos
            restarts (default ``100 · eps`` of the dtype).
        which: ``"LM"`` (largest magnitude) or ``"LA"`` (largest algebraic).
    """
    if not A.tags.symmetric:
        raise ValueError(f"eigh needs a symmetric operator; {A!r} is not tagged symmetric "
                         f"(use .with_tags(symmetric=True) if you know it is)")
    if which not in ("LM", "LA"):
        raise ValueError(f"which must be 'LM' or 'LA', got {which!r}")
    n = A.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k must be between 1 and {n}, got {k}")
    steps = min(n, maxiter if maxiter is not None else max(2 * k, k + 20))
    if steps < k:
        raise ValueError(f"maxiter={maxiter} Lanczos steps cannot resolve k={k} eigenpairs")
    key = (k, steps, seed, tol, which)
    cache: dict[Any, LowRankOperator] = A.__dict__.setdefault("_eigh_cache", {})
    if key in cache:
        return cache[key], 0
    Q, alpha, beta = _lanczos(A, steps, seed, tol)
    m = alpha.shape[0]
    T = torch.diag(alpha) + torch.diag(beta[: m - 1], 1) + torch.diag(beta[: m - 1], -1)
    theta, S = torch.linalg.eigh(T)
    order = torch.argsort(theta.abs() if which == "LM" else theta, descending=True)[:k]
    V = Q[:, :m] @ S[:, order].to(Q.device, Q.dtype)
    result = LowRankOperator(V, theta[order].to(Q.device, Q.dtype))
    cache[key] = result
    return result, m


def _split_shift(A: LinearOperator) -> tuple[LinearOperator, float]:
    from linop.algebra import RegularizedOperator

    return (A.base, A.shift) if isinstance(A, RegularizedOperator) else (A, 0.0)


def _shifted_values(values: torch.Tensor, shift: float, cutoff: float, what: str) -> torch.Tensor:
    """``θ + λ`` with the documented handling of small and negative values: returns the
    reciprocals, zero where dropped."""
    d = values + shift
    big = float(d.abs().max()) if d.numel() else 0.0
    small = d.abs() <= cutoff * big
    negative = (d < 0) & ~small
    if bool(small.any()) or bool(negative.any()):
        warn(
            f"{what}: {int(small.sum())} eigenvalue(s) θ + λ within {cutoff:g}·max|θ + λ| of zero "
            f"were dropped and {int(negative.sum())} negative one(s) inverted as they are; the "
            f"operator is not positive definite on its top eigenspace. A larger shift λ avoids this",
            NegativeCurvatureWarning,
        )
    return torch.where(small, torch.zeros_like(d), 1 / torch.where(small, torch.ones_like(d), d))


@register
class ArnoldiStrategy(Strategy):
    """Options: ``rank`` (eigenpairs kept, 50), ``maxiter`` (Lanczos steps), ``seed``, ``tol``,
    ``which`` (as :func:`eigh`), ``cutoff`` (relative size below which ``θ + λ`` is dropped,
    1e-6), ``complement`` (add ``(I − VVᵀ)/λ`` for the unresolved subspace; needs ``λ > 0``)."""

    name = "arnoldi"
    defaults = {"rank": 50, "maxiter": None, "seed": 0, "tol": None, "which": "LM",
                "cutoff": 1e-6, "complement": False}

    def _setup(self) -> int:
        o = self.options
        base, self.shift = _split_shift(self.operator)
        if o["complement"] and self.shift <= 0:
            raise ValueError("complement=True needs a shift λ > 0: it adds (I − VVᵀ)/λ")
        rank = min(o["rank"], base.shape[0])
        self.low, hvps = eigh(base, rank, maxiter=o["maxiter"], seed=o["seed"], tol=o["tol"],
                              which=o["which"])
        self.inv_values = _shifted_values(self.low.values, self.shift, o["cutoff"], "arnoldi inverse")
        return hvps

    def solve(self, B: torch.Tensor) -> tuple[torch.Tensor, SolveInfo]:
        V = self.low.vectors
        C = V.mT @ B
        X = V @ (self.inv_values.unsqueeze(1) * C)
        if self.options["complement"]:
            X = X + (B - V @ C) / self.shift
        k = B.shape[1]
        info = SolveInfo(
            method=self.name,
            iterations=torch.full((k,), self.low.rank, dtype=torch.long),
            residuals=torch.full((k,), float("nan")),
            converged=torch.ones(k, dtype=torch.bool),
            reasons=[f"low-rank inverse from {self.low.rank} eigenpairs (residual not computed)"] * k,
        )
        return X, info


def deflation_preconditioner(A: LinearOperator, options: dict[str, Any]) -> tuple[Any, int]:
    """``M ≈ (H + λI)⁻¹`` from the top eigenpairs: ``V (Λ+λ)⁻¹ Vᵀ + (I − VVᵀ)/σ`` with
    ``σ`` the smallest resolved ``θ + λ``, which maps the resolved eigenvalues to one and leaves
    the rest below it: CG then sees the condition number of the unresolved spectrum."""
    base, shift = _split_shift(A)
    rank = min(options["rank"], base.shape[0])
    low, hvps = eigh(base, rank, maxiter=options["arnoldi_maxiter"], seed=options["seed"], which="LA")
    d = low.values + shift
    if not bool((d > 0).all()):
        raise ValueError(
            "preconditioner='arnoldi' needs a positive definite operator, but some of its top "
            "eigenvalues θ + λ are not positive; add a shift λ > 0"
        )
    V, sigma = low.vectors, float(d.min())
    inv_d = (1 / d).unsqueeze(1)

    def apply(R: torch.Tensor) -> torch.Tensor:
        C = V.mT @ R
        return V @ (inv_d * C) + (R - V @ C) / sigma

    if V.shape[0] != A.shape[0]:  # pragma: no cover - defensive
        raise ShapeMismatchError("eigenvectors do not match the operator")
    return apply, hvps
