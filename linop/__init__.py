"""linop: linear operators for curvature, influence functions and data attribution.

Everything is a :class:`LinearOperator`: Hessians of losses, their regularised inverses and
random projections compose with ``+``, scalar ``*``, ``@`` and ``.T``, and convert to and from
scipy.

Example:
    >>> import torch
    >>> from linop import HessianOperator, IdentityOperator
    >>> w = torch.zeros(3, dtype=torch.float64)
    >>> X = torch.randn(10, 3, dtype=torch.float64)
    >>> H = HessianOperator(lambda w, X: ((X @ w - 1) ** 2).mean(), (w, X))
    >>> A = H + 1e-3 * IdentityOperator.like(H)
    >>> A.shape, A.shift
    ((3, 3), 0.001)
"""

from __future__ import annotations

from linop.algebra import (
    AdjointOperator,
    ProductOperator,
    RegularizedOperator,
    ScaledOperator,
    SumOperator,
)
from linop.errors import (
    ConvergenceWarning,
    DenseMemoryError,
    DistributedError,
    DivergenceError,
    KernelFallbackWarning,
    NegativeCurvatureWarning,
    SingularOperatorError,
    DeviceMismatchError,
    DTypeMismatchError,
    LinopError,
    NonFiniteError,
    NonScalarLossError,
    ShapeMismatchError,
)
from linop.flat import FlatSpec
from linop.data import TensorBatches
from linop.hessian import HessianOperator
from linop.inverse import METHODS, InverseOperator, SolveInfo, solve
from linop.interop import ScipyOperator, aslinearoperator, to_scipy
from linop.projection import ArnoldiProjection, ProjectionOperator, RandomProjection
from linop.seeded_projection import SeededBlockProjection
from linop.operator import DEFAULT_DENSE_BUDGET_BYTES, LinearOperator
from linop.structured import DenseOperator, DiagonalOperator, IdentityOperator, LowRankOperator
from linop.tags import Tags

__version__ = "0.1.0"

__all__ = [
    "ArnoldiProjection",
    "ProjectionOperator",
    "RandomProjection",
    "SeededBlockProjection",
    "ConvergenceWarning",
    "DistributedError",
    "KernelFallbackWarning",
    "DivergenceError",
    "InverseOperator",
    "METHODS",
    "NegativeCurvatureWarning",
    "SingularOperatorError",
    "SolveInfo",
    "solve",
    "AdjointOperator",
    "DEFAULT_DENSE_BUDGET_BYTES",
    "DTypeMismatchError",
    "DenseMemoryError",
    "DenseOperator",
    "DeviceMismatchError",
    "DiagonalOperator",
    "FlatSpec",
    "HessianOperator",
    "IdentityOperator",
    "LinearOperator",
    "LinopError",
    "LowRankOperator",
    "NonFiniteError",
    "NonScalarLossError",
    "ProductOperator",
    "RegularizedOperator",
    "ScaledOperator",
    "ScipyOperator",
    "ShapeMismatchError",
    "SumOperator",
    "Tags",
    "TensorBatches",
    "aslinearoperator",
    "to_scipy",
]
