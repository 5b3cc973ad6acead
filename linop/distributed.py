"""The ``torch.distributed`` collectives behind [`ShardedData`][linop.ShardedData].

A dataset operator built with ``process_group=`` holds only this rank's shard of the data; its
source is a [`ShardedData`][linop.ShardedData], which all-reduces every sum over the batches
together with the example count, so every rank holds the global mean ``Σ_b n_b A_b V / Σ_b n_b``
over all shards. Solvers need no change: every rank runs the same solver on identical numbers (an
all-reduce gives every rank the same result), so their decisions agree. LiSSA draws each rank's
minibatch from a seed shared by all ranks plus the rank, and averages the minibatch products
across ranks.

Every collective waits at most ``timeout`` seconds: a rank that died or hangs surfaces on the
others as a [`DistributedError`][linop.errors.DistributedError], never as a hang.

Example (run with ``torchrun --nproc_per_node=2 script.py``)::

    import torch, torch.distributed as dist
    from linop import HessianOperator, IdentityOperator
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    X_local, y_local = X[rank::world], y[rank::world]          # this rank's shard
    H = HessianOperator.from_data(loss, w, (X_local, y_local), batch_size=256,
                                  process_group=dist.group.WORLD)
    x = (H + 1e-3 * IdentityOperator.like(H)).inverse("cg") @ g   # the same x on every rank
"""

from __future__ import annotations

import datetime
from typing import Any

import torch
import torch.distributed as dist

from linop.errors import DistributedError

__all__ = ["all_reduce_sum", "DEFAULT_TIMEOUT_SECONDS", "rank", "resolve_group", "world_size"]

#: How long a collective may wait for the other ranks before it fails.
DEFAULT_TIMEOUT_SECONDS = 300.0


def resolve_group(group: Any) -> Any:
    """``"world"`` or ``True`` for the default group, else the group itself; checks that
    ``torch.distributed`` is initialised."""
    if not dist.is_available() or not dist.is_initialized():
        raise DistributedError(
            "process_group was given but torch.distributed is not initialised; call "
            "torch.distributed.init_process_group(...) first (torchrun sets the environment)"
        )
    return dist.group.WORLD if group in ("world", True) else group


def all_reduce_sum(tensor: torch.Tensor, group: Any, timeout: float) -> torch.Tensor:
    """Sum ``tensor`` over the ranks of ``group`` in place, waiting at most ``timeout`` seconds.

    Raises:
        DistributedError: if another rank failed, left or did not arrive in time.
    """
    try:
        work = dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=group, async_op=True)
        ok = work.wait(timeout=datetime.timedelta(seconds=timeout))
    except Exception as e:
        raise DistributedError(
            f"an all-reduce over {dist.get_world_size(group)} ranks failed on rank "
            f"{dist.get_rank(group)}: another rank failed, exited or is stuck ({e})"
        ) from e
    if ok is False:
        raise DistributedError(
            f"an all-reduce did not complete within {timeout:g} s on rank {dist.get_rank(group)}: "
            f"another rank is stuck or dead"
        )
    return tensor


def world_size(group: Any) -> int:
    """The number of ranks in ``group``."""
    return dist.get_world_size(group)


def rank(group: Any) -> int:
    """This process's rank in ``group``."""
    return dist.get_rank(group)
