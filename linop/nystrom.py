"""Randomized Nyström approximations ``Â = U Λ Uᵀ`` of positive semi-definite operators, kept in
the operator's cache.

From ``r`` products ``Y = A Ω`` with an orthonormal random test matrix ``Ω`` ``(n, r)``, the
Nyström approximation is ``Â = Y (ΩᵀY)⁻¹ Yᵀ``: the best psd approximation of ``A`` that agrees
with it on the range of ``Ω``. It is computed in the numerically stable form of Tropp, Yurtsever,
Udell and Cevher (2017): a tiny shift ``ν`` makes ``Ωᵀ(Y + νΩ)`` safely positive definite, its
Cholesky factor ``C`` gives ``B = (Y + νΩ) C⁻ᵀ``, and the thin SVD ``B = U Σ Wᵀ`` gives
``Λ = max(Σ² − ν, 0)``. With ``r = n`` it is ``A`` itself (to rounding).

``A = H + λI`` (a [`RegularizedOperator`][linop.RegularizedOperator]) is sketched through ``H``:
the sketch lives in ``H.cache`` and serves every ``λ``, so a λ sweep costs no new products, and a
larger rank extends the sketch with the products it lacks only. The test matrix is drawn from the
seed in blocks of 16 columns, so the rank-``r`` sketch is the same whatever was asked before.

Example:
    >>> import torch
    >>> from linop import DiagonalOperator
    >>> from linop.nystrom import nystrom
    >>> D = DiagonalOperator(torch.tensor([4.0, 2.0, 1.0], dtype=torch.float64))
    >>> low, products = nystrom(D, 3)
    >>> [round(v, 9) for v in low.values.tolist()], products, nystrom(D, 2)[1]
    ([4.0, 2.0, 1.0], 3, 0)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from linop._checks import integer
from linop._checks import seed as check_seed
from linop._warn import warn
from linop.algebra import split_shift
from linop.errors import IndefiniteOperatorError, NegativeCurvatureWarning, NonFiniteError
from linop.operator import DEFAULT_DENSE_BUDGET_BYTES, LinearOperator
from linop.structured import LowRankOperator

__all__ = ["BLOCK", "adaptive_nystrom", "nystrom"]

#: columns of the test matrix drawn at a time from the seed
BLOCK = 16


@dataclass
class _Sketch:
    """The growing sketch of one operator and seed: ``Ω`` (orthonormal) and ``Y = A Ω``."""

    generator: torch.Generator
    omega: torch.Tensor  # (n, drawn), orthonormal
    Y: torch.Tensor  # (n, applied)
    ranks: dict[int, LowRankOperator] = field(default_factory=dict)


def nystrom(
    A: LinearOperator, rank: int, *, seed: int = 0, shift: float = 0.0
) -> tuple[LowRankOperator, int]:
    """The rank-``rank`` randomized Nyström approximation of the positive semi-definite ``A``
    (of its base ``H`` when ``A = H + λI``), as a [`LowRankOperator`][linop.LowRankOperator]
    ``U diag(Λ + λ + shift) Uᵀ`` with orthonormal ``U``, and the operator products the call made
    (0 when the sketch was in the cache; ``rank`` minus the cached columns when it grew).

    Args:
        A: a square operator tagged psd (``H.with_tags(psd=True)`` vouches for it), or ``H + λI``
            with ``H`` so tagged.
        rank: columns of the sketch, from 1 to ``n``.
        seed: the seed of the test matrix.
        shift: added to every eigenvalue (besides ``A``'s own ``λ``).

    Raises:
        IndefiniteOperatorError: if ``A`` is not tagged psd.
        ValueError: for a rank out of range.

    Warns:
        NegativeCurvatureWarning: if the sketch shows ``A`` is not psd after all (``ΩᵀAΩ`` has a
            negative eigenvalue): the approximation is then taken of ``A + cI`` and shifted
            back, keeping the negative curvature it saw.
    """
    seed = check_seed(seed)
    base, lam = split_shift(A)
    n = base.shape[0]
    rank = integer("rank", rank)
    if not 1 <= rank <= n:
        raise ValueError(f"rank must be between 1 and n = {n}, got {rank}")
    if base.shape[0] != base.shape[1] or not base.tags.psd:
        raise IndefiniteOperatorError(
            f"the Nyström approximation needs a positive semi-definite operator, and {base!r} is "
            f"not tagged psd; vouch for it with .with_tags(psd=True) (a Gauss-Newton or Fisher "
            f"matrix, the Hessian of a convex loss), or use a method for indefinite operators "
            f"(cg, explicit)"
        )
    sketch: _Sketch = base.cache.get(
        ("nystrom", seed),
        lambda: _Sketch(
            torch.Generator().manual_seed(seed),
            torch.empty(n, 0, dtype=base.dtype, device=base.device),
            torch.empty(n, 0, dtype=base.dtype, device=base.device),
        ),
    )
    products = _grow(base, sketch, rank)
    if rank not in sketch.ranks:
        sketch.ranks[rank] = _approximation(sketch.omega[:, :rank], sketch.Y[:, :rank], base)
    low = sketch.ranks[rank]
    if lam or shift:
        low = LowRankOperator(low.vectors, low.values + (lam + shift))
    return low, products


def _grow(base: LinearOperator, sketch: _Sketch, rank: int) -> int:
    """Draw test columns and apply the operator until the sketch has ``rank`` columns."""
    n = base.shape[0]
    while sketch.omega.shape[1] < rank:
        G = torch.randn(BLOCK, n, generator=sketch.generator, dtype=torch.float64).mT
        G = G.to(base.device)
        Q = sketch.omega.to(torch.float64)
        for _ in range(2):  # orthogonal to the columns drawn before ("twice is enough")
            G = G - Q @ (Q.mT @ G)
        G = torch.linalg.qr(G).Q[:, : n - Q.shape[1]]
        sketch.omega = torch.cat([sketch.omega, G.to(base.device, base.dtype)], dim=1)
    new = rank - sketch.Y.shape[1]
    if new <= 0:
        return 0
    with torch.no_grad():
        Y = base._matmat(sketch.omega[:, sketch.Y.shape[1] : rank])
    if not bool(torch.isfinite(Y).all()):
        raise NonFiniteError(
            f"a product of {base!r} has NaN or infinite entries: the operator is not finite, so "
            f"it has no Nyström approximation"
        )
    sketch.Y = torch.cat([sketch.Y, Y], dim=1)
    sketch.ranks.clear()
    return new


def _approximation(omega: torch.Tensor, Y: torch.Tensor, base: LinearOperator) -> LowRankOperator:
    """``U diag(Λ) Uᵀ`` from ``Ω`` and ``Y = AΩ`` in the stable form (the core matrix in
    float64). If ``ΩᵀAΩ`` is not positive definite (an operator vouched psd that is slightly
    indefinite, as a Hessian near a minimum), the sketch of ``A + cI`` is taken instead, with
    ``c`` twice the most negative eigenvalue of ``ΩᵀAΩ``, and ``c`` subtracted again: ``Λ`` then
    holds that negative curvature, with a warning."""
    work = torch.promote_types(Y.dtype, torch.float32)
    Y, omega = Y.to(work), omega.to(work)
    # the stabilising shift: √n eps ‖Y‖ (Frobenius norm, a bound on the spectral one)
    nu = torch.finfo(work).eps * (Y.shape[0] ** 0.5) * float(Y.norm())
    if nu == 0:  # A Ω = 0: the approximation is zero
        zeros = torch.zeros(Y.shape[1], dtype=base.dtype, device=base.device)
        return LowRankOperator(omega.to(base.dtype), zeros)
    core = (omega.mT @ Y).to(torch.float64)
    core = (core + core.mT) / 2
    c = 0.0
    L, info = torch.linalg.cholesky_ex(core + nu * torch.eye(core.shape[0], dtype=core.dtype))
    if int(info) != 0:
        low = float(torch.linalg.eigvalsh(core)[0])
        c = 2 * max(-low, 0.0) + nu
        warn(
            f"the Nyström sketch of {base!r}, vouched positive semi-definite, shows negative "
            f"curvature (ΩᵀAΩ has the eigenvalue {low:.3g}); the approximation is that of "
            f"A + {c:.3g}·I minus {c:.3g}·I, and keeps that curvature. Add a shift λ above "
            f"{-low:.3g}, or use the Gauss-Newton matrix, which is psd",
            NegativeCurvatureWarning,
        )
        L, info = torch.linalg.cholesky_ex(core + (c + nu) * torch.eye(core.shape[0]).to(core))
        if int(info) != 0:  # pragma: no cover - c exceeds the most negative eigenvalue twice
            raise IndefiniteOperatorError(
                f"the Nyström sketch of {base!r} is not positive definite even shifted by {c:.3g}"
            )
    Yn = Y + (c + nu) * omega
    B = torch.linalg.solve_triangular(L.to(work), Yn.mT, upper=False).mT  # Yn L⁻ᵀ
    U, S, _ = torch.linalg.svd(B, full_matrices=False)
    values = S.square() - (c + nu)
    if c == 0:
        values = values.clamp_min(0)
    return LowRankOperator(U.to(base.dtype), values.to(base.dtype))


def adaptive_nystrom(
    A: LinearOperator, rank: int | None, tol: float, max_rank: int, seed: int
) -> tuple[LowRankOperator, int]:
    """The Nyström approximation of ``A = H + λI`` (eigenvalues ``Λ + λ``) at ``rank``, or, for
    ``rank=None``, at the first rank of 16, 32, 64, … whose smallest eigenvalue ``λ̂_r`` is at
    most ``tol · λ``; and the products it cost. The rank stops at ``max_rank``, at ``n``, and
    where the sketch (``Ω``, ``AΩ`` and ``U``, three ``(n, r)`` tensors) would pass
    [`DEFAULT_DENSE_BUDGET_BYTES`][linop.DEFAULT_DENSE_BUDGET_BYTES].

    Raises:
        ValueError: for ``rank=None`` without a shift ``λ > 0`` (the rule needs a scale).
    """
    base, lam = split_shift(A)
    n = base.shape[0]
    if rank is not None:
        return nystrom(A, min(rank, n), seed=seed)
    if lam <= 0:
        raise ValueError(
            "the adaptive Nyström rank (rank=None) compares the sketch's eigenvalues with the "
            "shift λ of A = H + λI, and there is none; give a rank, or a shift λ > 0"
        )
    size = torch.empty(0, dtype=base.dtype).element_size()
    top = max(1, min(n, max_rank, DEFAULT_DENSE_BUDGET_BYTES // (3 * n * size)))
    products, r = 0, min(BLOCK, top)
    while True:
        low, more = nystrom(A, r, seed=seed)
        products += more
        if r >= top or float(low.values.min()) - lam <= tol * lam:
            return low, products
        r = min(2 * r, top)
