"""What every projector of [`dattri.func.projection`][dattri.func.projection] shares: the projection
types, the abstract interface, and how features become rows."""

from __future__ import annotations

from abc import ABC, abstractmethod
from enum import Enum

import torch
from torch import Tensor

from linop.errors import DTypeMismatchError

from .utils import _check_copy, _vectorize

__all__ = ["ProjectionType", "AbstractProjector"]

#: The seeds a ``torch.Generator`` accepts (negative ones wrap around modulo 2⁶⁴).
_TORCH_SEEDS = (-(2**63), 2**64 - 1)


def _check_seed(seed: int, name: str = "seed") -> None:
    """A ValueError naming ``name`` unless ``seed`` is a ``torch.Generator`` seed."""
    low, high = _TORCH_SEEDS
    if not low <= seed <= high:
        raise ValueError(
            f"{name} must be an integer in [-2**63, 2**64 - 1] (a torch.Generator seed), got {seed}"
        )


def _check_dims(feature_dim: int, proj_dim: int) -> None:
    """A ValueError naming the argument unless both dimensions are positive."""
    for name, value in (("feature_dim", feature_dim), ("proj_dim", proj_dim)):
        if not value >= 1:
            raise ValueError(f"{name} must be a positive integer, got {value}")


class ProjectionType(str, Enum):
    """The distribution of a random projection's entries."""

    normal: str = "normal"
    rademacher: str = "rademacher"


def _linop_kind(proj_type: str | ProjectionType) -> str:
    """linop's name for a projection type; a KeyError for an unknown one, as in dattri."""
    value = proj_type.value if isinstance(proj_type, ProjectionType) else proj_type
    if value == "normal":
        return "gaussian"
    if value == "rademacher":
        return "rademacher"
    raise KeyError(f"Projection type {proj_type} not recognized.")


def _as_rows(features: dict | Tensor, device: str | torch.device) -> Tensor:
    """Features as a detached ``(B, n)`` tensor on ``device`` (a dict flattened as dattri does)."""
    if isinstance(features, dict):
        features = _vectorize(features, device=device)
    if features.is_complex():
        raise DTypeMismatchError(
            f"the features are complex ({features.dtype}) but the projections are real; project "
            f"the real and imaginary parts separately (features.real, features.imag)"
        )
    _check_copy(features, device, "the features")
    features = features.detach().to(device)
    if features.ndim == 1:  # one example
        features = features.unsqueeze(0)
    if features.ndim > 2:
        features = features.reshape(features.shape[0], -1)
    return features


class AbstractProjector(ABC):
    """The interface of every projector: ``project(features, ensemble_id)`` to ``(B, proj_dim)``.

    Args:
        feature_dim: the dimension of the features (the number of parameters, for gradients).
        proj_dim: the dimension after the projection.
        seed: the seed of the projection matrix.
        proj_type: ``"normal"`` or ``"rademacher"`` entries.
        device: where the projection runs.
    """

    @abstractmethod
    def __init__(
        self,
        feature_dim: int,
        proj_dim: int,
        seed: int,
        proj_type: str | ProjectionType,
        device: str | torch.device,
    ) -> None:
        self.feature_dim = feature_dim
        self.proj_dim = proj_dim
        self.seed = seed
        self.proj_type = proj_type
        self.device = device

    @abstractmethod
    def project(self, features: dict | Tensor, ensemble_id: int) -> Tensor:
        """Project a batch of features.

        Args:
            features: a ``(B, feature_dim)`` tensor or a dict of per-parameter ``(B, ...)``
                tensors.
            ensemble_id: selects one of several independent projection matrices.

        Returns:
            The projected features, ``(B, proj_dim)``.
        """

    @abstractmethod
    def free_memory(self) -> None:
        """Release memory held by the projector."""


#: linop's warnings point past this module, at its caller (see linop._warn)
__linop_wrapper__ = True
