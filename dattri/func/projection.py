"""Random and Arnoldi projections of ``dattri.func.projection`` (dattri 0.2.0), on linop.

The functions and projector classes keep dattri 0.2.0's signatures; every matrix and every
eigen-decomposition comes from [`linop`][linop]:

- CPU random projections are `SeededBlockProjection`, a
  linop operator kept in this package (it exists only to reproduce dattri's numbers): dattri's
  ``BasicProjector`` matrix number for number (same seeds, same torch generator draws), but
  computes in float32 even when ``use_half_precision=True`` (the result is then returned in
  float16, as in dattri): dattri's float16 CPU matmul is slow and less accurate.
- CUDA random projections are linop's counter-based Rademacher projection
  (``ProjectionOperator.random(..., kind="rademacher")``), which needs no compiled ``fast_jl``
  extension; its numbers differ from fast_jl's (any seeded ±1 JL matrix serves the same purpose).
- Arnoldi projections are [`linop.ArnoldiProjection`][linop.ArnoldiProjection] on a
  [`linop.HessianOperator`][linop.HessianOperator]: Lanczos from a seeded start, computed once, with
  zero weight (never NaN) for directions whose eigenvalue is not positive.

Example:
    >>> import torch
    >>> from dattri.func.projection import random_project
    >>> grads = torch.randn(4, 1000)
    >>> project = random_project(grads, 4, proj_dim=64, proj_max_batch_size=32, device="cpu")
    >>> out = project(grads)
    >>> out.shape, out.dtype
    (torch.Size([4, 64]), torch.float16)
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from linop import (
    ProjectionOperator,
    RandomProjection,
)

from ._arnoldi_projection import ArnoldiProjector, arnoldi_project
from ._projector_base import (
    AbstractProjector,
    ProjectionType,
    _as_rows,
    _check_dims,
    _linop_kind,
)
from ._seeded_projection import SeededBlockProjection
from .utils import _vectorize, get_parameter_chunk_sizes  # noqa: F401 - re-exported as dattri

#: dattri's module-level alias of `dattri.func.utils._vectorize`.
vectorize = _vectorize

__all__ = [
    "ProjectionType",
    "AbstractProjector",
    "BasicProjector",
    "CudaProjector",
    "ChunkedCudaProjector",
    "ArnoldiProjector",
    "make_random_projector",
    "random_project",
    "arnoldi_project",
]

#: The seed offset dattri gives every ensemble member of a BasicProjector.
_BASIC_ENSEMBLE_STRIDE = 100_000
#: The seed offset dattri gives every ensemble member of a CudaProjector.
_CUDA_ENSEMBLE_STRIDE = 10_000


class BasicProjector(AbstractProjector):
    """dattri's block-wise seeded projector.

    Built on `SeededBlockProjection`.

    The matrix is dattri 0.2.0's: output rows in blocks of ``min(proj_dim, block_size)``, block
    ``i`` drawn in ``dtype`` from a generator seeded ``seed + 1000 i + 100000 ensemble_id``,
    unscaled N(0, 1) (``"normal"``) or ±1 (``"rademacher"``) entries. The product is computed in
    float32 (float64 for ``dtype=torch.float64``) and returned in ``dtype``; the matrix is
    cached within linop's default 1 GiB budget instead of being regenerated on every call.

    Args:
        feature_dim: the dimension of the features.
        proj_dim: the dimension after the projection.
        seed: the seed of block 0.
        proj_type: ``"normal"`` or ``"rademacher"``.
        device: where the matrix is drawn and the projection runs.
        block_size: rows of the projection per generator seed (dattri: 100).
        dtype: the dtype the entries are drawn in and the result is returned in.
        ensemble_id: the ensemble member the matrix starts with.

    Raises:
        KeyError: for an unknown ``proj_type``.
        ValueError: if ``feature_dim``, ``proj_dim`` or ``block_size`` is not positive, or
            the seed of a block is not a ``torch.Generator`` seed.

    Example:
        >>> P = BasicProjector(1000, 50, seed=42, proj_type="normal", device="cpu")
        >>> P.project(torch.randn(10, 1000), ensemble_id=0).shape
        torch.Size([10, 50])
    """

    def __init__(
        self,
        feature_dim: int,
        proj_dim: int,
        seed: int,
        proj_type: str | ProjectionType,
        device: str | torch.device,
        block_size: int = 100,
        dtype: torch.dtype = torch.float32,
        ensemble_id: int = 0,
    ) -> None:
        super().__init__(feature_dim, proj_dim, seed, proj_type, device)
        self.kind = _linop_kind(proj_type)
        _check_dims(feature_dim, proj_dim)
        if not block_size >= 1:
            raise ValueError(
                f"block_size must be a positive integer (rows of the matrix per seed), got "
                f"{block_size}"
            )
        self.block_size = min(proj_dim, block_size)
        self.num_blocks = math.ceil(proj_dim / self.block_size)
        self.dtype = dtype
        self.ensemble_id = ensemble_id
        self.operator = self._build(ensemble_id)

    def _build(self, ensemble_id: int) -> SeededBlockProjection:
        compute = torch.float64 if self.dtype == torch.float64 else torch.float32
        return SeededBlockProjection(
            self.feature_dim,
            self.proj_dim,
            self.seed + _BASIC_ENSEMBLE_STRIDE * ensemble_id,
            dtype=compute,
            device=self.device,
            kind=self.kind,
            sample_dtype=self.dtype,
            block_size=self.block_size,
        )

    def project(self, features: dict | Tensor, ensemble_id: int = 0) -> Tensor:
        """Project a batch of features with the matrix of ``ensemble_id``.

        Args:
            features: a ``(B, feature_dim)`` tensor or a dict of per-parameter ``(B, ...)``
                tensors (flattened in insertion order).
            ensemble_id: the ensemble member; a new one switches the matrix.

        Returns:
            ``(B, proj_dim)`` in the projector's ``dtype``.
        """
        # one vector: (proj_dim,), as dattri
        if isinstance(features, Tensor) and features.ndim == 1:
            return self.project(features.unsqueeze(0), ensemble_id)[0]
        if ensemble_id != self.ensemble_id:
            self.ensemble_id = ensemble_id
            self.operator = self._build(ensemble_id)
        rows = _as_rows(features, self.device).to(self.operator.dtype)
        return self.operator.project(rows).to(self.dtype)

    def free_memory(self) -> None:
        """Drop the cached matrix (it is regenerated on the next projection)."""
        self.operator.clear_cache()


class CudaProjector(AbstractProjector):
    """A GPU random projector on linop's counter-based projection; no ``fast_jl`` needed.

    The matrix is [`linop.RandomProjection`][linop.RandomProjection] with unscaled entries (±1 for
    ``"rademacher"``, N(0, 1) for ``"normal"``), seeded ``seed + 10000 ensemble_id`` like
    dattri's; its numbers differ from fast_jl's. It is computed in float32 (with linop's Triton
    kernel when available) over batches of at most ``max_batch_size`` rows.

    Args:
        feature_dim: the dimension of the features.
        proj_dim: the dimension after the projection.
        seed: the seed of the matrix.
        proj_type: ``"rademacher"`` or ``"normal"``.
        device: a CUDA device.
        max_batch_size: the most rows projected at once.
        dtype: the dtype of the result (default: the features' dtype). A linop extension.

    Raises:
        ValueError: if ``device`` is not a CUDA device.
        KeyError: for an unknown ``proj_type``.
    """

    def __init__(
        self,
        feature_dim: int,
        proj_dim: int,
        seed: int,
        proj_type: str | ProjectionType,
        device: str | torch.device,
        max_batch_size: int,
        *,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(feature_dim, proj_dim, seed, proj_type, device)
        if torch.device(device).type != "cuda":
            raise ValueError(
                f"CudaProjector only works on a CUDA device, got {device!r}; use the "
                f"BasicProjector on other devices"
            )
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be positive, got {max_batch_size}")
        _check_dims(feature_dim, proj_dim)
        self.kind = _linop_kind(proj_type)
        self.max_batch_size = int(max_batch_size)
        self.dtype = dtype
        self._operators: dict[int, RandomProjection] = {}

    def _operator(self, ensemble_id: int) -> RandomProjection:
        if ensemble_id not in self._operators:
            self._operators = {
                ensemble_id: ProjectionOperator.random(
                    self.feature_dim,
                    self.proj_dim,
                    kind=self.kind,
                    seed=int(self.seed) + _CUDA_ENSEMBLE_STRIDE * ensemble_id,
                    dtype=torch.float32,
                    device=self.device,
                    scale=None,
                )
            }
        return self._operators[ensemble_id]

    def project(self, features: dict | Tensor, ensemble_id: int = 0) -> Tensor:
        """Project a batch of features with the matrix of ``ensemble_id``.

        Args:
            features: a ``(B, feature_dim)`` tensor or a dict of per-parameter ``(B, ...)``
                tensors.
            ensemble_id: the ensemble member.

        Returns:
            ``(B, proj_dim)``, in ``dtype`` if given, else in the features' dtype.
        """
        if isinstance(features, Tensor) and features.ndim == 1:  # one vector: (proj_dim,)
            return self.project(features.unsqueeze(0), ensemble_id)[0]
        rows = _as_rows(features, self.device)
        out_dtype = self.dtype if self.dtype is not None else rows.dtype
        operator = self._operator(ensemble_id)
        rows = rows.to(torch.float32)
        parts = [
            operator.project(rows[start : start + self.max_batch_size])
            for start in range(0, rows.shape[0], self.max_batch_size)
        ]
        out = torch.cat(parts) if parts else rows.new_zeros(0, self.proj_dim)
        return out.to(out_dtype)

    def free_memory(self) -> None:
        """Drop the projection operators (they are rebuilt on the next projection)."""
        self._operators = {}


class ChunkedCudaProjector:
    """Projects features whose dimension is split into chunks, one projector per chunk.

    The result is the sum of every chunk's projection of its slice of the features (columns
    ``dim_per_chunk[0]``, then the next ``dim_per_chunk[1]``, ...). linop has no 2³² limit, so
    [`make_random_projector`][dattri.func.projection.make_random_projector] never needs this class;
    it is kept for code that builds it.

    Args:
        projector_per_chunk: one projector per chunk (each with ``project(features, id)``).
        max_chunk_size: the largest chunk (kept for compatibility).
        dim_per_chunk: the feature dimension of every chunk.
        feature_batch_size: the batch size of the features (kept for compatibility; any batch
            size is accepted).
        proj_max_batch_size: the most rows projected at once (kept for compatibility).
        device: where the projection runs.
        dtype: the dtype of the result.

    Raises:
        ValueError: if ``projector_per_chunk`` is empty.
    """

    def __init__(
        self,
        projector_per_chunk: list,
        max_chunk_size: int,
        dim_per_chunk: list,
        feature_batch_size: int,
        proj_max_batch_size: int,
        device: str | torch.device,
        dtype: torch.dtype,
    ) -> None:
        if len(projector_per_chunk) == 0:
            raise ValueError(
                "projector_per_chunk is empty: pass one projector per chunk of the features "
                "(make_random_projector builds a single projector for any feature_dim)"
            )
        self.projector_per_chunk = projector_per_chunk
        self.proj_dim = projector_per_chunk[0].proj_dim
        self.proj_type = projector_per_chunk[0].proj_type
        self.dim_per_chunk = dim_per_chunk
        self.feature_batch_size = feature_batch_size
        self.max_chunk_size = max_chunk_size
        self.proj_max_batch_size = proj_max_batch_size
        self.device = device
        self.dtype = dtype

    def allocate_input(self) -> None:
        """A no-op: no staging buffer is needed (kept for compatibility)."""

    def free_memory(self) -> None:
        """Release the memory of every chunk's projector."""
        for projector in self.projector_per_chunk:
            projector.free_memory()

    def project(self, features: dict | Tensor, ensemble_id: int) -> Tensor:
        """Project a batch of features chunk by chunk and sum the results.

        Args:
            features: a ``(B, sum(dim_per_chunk))`` tensor or a dict of per-parameter tensors.
            ensemble_id: the ensemble member.

        Returns:
            ``(B, proj_dim)`` in ``dtype``.

        Raises:
            ValueError: if the features' dimension is not ``sum(dim_per_chunk)``.
        """
        rows = _as_rows(features, self.device)
        if rows.shape[1] != sum(self.dim_per_chunk):
            raise ValueError(
                f"the features have dimension {rows.shape[1]} but the chunks cover "
                f"{sum(self.dim_per_chunk)}"
            )
        out = torch.zeros(rows.shape[0], self.proj_dim, dtype=self.dtype, device=rows.device)
        start = 0
        for projector, width in zip(self.projector_per_chunk, self.dim_per_chunk, strict=False):
            chunk = rows[:, start : start + width].contiguous()
            out += projector.project(chunk, ensemble_id=ensemble_id).to(self.dtype)
            start += width
        return out

    def dict_project(self, features: dict | Tensor, ensemble_id: int) -> Tensor:
        """Same as [`project`][dattri.func.projection.ChunkedCudaProjector.project] (which accepts
        dicts too).

        Args:
            features: a dict of per-parameter ``(B, ...)`` tensors, or a tensor.
            ensemble_id: the ensemble member.

        Returns:
            ``(B, proj_dim)`` in ``dtype``.
        """
        return self.project(features, ensemble_id)


def make_random_projector(
    param_shape_list: list,
    feature_batch_size: int,
    proj_dim: int,
    proj_max_batch_size: int,
    device: str | torch.device,
    proj_seed: int = 0,
    *,
    use_half_precision: bool = True,
) -> AbstractProjector:
    """Build the random projector for features of the given parameter sizes.

    On the CPU: a [`BasicProjector`][dattri.func.projection.BasicProjector] with normal entries in
    float16 (``use_half_precision``) or float32, dattri's matrix. Elsewhere: a
    [`CudaProjector`][dattri.func.projection.CudaProjector] with Rademacher entries returning
    float16 or float32; linop has no 2³² limit, so features of any size get one projector (dattri's
    chunked projector is never needed).

    Args:
        param_shape_list: the number of features of every parameter.
        feature_batch_size: the batch size of the features.
        proj_dim: the dimension after the projection.
        proj_max_batch_size: the most rows a CUDA projector projects at once.
        device: ``"cpu"`` or a CUDA device.
        proj_seed: the seed of the matrix.
        use_half_precision: return float16 (computed in float32) instead of float32.

    Returns:
        The projector.

    Example:
        >>> P = make_random_projector([600, 400], 8, 32, 32, "cpu")
        >>> type(P).__name__, P.feature_dim
        ('BasicProjector', 1000)
    """
    del feature_batch_size  # only dattri's uint32 chunking needed it
    dtype = torch.float16 if use_half_precision else torch.float32
    feature_dim = int(sum(param_shape_list))
    if torch.device(device).type == "cpu":
        return BasicProjector(
            feature_dim, proj_dim, proj_seed, ProjectionType.normal, device, dtype=dtype
        )
    return CudaProjector(
        feature_dim,
        proj_dim,
        proj_seed,
        ProjectionType.rademacher,
        device,
        proj_max_batch_size,
        dtype=dtype,
    )


def _param_shape_list(feature: dict[str, Tensor] | Tensor, feature_batch_size: int) -> list[int]:
    """The number of features per example of every tensor of ``feature`` (dattri: its number
    of entries divided by ``feature_batch_size``), or a ValueError naming ``feature_batch_size``
    when that is not positive or not the batch size of ``feature``."""
    if not feature_batch_size >= 1:
        raise ValueError(
            f"feature_batch_size must be a positive integer (the batch size of the features), "
            f"got {feature_batch_size}"
        )
    is_dict = isinstance(feature, dict)
    tensors = [(repr(k), v) for k, v in feature.items()] if is_dict else [("feature", feature)]
    sizes = []
    for name, value in tensors:
        # a batch is (feature_batch_size, ...); one (feature_dim,) vector has batch size 1
        batched = value.ndim >= 2 or (is_dict and value.ndim == 1)
        if value.numel() % feature_batch_size or (batched and value.shape[0] != feature_batch_size):
            raise ValueError(
                f"feature_batch_size={feature_batch_size} is not the batch size of the features: "
                f"{name} has shape {tuple(value.shape)}; pass its leading dimension"
            )
        sizes.append(value.numel() // feature_batch_size)
    return sizes


def random_project(
    feature: dict[str, Tensor] | Tensor,
    feature_batch_size: int,
    proj_dim: int,
    proj_max_batch_size: int,
    device: str,
    proj_seed: int = 0,
    *,
    use_half_precision: bool = True,
) -> Callable:
    """Randomly project features to ``proj_dim`` dimensions.

    On the CPU the matrix is dattri 0.2.0's (unscaled N(0, 1) entries from
    `SeededBlockProjection`), so the numbers equal
    dattri's for the same seed up to rounding: the product is computed in float32 and, with
    ``use_half_precision``, returned in float16. On CUDA the matrix is linop's seeded ±1
    Rademacher projection (``ProjectionOperator.random(..., kind="rademacher")``, Triton kernel
    when available), which needs no ``fast_jl``; its numbers differ from fast_jl's, and the result
    is float16 or float32 as on the CPU. ``proj_max_batch_size`` only bounds how many rows the
    CUDA path projects at once.

    Args:
        feature: an example of the features: a ``(feature_batch_size, feature_dim)`` tensor or
            a dict of per-parameter ``(feature_batch_size, ...)`` tensors (like
            ``model.named_parameters()`` gradients); it fixes ``feature_dim``.
        feature_batch_size: the batch size of ``feature``.
        proj_dim: the dimension after the projection.
        proj_max_batch_size: the most rows projected at once on CUDA.
        device: ``"cpu"`` or ``"cuda"``.
        proj_seed: the seed of the matrix. Defaults to 0.
        use_half_precision: return float16 instead of float32. Defaults to True.

    Returns:
        A function ``(feature, ensemble_id=0) -> (B, proj_dim)`` projecting a tensor or a dict
        of features; ``ensemble_id`` selects an independent matrix.

    Example:
        >>> g = {"w": torch.randn(2, 3, 4), "b": torch.randn(2, 3)}
        >>> project = random_project(g, 2, 8, 32, "cpu", use_half_precision=False)
        >>> project(g).shape, project(g, ensemble_id=1).dtype
        (torch.Size([2, 8]), torch.float32)
    """
    param_shape_list = _param_shape_list(feature, feature_batch_size)
    projector = make_random_projector(
        param_shape_list,
        feature_batch_size,
        proj_dim,
        proj_max_batch_size,
        device,
        proj_seed,
        use_half_precision=use_half_precision,
    )

    def _random_project_func(
        feature: dict[str, Tensor] | Tensor,
        ensemble_id: int = 0,
    ) -> Tensor:
        """Project ``feature`` (a ``(B, feature_dim)`` tensor or a dict) to ``(B, proj_dim)``."""
        return projector.project(feature, ensemble_id)

    return _random_project_func


#: linop's warnings point past this module, at its caller (see linop._warn)
__linop_wrapper__ = True
