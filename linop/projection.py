"""Projections of huge vectors to a few thousand dimensions, as ``(k, n)`` operators.

[`ProjectionOperator.random`][linop.ProjectionOperator.random] gives a random JL projection whose
matrix is a pure function of ``(seed, row, column)`` — a counter-based hash (`linop.kernels.hash`) —
generated block by block and never stored whole, unless a memory budget allows caching it across
calls. The same seed gives the same matrix on every call, in every process and on every device.
[`ProjectionOperator.arnoldi`][linop.ProjectionOperator.arnoldi] gives ``Λ^{-1/2} Vᵀ`` from the top
eigenpairs of a Hessian, so inner products of projected vectors approximate ``gᵀ (H + λI)⁻¹ g'``.

Example:
    >>> import torch
    >>> from linop import ProjectionOperator
    >>> P = ProjectionOperator.random(10_000, 256, seed=0)
    >>> G = torch.randn(4, 10_000)
    >>> Z = P.project(G)                      # (4, 256); distances preserved in expectation
    >>> Z.shape
    torch.Size([4, 256])
"""

from __future__ import annotations

import math
from typing import Any

import torch

from linop._checks import finite_number, non_negative
from linop._checks import seed as check_seed
from linop._warn import warn
from linop.errors import DTypeMismatchError, NegativeCurvatureWarning, ShapeMismatchError
from linop.flat import FlatSpec
from linop.kernels import hash as khash
from linop.operator import LinearOperator
from linop.structured import DenseOperator
from linop.tags import Tags

__all__ = [
    "ProjectionOperator",
    "RandomProjection",
    "ArnoldiProjection",
    "KINDS",
]

#: The kinds of random projection.
KINDS = ("rademacher", "gaussian", "sjlt")
_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
#: Default cache budget for a random projection's matrix on the CPU (1 GiB).
DEFAULT_CACHE_BYTES = 1 << 30
#: The default size of a generated block of a random projection's matrix (16 MiB).
_BLOCK_BYTES = 16 << 20


def _validate(kind: str, kinds: tuple[str, ...], dtype: torch.dtype, n: int, k: int) -> None:
    """The checks every random projection makes on its arguments."""
    if kind not in kinds:
        raise ValueError(f"unknown projection kind {kind!r}; valid kinds are {', '.join(kinds)}")
    if dtype not in _DTYPES:
        raise DTypeMismatchError(
            f"unsupported dtype {dtype}; projections support {', '.join(map(str, _DTYPES))}"
        )
    if n < 1 or k < 1:
        raise ValueError(f"n and k must be positive, got n={n}, k={k}")


def _scale_factor(scale: str | float | None, jl: float) -> float:
    """The factor for ``scale``: ``"jl"`` gives ``jl``, None 1, a number itself."""
    if scale == "jl":
        return jl
    if scale is None:
        return 1.0
    if isinstance(scale, (int, float)) and not isinstance(scale, bool):
        return finite_number("scale", scale)
    raise ValueError(f"scale must be 'jl', a number or None, got {scale!r}")


def _cache_budget(cache_bytes: int | None, device: torch.device) -> int:
    """``cache_bytes``, or the default: 1 GiB on the CPU, 0 on GPUs (generating is cheaper)."""
    if cache_bytes is not None:
        non_negative("cache_bytes", cache_bytes)
        return int(cache_bytes)
    return DEFAULT_CACHE_BYTES if device.type == "cpu" else 0


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


class ProjectionOperator(LinearOperator):
    """A ``(k, n)`` operator mapping ``n``-dimensional vectors (gradients) to ``k`` dimensions.

    Build one with [`random`][linop.ProjectionOperator.random] or
    [`arnoldi`][linop.ProjectionOperator.arnoldi]. ``P @ X`` acts on columns ``(n,)`` or ``(n, B)``;
    [`project`][linop.ProjectionOperator.project] acts on rows, as per-example gradients come.
    """

    @staticmethod
    def random(
        n: int,
        k: int,
        kind: str = "rademacher",
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        scale: str | float | None = "jl",
        **options: Any,
    ) -> RandomProjection:
        """A random projection; see [`RandomProjection`][linop.RandomProjection] for ``options``."""
        return RandomProjection(n, k, kind, seed, dtype, device, scale, **options)

    @staticmethod
    def arnoldi(operator: LinearOperator, k: int, **options: Any) -> ArnoldiProjection:
        """``Λ^{-1/2} Vᵀ`` from the top-``k`` eigenpairs of ``operator`` (``H`` or ``H + λI``);
        see [`ArnoldiProjection`][linop.ArnoldiProjection]."""
        return ArnoldiProjection(operator, k, **options)

    def project(self, features: torch.Tensor | dict[str, torch.Tensor]) -> torch.Tensor:
        """Project rows: ``features`` ``(B, n)``, or a dict of per-parameter ``(B, ...)`` tensors
        (flattened in insertion order, like a concatenated tensor), to ``(B, k)``."""
        if isinstance(features, dict):
            if not features:
                raise ShapeMismatchError("the feature dict is empty")
            first = next(iter(features.values()))
            spec = FlatSpec.of(
                {key: t.new_empty(t.shape[1:]) for key, t in features.items()}
                if first.ndim
                else features
            )
            features = spec.flatten_batched(features)
        if not isinstance(features, torch.Tensor) or features.ndim != 2:
            raise ShapeMismatchError(
                f"features must be a (B, {self.shape[1]}) tensor or a dict of (B, ...) tensors, "
                f"got {getattr(features, 'shape', type(features).__name__)}"
            )
        if features.shape[1] != self.shape[1]:
            raise ShapeMismatchError(
                f"features have dimension {features.shape[1]}, "
                f"the projection expects {self.shape[1]}"
            )
        self._check_tensor(features, "features")
        return self._project_rows(features)

    def _project_rows(self, X: torch.Tensor) -> torch.Tensor:
        return self._matmat(X.mT).mT

    def _matmat(self, X: torch.Tensor) -> torch.Tensor:
        return self._project_rows(X.mT).mT


class RandomProjection(ProjectionOperator):
    """A random ``(k, n)`` projection generated from ``(seed, row, column)``.

    Args:
        n: input dimension (any size; columns are processed in blocks).
        k: output dimension.
        kind: ``"rademacher"`` (±1), ``"gaussian"`` (N(0, 1)) or ``"sjlt"`` (each input coordinate
            sent to ``nnz`` output buckets with random signs).
        seed: the seed, an integer in ``[0, 2³²)``; the matrix is a pure function of it, and
            different seeds give different matrices.
        dtype: the dtype of the vectors; half precision is computed in float32 on the CPU and
            returned in its own dtype.
        device: where the vectors live.
        scale: ``"jl"`` (``1/√k`` for dense kinds, ``1/√nnz`` for sjlt, preserving squared
            distances in expectation), a number, or None for the raw entries.
        block_size: columns generated at once; bounds memory to ``O(k · block_size)``. The
            default sizes a block at about 16 MiB (8192 columns for ``k = 512`` in float32), which
            measured fastest on the CPU: small enough to stay in cache for the product.
        cache_bytes: memory the matrix may keep across calls (default 1 GiB on the CPU, 0 on
            GPUs, where generating it is cheaper than reading it). Rademacher signs are kept
            packed, 8 to a byte (64 MiB for ``k = 512``, ``n = 10⁶``), so later calls skip the
            hash; gaussian entries are kept in the compute dtype.
        nnz: non-zeros per input coordinate for sjlt (default 4).
        use_kernel: on CUDA, use the Triton kernel when available (default True); the pure-torch
            path is the reference.
    """

    def __init__(
        self,
        n: int,
        k: int,
        kind: str = "rademacher",
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        scale: str | float | None = "jl",
        *,
        block_size: int | None = None,
        cache_bytes: int | None = None,
        nnz: int = 4,
        use_kernel: bool = True,
    ) -> None:
        _validate(kind, KINDS, dtype, n, k)
        seed = check_seed(seed, bits=32)  # the hash keys on 32 bits: larger seeds would repeat
        compute_dtype = _compute_dtype(dtype)
        if block_size is None:
            block_size = max(32, _BLOCK_BYTES // (k * torch.finfo(compute_dtype).bits // 8))
        if block_size < 32 or (kind == "sjlt" and not 1 <= nnz <= k):
            raise ValueError(
                f"block_size must be at least 32 and 1 <= nnz <= k, got {block_size}, {nnz}"
            )
        super().__init__((k, n), dtype, device, Tags())
        self.kind, self.seed, self.nnz = kind, int(seed), int(nnz)
        self.block_size = (int(block_size) // 32) * 32
        self.scale = _scale_factor(scale, 1 / math.sqrt(nnz if kind == "sjlt" else k))
        self.cache_bytes = _cache_budget(cache_bytes, self.device)
        self.use_kernel = use_kernel
        self._store: torch.Tensor | None = None  # the kept matrix (see _stored)
        self._filled: set[int] = set()
        self.compute_dtype = compute_dtype

    # ------------------------------------------------------------------ the matrix
    def _cacheable(self) -> bool:
        k, n = self.shape
        if self.kind == "rademacher":  # whole 32-bit words of signs
            size = k * 4 * -(-n // 32)
        else:
            size = k * n * torch.finfo(self.compute_dtype).bits // 8
        return self.kind != "sjlt" and size <= self.cache_bytes

    def block(self, start: int, stop: int) -> torch.Tensor:
        """Columns ``start:stop`` of the unscaled matrix, ``(k, stop − start)``, in the compute
        dtype (float32, or float64 for float64 operators). For sjlt, a dense view (tests)."""
        k = self.shape[0]
        if self.kind == "sjlt":
            rows, signs = khash.sjlt_buckets(self.seed, start, stop, self.nnz, k, self.device)
            out = torch.zeros(k, stop - start, dtype=self.compute_dtype, device=self.device)
            cols = torch.arange(stop - start, device=self.device).unsqueeze(0).expand_as(rows)
            out.index_put_(
                (rows.reshape(-1), cols.reshape(-1)),
                signs.reshape(-1).to(out.dtype),
                accumulate=True,
            )
            return out
        stored = self._stored(start, stop)
        if self.kind == "rademacher":
            return khash.signs_from_bytes(stored, start % 32, stop - start, self.compute_dtype)
        return stored

    def _stored(self, start: int, stop: int) -> torch.Tensor:
        """Columns ``start:stop`` as stored: rademacher signs packed 8 to a byte
        (`rademacher_bytes`), gaussian entries in the compute dtype.
        The blocks of a product are kept in one buffer when the budget allows: one allocation,
        so the cache does not fragment memory between the temporaries of each block."""
        k, n = self.shape
        packed = self.kind == "rademacher"

        def make() -> torch.Tensor:
            if packed:
                return khash.rademacher_bytes(self.seed, k, start, stop, self.device)
            return khash.gaussian_block(self.seed, k, start, stop, self.device, self.compute_dtype)

        canonical = start % self.block_size == 0 and stop == min(n, start + self.block_size)
        if not (canonical and self._cacheable()):
            return make()
        if self._store is None:
            self._store = torch.empty(
                k,
                4 * -(-n // 32) if packed else n,
                dtype=torch.uint8 if packed else self.compute_dtype,
                device=self.device,
            )
        view = (
            self._store[:, start // 8 : 4 * -(-stop // 32)]
            if packed
            else self._store[:, start:stop]
        )
        if start not in self._filled:
            view.copy_(make())
            self._filled.add(start)
        return view

    def clear_cache(self) -> None:
        """Drop the kept matrix; the next product regenerates it."""
        self._store, self._filled = None, set()

    def _blocks(self):  # noqa: ANN202
        n = self.shape[1]
        for start in range(0, n, self.block_size):
            stop = min(n, start + self.block_size)
            yield start, stop

    # ------------------------------------------------------------------ products
    def _project_rows(self, X: torch.Tensor) -> torch.Tensor:
        if self.kind == "sjlt":
            return self._sjlt_rows(X)
        if X.is_cuda and self.use_kernel and self.kind == "rademacher":
            # imported here: it imports Triton, an optional dependency slow to import
            from linop.kernels import triton_projection

            out = (
                triton_projection.project(X, self.seed, self.shape[0])
                if triton_projection.available()
                else None
            )
            if out is not None:  # None: the kernel cannot serve this dtype here; use the reference
                return (out * self.scale).to(self.dtype)
        out = torch.zeros(X.shape[0], self.shape[0], dtype=self.compute_dtype, device=X.device)
        for start, stop in self._blocks():
            R = self.block(start, stop)
            out.addmm_(X[:, start:stop].to(self.compute_dtype), R.mT)
        return (out * self.scale).to(self.dtype)

    def _sjlt_rows(self, X: torch.Tensor) -> torch.Tensor:
        B, k = X.shape[0], self.shape[0]
        out = torch.zeros(k, B, dtype=self.compute_dtype, device=X.device)
        for start, stop in self._blocks() if B else ():
            rows, signs = khash.sjlt_buckets(self.seed, start, stop, self.nnz, k, X.device)
            Xb = X[:, start:stop].to(self.compute_dtype).mT  # (cols, B)
            contrib = signs.to(self.compute_dtype).unsqueeze(-1) * Xb.unsqueeze(0)  # (nnz, cols, B)
            out.index_add_(0, rows.reshape(-1), contrib.reshape(-1, B))
        return (out.mT * self.scale).to(self.dtype)

    def _adjoint_rows(self, Y: torch.Tensor) -> torch.Tensor:
        """``Pᵀ`` applied to the columns of ``Y`` ``(k, B)``, returning ``(n, B)``."""
        Yc = Y.to(self.compute_dtype)
        parts = []
        for start, stop in self._blocks():
            if self.kind == "sjlt":
                rows, signs = khash.sjlt_buckets(
                    self.seed, start, stop, self.nnz, self.shape[0], Y.device
                )
                parts.append((signs.to(Yc.dtype).unsqueeze(-1) * Yc[rows]).sum(0))
            else:
                parts.append(self.block(start, stop).mT @ Yc)
        return (torch.cat(parts) * self.scale).to(self.dtype)

    def _adjoint(self) -> LinearOperator:
        return _ProjectionAdjoint(self)

    def _repr_args(self) -> str:
        return f"kind={self.kind!r}, seed={self.seed}"


class _ProjectionAdjoint(LinearOperator):
    """``Pᵀ`` of a random projection, regenerated block by block like ``P``."""

    def __init__(self, base: RandomProjection) -> None:
        k, n = base.shape
        super().__init__((n, k), base.dtype, base.device, Tags())
        self.base = base

    def _matmat(self, Y: torch.Tensor) -> torch.Tensor:
        return self.base._adjoint_rows(Y)

    def _adjoint(self) -> LinearOperator:
        return self.base


class ArnoldiProjection(ProjectionOperator):
    """``Λ^{-1/2} Vᵀ`` from the top-``k`` eigenpairs ``(θ, V)`` of a symmetric operator.

    With ``A = H + λI`` the eigenvalues are ``θ + λ``; ``(P g)ᵀ (P g') = gᵀ V (Λ+λ)⁻¹ Vᵀ g'``.
    Directions whose ``θ + λ`` is not positive (``≤ cutoff · max``) get weight zero — a
    pseudo-inverse of the positive part — with a
    [`NegativeCurvatureWarning`][linop.errors.NegativeCurvatureWarning]; never NaN.

    Args:
        operator: ``H`` or ``H + λI`` (the eigenpairs of ``H`` are cached and reused for any λ).
        k: how many eigenpairs.
        cutoff: relative size below which a direction is dropped (1e-6).
        **options: passed to [`eigh`][linop.LinearOperator.eigh] (``maxiter``, ``seed``, ...).
    """

    def __init__(
        self, operator: LinearOperator, k: int, *, cutoff: float = 1e-6, **options: Any
    ) -> None:
        non_negative("cutoff", cutoff)
        low = operator.eigh(k, **options)
        values = low.values
        big = float(values.abs().max()) if values.numel() else 0.0
        keep = values > cutoff * big
        if not bool(keep.all()):
            warn(
                f"{int((~keep).sum())} of {k} eigenvalues are not positive (≤ {cutoff:g}·max); "
                f"their directions get weight zero in the Arnoldi projection. A shift λ > 0 "
                f"(project with H + λI) keeps them",
                NegativeCurvatureWarning,
            )
        weights = torch.where(keep, values.clamp_min(torch.finfo(values.dtype).tiny).rsqrt(), 0)
        n = operator.shape[0]
        super().__init__((k, n), operator.dtype, operator.device, Tags())
        self.vectors, self.weights = low.vectors, weights

    def _matmat(self, X: torch.Tensor) -> torch.Tensor:
        return self.weights.unsqueeze(1) * (self.vectors.mT @ X)

    def _adjoint(self) -> LinearOperator:
        return DenseOperator(self.vectors * self.weights, Tags())
