"""Small shared pieces of the linop tests: seeded generators, random SPD matrices, an operator
that counts its products, and the pickling round trip."""

from __future__ import annotations

import pickle

import torch

from linop import LinearOperator
from linop.tags import Tags
from linop.testing import assert_close

D64 = torch.float64


def gen(seed: int = 0) -> torch.Generator:
    """A CPU generator seeded with ``seed``."""
    return torch.Generator().manual_seed(seed)


def spd(n: int, seed: int, low: float = 1.0, high: float = 10.0) -> torch.Tensor:
    """A random symmetric positive definite float64 matrix with eigenvalues in [low, high]
    (both ends attained)."""
    Q = torch.linalg.qr(torch.randn(n, n, dtype=D64, generator=gen(seed))).Q
    eig = low + (high - low) * torch.rand(n, dtype=D64, generator=gen(seed + 1))
    eig[0], eig[-1] = low, high
    M = (Q * eig) @ Q.T
    return (M + M.T) / 2


class Counting(LinearOperator):
    """A dense operator that counts the columns it is applied to (``count``)."""

    def __init__(self, M: torch.Tensor, tags: Tags | None = None) -> None:
        super().__init__(M.shape, M.dtype, M.device, tags or Tags(psd=True))
        self.M, self.count = M, 0

    def _matmat(self, X: torch.Tensor) -> torch.Tensor:
        self.count += X.shape[1]
        return self.M @ X


def assert_pickles(op: LinearOperator, X: torch.Tensor, rtol: float = 1e-12) -> LinearOperator:
    """``pickle.loads(pickle.dumps(op))`` gives the same products on ``X`` as ``op``; returns the
    copy. The product of ``op`` is taken first, so that lazily built state exists when pickling."""
    before = op @ X
    copy = pickle.loads(pickle.dumps(op))
    assert type(copy) is type(op)
    assert copy.shape == op.shape and copy.dtype == op.dtype and copy.tags == op.tags
    assert_close(copy @ X, before, rtol)
    return copy


#: The kinds of :func:`random_operator`.
KINDS = ["dense", "spd", "diag", "lowrank", "identity"]


def random_operator(kind: str, n: int, seed: int) -> LinearOperator:
    """A random ``(n, n)`` float64 operator of one of :data:`KINDS`."""
    from linop import DenseOperator, DiagonalOperator, IdentityOperator, LowRankOperator

    g = gen(seed)
    if kind == "dense":
        return DenseOperator(torch.randn(n, n, dtype=D64, generator=g))
    if kind == "spd":
        M = torch.randn(n, n, dtype=D64, generator=g)
        return DenseOperator(M @ M.T + 0.1 * torch.eye(n, dtype=D64), Tags(psd=True))
    if kind == "diag":
        return DiagonalOperator(torch.randn(n, dtype=D64, generator=g))
    if kind == "lowrank":
        V = torch.linalg.qr(torch.randn(n, 2, dtype=D64, generator=g)).Q
        return LowRankOperator(V, torch.rand(2, dtype=D64, generator=g))
    return IdentityOperator(n, D64)


def logreg_problem(n: int = 20, d: int = 4, c: int = 3, seed: int = 0):
    """A multinomial logistic regression loss ``loss(w, X, y)`` in float64, its point and data."""
    g = gen(seed)
    X = torch.randn(n, d, dtype=torch.float64, generator=g)
    y = torch.randint(0, c, (n,), generator=g)
    w = 0.1 * torch.randn(d * c, dtype=torch.float64, generator=g)

    def loss(w: torch.Tensor, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(X @ w.reshape(d, c), y)

    return loss, w, X, y


def mlp(seed: int = 0) -> torch.nn.Module:
    """A small float64 MLP 3-4-2 with tanh."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2)).to(
        torch.float64
    )
