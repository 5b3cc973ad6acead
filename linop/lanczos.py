"""Lanczos: the top eigenpairs of a symmetric operator, kept in the operator's cache.

[`lanczos`][linop.lanczos.lanczos] runs the symmetric Arnoldi iteration with full
reorthogonalisation from a seeded start, restarting with a fresh vector orthogonal to the basis
whenever it finds an invariant subspace early (the common case for softmax losses, whose Hessians
have an exact null space). [`eigh`][linop.lanczos.eigh] turns a run into Ritz pairs and keeps them
in `LinearOperator.cache` of the operator they describe, so the eigendecomposition, the Arnoldi
inverse, deflated CG and the Arnoldi projection share one run, and ``(H + λI)`` for a sweep of
``λ`` costs no new products (the Krylov space of ``H + λI`` is that of ``H``).

Example:
    >>> import torch
    >>> from linop import DiagonalOperator
    >>> from linop.lanczos import eigh
    >>> D = DiagonalOperator(torch.arange(1.0, 6.0, dtype=torch.float64))
    >>> low, products = eigh(D, 2, maxiter=5)
    >>> [round(v, 9) for v in low.values.tolist()], products, eigh(D, 2, maxiter=5)[1]
    ([5.0, 4.0], 5, 0)
"""

from __future__ import annotations

import math

import torch

from linop._checks import integer, non_negative
from linop._checks import seed as check_seed
from linop.algebra import split_shift
from linop.errors import NonFiniteError
from linop.operator import LinearOperator
from linop.structured import LowRankOperator

__all__ = ["lanczos", "eigh"]


def lanczos(
    A: LinearOperator, steps: int, seed: int = 0, tol: float | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``steps`` Lanczos steps on a symmetric ``A`` with full reorthogonalisation.

    Returns ``(Q, alpha, beta)``: the orthonormal basis as the rows of ``Q`` ``(steps, n)``
    (contiguous rows keep the reorthogonalisation, the dominant cost besides the products,
    memory-friendly), and the diagonal and off-diagonal of the tridiagonal ``T = Q A Qᵀ`` in
    float64. Each step applies the three-term recurrence, then one classical Gram–Schmidt pass
    against the whole basis, and a second pass only when the first removed most of the vector
    (the Daniel–Gragg–Kaufman–Stewart criterion: "twice is enough"). A new direction shorter
    than ``tol`` times the largest entry of ``T`` so far (default ``100 · eps``) means an
    invariant subspace was found: the run restarts from a fresh vector orthogonal to the basis
    and ``T`` decouples there (``beta = 0``).

    Products run without autograd graphs (the result is a decomposition, not a function of
    anything to differentiate).
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
    with torch.no_grad():
        q = fresh(Q[:0])
        scale = 0.0
        for j in range(steps):
            Q[j] = q
            w = apply(q)
            a = float(q @ w)
            if not math.isfinite(a):
                raise NonFiniteError(
                    f"a product of {A!r} has NaN or infinite entries (Lanczos step {j}): the "
                    f"operator is not finite, so it has no eigenpairs"
                )
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
                q = fresh(Q[: j + 1])  # invariant subspace found: restart orthogonally
                beta[j] = 0.0
            else:
                q = w / b
                beta[j] = b
    return Q, alpha, beta[: steps - 1]


def _ritz(
    A: LinearOperator, steps: int, seed: int, tol: float | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """All Ritz pairs ``(V, θ)`` of a ``steps``-step run (``V`` in ``A``'s dtype, ``θ`` float64)."""
    Q, alpha, beta = lanczos(A, steps, seed, tol)
    m = alpha.shape[0]
    T = torch.diag(alpha) + torch.diag(beta[: m - 1], 1) + torch.diag(beta[: m - 1], -1)
    theta, S = torch.linalg.eigh(T)
    return (Q[:m].mT @ S.to(Q.device, Q.dtype)).to(A.dtype), theta


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
    """The top-``k`` eigenpairs of ``A + shift·I`` for a symmetric ``A``, and the operator
    products the call cost (0 when they were in the cache).

    ``A = B + λI`` (a [`RegularizedOperator`][linop.RegularizedOperator]) is decomposed through
    ``B``: the run is kept in ``B.cache`` and serves every shift. The top ``k`` are chosen among the
    shifted Ritz values.

    Args:
        A: a symmetric operator.
        k: how many eigenpairs.
        maxiter: Lanczos steps (default ``max(2k, k + 20)``, at most ``n``); more steps resolve
            the top eigenpairs more accurately.
        seed: the seed of the start vector (and of restarts).
        tol: the relative breakdown threshold (see [`lanczos`][linop.lanczos.lanczos]).
        which: ``"LM"`` (largest magnitude of ``θ + shift``) or ``"LA"`` (largest algebraic).
        shift: ``λ`` added to every eigenvalue.

    Raises:
        ValueError: for an operator not tagged symmetric, ``k`` out of range or too few steps.
    """
    k = integer("k", k)
    seed = check_seed(seed)
    if tol is not None:
        non_negative("tol", tol)
    if not math.isfinite(shift):
        raise NonFiniteError(f"the shift is {shift}; eigenvalues of A + shift·I need a finite one")
    base, own_shift = split_shift(A)
    shift = shift + own_shift
    if not base.tags.symmetric:
        raise ValueError(
            f"eigh needs a symmetric operator; {A!r} is not tagged symmetric "
            f"(use .with_tags(symmetric=True) if you know it is)"
        )
    if which not in ("LM", "LA"):
        raise ValueError(f"which must be 'LM' or 'LA', got {which!r}")
    n = base.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k must be between 1 and {n}, got {k}")
    steps = min(n, maxiter if maxiter is not None else max(2 * k, k + 20))
    if steps < k:
        raise ValueError(f"maxiter={maxiter} Lanczos steps cannot resolve k={k} eigenpairs")
    key = ("lanczos", steps, seed, tol)
    hvps = 0 if key in base.cache else steps
    V, theta = base.cache.get(key, lambda: _ritz(base, steps, seed, tol))
    values = theta + shift
    order = torch.argsort(values.abs() if which == "LM" else values, descending=True)[:k]
    return LowRankOperator(V[:, order.to(V.device)], values[order].to(V.device, V.dtype)), hvps
