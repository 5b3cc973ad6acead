"""Data-parallel HessianOperator: 2 processes on this machine (gloo, a file rendezvous)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch.func import hessian

import linop
from linop.testing import assert_close

WORKER = Path(__file__).with_name("_dist_worker.py")
sys.path.insert(0, str(WORKER.parent))
import _dist_worker as W  # noqa: E402

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")


def _run(tmp_path, scenario, world=2, timeout=120):
    tmp_path.mkdir(parents=True, exist_ok=True)
    rendezvous = tmp_path / "rendezvous"
    outs = [tmp_path / f"rank{r}.pt" for r in range(world)]
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(WORKER),
                str(r),
                str(world),
                str(rendezvous),
                str(outs[r]),
                scenario,
            ],
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in range(world)
    ]
    start = time.monotonic()
    try:
        for p in procs:
            p.wait(timeout=max(1.0, timeout - (time.monotonic() - start)))
    finally:
        for p in procs:
            p.kill()
    elapsed = time.monotonic() - start
    results = []
    for p, out in zip(procs, outs, strict=True):
        assert out.exists(), p.stderr.read()[-3000:]
        results.append(torch.load(out, weights_only=False))
    return results, elapsed


@pytest.fixture(scope="module")
def ok_run(tmp_path_factory):
    """The "ok" scenario, run once for the tests that read it."""
    return _run(tmp_path_factory.mktemp("ok"), "ok")[0]


def test_distributed_products_and_solvers_equal_the_single_process_ones(ok_run):
    results = ok_run
    for r in results:
        assert "error" not in r, r["error"]
    X, y, w, V = W.problem()
    H = hessian(W.loss)(w, X, y)  # the full dataset in one process
    A = H + 0.1 * torch.eye(6, dtype=torch.float64)
    for r in results:
        assert_close(r["HV"], H @ V)  # uneven shards are weighted by their example counts
        assert_close(r["grad"], torch.func.grad(W.loss)(w, X, y))
        assert_close(r["cg"], torch.linalg.solve(A, V), 1e-8)
        assert_close(r["eig"].sort().values, torch.linalg.eigvalsh(H), 1e-8)
    # every rank holds the same numbers, LiSSA included (per-rank minibatches, shared seed)
    for key in ["HV", "cg", "eig", "lissa"]:
        assert torch.equal(results[0][key], results[1][key])
    single = linop.HessianOperator.from_data(W.loss, w, (X, y), batch_size=4)
    assert_close(single @ V, results[0]["HV"])


def test_distributed_kfac_factors_are_those_of_the_whole_dataset(ok_run):
    X, y, w, _ = W.problem()
    for name in ("KFACOperator", "EKFACOperator"):
        single = getattr(linop, name).from_module(
            W.kfac_model(w), torch.nn.CrossEntropyLoss(), (X, y), kind="mc", mc_samples=2, seed=4
        )
        for r in ok_run:
            assert_close(r[name], single.to_dense(), 1e-10)


def test_distributed_lissa_is_reproducible(tmp_path, ok_run):
    again, _ = _run(tmp_path / "again", "ok")
    assert torch.equal(ok_run[0]["lissa"], again[0]["lissa"])


def test_sharded_data_source(ok_run):
    """ShardedData: the total is over every rank, the batches are the local ones, sums of a
    restricted source are all-reduced too, and minibatch draws are reproducible per seed and
    differ between ranks (per-rank seeds) even where the local data are the same."""
    facts = [r["data"] for r in ok_run]
    n, split = W.problem()[0].shape[0], W.SPLIT
    for rank, f in enumerate(facts):
        assert f["type"] == "ShardedData"
        assert f["num_examples"] == n  # every rank's examples
        local = split if rank == 0 else n - split
        assert sum(f["local_examples"]) == local and f["num_batches"] == len(f["local_examples"])
        kind, total, count = f["restricted"]
        assert kind == "ShardedData" and count == 3 * len(facts)
        assert torch.equal(total, torch.full((2,), float(len(facts)), dtype=torch.float64))
        first, repeat, other = f["draws"]
        assert torch.equal(first, repeat) and not torch.equal(first, other)
        assert first.numel() == 6 and first.unique().numel() == 6
    assert not torch.equal(facts[0]["draws"][0], facts[1]["draws"][0])


def test_a_failing_rank_makes_the_others_fail_within_the_timeout(tmp_path):
    results, elapsed = _run(tmp_path, "fail")
    assert results[1]["error"].startswith("RuntimeError: rank 1 fails on purpose")
    assert results[0]["error"].startswith("DistributedError"), results[0]
    assert "another rank" in results[0]["error"]
    assert elapsed < 60  # the 5 s collective timeout, not the 60 s process-group one


def test_process_group_without_initialisation_is_a_clear_error():
    X, y, w, _ = W.problem()
    with pytest.raises(linop.DistributedError, match="init_process_group"):
        linop.HessianOperator.from_data(W.loss, w, (X, y), batch_size=4, process_group="world")
