"""Curvature operators: defined at one batch and a point, turned into dataset operators by the
generic [`DatasetMean`][linop.DatasetMean].

Data flows one way: data source (`linop.data`) → one-batch operator
([`HessianOperator`][linop.HessianOperator], [`GGNOperator`][linop.GGNOperator],
[`FisherOperator`][linop.FisherOperator], any [`CurvatureOperator`][linop.CurvatureOperator]) →
[`DatasetMean`][linop.DatasetMean] → solvers. The Kronecker-factored
[`KFACOperator`][linop.KFACOperator] and [`EKFACOperator`][linop.EKFACOperator] are fitted by
passes over a data source and hold exact eigendecompositions.
"""

from __future__ import annotations

from linop.curvature._autodiff import MODES, hvp
from linop.curvature.base import CurvatureOperator
from linop.curvature.dataset import DatasetMean
from linop.curvature.fisher import FisherOperator
from linop.curvature.ggn import GGNOperator
from linop.curvature.gradients import module_per_example_gradients, per_example_gradients
from linop.curvature.hessian import HessianOperator
from linop.curvature.kfac import EKFACOperator, KFACOperator

__all__ = [
    "MODES",
    "CurvatureOperator",
    "DatasetMean",
    "EKFACOperator",
    "FisherOperator",
    "GGNOperator",
    "HessianOperator",
    "KFACOperator",
    "hvp",
    "module_per_example_gradients",
    "per_example_gradients",
]
