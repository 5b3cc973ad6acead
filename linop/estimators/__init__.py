"""Randomised estimators on any square operator: its trace, its diagonal and its spectral density,
from a budget of operator products.

- [`estimate_trace`][linop.estimate_trace]: Girard–Hutchinson, Hutch++ (Meyer, Musco, Musco,
  Woodruff 2021) and XTrace (Epperly, Tropp, Webber 2024), the default.
- [`estimate_diagonal`][linop.estimate_diagonal]: Hutchinson and XDiag (Epperly, Tropp, Webber).
- [`spectral_density`][linop.spectral_density]: stochastic Lanczos quadrature (Ubaru, Chen, Saad
  2017) of a symmetric operator, smoothed on a grid, with
  [`plot_spectral_density`][linop.plot_spectral_density].

Every call is seeded (the same seed gives the same answer), applies the operator to blocks of
probe columns (``A @ X`` with ``X`` of shape ``(n, block_size)``: batched products are where the
speed is), counts its products honestly in the result and reports a standard error. A budget of
``products ≥ n`` computes the exact value from the ``n`` columns of the identity instead.

The trace and diagonal estimators live in ``linop.estimators.trace``, the spectral density in
``linop.estimators.spectral``; every public name is importable from ``linop``.

Example:
    >>> import torch
    >>> from linop import DiagonalOperator, estimate_trace
    >>> A = DiagonalOperator(torch.linspace(1.0, 2.0, 500, dtype=torch.float64))
    >>> t = estimate_trace(A, products=40, seed=0)
    >>> abs(t.estimate - 750.0) < 5 * t.standard_error, t.products
    (True, 40)
"""

from __future__ import annotations

from linop.estimators._probes import (
    DIAGONAL_METHODS,
    TRACE_METHODS,
    DiagonalEstimate,
    TraceEstimate,
)
from linop.estimators.spectral import SpectralDensity, plot_spectral_density, spectral_density
from linop.estimators.trace import estimate_diagonal, estimate_trace

__all__ = [
    "TRACE_METHODS",
    "DIAGONAL_METHODS",
    "TraceEstimate",
    "DiagonalEstimate",
    "SpectralDensity",
    "estimate_trace",
    "estimate_diagonal",
    "spectral_density",
    "plot_spectral_density",
]
