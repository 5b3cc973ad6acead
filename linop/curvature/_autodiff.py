"""Automatic-differentiation pieces shared by the curvature operators: the scalar-loss check and
the functional Hessian-vector product :func:`hvp`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.func import grad, jvp, vjp

from linop.errors import NonScalarLossError

__all__ = ["MODES", "as_scalar", "check_mode", "hvp"]

#: The automatic-differentiation modes a HessianOperator accepts.
MODES = ("rev-rev", "rev-fwd")


def check_mode(mode: str) -> None:
    """A ``ValueError`` listing the valid modes, unless ``mode`` is one."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; valid modes are {', '.join(map(repr, MODES))}")


def as_scalar(loss: Any) -> torch.Tensor:
    """The loss as a 0-d tensor, or :class:`~linop.errors.NonScalarLossError` saying how to
    reduce it."""
    if not isinstance(loss, torch.Tensor):
        raise NonScalarLossError(f"the loss must be a torch.Tensor, got {type(loss).__name__}")
    if loss.numel() != 1:
        raise NonScalarLossError(
            f"the loss must be a single-element tensor, got shape {tuple(loss.shape)}; "
            f"reduce it, e.g. with .mean() or .sum()"
        )
    return loss.reshape(())


def hvp(
    func: Callable[..., torch.Tensor],
    primals: tuple[Any, ...],
    v: torch.Tensor,
    argnums: int = 0,
    mode: str = "rev-rev",
) -> torch.Tensor:
    """One Hessian-vector product of ``func`` at ``primals`` with respect to the tensor
    ``primals[argnums]``, as a pure function: no checks, no caching, composable with
    ``torch.func.vmap`` over ``primals`` or ``v``. Only ``primals[argnums]`` is differentiated.

    Example:
        >>> import torch
        >>> from linop import hvp
        >>> hvp(lambda x: (x ** 3).sum(), (torch.tensor([1.0, 2.0]),), torch.ones(2)).tolist()
        [6.0, 12.0]
    """
    check_mode(mode)
    primals = tuple(primals)
    argnums = argnums % len(primals)  # -1: the last
    before, after = primals[:argnums], primals[argnums + 1 :]
    g = grad(lambda p: as_scalar(func(*before, p, *after)))
    if mode == "rev-rev":
        return vjp(g, primals[argnums])[1](v)[0]
    return jvp(g, (primals[argnums],), (v,))[1]
