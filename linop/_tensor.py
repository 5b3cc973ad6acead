"""Small checks on tensors shared by the operators and the solvers."""

from __future__ import annotations

import math

import torch

from linop.errors import DeviceMismatchError, NonFiniteError

__all__ = ["all_finite", "by_columns", "check_entries", "finite", "traced"]


def traced(t: torch.Tensor) -> bool:
    """Whether ``t`` is wrapped by a torch.func transform (vmap, grad, jvp): its values are not
    concrete, so nothing may branch on them."""
    return bool(torch._C._functorch.is_functorch_wrapped_tensor(t))


def by_columns(t: torch.Tensor) -> torch.Tensor:
    """``t`` ``(n, k)`` with each column contiguous in memory (column-major), copied only if it
    is not already.

    Products vmapped over columns, and the solvers' column-by-column updates, run on whole
    contiguous vectors this way: for the cached Hessian pullback of a 650-parameter model, 50
    columns laid out by rows took about 20 % longer per product on a CPU.

    Example:
        >>> by_columns(torch.zeros(3, 2)).stride()
        (1, 3)
    """
    return t if t.ndim != 2 or t.mT.is_contiguous() else t.mT.contiguous().mT


def finite(t: torch.Tensor) -> bool:
    """Whether every entry of ``t`` is finite (one host read).

    A sum meets any NaN or infinity among its terms (``inf - inf`` is NaN), so a finite sum
    proves every entry finite: one reduction with no temporary, 20 to 100 times cheaper than
    ``isfinite(t).all()`` on a CPU, its value judged on the host (``torch.isfinite`` of the
    0-d sum would cost as much as the sum of 30,000 entries). Only a sum that overflows (or a
    non-finite entry) takes the entry-by-entry check.

    Example:
        >>> finite(torch.tensor([1.0, 2.0])), finite(torch.tensor([1.0, float("nan")]))
        (True, False)
    """
    if t.is_complex():
        t = torch.view_as_real(t.resolve_conj())
    return math.isfinite(float(t.sum())) or bool(torch.isfinite(t).all())


def all_finite(t: torch.Tensor, message: str, given: torch.Tensor | None = None) -> torch.Tensor:
    """``t``, or [`NonFiniteError`][linop.errors.NonFiniteError] with ``message`` if an entry is NaN
    or infinite. Not checked inside torch.func transforms, nor on GPUs, where the check would cost
    a host synchronisation (the solvers detect non-finite values at their own periodic checks).
    When ``given`` (the input of the computation) is not finite either, the message blames it."""
    if traced(t) or t.device.type != "cpu":
        return t
    if not finite(t):
        if given is not None and not finite(given):  # the input is to blame
            raise NonFiniteError(
                "the vector multiplying the operator has NaN or infinite entries; pass a finite one"
            )
        raise NonFiniteError(message)
    return t


def check_entries(t: torch.Tensor, what: str) -> None:
    """The entries an operator is built from: real data (not on the meta device) and, on the
    CPU, finite (on a GPU the check would cost a synchronisation; products will show NaN)."""
    if t.device.type == "meta":
        raise DeviceMismatchError(
            f"the {what} is on the meta device, which holds no data; pass a real tensor"
        )
    checkable = t.device.type == "cpu" and (t.is_floating_point() or t.is_complex())
    if checkable and not finite(t):
        raise NonFiniteError(f"the {what} has NaN or infinite entries")
