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
    """``steps`` Lanczos steps with full reorthogonalisation; returns ``(Q, alpha, beta)`` with
    the basis as rows of ``Q`` ``(steps, n)`` (contiguous rows keep the reorthogonalisation, the
    dominant cost besides the products, memory-friendly).

    Each step applies the three-term recurrence, then one classical Gram–Schmidt pass against the
    whole basis, and a second pass only when the first removed most of the vector (the
    Daniel–Gragg–Kaufman–Stewart criterion: "twice is enough").
    """
    n = A.shape[0]
    steps = min(steps, n)
    g = torch.Generator().manual_seed(seed)
    # half-precision operators: the basis and recurrence in float32, only the products in half
    # (in bf16, 100 eps would be 0.78: every step would look like a breakdown)
    work = torch.float32 if A.dtype in (torch.float16, torch.bfloat16) else A.dtype
    threshold = 100 * torch.finfo(work).eps if tol is None else tol

    def apply(q: torch.Tensor) -> torch.Tensor:
        return A._matmat(q.to(A.dtype).unsqueeze(1)).squeeze(1).to(work)

    def orthogonalise(w: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
        before = w.norm()
        w = w - basis.mT @ (basis @ w)
        if bool(w.norm() < 0.7071 * before):
            w = w - basis.mT @ (basis @ w)
        return w

    def fresh(basis: torch.Tensor) -> torch.Tensor:
        q = torch.randn(n, generator=g, dtype=torch.float64).to(A.device, work)
        for _ in range(2):
            q = q - basis.mT @ (basis @ q)
        return q / q.norm()

    Q = torch.empty(steps, n, dtype=work, device=A.device)
    alpha = torch.zeros(steps, dtype=torch.float64)
    beta = torch.zeros(steps, dtype=torch.float64)
    q = fresh(Q[:0])
    scale = 0.0
    for j in range(steps):
        Q[j] = q
        w = apply(q)
        a = float(q @ w)
        alpha[j] = a
        w = w - a * q
        if j > 0 and beta[j - 1] != 0:
            w = w - float(beta[j - 1]) * Q[j - 1]
        w = orthogonalise(w, Q[: j + 1])
        b = float(w.norm())
        scale = max(scale, abs(a), b)
        if j + 1 == steps:
            break
        if b <= threshold * scale:
            q = fresh(Q[: j + 1])  # invariant subspace found: restart orthogonally, T decouples
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
    shift: float = 0.0,
) -> tuple[LowRankOperator, int]:
    """The top-``k`` eigenpairs of ``A + shift·I`` for a symmetric ``A``, and the products the
    call cost (0 when cached).

    The Lanczos run on ``A`` is cached on ``A`` (its Krylov space is that of ``A + shift·I`` for
    every shift), so a sweep over shifts costs no new products; the top ``k`` are chosen among the
    shifted Ritz values.

    Args:
        A: a symmetric operator.
        k: how many eigenpairs.
        maxiter: Lanczos steps (default ``max(2k, k + 20)``, at most ``n``); more steps resolve
            the top eigenpairs more accurately.
        seed: the seed of the start vector (and of restarts).
        tol: the relative breakdown threshold: a new direction shorter than ``tol`` times the
            largest entry of ``T`` so far means an invariant subspace was found, and Lanczos
            restarts (default ``100 · eps`` of the dtype).
        which: ``"LM"`` (largest magnitude of ``θ + shift``) or ``"LA"`` (largest algebraic).
        shift: ``λ`` in ``A + λI``.
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
    key = (steps, seed, tol)
    cache: dict[Any, tuple[torch.Tensor, torch.Tensor]] = A.__dict__.setdefault("_ritz_cache", {})
    hvps = 0
    if key not in cache:
        Q, alpha, beta = _lanczos(A, steps, seed, tol)
        m = alpha.shape[0]
        T = torch.diag(alpha) + torch.diag(beta[: m - 1], 1) + torch.diag(beta[: m - 1], -1)
        theta, S = torch.linalg.eigh(T)
        cache[key] = ((Q[:m].mT @ S.to(Q.device, Q.dtype)).to(A.dtype), theta)
        hvps = m
    V, theta = cache[key]
    values = theta + shift
    order = torch.argsort(values.abs() if which == "LM" else values, descending=True)[:k]
    return LowRankOperator(V[:, order.to(V.device)], values[order].to(V.device, V.dtype)), hvps


def _split_shift(A: LinearOperator) -> tuple[LinearOperator, float]:
    from linop.algebra import RegularizedOperator

    return (A.base, A.shift) if isinstance(A, RegularizedOperator) else (A, 0.0)


def _reciprocals(d: torch.Tensor, cutoff: float, what: str) -> torch.Tensor:
    """``1 / (θ + λ)`` with the documented handling of small and negative values: zero where
    dropped."""
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
                              which=o["which"], shift=self.shift)
        self.inv_values = _reciprocals(self.low.values, o["cutoff"], "arnoldi inverse")
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
    low, hvps = eigh(base, rank, maxiter=options["arnoldi_maxiter"], seed=options["seed"], which="LA",
                     shift=shift)
    d = low.values
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
