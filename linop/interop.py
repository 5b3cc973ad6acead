"""scipy interoperability, both ways.

[`to_scipy`][linop.to_scipy] views any linop operator as a ``scipy.sparse.linalg.LinearOperator``
(so ``eigsh``, ``cg``, ``gmres``… run on it, CUDA operators included: vectors cross to the
operator's device and back). [`aslinearoperator`][linop.aslinearoperator] brings scipy operators,
scipy sparse matrices, numpy arrays and torch tensors into linop.

Example:
    >>> import numpy as np, scipy.sparse.linalg as spla
    >>> from linop import aslinearoperator
    >>> A = aslinearoperator(np.diag([1.0, 2.0, 3.0]))
    >>> vals = spla.eigsh(A.to_scipy(), k=1, return_eigenvectors=False)
    >>> round(float(vals[0]), 6)
    3.0
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse
import scipy.sparse.linalg as spla
import torch

from linop.errors import ShapeMismatchError
from linop.operator import LinearOperator
from linop.structured import DenseOperator
from linop.tags import Tags

__all__ = ["to_scipy", "aslinearoperator", "ScipyOperator"]

_NUMPY_DTYPE = {
    torch.float64: np.float64,
    torch.float32: np.float32,
    torch.float16: np.float16,
    torch.bfloat16: np.float32,  # numpy has no bfloat16: scipy sees float32
    torch.complex64: np.complex64,
    torch.complex128: np.complex128,
}


class _ScipyView(spla.LinearOperator):
    """A scipy LinearOperator that forwards to a linop operator."""

    def __init__(self, op: LinearOperator) -> None:
        if op.dtype not in _NUMPY_DTYPE:
            raise TypeError(f"scipy cannot represent operators of dtype {op.dtype}")
        super().__init__(dtype=np.dtype(_NUMPY_DTYPE[op.dtype]), shape=op.shape)
        self.op = op

    def _apply(self, op: LinearOperator, x: np.ndarray) -> np.ndarray:
        X = torch.as_tensor(np.ascontiguousarray(x), device=op.device).to(op.dtype)  # any strides
        Y = op @ X
        return Y.detach().to("cpu").to(_torch_dtype_for_numpy(self.dtype)).numpy()

    def _matvec(self, x: np.ndarray) -> np.ndarray:
        return self._apply(self.op, np.ravel(x))

    def _rmatvec(self, x: np.ndarray) -> np.ndarray:
        return self._apply(self.op.adjoint(), np.ravel(x))

    def _matmat(self, X: np.ndarray) -> np.ndarray:
        return self._apply(self.op, X)

    def _rmatmat(self, X: np.ndarray) -> np.ndarray:
        return self._apply(self.op.adjoint(), X)

    def _adjoint(self) -> spla.LinearOperator:
        return _ScipyView(self.op.adjoint())


def _torch_dtype_for_numpy(dtype: np.dtype) -> torch.dtype:
    return torch.from_numpy(np.zeros(0, dtype=dtype)).dtype


def to_scipy(op: LinearOperator) -> spla.LinearOperator:
    """View ``op`` as a ``scipy.sparse.linalg.LinearOperator``.

    scipy hands numpy arrays in; they are converted to the operator's dtype and moved to its
    device (this crossing is the one place linop converts, since scipy chooses the array dtype),
    and results come back as numpy arrays on the CPU. ``rmatvec``/``rmatmat`` use ``op.T``.
    """
    return _ScipyView(op)


class ScipyOperator(LinearOperator):
    """A linop operator wrapping a scipy ``LinearOperator`` (or anything scipy's
    ``aslinearoperator`` accepts, sparse matrices included). It runs on the CPU.

    Args:
        op: the scipy operator or matrix.
        dtype: the torch dtype of the vectors (default: scipy's dtype).
        tags: structure the caller vouches for (default: none).
    """

    def __init__(self, op: Any, dtype: torch.dtype | None = None, tags: Tags | None = None) -> None:
        if isinstance(op, (str, bytes)) or not (
            isinstance(op, (spla.LinearOperator, np.ndarray)) or scipy.sparse.issparse(op)
        ):
            raise TypeError(
                f"ScipyOperator wraps a scipy LinearOperator, a scipy sparse matrix or a numpy "
                f"array, got {type(op).__name__}"
            )
        if getattr(op, "ndim", 2) != 2:
            raise ShapeMismatchError(f"ScipyOperator needs a 2-D array, got shape {op.shape}")
        op = spla.aslinearoperator(op)
        dtype = dtype or _torch_dtype_for_numpy(op.dtype)
        super().__init__(op.shape, dtype, "cpu", tags)
        self.scipy_op = op

    def _matmat(self, X: torch.Tensor) -> torch.Tensor:
        Y = self.scipy_op.matmat(X.detach().numpy())
        return torch.as_tensor(np.asarray(Y)).to(self.dtype)

    def _adjoint(self) -> LinearOperator:
        if self.tags.symmetric:
            return self
        return ScipyOperator(self.scipy_op.H, self.dtype, self.tags)


def aslinearoperator(
    obj: Any, *, dtype: torch.dtype | None = None, device: torch.device | str | None = None
) -> LinearOperator:
    """Bring ``obj`` into linop.

    Args:
        obj: a linop operator (returned as is), a torch tensor or numpy array (wrapped in a
            [`DenseOperator`][linop.DenseOperator]), a scipy sparse matrix or scipy
            ``LinearOperator`` (wrapped in a [`ScipyOperator`][linop.ScipyOperator]).
        dtype: convert a tensor or array to this dtype first (explicit, never silent).
        device: put a tensor or array on this device first.

    Raises:
        TypeError: for anything else.
    """
    if isinstance(obj, LinearOperator):
        return obj
    if isinstance(obj, np.ndarray):
        obj = torch.from_numpy(obj)
    if isinstance(obj, torch.Tensor):
        return DenseOperator(obj.to(device=device or obj.device, dtype=dtype or obj.dtype))
    if scipy.sparse.issparse(obj) or isinstance(obj, spla.LinearOperator):
        if device is not None and torch.device(device).type != "cpu":
            raise ValueError("scipy operators run on the CPU; device must be 'cpu'")
        return ScipyOperator(obj, dtype)
    raise TypeError(
        f"cannot make a LinearOperator from {type(obj).__name__}; pass a linop operator, a torch "
        f"tensor, a numpy array, a scipy sparse matrix or a scipy LinearOperator"
    )
