"""Block conjugate gradient: one Krylov space shared by every column of a right-hand-side block.

Plain CG builds a Krylov space per column; block CG (O'Leary, 1980) searches, for every column,
the sum of all the columns' Krylov spaces, so ``k`` related right-hand sides (the test gradients
of one model) converge in far fewer iterations than one alone. Each iteration applies ``A`` to a
block ``P`` of search directions, as many as there are columns still iterating:

    α = (PᵀAP)⁻¹ PᵀR,    X ← X + Pα,    R ← R − APα,
    Z = M R,    β = −(PᵀAP)⁻¹ (AP)ᵀZ,    P ← orth(Z + Pβ)

It stays numerically stable when the block loses rank, as it does when columns converge or become
dependent (the breakdown-free form of Ji and Li, 2017): a converged column leaves the block (its
residual no longer makes directions; its iterate is frozen), and ``orth`` keeps an orthonormal
basis of the new directions, dropping those that are dependent to working precision, so ``PᵀAP``
stays invertible. Since every remaining residual is orthogonal to all earlier blocks, dropping
columns keeps the short recurrence exact. Stopping per column, the true residual at the end, the
warnings and the [`SolveInfo`][linop.SolveInfo] are those of plain CG (`linop.inverse.cg`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from tqdm.auto import tqdm

from linop.errors import NonFiniteError
from linop.operator import LinearOperator

__all__ = ["block_cg", "orthonormal_basis"]


def orthonormal_basis(D: torch.Tensor, acc: torch.dtype) -> torch.Tensor:
    """An orthonormal basis of the columns of ``D`` ``(n, a)``, as ``(n, p)`` with ``p ≤ a``:
    directions whose singular value is below ``√(10 a eps)`` of the largest, once the columns
    are normalised (dependent to working precision), are dropped.

    Two passes of the eigendecomposition of the Gram matrix of the column-normalised block
    (SVQB, Stathopoulos and Wu, 2002), the small matrices in ``acc``: the first finds the rank
    and the basis, the second removes what rounding left of the first's loss of orthogonality.
    """
    for sweep in range(2):
        norms = D.norm(dim=0)
        keep = norms > 0
        if sweep == 0 and not bool(keep.all()):
            D, norms = D[:, keep], norms[keep]
        if D.shape[1] == 0:
            return D
        Dn = D / norms
        G = Dn.mT.to(acc) @ Dn.to(acc)
        theta, U = torch.linalg.eigh((G + G.mT) / 2)
        # the Gram matrix's eigenvalues carry rounding of about a·eps (a columns of norm one)
        tol = 10 * D.shape[1] * torch.finfo(D.dtype).eps * float(theta.max()) if sweep == 0 else 0

        big = theta > max(tol, torch.finfo(acc).tiny)
        D = Dn @ (U[:, big] / theta[big].sqrt()).to(D.dtype)
    return D


def block_cg(
    A: LinearOperator,
    R: torch.Tensor,
    X: torch.Tensor,
    M: Callable[[torch.Tensor], torch.Tensor] | None,
    threshold: torch.Tensor,
    floor: torch.Tensor,
    maxiter: int,
    indefinite: bool,
    progress: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Iterate block CG from ``X`` with residual ``R`` (both ``(n, k)``, updated in place).

    A column stops when its residual norm is at most its ``threshold`` (or its rounding
    ``floor``). Non-positive curvature of the block (``PᵀAP`` not positive definite to working
    precision; with ``indefinite``, singular) stops every column still iterating.

    Returns ``(X, R, iterations, curvature, products)``: the iterates, the recursive residuals,
    the iterations each column took part in, which columns stopped at bad curvature, and the
    number of operator-vector products.
    """
    k = R.shape[1]
    acc = torch.promote_types(R.dtype, torch.float32)  # the small matrices; half in float32
    eps = torch.finfo(R.dtype).eps ** 1.5
    iters = torch.zeros(k, dtype=torch.long, device=R.device)
    curvature = torch.zeros(k, dtype=torch.bool, device=R.device)
    rn = R.norm(dim=0)
    live = ((rn > threshold) & (rn > floor)).tolist()
    active = [i for i in range(k) if live[i]]
    hvps = 0
    P: torch.Tensor | None = None
    AP = torch.empty(0)
    G = torch.empty(0)
    bar = tqdm(total=maxiter, desc="block CG", disable=not progress, leave=False)
    for _ in range(maxiter):
        if not active:
            break
        idx = torch.tensor(active, device=R.device)
        Ra = R.index_select(1, idx)
        Z = M(Ra) if M else Ra
        if P is not None:  # conjugate the new directions to the last block: β = −G⁻¹ (AP)ᵀZ
            Z = Z - P @ _solve(G, AP.mT.to(acc) @ Z.to(acc), indefinite).to(R.dtype)
        P = orthonormal_basis(Z, acc)
        if P.shape[1] == 0:  # no new direction to working precision: nothing left to gain
            break
        AP = A._matmat(P)
        hvps += P.shape[1]
        G = P.mT.to(acc) @ AP.to(acc)
        G = (G + G.mT) / 2
        if not bool(torch.isfinite(G).all()):
            raise NonFiniteError(
                f"block CG met NaN or infinite values: the products of {A!r} (or its "
                f"preconditioner) are not finite"
            )
        theta = torch.linalg.eigvalsh(G)
        top = float(theta.abs().max())
        low = float(theta.abs().min()) if indefinite else float(theta.min())
        if not low > eps * top:  # not positive definite (or singular) along the block
            curvature[idx] = True
            break
        alpha = _solve(G, P.mT.to(acc) @ Ra.to(acc), indefinite).to(R.dtype)
        X[:, idx] += P @ alpha
        Ra = Ra - AP @ alpha
        R[:, idx] = Ra
        iters[idx] += 1
        rn = Ra.norm(dim=0)
        going = ((rn > threshold[idx]) & (rn > floor[idx])).tolist()
        active = [i for i, g in zip(active, going, strict=True) if g]
        bar.update(1)
    bar.close()
    return X, R, iters, curvature, hvps


def _solve(G: torch.Tensor, C: torch.Tensor, indefinite: bool) -> torch.Tensor:
    """``G⁻¹ C`` for the small symmetric ``G``: Cholesky when positive definite, else LU."""
    if not indefinite:
        L, info = torch.linalg.cholesky_ex(G)
        if int(info) == 0:
            return torch.cholesky_solve(C, L)
    return torch.linalg.solve(G, C)
