"""The per-batch machinery behind :class:`~linop.hessian.HessianOperator`: one batch's loss as a
function of the flat parameters and its Hessian-vector products, the functional :func:`hvp`, and
the checks on losses and products (scalar, finite).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch.func import grad, jvp, vjp, vmap

from linop.errors import NonFiniteError, NonScalarLossError

if TYPE_CHECKING:
    from linop.hessian import HessianOperator

__all__ = ["MODES", "hvp"]

#: The automatic-differentiation modes a HessianOperator accepts.
MODES = ("rev-rev", "rev-fwd")


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; valid modes are {', '.join(map(repr, MODES))}")


def _as_scalar(loss: Any) -> torch.Tensor:
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
        >>> from linop.hessian import hvp
        >>> hvp(lambda x: (x ** 3).sum(), (torch.tensor([1.0, 2.0]),), torch.ones(2)).tolist()
        [6.0, 12.0]
    """
    _check_mode(mode)
    primals = tuple(primals)
    argnums = argnums % len(primals)  # -1: the last
    before, after = primals[:argnums], primals[argnums + 1 :]
    g = grad(lambda p: _as_scalar(func(*before, p, *after)))
    if mode == "rev-rev":
        return vjp(g, primals[argnums])[1](v)[0]
    return jvp(g, (primals[argnums],), (v,))[1]


def _traced(t: torch.Tensor) -> bool:
    """Whether ``t`` is wrapped by a torch.func transform (vmap, grad, jvp)."""
    return bool(torch._C._functorch.is_functorch_wrapped_tensor(t))


def _finite(out: torch.Tensor, what: str) -> torch.Tensor:
    """``out``, or :class:`~linop.errors.NonFiniteError` if any entry is NaN or infinite. Inside
    a torch.func transform (vmap, grad) the values are not concrete, and are not checked; nor on
    GPUs, where the check would cost a host synchronisation per product (the solvers detect
    non-finite values at their own periodic checks)."""
    if _traced(out) or out.device.type != "cpu":
        return out
    if not bool(torch.isfinite(out).all()):
        raise NonFiniteError(
            f"the {what} has NaN or infinite entries: some batch of the data, or the loss or its "
            f"derivatives at the point, is not finite (check the inputs for NaN, and that the loss "
            f"is twice differentiable there)"
        )
    return out


class _Batch:
    """One batch: the loss as a function of the flat parameter vector, and its HVPs."""

    def __init__(self, owner: HessianOperator, others: tuple[Any, ...]) -> None:
        self.owner = owner
        self.others = others
        self._cached: Callable[[torch.Tensor], torch.Tensor] | None = None

    def loss(self, theta: torch.Tensor) -> torch.Tensor:
        o = self.owner
        args = self.others[: o.argnums] + (o.spec.unflatten(theta),) + self.others[o.argnums :]
        return _as_scalar(o.func(*args))

    def _loss_with_aux(self, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        value = self.loss(theta)
        return value, value.detach()

    def check(self, cache: bool = False) -> None:
        """Evaluate the loss once at the parameters: scalar and finite, or a clear error. With
        ``cache`` (rev-rev) the reverse-mode linearisation is built in the same pass."""
        o = self.owner
        if cache and o.mode == "rev-rev":
            _, pullback, value = vjp(grad(self._loss_with_aux, has_aux=True), o.params, has_aux=True)
            self._cached = lambda v: pullback(v)[0]
        else:
            with torch.no_grad():
                value = self.loss(o.params)
        if not bool(torch.isfinite(value)):
            raise NonFiniteError(
                f"the loss is {value.item()} at the given parameters; a Hessian there is undefined"
            )

    def hvp_fn(self, cache: bool) -> Callable[[torch.Tensor], torch.Tensor]:
        """A function ``v ↦ H v`` on one flat vector (vmappable).

        ``rev-rev`` with ``cache`` computes the reverse-mode pullback of the gradient at the
        point once and reuses it for every product. ``rev-fwd`` differentiates forward through
        the gradient on every product (``torch.func.linearize`` would cache it, but its cached
        function drifts on repeated calls in torch 2.13, so it is not used).
        """
        if self._cached is not None:
            return self._cached
        o, g = self.owner, grad(self.loss)
        theta = o.params
        if o.mode == "rev-fwd":
            return lambda v: jvp(g, (theta,), (v,))[1]
        if not cache:
            return lambda v: vjp(g, theta)[1](v)[0]
        _, pullback = vjp(g, theta)
        self._cached = lambda v: pullback(v)[0]
        return self._cached

    def matmat(self, V: torch.Tensor, cache: bool) -> torch.Tensor:
        fn = self.hvp_fn(cache)
        vectorize = self.owner.vectorize
        if vectorize is None:  # measured on a CPU: a loop over a cached pullback beats vmap by
            vectorize = V.device.type != "cpu" or self._cached is None  # ~30 %; GPUs batch
        if V.shape[1] == 1 or not vectorize:
            return torch.stack([fn(V[:, i]) for i in range(V.shape[1])], dim=1)
        return vmap(fn, in_dims=1, out_dims=1, chunk_size=self.owner.chunk_size)(V)
