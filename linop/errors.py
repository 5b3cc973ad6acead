"""Typed errors raised by linop.

Every error is a subclass of a built-in exception, so ``except ValueError`` keeps working, while
``except linop.ShapeMismatchError`` lets a caller catch exactly one kind of mistake.
"""

from __future__ import annotations

import torch

__all__ = [
    "LinopError",
    "ShapeMismatchError",
    "DTypeMismatchError",
    "DeviceMismatchError",
    "DenseMemoryError",
    "NonScalarLossError",
    "NonFiniteError",
    "SingularOperatorError",
    "IndefiniteOperatorError",
    "DivergenceError",
    "DistributedError",
    "ConvergenceWarning",
    "AttainableAccuracyWarning",
    "NegativeCurvatureWarning",
    "KernelFallbackWarning",
]


class LinopError(Exception):
    """Base class of every error raised by linop."""


class ShapeMismatchError(LinopError, ValueError):
    """Two shapes that must agree do not (an operator and a vector, or two operators)."""


class DTypeMismatchError(LinopError, ValueError):
    """An operator met a tensor or operator of another dtype; linop never casts silently."""


class DeviceMismatchError(LinopError, ValueError):
    """An operator met a tensor or operator on another device; linop never moves data silently."""


class DenseMemoryError(LinopError, MemoryError):
    """Materialising an operator would exceed the memory budget of ``to_dense``."""


class NonScalarLossError(LinopError, ValueError):
    """The function handed to a Hessian does not return a single-element tensor."""


class NonFiniteError(LinopError, ValueError):
    """A loss, an input or an iterate is NaN or infinite where a finite value is required."""


class SingularOperatorError(LinopError, ArithmeticError, torch.linalg.LinAlgError):
    """A direct solve met a singular (or numerically singular) matrix. Also a
    ``torch.linalg.LinAlgError``, as torch's own solvers raise."""


class IndefiniteOperatorError(LinopError, ValueError):
    """A method that needs a positive semi-definite operator (a Nyström approximation) met one
    that is not tagged psd, or that shows it is not."""


class DivergenceError(LinopError, ArithmeticError):
    """An iterative method's iterates grew without bound or became non-finite."""


class DistributedError(LinopError, RuntimeError):
    """A collective operation failed or timed out: another rank died, exited or is stuck."""


class ConvergenceWarning(UserWarning):
    """An iterative solver stopped before reaching its tolerance in some columns."""


class AttainableAccuracyWarning(ConvergenceWarning):
    """CG's recursive residual met the tolerance but its true residual did not: rounding in the
    working dtype limits the accuracy (a tolerance below what the dtype can reach)."""


class NegativeCurvatureWarning(UserWarning):
    """A solver or decomposition met zero or negative curvature and handled it as documented."""


class KernelFallbackWarning(UserWarning):
    """A compiled kernel could not be used (it failed to build, or disagreed with its reference)
    and the pure-torch path computed the result instead."""
