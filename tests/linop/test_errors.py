"""The typed errors and warnings (linop.errors): each is also the built-in exception callers
already catch, and every public one is importable from linop."""

from __future__ import annotations

import warnings

import pytest
import torch

import linop
from linop import errors

ERRORS = {
    "ShapeMismatchError": ValueError,
    "DTypeMismatchError": ValueError,
    "DeviceMismatchError": ValueError,
    "DenseMemoryError": MemoryError,
    "NonScalarLossError": ValueError,
    "NonFiniteError": ValueError,
    "SingularOperatorError": torch.linalg.LinAlgError,
    "DivergenceError": ArithmeticError,
    "DistributedError": RuntimeError,
}


@pytest.mark.parametrize("name", sorted(ERRORS))
def test_every_error_is_a_linop_error_and_its_builtin(name):
    cls = getattr(linop, name)
    assert cls is getattr(errors, name)
    assert issubclass(cls, linop.LinopError) and issubclass(cls, ERRORS[name])
    with pytest.raises(ERRORS[name]):
        raise cls("message")


def test_singular_operator_error_is_what_torch_solvers_raise_too():
    assert issubclass(linop.SingularOperatorError, ArithmeticError)
    with pytest.raises(torch.linalg.LinAlgError):
        linop.solve(
            linop.DiagonalOperator(torch.tensor([1.0, 0.0], dtype=torch.float64)),
            torch.ones(2, dtype=torch.float64),
            "explicit",
        )


def test_warnings():
    for name in ("ConvergenceWarning", "NegativeCurvatureWarning", "KernelFallbackWarning"):
        assert issubclass(getattr(linop, name), UserWarning)
    assert issubclass(linop.AttainableAccuracyWarning, linop.ConvergenceWarning)
    with warnings.catch_warnings():
        warnings.simplefilter("error", linop.ConvergenceWarning)
        with pytest.raises(linop.ConvergenceWarning):  # a filter on the parent class catches it
            warnings.warn("rounding", linop.AttainableAccuracyWarning, stacklevel=1)


def test_the_public_names_are_all_listed():
    assert set(errors.__all__) <= set(linop.__all__)
