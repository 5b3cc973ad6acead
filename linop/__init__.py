"""linop: linear operators for curvature, influence functions and data attribution.

Everything is a [`LinearOperator`][linop.LinearOperator]: Hessians of losses, their regularised
inverses and random projections compose with ``+``, scalar ``*``, ``@`` and ``.T``, and convert to
and from scipy.

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

# the base class first: it resolves the modules its algebra methods need (see linop.operator)
from linop.operator import DEFAULT_DENSE_BUDGET_BYTES, LinearOperator, OperatorCache  # isort: skip
from linop.algebra import (
    AdjointOperator,
    ProductOperator,
    RegularizedOperator,
    ScaledOperator,
    SumOperator,
)
from linop.curvature import (
    CurvatureOperator,
    DatasetMean,
    EKFACOperator,
    FisherOperator,
    GGNOperator,
    HessianOperator,
    KFACOperator,
    hvp,
    module_per_example_gradients,
    per_example_gradients,
)
from linop.data import Batches, DataSource, LoaderData, ShardedData, TensorBatches, as_source
from linop.errors import (
    AttainableAccuracyWarning,
    ConvergenceWarning,
    DenseMemoryError,
    DeviceMismatchError,
    DistributedError,
    DivergenceError,
    DTypeMismatchError,
    IndefiniteOperatorError,
    KernelFallbackWarning,
    LinopError,
    NegativeCurvatureWarning,
    NonFiniteError,
    NonScalarLossError,
    ShapeMismatchError,
    SingularOperatorError,
)
from linop.estimators import (
    DiagonalEstimate,
    SpectralDensity,
    TraceEstimate,
    estimate_diagonal,
    estimate_trace,
    plot_spectral_density,
    spectral_density,
)
from linop.flat import FlatSpec
from linop.interop import ScipyOperator, aslinearoperator, to_scipy
from linop.inverse import (
    METHODS,
    ArnoldiOptions,
    CGOptions,
    EigenOptions,
    ExplicitOptions,
    InverseOperator,
    LissaOptions,
    NystromOptions,
    SolveInfo,
    SolverOptions,
    StopReason,
    solve,
)
from linop.projection import ArnoldiProjection, ProjectionOperator, RandomProjection
from linop.structured import DenseOperator, DiagonalOperator, IdentityOperator, LowRankOperator
from linop.tags import Tags

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_DENSE_BUDGET_BYTES",
    "METHODS",
    "AdjointOperator",
    "ArnoldiOptions",
    "ArnoldiProjection",
    "AttainableAccuracyWarning",
    "Batches",
    "CGOptions",
    "ConvergenceWarning",
    "CurvatureOperator",
    "DataSource",
    "DatasetMean",
    "DenseMemoryError",
    "DenseOperator",
    "DeviceMismatchError",
    "DiagonalEstimate",
    "DiagonalOperator",
    "DistributedError",
    "DivergenceError",
    "DTypeMismatchError",
    "EKFACOperator",
    "EigenOptions",
    "ExplicitOptions",
    "FisherOperator",
    "FlatSpec",
    "GGNOperator",
    "HessianOperator",
    "IdentityOperator",
    "InverseOperator",
    "KFACOperator",
    "KernelFallbackWarning",
    "LinearOperator",
    "LinopError",
    "LissaOptions",
    "NystromOptions",
    "LoaderData",
    "LowRankOperator",
    "NegativeCurvatureWarning",
    "NonFiniteError",
    "NonScalarLossError",
    "OperatorCache",
    "ProductOperator",
    "ProjectionOperator",
    "RandomProjection",
    "RegularizedOperator",
    "ScaledOperator",
    "ScipyOperator",
    "ShapeMismatchError",
    "ShardedData",
    "SingularOperatorError",
    "IndefiniteOperatorError",
    "SolveInfo",
    "SolverOptions",
    "SpectralDensity",
    "StopReason",
    "SumOperator",
    "Tags",
    "TensorBatches",
    "TraceEstimate",
    "aslinearoperator",
    "as_source",
    "estimate_diagonal",
    "estimate_trace",
    "hvp",
    "module_per_example_gradients",
    "per_example_gradients",
    "plot_spectral_density",
    "solve",
    "spectral_density",
    "to_scipy",
]
