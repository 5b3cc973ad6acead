"""Lazy inverses: ``A.inverse(method=..., **options)`` and [`solve`][linop.solve].

======== =====================================================================================
method   what it does
======== =====================================================================================
explicit materialise (memory guard applies), then Cholesky (symmetric positive definite) or LU
cg       batched conjugate gradient; every column stops on its own at
         ``‖b − Ax‖ ≤ max(rtol‖b‖, atol)``; a preconditioner is an operator
         (``preconditioner="arnoldi"`` or ``"nystrom"`` builds one from the spectrum);
         ``block=True`` shares one Krylov space across the columns
arnoldi  Lanczos top-k eigenpairs once (kept in the operator's cache), then ``V (Λ + λ)⁻¹ Vᵀ``
lissa    stochastic Neumann series over random minibatches of a dataset mean
nystrom  a randomized Nyström approximation of a psd ``H`` (kept in its cache), then the exact
         inverse of ``U Λ Uᵀ + λI``
eigen    the closed-form inverse of an operator that knows its eigendecomposition (K-FAC,
         EK-FAC) or its shift ``K + λI``; the default for them
======== =====================================================================================

Each method's options are a typed object ([`CGOptions`][linop.CGOptions],
[`ExplicitOptions`][linop.ExplicitOptions], [`ArnoldiOptions`][linop.ArnoldiOptions],
[`LissaOptions`][linop.LissaOptions], [`NystromOptions`][linop.NystromOptions],
[`EigenOptions`][linop.EigenOptions]), checked when
the inverse is built; why each column stopped is a [`StopReason`][linop.StopReason] on
[`SolveInfo`][linop.SolveInfo].

Example:
    >>> import torch
    >>> from linop import DenseOperator
    >>> from linop.inverse import CGOptions
    >>> A = DenseOperator(torch.tensor([[4.0, 1.0], [1.0, 3.0]], dtype=torch.float64))
    >>> x = A.inverse(CGOptions(rtol=1e-12)) @ torch.tensor([1.0, 2.0], dtype=torch.float64)
    >>> torch.allclose(A @ x, torch.tensor([1.0, 2.0], dtype=torch.float64))
    True
"""

from __future__ import annotations

from linop.inverse.arnoldi import ArnoldiOptions
from linop.inverse.base import METHODS, SolveInfo, SolverOptions, StopReason, Strategy, register
from linop.inverse.cg import CGOptions
from linop.inverse.eigen import EigenOptions
from linop.inverse.explicit import ExplicitOptions
from linop.inverse.lissa import LissaOptions
from linop.inverse.nystrom import NystromOptions
from linop.inverse.operator import InverseOperator, solve
from linop.inverse.preconditioners import deflation_preconditioner, nystrom_preconditioner

__all__ = [
    "METHODS",
    "ArnoldiOptions",
    "CGOptions",
    "EigenOptions",
    "ExplicitOptions",
    "InverseOperator",
    "LissaOptions",
    "NystromOptions",
    "SolveInfo",
    "SolverOptions",
    "StopReason",
    "Strategy",
    "deflation_preconditioner",
    "nystrom_preconditioner",
    "register",
    "solve",
]
