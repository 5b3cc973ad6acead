"""The shipped operator contract check (linop.testing): it passes correct operators and catches
each kind of mistake a ``_matmat`` author can make."""

from __future__ import annotations

import pytest
import torch

from linop import DenseOperator, LinearOperator
from linop.tags import Tags
from linop.testing import assert_close, check_operator
from tests.linop._helpers import gen

D64 = torch.float64


class Matrix(LinearOperator):
    """A matrix operator whose adjoint may be given wrong on purpose."""

    def __init__(self, M, adjoint=None, tags=None):
        super().__init__(M.shape, M.dtype, M.device, tags)
        self.M, self.wrong_adjoint = M, adjoint

    def _matmat(self, X):
        return self.M @ X

    def _adjoint(self):
        return (
            DenseOperator(self.wrong_adjoint)
            if self.wrong_adjoint is not None
            else super()._adjoint()
        )


def test_a_correct_operator_passes():
    M = torch.randn(5, 3, dtype=D64, generator=gen(0))
    check_operator(Matrix(M), M)
    S = M @ M.T
    check_operator(Matrix(S, tags=Tags(psd=True)), S)


def test_a_wrong_matrix_fails():
    M = torch.randn(4, 4, dtype=D64, generator=gen(1))
    wrong = M.clone()
    wrong[1, 2] += 1e-6
    with pytest.raises(AssertionError):
        check_operator(Matrix(M), wrong)


def test_a_wrong_adjoint_fails():
    M = torch.randn(4, 3, dtype=D64, generator=gen(2))
    with pytest.raises(AssertionError):
        check_operator(Matrix(M, adjoint=torch.zeros(3, 4, dtype=D64)), M)


@pytest.mark.parametrize("tags", [Tags(symmetric=True), Tags(psd=True), Tags(nsd=True)])
def test_unsound_tags_fail(tags):
    M = torch.randn(4, 4, dtype=D64, generator=gen(3))
    M = M @ M.T if tags.nsd else (-M @ M.T if tags.psd else M)  # never what the tag says
    with pytest.raises(AssertionError):
        check_operator(Matrix(M, tags=tags), M)


def test_wrong_shape_or_dtype_fails():
    M = torch.randn(3, 3, dtype=D64, generator=gen(4))
    with pytest.raises(AssertionError):
        check_operator(Matrix(M), M[:2])
    with pytest.raises(AssertionError):
        check_operator(Matrix(M.float()), M)


def test_assert_close_is_relative_to_the_largest_entry():
    expected = torch.tensor([1000.0, 0.0], dtype=D64)
    assert_close(expected + torch.tensor([0.0, 1e-7], dtype=D64), expected, rtol=1e-9)
    with pytest.raises(AssertionError):
        assert_close(expected + torch.tensor([0.0, 1e-5], dtype=D64), expected, rtol=1e-9)
    assert_close(torch.zeros(0), torch.zeros(0))
