"""What the trace and diagonal estimators share: their results, seeded probes, counted products
in blocks of columns, argument checks and the leave-one-out sketch of the exchangeable
estimators (XTrace, XDiag)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from linop._checks import integer
from linop._checks import seed as check_seed
from linop.errors import NonFiniteError, ShapeMismatchError
from linop.operator import LinearOperator

__all__ = ["TRACE_METHODS", "DIAGONAL_METHODS", "TraceEstimate", "DiagonalEstimate"]

TRACE_METHODS = {"xtrace": 4, "hutch++": 4, "hutchinson": 2}
#: The diagonal estimators and the fewest products each takes (below ``n``).
DIAGONAL_METHODS = {"xdiag": 4, "hutchinson": 2}
_DISTRIBUTIONS = ("rademacher", "gaussian")


@dataclass(frozen=True)
class TraceEstimate:
    """An estimate of a trace.

    Attributes:
        estimate: the estimated trace (float64).
        standard_error: its estimated standard error (0 for an exact value).
        products: the operator products the estimate cost (columns counted).
        method: the estimator's name.
    """

    estimate: float
    standard_error: float
    products: int
    method: str

    def __str__(self) -> str:
        return (
            f"{self.method}: {self.estimate:.8g} ± {self.standard_error:.2g} (one standard "
            f"error), {self.products} operator products"
        )


@dataclass(frozen=True)
class DiagonalEstimate:
    """An estimate of a diagonal.

    Attributes:
        estimate: ``(n,)`` the estimated diagonal, in the operator's dtype (float32 for half).
        standard_error: ``(n,)`` the estimated standard error of each entry (0 where exact).
        products: the operator products the estimate cost (columns counted; XDiag's adjoint
            products included).
        method: the estimator's name.
    """

    estimate: torch.Tensor
    standard_error: torch.Tensor
    products: int
    method: str


# ---------------------------------------------------------------------------------- products
class _Products:
    """Seeded probes and counted, finite-checked products in blocks of columns, with a bar."""

    def __init__(
        self,
        A: LinearOperator,
        seed: int,
        distribution: str,
        block_size: int,
        progress: bool,
        total: int,
        desc: str,
    ) -> None:
        self.A, self.distribution, self.block = A, distribution, block_size
        self.generator = torch.Generator().manual_seed(seed)
        self.work = torch.float32 if A.dtype in (torch.float16, torch.bfloat16) else A.dtype
        self.count = 0
        self.bar = tqdm(total=total, desc=desc, disable=not progress, leave=False)

    def probes(self, k: int) -> torch.Tensor:
        """``(n, k)`` probe columns; drawn as rows, so a block size never changes them."""
        n, g = self.A.shape[0], self.generator
        if self.distribution == "gaussian":
            rows = torch.randn(k, n, generator=g, dtype=torch.float64)
        else:
            rows = torch.randint(0, 2, (k, n), generator=g).to(torch.float64) * 2 - 1
        return rows.mT.to(self.A.device, self.work)

    def apply(self, X: torch.Tensor, adjoint: bool = False) -> torch.Tensor:
        """``A @ X`` (or ``Aᵀ @ X``) in blocks of columns, in the working dtype."""
        A = self.A.adjoint() if adjoint else self.A
        out = []
        for start in range(0, X.shape[1], self.block):
            Y = A @ X[:, start : start + self.block].to(self.A.dtype)
            if not bool(torch.isfinite(Y).all()):
                raise NonFiniteError(
                    f"a product of {self.A!r} has NaN or infinite entries: the operator is not "
                    f"finite, so it has no trace, diagonal or spectrum to estimate"
                )
            out.append(Y.to(self.work))
            self.count += Y.shape[1]
            self.bar.update(Y.shape[1])
        return torch.cat(out, 1) if out else X.new_zeros(X.shape[0], 0)

    def exact_diagonal(self) -> torch.Tensor:
        """The diagonal from the ``n`` identity columns (``n`` products)."""
        n = self.A.shape[0]
        diagonal = torch.empty(n, dtype=self.work, device=self.A.device)
        for start in range(0, n, self.block):
            stop = min(n, start + self.block)
            E = torch.zeros(n, stop - start, dtype=self.work, device=self.A.device)
            cols = torch.arange(stop - start, device=self.A.device)
            E[start + cols, cols] = 1
            diagonal[start:stop] = self.apply(E)[start + cols, cols]
        return diagonal


def _prepare(
    A: Any,
    products: Any,
    method: str,
    methods: dict[str, int],
    seed: Any,
    distribution: str,
    block_size: Any,
    progress: bool,
    what: str,
) -> tuple[_Products, int]:
    """Check the arguments shared by the estimators; return the products' source (its bar set
    to the products planned) and the budget."""
    if not isinstance(A, LinearOperator):
        raise TypeError(f"{what} needs a LinearOperator, got {type(A).__name__}")
    if A.shape[0] != A.shape[1]:
        raise ShapeMismatchError(f"{what} needs a square operator; {A!r} is {A.shape}")
    if method not in methods:
        raise ValueError(f"unknown method {method!r}; use one of {', '.join(map(repr, methods))}")
    if distribution not in _DISTRIBUTIONS:
        raise ValueError(f"distribution must be 'rademacher' or 'gaussian', got {distribution!r}")
    products = integer("products", products, 1)
    integer("block_size", block_size, 1)
    if products < min(methods[method], A.shape[0]):
        raise ValueError(
            f"{method} needs at least {methods[method]} products (or n = {A.shape[0]}, which "
            f"gives the exact value), got products={products}"
        )
    n = A.shape[0]
    sketched = method in ("xtrace", "xdiag")  # 2 ⌊m/2⌋ products
    planned = n if products >= n else 2 * (products // 2) if sketched else products
    source = _Products(A, check_seed(seed), distribution, block_size, progress, planned, method)
    return source, products


def _mean_and_error(samples: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean of the columns' samples (last dimension) and its standard error."""
    m = samples.shape[-1]
    return samples.mean(-1), samples.std(-1) / math.sqrt(m)


def _leave_one_out(Q: torch.Tensor, R: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The basis and the directions of the exchangeable estimators.

    With ``Y = Q R`` of full column rank, the span of ``Y`` without its column ``i`` is the span of
    ``Q (I − s_i s_iᵀ)``, ``s_i`` the normalised column ``i`` of ``R⁻ᵀ`` (the only direction of
    ``span(Q)`` orthogonal to the other columns of ``Y``): returns ``(Q, S)``. When ``Y`` is
    numerically rank deficient (an operator of lower rank than the sketch), dropping a column
    leaves the span unchanged: returns the basis ``Q U_r`` of ``span(Y)`` and ``S = 0``.
    """
    R64 = R.to(torch.float64)
    U, sv, _ = torch.linalg.svd(R64)
    tol = max(Q.shape) * torch.finfo(Q.dtype).eps * (float(sv[0]) if sv.numel() else 0.0)
    if sv.numel() and float(sv[-1]) > tol:
        eye = torch.eye(R.shape[0], dtype=torch.float64, device=R.device)
        S = torch.linalg.solve_triangular(R64, eye, upper=True).mT  # R⁻ᵀ
        return Q, (S / S.norm(dim=0)).to(Q.dtype)
    r = int((sv > tol).sum())
    return Q @ U[:, :r].to(Q.dtype), Q.new_zeros(r, R.shape[1])


def _sketch(p: _Products, s: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``Ω`` ``(n, s)``, ``Y = A Ω`` and the leave-one-out ``(Q, S)`` of ``Y`` (``s`` products)."""
    Omega = p.probes(s)
    Y = p.apply(Omega)
    Q, R = torch.linalg.qr(Y)
    Q, S = _leave_one_out(Q, R)
    return Omega, Y, Q, S
