"""The dattri-compatible seeded-block projection: a ``(k, n)`` random matrix drawn block by
block from seeded ``torch.Generator`` s, reproducing dattri 0.2.0's ``BasicProjector``.

linop's own [`ProjectionOperator.random`][linop.ProjectionOperator.random] uses a
counter-based hash instead (the same matrix on every device); this one exists so that
``dattri.func.projection.random_project`` on the CPU gives dattri's numbers.

Example:
    >>> from dattri.func._seeded_projection import SeededBlockProjection
    >>> SeededBlockProjection(100, 8, seed=0).shape
    (8, 100)
"""

from __future__ import annotations

import math

import torch

from linop.errors import DTypeMismatchError
from linop.operator import LinearOperator
from linop.projection import (
    ProjectionOperator,
    _cache_budget,
    _compute_dtype,
    _ProjectionAdjoint,
    _scale_factor,
    _validate,
)
from linop.tags import Tags

from ._projector_base import _TORCH_SEEDS

__all__ = ["SeededBlockProjection", "SEEDED_KINDS"]


#: The kinds of `SeededBlockProjection`.
SEEDED_KINDS = ("gaussian", "rademacher")


class SeededBlockProjection(ProjectionOperator):
    """A ``(k, n)`` random projection drawn block by block from seeded ``torch.Generator`` s.

    Reproduces dattri 0.2.0's ``BasicProjector`` matrix (and so TRAK's CPU projector): the ``k``
    output rows are split into blocks of ``b = min(k, block_size)`` rows; block ``i`` is the
    transpose of an ``(n, b)`` tensor in ``sample_dtype`` filled by ``Tensor.normal_``
    (``kind="gaussian"``) or by ``Tensor.bernoulli_(0.5)`` mapped to ±1 (``kind="rademacher"``)
    from a generator on the operator's device seeded ``seed + seed_stride · i``; the last block
    keeps the first ``k − (blocks − 1) · b`` of its ``b`` drawn columns. Entries are N(0, 1) or
    ±1, unscaled unless ``scale`` says otherwise.

    The numbers are torch's generator's, so they are those of dattri on the same torch build and
    device, and they depend on ``sample_dtype`` (torch draws float16 normals differently from
    float32 ones). Products are computed in float32 (float64 for a float64 operator) whatever
    ``sample_dtype`` is, and returned in the operator's ``dtype``.

    Memory: with ``cache_bytes`` allowing it, the whole matrix is kept after the first product,
    in the compute dtype if it fits the budget, else in ``sample_dtype``. Otherwise it is
    regenerated on every product, one block at a time; on the CPU a gaussian block is drawn in
    chunks of ``chunk_rows`` rows of its ``(n, b)`` draw (torch's CPU ``normal_`` fills the
    tensor sequentially in groups of 16, so the chunks give the same numbers as one draw), which
    bounds memory to ``O(chunk_rows · b)``; rademacher blocks and blocks on other devices are
    drawn whole, ``O(n · b)``.

    Args:
        n: input dimension.
        k: output dimension.
        seed: the seed of block 0.
        dtype: the dtype of the vectors (float64, float32, float16 or bfloat16).
        device: where the vectors live and the matrix is drawn.
        kind: ``"gaussian"`` or ``"rademacher"``.
        sample_dtype: the dtype the entries are drawn in (default: ``dtype``); dattri draws in
            its projector's dtype, float16 with ``use_half_precision=True``.
        block_size: rows per block (dattri: 100).
        seed_stride: the seed increment from one block to the next (dattri: 1000).
        scale: a number multiplying every entry, ``"jl"`` for ``1/√k``, or None for the raw
            entries (the default, as dattri).
        chunk_rows: rows of a gaussian block's draw generated at once on the CPU when the matrix
            is not cached (rounded down to a multiple of 16; default about 8M entries).
        cache_bytes: memory the matrix may keep across calls (default 1 GiB on the CPU, 0 on
            other devices).

    Example:
        >>> import torch
        >>> from dattri.func._seeded_projection import SeededBlockProjection
        >>> P = SeededBlockProjection(1000, 150, seed=0)   # blocks of 100 rows: seeds 0 and 1000
        >>> g = torch.Generator().manual_seed(1000)
        >>> torch.equal(P.block(1), torch.empty(1000, 100).normal_(generator=g)[:, :50].T)
        True
        >>> P.project(torch.randn(4, 1000)).shape
        torch.Size([4, 150])
    """

    def __init__(
        self,
        n: int,
        k: int,
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        *,
        kind: str = "gaussian",
        sample_dtype: torch.dtype | None = None,
        block_size: int = 100,
        seed_stride: int = 1000,
        scale: str | float | None = None,
        chunk_rows: int | None = None,
        cache_bytes: int | None = None,
    ) -> None:
        _validate(kind, SEEDED_KINDS, dtype, n, k)
        sample_dtype = dtype if sample_dtype is None else sample_dtype
        if not sample_dtype.is_floating_point or sample_dtype.is_complex:
            raise DTypeMismatchError(
                f"sample_dtype must be a real floating dtype, got {sample_dtype}"
            )
        if block_size < 1:
            raise ValueError(f"block_size must be positive, got {block_size}")
        super().__init__((k, n), dtype, device, Tags())
        self.kind, self.seed, self.seed_stride = kind, int(seed), int(seed_stride)
        self.sample_dtype = sample_dtype
        self.compute_dtype = _compute_dtype(dtype)
        self.rows_per_block = min(int(k), int(block_size))
        self.num_blocks = math.ceil(k / self.rows_per_block)
        low, high = _TORCH_SEEDS
        seeds = (self.block_seed(0), self.block_seed(self.num_blocks - 1))
        if not all(low <= s <= high for s in seeds):
            raise ValueError(
                f"seed {self.seed} gives the block seeds {seeds[0]} to {seeds[1]} (seed + "
                f"{self.seed_stride} * block), but a torch.Generator seed must lie in "
                f"[-2**63, 2**64 - 1]; pass a smaller seed"
            )
        self.scale = _scale_factor(scale, 1 / math.sqrt(k))
        if chunk_rows is None:
            chunk_rows = (1 << 23) // self.rows_per_block
        self.chunk_rows = max(16, (int(chunk_rows) // 16) * 16)
        self.cache_bytes = _cache_budget(cache_bytes, self.device)
        self._matrix: torch.Tensor | None = None

    # ------------------------------------------------------------------ the matrix
    def block_seed(self, i: int) -> int:
        """The generator seed of block ``i``: ``seed + seed_stride · i``."""
        return self.seed + self.seed_stride * i

    def _block_width(self, i: int) -> int:
        return min(self.rows_per_block, self.shape[0] - i * self.rows_per_block)

    def _pieces(self, i: int):  # noqa: ANN202 - a generator of (start, stop, (stop-start, w))
        """Rows ``start:stop`` of block ``i``'s ``(n, b)`` draw, its used columns only, in the
        compute dtype, in drawing order."""
        n, b = self.shape[1], self.rows_per_block
        width = self._block_width(i)
        generator = torch.Generator(device=self.device).manual_seed(self.block_seed(i))
        whole = self.kind == "rademacher" or self.device.type != "cpu"
        step = n if whole else self.chunk_rows
        start = 0
        while start < n:
            stop = min(n, start + step)
            if 0 < (n - stop) * b < 16:  # torch draws fewer than 16 entries another way
                stop = n
            draw = torch.empty(stop - start, b, dtype=self.sample_dtype, device=self.device)
            if self.kind == "gaussian":
                draw.normal_(generator=generator)
                piece = draw[:, :width].to(self.compute_dtype)
            else:
                draw.bernoulli_(0.5, generator=generator)
                piece = draw[:, :width].to(self.compute_dtype) * 2 - 1
            yield start, stop, piece
            start = stop

    def block(self, i: int) -> torch.Tensor:
        """Rows ``i·b : i·b + w`` of the unscaled matrix, ``(w, n)``, in the compute dtype."""
        if not 0 <= i < self.num_blocks:
            raise IndexError(f"block {i} out of range for {self.num_blocks} blocks")
        return torch.cat([piece for _, _, piece in self._pieces(i)]).mT

    def _cached_matrix(self) -> torch.Tensor | None:
        """``Pᵀ`` unscaled, ``(n, k)``, kept when the budget allows it (else None)."""
        if self._matrix is not None:
            return self._matrix
        k, n = self.shape
        store = None
        for dtype in (self.compute_dtype, self.sample_dtype):
            if n * k * torch.finfo(dtype).bits // 8 <= self.cache_bytes:
                store = dtype
                break
        if store is None:
            return None
        matrix = torch.empty(n, k, dtype=store, device=self.device)
        for i in range(self.num_blocks):
            c0 = i * self.rows_per_block
            for start, stop, piece in self._pieces(i):
                matrix[start:stop, c0 : c0 + piece.shape[1]] = piece
        self._matrix = matrix
        return matrix

    def clear_cache(self) -> None:
        """Drop the cached matrix; the next product regenerates it."""
        self._matrix = None

    # ------------------------------------------------------------------ products
    def _project_rows(self, X: torch.Tensor) -> torch.Tensor:
        Xc = X.to(self.compute_dtype)
        matrix = self._cached_matrix()
        if matrix is not None:
            out = Xc @ matrix.to(self.compute_dtype)
        else:
            out = torch.zeros(X.shape[0], self.shape[0], dtype=self.compute_dtype, device=X.device)
            for i in range(self.num_blocks):
                c0 = i * self.rows_per_block
                for start, stop, piece in self._pieces(i):
                    out[:, c0 : c0 + piece.shape[1]].addmm_(Xc[:, start:stop], piece)
        if self.scale != 1.0:
            out = out * self.scale
        return out.to(self.dtype)

    def _adjoint_rows(self, Y: torch.Tensor) -> torch.Tensor:
        """``Pᵀ`` applied to the columns of ``Y`` ``(k, B)``, returning ``(n, B)``."""
        Yc = Y.to(self.compute_dtype)
        matrix = self._cached_matrix()
        if matrix is not None:
            out = matrix.to(self.compute_dtype) @ Yc
        else:
            out = torch.zeros(self.shape[1], Y.shape[1], dtype=self.compute_dtype, device=Y.device)
            for i in range(self.num_blocks):
                c0 = i * self.rows_per_block
                for start, stop, piece in self._pieces(i):
                    out[start:stop].addmm_(piece, Yc[c0 : c0 + piece.shape[1]])
        if self.scale != 1.0:
            out = out * self.scale
        return out.to(self.dtype)

    def _adjoint(self) -> LinearOperator:
        return _ProjectionAdjoint(self)  # type: ignore[arg-type] - needs only _adjoint_rows

    def _repr_args(self) -> str:
        return f"kind={self.kind!r}, seed={self.seed}, block_size={self.rows_per_block}"


#: linop's warnings point past this module, at its caller (see linop._warn)
__linop_wrapper__ = True
