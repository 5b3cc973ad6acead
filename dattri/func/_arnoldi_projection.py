"""The Arnoldi projector of [`dattri.func.projection`][dattri.func.projection]: ``Λ^{-1/2} Vᵀ`` from
the top eigenpairs of a Hessian, on [`linop.ArnoldiProjection`][linop.ArnoldiProjection]."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from linop import ArnoldiProjection, HessianOperator, LinearOperator

from ._projector_base import AbstractProjector, _as_rows, _check_seed

__all__ = ["ArnoldiProjector", "arnoldi_project"]


class ArnoldiProjector(AbstractProjector):
    """Projects features by ``Λ^{-1/2} Vᵀ`` from the top eigenpairs of ``H + λI``.

    ``H`` is the Hessian of ``func`` at ``x`` ([`linop.HessianOperator`][linop.HessianOperator]),
    ``λ`` the ``regularization``, and ``(Λ, V)`` its top ``proj_dim`` eigenpairs by magnitude, found
    once (on the first projection, or
    [`get_eigenspace`][dattri.func.projection.ArnoldiProjector.get_eigenspace]) by Lanczos with full
    reorthogonalisation from a start vector seeded by ``seed``
    ([`linop.ArnoldiProjection`][linop.ArnoldiProjection]). Inner products of projected features
    approximate ``gᵀ (H + λI)⁻¹ g'``.

    Differences from dattri 0.2.0, all fixes: directions whose eigenvalue is not positive get
    weight zero with a [`linop.NegativeCurvatureWarning`][linop.errors.NegativeCurvatureWarning]
    (dattri returns NaN columns); ``norm_constant`` does not change the result (it is the norm of
    the Krylov basis vectors in jax-influence's Arnoldi, a guard against underflow when normalising
    huge vectors; the eigenpairs do not depend on it, but dattri divides only part of the iteration
    by it and returns wrong eigenpairs for ``norm_constant != 1``; linop keeps an orthonormal basis
    in the working precision, so it is accepted and has no effect); when Lanczos finds an invariant
    subspace early it restarts orthogonally instead of stopping, so
    ``min(proj_dim, max_iter − 1, feature_dim)`` columns are always resolved. Columns come in
    dattri's order, by increasing eigenvalue magnitude.

    Args:
        feature_dim: the dimension of the features; must be the number of entries of ``x``.
        proj_dim: how many eigenpairs (columns of the result).
        func: a function of ``x`` returning a single-element tensor.
        x: the point at which the Hessian is taken (``func(x)``).
        argnums: which argument of ``func`` is differentiated (``func`` takes one, so 0).
        max_iter: the Krylov dimension plus one, as dattri counts: ``max_iter − 1`` Lanczos
            steps (Hessian-vector products), at most ``feature_dim``.
        norm_constant: accepted for compatibility; no effect on the result (see above).
        tol: accepted for compatibility; breakdown of the Lanczos iteration is detected relative
            to the Hessian's scale (dattri's absolute threshold has no scale-free meaning).
        mode: ``"rev-fwd"`` or ``"rev-rev"`` Hessian-vector products.
        regularization: ``λ``, added to the Hessian.
        seed: the seed of the Lanczos start vector.
        device: accepted for compatibility: the Hessian and the projection live where ``x``
            lives, and features are moved there.

    Raises:
        ValueError: if ``feature_dim`` is not the size of ``x``, ``max_iter < 2``,
            ``proj_dim < 1``, or ``seed`` is not a ``torch.Generator`` seed.

    Example:
        >>> x = torch.randn(5)
        >>> P = ArnoldiProjector(5, 5, lambda x: torch.sin(x).sum(), x, regularization=2.0)
        >>> P.project(torch.randn(3, 5)).shape
        torch.Size([3, 5])
    """

    def __init__(
        self,
        feature_dim: int,
        proj_dim: int,
        func: Callable,
        x: Any,
        argnums: int = 0,
        max_iter: int = 100,
        norm_constant: float = 1.0,
        tol: float = 1e-7,
        mode: str = "rev-fwd",
        regularization: float = 0.0,
        seed: int = 0,
        device: str | torch.device = "cpu",
    ) -> None:
        self.feature_dim = feature_dim
        self.proj_dim = proj_dim
        self.seed = seed
        self.device = device
        self.proj_type = "arnoldi"
        self.max_iter = max_iter
        self.norm_constant = float(norm_constant)
        self.tol = tol
        self.regularization = float(regularization)
        self.hessian = HessianOperator(func, (x,), argnums=argnums, mode=mode)
        n = self.hessian.shape[0]
        if feature_dim != n:
            raise ValueError(f"feature_dim={feature_dim} but the point x has {n} entries")
        if max_iter < 2:
            raise ValueError(f"max_iter must be at least 2 (one Lanczos step), got {max_iter}")
        if proj_dim < 1:
            raise ValueError(f"proj_dim must be positive, got {proj_dim}")
        _check_seed(seed)
        self.operator: LinearOperator = self.hessian.regularize(self.regularization)
        self.steps = min(n, max_iter - 1)
        self.rank = min(proj_dim, self.steps)
        self.projection: ArnoldiProjection | None = None
        self.eigvals: Tensor | None = None
        self.eigvecs: Tensor | None = None

    def get_eigenspace(self) -> None:
        """Compute the eigenpairs once (later calls do nothing).

        Sets `eigvals` (``θ + λ``, by increasing magnitude) and `eigvecs`
        (``(rank, feature_dim)`` orthonormal rows, in the same order).
        """
        if self.projection is not None:
            return
        # dattri's absolute ``tol`` has no scale-free meaning: linop's relative default is used
        options = {"maxiter": self.steps, "seed": self.seed, "which": "LM"}
        low = self.operator.eigh(self.rank, **options)  # cached on the operator: computed once
        self.projection = ArnoldiProjection(self.operator, self.rank, **options)
        self.eigvals = low.values.flip(0)
        self.eigvecs = low.vectors.mT.flip(0)

    def project(self, features: dict | Tensor, ensemble_id: int = 0) -> Tensor:
        """Project a batch of features.

        Args:
            features: a ``(B, feature_dim)`` tensor or a dict of per-parameter ``(B, ...)``
                tensors.
            ensemble_id: ignored (one Hessian, one projection); accepted for the interface.

        Returns:
            ``(B, rank)`` in the Hessian's dtype, columns by increasing eigenvalue magnitude.
        """
        del ensemble_id
        self.get_eigenspace()
        assert self.projection is not None
        rows = _as_rows(features, self.projection.device).to(self.projection.dtype)
        return self.projection.project(rows).flip(1)

    def free_memory(self) -> None:
        """A no-op (the eigenpairs are what the projector is)."""


def arnoldi_project(
    feature_dim: int,
    func: Callable,
    x: Any,
    argnums: int = 0,
    proj_dim: int = 100,
    max_iter: int = 100,
    norm_constant: float = 1.0,
    tol: float = 1e-7,
    mode: str = "rev-fwd",
    regularization: float = 0.0,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> Callable:
    """Project features by the top eigenpairs of the Hessian of ``func`` at ``x`` (Arnoldi).

    The returned function maps ``g`` to ``Λ^{-1/2} Vᵀ g``, where ``(Λ, V)`` are the
    top-``proj_dim`` eigenpairs by magnitude of ``H + λI`` (``λ = regularization``), so inner
    products of projected vectors approximate ``gᵀ (H + λI)⁻¹ g'``. The eigenpairs are computed
    once, on the first call, by Lanczos from a start vector seeded by ``seed``; directions whose
    eigenvalue is not positive get weight zero (never NaN). See
    [`ArnoldiProjector`][dattri.func.projection.ArnoldiProjector] for every argument and the
    differences from dattri 0.2.0.

    Args:
        feature_dim: the dimension of the features (the number of entries of ``x``).
        func: a function of ``x`` returning a single-element tensor.
        x: the point at which the Hessian is taken.
        argnums: which argument of ``func`` is differentiated (0).
        proj_dim: how many eigenpairs to keep.
        max_iter: ``max_iter − 1`` Lanczos steps (Hessian-vector products), at most
            ``feature_dim``.
        norm_constant: accepted for compatibility; the result does not depend on it (dattri
            0.2.0 returns wrong eigenpairs for values other than 1).
        tol: accepted for compatibility; breakdown of the Lanczos iteration is detected
            relative to the Hessian's scale (dattri's absolute threshold has no scale-free
            meaning).
        mode: ``"rev-fwd"`` or ``"rev-rev"``.
        regularization: ``λ``, added to the Hessian.
        seed: the seed of the Lanczos start vector.
        device: accepted for compatibility; features are moved to the device of ``x``.

    Returns:
        A function ``(feature) -> (B, min(proj_dim, max_iter − 1, feature_dim))`` accepting a
        ``(B, feature_dim)`` tensor or a dict of per-parameter ``(B, ...)`` tensors.

    Example:
        >>> x = torch.randn(10)
        >>> project = arnoldi_project(10, lambda x: (x ** 4).sum(), x, proj_dim=5)
        >>> project(torch.randn(20, 10)).shape
        torch.Size([20, 5])
    """
    projector = ArnoldiProjector(
        feature_dim,
        proj_dim,
        func,
        x,
        argnums,
        max_iter,
        norm_constant,
        tol,
        mode,
        regularization,
        seed,
        device,
    )

    def _arnoldi_project_func(feature: dict[str, Tensor] | Tensor) -> Tensor:
        """Project ``feature`` (a ``(B, feature_dim)`` tensor or a dict) to ``(B, rank)``."""
        return projector.project(feature)

    return _arnoldi_project_func


#: linop's warnings point past this module, at its caller (see linop._warn)
__linop_wrapper__ = True
