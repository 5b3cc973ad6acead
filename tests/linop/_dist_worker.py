"""One rank of the distributed tests: ``python _dist_worker.py RANK WORLD RENDEZVOUS OUT SCENARIO``.

Builds a dataset HessianOperator over this rank's uneven shard of a fixed problem and saves what
the scenario computes (or the error it raised) to OUT.
"""

from __future__ import annotations

import datetime
import sys
import warnings

import torch
import torch.distributed as dist

import linop


def problem():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(23, 3, dtype=torch.float64, generator=g)
    y = torch.randint(0, 2, (23,), generator=g)
    w = 0.1 * torch.randn(6, dtype=torch.float64, generator=g)
    V = torch.randn(6, 3, dtype=torch.float64, generator=g)
    return X, y, w, V


def loss(w, X, y):
    return torch.nn.functional.cross_entropy(X @ w.reshape(3, 2), y)


def kfac_model(w):
    """``loss``'s model as a module: ``Linear(3, 2)`` whose flat parameters are ``w``."""
    model = torch.nn.Linear(3, 2, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(w.reshape(3, 2).T)
    return model


SPLIT = 15  # rank 0 holds 15 examples, rank 1 holds 8: uneven shards


def data_facts(source):
    """What a ShardedData source says about itself on this rank (see test_distributed.py)."""
    same = linop.ShardedData(linop.TensorBatches((torch.arange(40),), 4), "world", timeout=5.0)
    one = source.restrict(next(iter(source)))
    total, count = one.reduce(torch.ones(2, dtype=torch.float64), 3)
    return {
        "type": type(source).__name__,
        "num_examples": source.num_examples(),
        "num_batches": source.num_batches(),
        "local_examples": [source.examples_in(b) for b in source],
        # the same local data on every rank: the draws differ by rank, and repeat by seed
        "draws": [same.minibatch(torch.Generator().manual_seed(s), 6)[0] for s in (0, 0, 1)],
        "restricted": (type(one).__name__, total, count),
    }


def main() -> None:
    rank, world, rendezvous, out, scenario = sys.argv[1:6]
    rank, world = int(rank), int(world)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{rendezvous}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=60),
    )
    X, y, w, V = problem()
    shard = slice(0, SPLIT) if rank == 0 else slice(SPLIT, None)
    result = {}
    try:
        H = linop.HessianOperator.from_data(
            loss, w, (X[shard], y[shard]), batch_size=4, process_group="world", timeout=5.0
        )
        if scenario == "fail":
            if rank == 1:
                raise RuntimeError("rank 1 fails on purpose")
            H @ V  # rank 1 never arrives
        else:
            A = H + 0.1 * linop.IdentityOperator.like(H)
            result["HV"] = H @ V
            result["grad"] = H.gradient()
            result["cg"] = A.inverse("cg", rtol=1e-12) @ V
            result["eig"] = H.eigh(6, maxiter=6).values
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                result["lissa"] = A.inverse("lissa", batch_size=4, depth=50, scale=5.0, seed=3) @ V
            result["data"] = data_facts(H.data)
            batches = linop.TensorBatches((X[shard], y[shard]), 4)
            for cls in (linop.KFACOperator, linop.EKFACOperator):
                K = cls.from_module(
                    kfac_model(w), torch.nn.CrossEntropyLoss(), batches, kind="mc",
                    mc_samples=2, seed=4, process_group="world", timeout=5.0,
                )  # fmt: skip
                result[cls.__name__] = K.to_dense()
    except Exception as e:  # noqa: BLE001 - reported to the test
        result["error"] = f"{type(e).__name__}: {e}"
    torch.save(result, out)
    if "error" not in result:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
