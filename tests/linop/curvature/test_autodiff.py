"""How Hessian-vector products are grouped into vmapped chunks (linop.curvature._autodiff): the
chunk size learned from the products' timings (on a fake clock, so the tests are exact), the
memo that shares it between operators of the same problem, and the key of that memo."""

from __future__ import annotations

import functools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.func import vmap

from linop import HessianOperator
from linop.curvature import _autodiff
from linop.curvature._autodiff import ColumnChunks, balanced, problem_key, shared_chunks
from linop.testing import assert_close
from tests.linop._helpers import gen, logreg_problem

D64 = torch.float64


class FakeClock:
    """Replaces the chunks' clock and vmap: a product of ``size`` columns takes ``cost(size)``
    seconds, plus ``extra[i]`` for the ``i``-th product; ``sizes`` records every product."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, cost, extra=None) -> None:
        self.now, self.cost, self.extra, self.sizes = 0.0, cost, dict(extra or {}), []
        monkeypatch.setattr(_autodiff.time, "perf_counter", lambda: self.now)
        monkeypatch.setattr(_autodiff, "vmap", self.vmap)

    def vmap(self, fn, in_dims, out_dims):
        def run(V: torch.Tensor) -> torch.Tensor:
            size = V.shape[1]
            self.now += self.cost(size) + self.extra.get(len(self.sizes), 0.0)
            self.sizes.append(size)
            return vmap(fn, in_dims=in_dims, out_dims=out_dims)(V)

        return run


def _double(v: torch.Tensor) -> torch.Tensor:
    return 2 * v


@settings(max_examples=40, deadline=None)
@given(
    k=st.integers(1, 70),
    start=st.integers(1, 40),
    calls=st.integers(1, 4),
)
def test_chunks_give_the_products_of_every_column(k, start, calls):
    chunks = ColumnChunks(start=start)
    fn = lambda v: torch.sin(v) * v.sum()  # noqa: E731 - mixes the entries of a column
    V = torch.randn(5, k, dtype=D64, generator=gen(k))
    for _ in range(calls):  # the size changes between calls and within one
        assert_close(chunks.apply(fn, V), vmap(fn, in_dims=1, out_dims=1)(V), rtol=1e-14)


def test_when_overhead_dominates_a_call_becomes_one_product(monkeypatch):
    # 50 columns from chunks of at most 32: two even products of 25; the double is capped at
    # the call's 50 columns, so one product of all of them is tried, and kept
    clock = FakeClock(monkeypatch, lambda size: 1.0 + 0.01 * size)
    chunks = ColumnChunks(start=32, explore=1000)
    for _ in range(8):
        chunks.apply(_double, torch.ones(3, 50))
    assert clock.sizes[:2] == [25, 25]
    assert clock.sizes[-3:] == [50, 50, 50]


def test_the_first_product_is_not_timed(monkeypatch):
    FakeClock(monkeypatch, lambda size: 1.0, extra={0: 1000.0})
    chunks = ColumnChunks(start=4)
    chunks.apply(_double, torch.ones(3, 4))
    assert chunks.seconds == {} and chunks.size == 4
    chunks.apply(_double, torch.ones(3, 4))
    assert chunks.seconds == {4: 0.25}


def test_it_learns_the_size_with_the_least_time_per_column(monkeypatch):
    # overhead 1 per product; columns cost 1 each up to 16, 4 each beyond (out of the caches):
    # per column 1/size + 1 up to 16, then 1/size + 4: the best is 16
    FakeClock(monkeypatch, lambda size: 1.0 + size * (1.0 if size <= 16 else 4.0))
    chunks = ColumnChunks(start=2)
    for _ in range(12):
        chunks.apply(_double, torch.ones(3, 96))
    assert chunks.size == 16
    assert min(chunks.seconds, key=chunks.seconds.__getitem__) == 16


def test_an_unlucky_first_timing_is_timed_again(monkeypatch):
    # the best size, 16, is first timed during a stall (+100 s on the 9th product, the first
    # of size 16): re-timing the less measured neighbour of the best finds it again
    stalled = {8: 100.0}
    clock = FakeClock(
        monkeypatch, lambda size: 1.0 + size * (1.0 if size <= 16 else 4.0), extra=stalled
    )
    chunks = ColumnChunks(start=8, explore=4)
    for _ in range(40):
        chunks.apply(_double, torch.ones(3, 32))
    assert clock.sizes[:10] == [8] * 8 + [16, 16]  # tried during the stall
    assert chunks.size == 16


def test_shared_chunks_are_shared_by_key_and_start():
    key = ("test_shared_chunks", object())
    a = shared_chunks(key, start=32)
    assert shared_chunks(key, start=32) is a
    assert shared_chunks(key, start=256) is not a
    assert shared_chunks(("another", object()), start=32) is not a
    assert shared_chunks(None, start=32) is not shared_chunks(None, start=32)


def test_shared_chunks_keep_the_most_recent_problems(monkeypatch):
    monkeypatch.setattr(_autodiff, "_SHARED_CHUNKS", type(_autodiff._SHARED_CHUNKS)())
    first = shared_chunks("first", start=1)
    for i in range(_autodiff._SHARED_CHUNKS_MAX - 1):
        shared_chunks(i, start=1)
    assert shared_chunks("first", start=1) is first  # used again: now the most recent
    shared_chunks("one more", start=1)
    assert shared_chunks("first", start=1) is first
    assert len(_autodiff._SHARED_CHUNKS) == _autodiff._SHARED_CHUNKS_MAX
    assert (0, 1) not in _autodiff._SHARED_CHUNKS  # the least recently used went


def _loss(t: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    return (X @ t).square().mean()


def _other_loss(t: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    return (X @ t).square().mean()


def _closure(X: torch.Tensor):
    return lambda t: _loss(t, X)


def test_problem_keys_see_shapes_dtypes_and_code_never_values():
    t, X = torch.ones(3), torch.ones(5, 3)
    same = problem_key(_loss, (t, X))
    assert problem_key(_loss, (torch.zeros(3), torch.randn(5, 3))) == same
    assert problem_key(_loss, (t, torch.ones(6, 3))) != same  # another batch size
    assert problem_key(_loss, (t.double(), X.double())) != same  # another dtype
    assert problem_key(_other_loss, (t, X)) != same  # another function, same shapes
    # partials and closures: what they hold counts, by shape
    p = problem_key(functools.partial(_loss, X=X), (t,))
    assert problem_key(functools.partial(_loss, X=torch.zeros(5, 3)), (t,)) == p
    assert problem_key(functools.partial(_loss, X=torch.zeros(7, 3)), (t,)) != p
    assert problem_key(_closure(X), (t,)) == problem_key(_closure(torch.zeros(5, 3)), (t,))
    assert problem_key(_closure(X), (t,)) != problem_key(_closure(torch.ones(2, 3)), (t,))
    # an object with __call__ (a module): this very object
    m1, m2 = torch.nn.Linear(3, 1), torch.nn.Linear(3, 1)
    assert problem_key(m1, (t,)) == problem_key(m1, (t,)) != problem_key(m2, (t,))
    # long containers are described by their length
    assert problem_key(_loss, ([t] * 100,)) == problem_key(_loss, ([X] * 100,))


def test_hessians_of_one_problem_share_what_they_learn():
    loss, w, X, y = logreg_problem()
    H = HessianOperator(loss, (w, X, y))
    assert HessianOperator(loss, (w.clone() + 1, X + 1, y))._chunks is H._chunks
    assert HessianOperator(loss, (w, X, y), cache=False)._chunks is H._chunks
    assert H.at((X + 1, y))._chunks is H._chunks
    assert H._dense_chunks is not H._chunks
    assert HessianOperator(loss, (w, X[:-1], y[:-1]))._chunks is not H._chunks
    assert HessianOperator(loss, (w, X, y), mode="rev-fwd")._chunks is not H._chunks
    assert HessianOperator(loss, (w.float(), X.float(), y))._chunks is not H._chunks


@pytest.mark.parametrize("k", [1, 2, 31, 50, 64, 65, 130])
def test_learned_chunks_do_not_change_hessian_products(k):
    loss, w, X, y = logreg_problem()
    V = torch.randn(w.numel(), k, dtype=D64, generator=gen(k))
    ref = HessianOperator(loss, (w, X, y), vectorize=False) @ V
    H = HessianOperator(loss, (w, X, y))
    for _ in range(3):
        assert_close(H @ V, ref)
    assert_close(H.to_dense(), HessianOperator(loss, (w, X, y), chunk_size=1).to_dense())


def test_near_ties_go_to_the_larger_size():
    chunks = ColumnChunks()
    chunks.seconds = {16: 1.00e-5, 32: 1.05e-5, 64: 1.5e-5}  # products well under 5 ms
    assert chunks.best() == 32  # within 10 %: fewer products win
    chunks.seconds = {16: 1.00e-3, 32: 1.05e-3, 64: 1.2e-3}  # 33 ms products: the same rule
    assert chunks.best() == 32
    chunks.seconds = {8: 1.00e-3, 16: 1.2e-3}  # beyond the tolerance, the time decides
    assert chunks.best() == 8


def test_calls_are_split_evenly(monkeypatch):
    # at a size of 512, 650 columns make two products of 325, not 512 and a remainder of 138
    clock = FakeClock(monkeypatch, lambda size: 1.0 + size)
    chunks = ColumnChunks(start=512, explore=1000)
    chunks.apply(_double, torch.ones(2, 650))
    assert clock.sizes == [325, 325]
    assert [balanced(s, 650) for s in (650, 512, 326, 325, 217, 1)] == [650, 325, 325, 325, 217, 1]


def test_re_timings_back_off_while_they_confirm_the_best(monkeypatch):
    # one product of all 64 columns is best; its half, tried once at call 3, is re-timed at calls
    # 8, 24, 56, 120, 184, 248 (the interval doubling up to 64), not every 8th call
    clock = FakeClock(monkeypatch, lambda size: 1.0 + size)
    chunks = ColumnChunks(start=64, explore=8)
    for _ in range(300):
        chunks.apply(_double, torch.ones(3, 64))
    halves = [i for i, size in enumerate(clock.sizes) if size == 32]
    assert len(halves) == 2 * (1 + 6)  # each such call: two products of 32
    assert chunks.size == 64
    # a new best (64 is now slow) re-times its neighbours every `explore` calls again
    clock.cost = lambda size: 1.0 + size * (1.0 if size <= 32 else 10.0)
    for _ in range(10):
        chunks.apply(_double, torch.ones(3, 64))
        if chunks.best() == 32:
            break
    assert chunks.best() == 32 and chunks._interval == chunks.explore
    assert chunks._due == chunks.calls + chunks.explore
