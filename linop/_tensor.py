"""Small checks on tensors shared by the operators and the solvers."""

from __future__ import annotations

import torch

from linop.errors import NonFiniteError

__all__ = ["all_finite", "traced"]


def traced(t: torch.Tensor) -> bool:
    """Whether ``t`` is wrapped by a torch.func transform (vmap, grad, jvp): its values are not
    concrete, so nothing may branch on them."""
    return bool(torch._C._functorch.is_functorch_wrapped_tensor(t))


def all_finite(t: torch.Tensor, message: str) -> torch.Tensor:
    """``t``, or :class:`~linop.errors.NonFiniteError` with ``message`` if an entry is NaN or
    infinite. Not checked inside torch.func transforms, nor on GPUs, where the check would cost
    a host synchronisation (the solvers detect non-finite values at their own periodic checks)."""
    if traced(t) or t.device.type != "cpu":
        return t
    if not bool(torch.isfinite(t).all()):
        raise NonFiniteError(message)
    return t
