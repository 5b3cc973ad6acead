"""Spectral density by stochastic Lanczos quadrature (Ubaru, Chen, Saad 2017), and its plot."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from linop._checks import integer
from linop._checks import seed as check_seed
from linop.errors import ShapeMismatchError
from linop.estimators._probes import TraceEstimate, _mean_and_error
from linop.lanczos import lanczos
from linop.operator import LinearOperator

__all__ = ["SpectralDensity", "spectral_density", "plot_spectral_density"]


@dataclass(frozen=True)
class SpectralDensity:
    """A spectral density by stochastic Lanczos quadrature: for each probe, the Gauss quadrature
    nodes ``θ`` (the Ritz values) and weights ``τ`` (squared first components of the Ritz
    vectors) of the measure ``Σⱼ (vᵀuⱼ)² δ(t − λⱼ)``, whose mean over unit probes ``v`` is the
    spectral density ``(1/n) Σⱼ δ(t − λⱼ)``.

    Attributes:
        nodes: ``(probes, steps)`` float64.
        weights: ``(probes, steps)`` float64; each row sums to 1.
        size: ``n``, the operator's size.
        products: the operator products the run cost.
    """

    nodes: torch.Tensor
    weights: torch.Tensor
    size: int
    products: int

    def default_width(self) -> float:
        """The Gaussian width of [`density`][linop.SpectralDensity.density]: 1 % of the range
        of the nodes (1 % of their magnitude, or 0.01 at zero, when they coincide)."""
        lo, hi = float(self.nodes.min()), float(self.nodes.max())
        magnitude = max(abs(lo), abs(hi))
        if hi - lo > 1e-8 * magnitude:
            return 0.01 * (hi - lo)
        return 0.01 * (magnitude or 1.0)  # one eigenvalue, up to rounding

    def grid(self, points: int = 512, width: float | None = None) -> torch.Tensor:
        """``points`` equispaced float64 abscissae covering the nodes and three widths more."""
        points = integer("points", points, 2)
        w = self._width(width)
        lo, hi = float(self.nodes.min()) - 3 * w, float(self.nodes.max()) + 3 * w
        return torch.linspace(lo, hi, points, dtype=torch.float64)

    def density(self, t: torch.Tensor, width: float | None = None) -> torch.Tensor:
        """The density at ``t`` (any shape, float64 result): the quadrature measures averaged
        over the probes, each node smoothed by a Gaussian of standard deviation ``width``
        (default [`default_width`][linop.SpectralDensity.default_width]); it integrates to 1."""
        w = self._width(width)
        t = torch.as_tensor(t, dtype=torch.float64)
        z = (t.reshape(-1, 1) - self.nodes.reshape(1, -1)) / w
        kernel = torch.exp(-0.5 * z.square()) / (w * math.sqrt(2 * math.pi))
        return (kernel @ self.weights.reshape(-1) / self.nodes.shape[0]).reshape(t.shape)

    def trace(self, f: Callable[[torch.Tensor], torch.Tensor]) -> TraceEstimate:
        """An estimate of ``tr f(A) = n ∫ f dφ`` (for instance ``torch.log`` for a log-determinant
        of a positive definite ``A``), with the standard error over the probes; no new
        products (``products`` reports the run's)."""
        per_probe = self.size * (self.weights * f(self.nodes)).sum(1)
        value, error = _mean_and_error(per_probe.to(torch.float64))
        return TraceEstimate(float(value), float(error), self.products, "slq")

    def _width(self, width: float | None) -> float:
        if width is None:
            return self.default_width()
        if isinstance(width, bool) or not isinstance(width, (int, float)) or not width > 0:
            raise ValueError(f"width must be a positive number, got {width!r}")
        if not math.isfinite(width):
            raise ValueError(f"width must be finite, got {width!r}")
        return float(width)


def spectral_density(
    A: LinearOperator,
    steps: int = 30,
    probes: int = 10,
    *,
    seed: int = 0,
    progress: bool = False,
) -> SpectralDensity:
    """The spectral density of a symmetric ``A`` by stochastic Lanczos quadrature.

    Each probe is one run of [`linop.lanczos.lanczos`][linop.lanczos.lanczos] (full
    reorthogonalisation, restarts at breakdown) from its seeded random unit start vector; the
    eigendecomposition of its tridiagonal ``T`` gives the quadrature nodes and weights.
    ``probes · min(steps, n)`` products, one column at a time.

    Args:
        A: a symmetric operator (tagged symmetric).
        steps: Lanczos steps per probe (quadrature nodes; capped at ``n``).
        probes: the number of random start vectors (at least 2: a standard error needs two).
        seed: seeds the probes' start vectors.
        progress: show a progress bar over the probes.

    Returns:
        A [`SpectralDensity`][linop.SpectralDensity].

    Raises:
        ValueError: for an empty operator or one not tagged symmetric, or ``steps < 1``,
            ``probes < 2``.
        NonFiniteError: when a product has NaN or infinite entries.

    Example:
        >>> import torch
        >>> from linop import DiagonalOperator, spectral_density
        >>> A = DiagonalOperator(torch.cat([torch.zeros(80), torch.ones(20)]).double())
        >>> sd = spectral_density(A, steps=5, probes=4)
        >>> round(float(sd.nodes.max()), 9), sd.products
        (1.0, 20)
    """
    if not isinstance(A, LinearOperator):
        raise TypeError(f"spectral_density needs a LinearOperator, got {type(A).__name__}")
    if A.shape[0] != A.shape[1]:
        raise ShapeMismatchError(f"spectral_density needs a square operator; {A!r} is {A.shape}")
    if A.shape[0] == 0:
        raise ValueError(f"spectral_density needs a non-empty operator; {A!r} has no eigenvalues")
    if not A.tags.symmetric:
        raise ValueError(
            f"spectral_density needs a symmetric operator; {A!r} is not tagged symmetric "
            f"(use .with_tags(symmetric=True) if you know it is)"
        )
    steps = min(integer("steps", steps, 1), A.shape[0])
    probes = integer("probes", probes, 2)
    g = torch.Generator().manual_seed(check_seed(seed))
    seeds = torch.randint(0, 2**62, (probes,), generator=g).tolist()
    nodes, weights = [], []
    for probe_seed in tqdm(seeds, desc="SLQ", disable=not progress, leave=False):
        _, alpha, beta = lanczos(A, steps, seed=probe_seed)
        T = torch.diag(alpha) + torch.diag(beta, 1) + torch.diag(beta, -1)
        theta, U = torch.linalg.eigh(T)
        nodes.append(theta)
        weights.append(U[0].square())
    return SpectralDensity(torch.stack(nodes), torch.stack(weights), A.shape[0], probes * steps)


def plot_spectral_density(
    density: SpectralDensity,
    ax: Any = None,
    *,
    points: int = 512,
    width: float | None = None,
    log: bool = False,
) -> Any:
    """Draw a [`SpectralDensity`][linop.SpectralDensity] on a matplotlib ``Axes`` (a new figure
    when ``ax`` is None) and return the ``Axes``. matplotlib is imported only here; linop does
    not install it.

    Args:
        density: the result of [`spectral_density`][linop.spectral_density].
        ax: the ``Axes`` to draw on.
        points: grid points.
        width: the Gaussian width (default: the density's own).
        log: a logarithmic density axis (the tails of curvature spectra span many decades).

    Raises:
        ImportError: when ``ax`` is None and matplotlib is not installed.

    Example:
        >>> import torch
        >>> from linop import DiagonalOperator, spectral_density, plot_spectral_density
        >>> sd = spectral_density(DiagonalOperator(torch.rand(50).double()), steps=8, probes=3)
        >>> class Axes:                                   # stands in for a matplotlib Axes
        ...     def __getattr__(self, name):
        ...         return lambda *args, **kwargs: None
        >>> ax = plot_spectral_density(sd, Axes())
    """
    if not isinstance(density, SpectralDensity):
        raise TypeError(
            f"plot_spectral_density draws a SpectralDensity (from spectral_density), got "
            f"{type(density).__name__}"
        )
    t = density.grid(points, width)
    values = density.density(t, width)
    if ax is None:
        try:
            import matplotlib.pyplot as plt
        except ImportError as e:
            raise ImportError(
                "plot_spectral_density needs matplotlib, which linop does not install: "
                "pip install matplotlib (or pass your own ax)"
            ) from e
        _, ax = plt.subplots()
    ax.plot(t.numpy(), values.numpy())
    ax.set_xlabel("eigenvalue")
    ax.set_ylabel("spectral density")
    if log:
        ax.set_yscale("log")
    return ax
