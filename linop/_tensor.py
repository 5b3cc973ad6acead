"""Small checks on tensors shared by the operators and the solvers."""

from __future__ import annotations

import torch

from linop.errors import DeviceMismatchError, NonFiniteError

__all__ = ["all_finite", "check_entries", "traced"]


def traced(t: torch.Tensor) -> bool:
    """Whether ``t`` is wrapped by a torch.func transform (vmap, grad, jvp): its values are not
    concrete, so nothing may branch on them."""
    return bool(torch._C._functorch.is_functorch_wrapped_tensor(t))


def all_finite(t: torch.Tensor, message: str, given: torch.Tensor | None = None) -> torch.Tensor:
    """``t``, or [`NonFiniteError`][linop.errors.NonFiniteError] with ``message`` if an entry is NaN
    or infinite. Not checked inside torch.func transforms, nor on GPUs, where the check would cost
    a host synchronisation (the solvers detect non-finite values at their own periodic checks).
    When ``given`` (the input of the computation) is not finite either, the message blames it."""
    if traced(t) or t.device.type != "cpu":
        return t
    if not bool(torch.isfinite(t).all()):
        if given is not None and not bool(torch.isfinite(given).all()):  # the input is to blame
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
    if checkable and not bool(torch.isfinite(t).all()):
        raise NonFiniteError(f"the {what} has NaN or infinite entries")
