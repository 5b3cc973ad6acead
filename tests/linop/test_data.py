"""Data sources (linop.data): every implementation of the DataSource protocol — iteration,
examples_in, num_examples, num_batches, reproducible minibatches, reduce, restrict — and the
choices of as_source. ShardedData across two processes is in test_distributed.py."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

from linop import (
    Batches,
    DataSource,
    DistributedError,
    LoaderData,
    ShardedData,
    TensorBatches,
    as_source,
)
from tests.linop._helpers import gen


def _data(n=10, seed=0):
    g = gen(seed)
    return torch.randn(n, 3, dtype=torch.float64, generator=g), torch.arange(n)


def _equal_batches(a, b):
    assert isinstance(a, tuple) and isinstance(b, tuple) and len(a) == len(b)
    for s, t in zip(a, b, strict=True):
        assert torch.equal(s, t)


def _protocol(source, batches, counts):
    """The parts of the protocol every local source shares: a pass yields ``batches`` as tuples,
    each counted as ``counts``, two passes agree, and the total is their sum."""
    for _ in range(2):  # re-iterable: every product makes a pass
        seen = list(source)
        assert len(seen) == len(batches)
        for got, want in zip(seen, batches, strict=True):
            _equal_batches(got, want)
    assert [source.examples_in(b) for b in source] == counts
    assert source.num_examples() == sum(counts)
    total = torch.ones(2, dtype=torch.float64)
    out, count = source.reduce(total, 7)
    assert torch.equal(out, total) and count == 7  # a local source sums nothing across ranks


# ---------------------------------------------------------------------------------- TensorBatches
def test_tensor_batches():
    X, y = torch.arange(10.0).reshape(5, 2), torch.arange(5)
    tb = TensorBatches((X, y), 2)
    assert len(tb) == 3 and tb[-1][0].shape == (1, 2)
    with pytest.raises(IndexError):
        tb[3]
    with pytest.raises(ValueError, match="same number"):
        TensorBatches((X, y[:3]), 2)
    shared = TensorBatches((X.T, torch.ones(3), y), 2, in_dims=(1, None, 0))
    assert len(shared) == 3 and shared[1][0].shape == (2, 2) and shared[1][1].shape == (3,)
    assert torch.equal(shared.take(torch.tensor([4, 0]))[2], torch.tensor([4, 0]))
    with pytest.raises(ValueError, match="in_dims"):
        TensorBatches((X, y), 2, in_dims=(0,))


def test_tensor_batches_protocol():
    X, y = _data(10)
    tb = TensorBatches((X, y), 4)
    _protocol(tb, [(X[:4], y[:4]), (X[4:8], y[4:8]), (X[8:], y[8:])], [4, 4, 2])
    assert tb.num_batches() == len(tb) == 3
    with pytest.raises(ValueError, match="positive integer"):
        TensorBatches((X, y), 0)
    with pytest.raises(TypeError, match="example dimension"):
        TensorBatches((X, y), 2, in_dims=(None, None))


def test_tensor_batches_with_in_dims_count_along_the_example_dimension():
    X, y = _data(7)
    s = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    tb = TensorBatches((X.T, s, y), 3, in_dims=(1, None, 0))
    batches = [(X.T[:, i : i + 3], s, y[i : i + 3]) for i in (0, 3, 6)]
    _protocol(tb, batches, [3, 3, 1])
    assert all(b[1] is s for b in tb)  # a shared input is passed as it is


def test_tensor_batches_minibatch_is_the_documented_reproducible_draw():
    X, y = _data(30)
    tb = TensorBatches((X, y), 10)
    a = tb.minibatch(gen(7), 5)
    _equal_batches(a, tb.minibatch(gen(7), 5))  # same seed, same examples
    assert not torch.equal(a[1], tb.minibatch(gen(8), 5)[1])  # another seed, other examples
    idx = torch.randperm(30, generator=gen(7))[:5]
    _equal_batches(a, (X[idx], y[idx]))
    assert tb.examples_in(a) == 5
    assert tb.examples_in(tb.minibatch(gen(0))) == 10  # default: the source's batch size
    everything = tb.minibatch(gen(1), 30)
    assert sorted(everything[1].tolist()) == list(range(30))  # distinct examples
    with pytest.raises(ValueError, match="exceeds"):
        tb.minibatch(gen(0), 31)


def test_tensor_batches_minibatch_with_in_dims():
    X, y = _data(12)
    s = torch.ones(3, dtype=torch.float64)
    tb = TensorBatches((X.T, s, y), 4, in_dims=(1, None, 0))
    batch = tb.minibatch(gen(3), 5)
    idx = torch.randperm(12, generator=gen(3))[:5]
    assert torch.equal(batch[0], X.T[:, idx]) and batch[1] is s and torch.equal(batch[2], y[idx])
    assert tb.examples_in(batch) == 5


@pytest.mark.parametrize("size", [0, -3])
def test_minibatch_sizes_must_be_positive(size):
    """A minibatch of ``size`` examples: zero or a negative number is bad input, not the default
    size nor ``n + size`` examples."""
    X, y = _data(10)
    loader = DataLoader(TensorDataset(X, y), batch_size=4)
    for source in (TensorBatches((X, y), 4), LoaderData(loader)):
        with pytest.raises(ValueError):
            source.minibatch(gen(0), size)


# ------------------------------------------------------------------------------------ LoaderData
def test_loader_data_protocol():
    X, y = _data(10)
    loader = DataLoader(TensorDataset(X, y), batch_size=4)
    ld = LoaderData(loader)
    _protocol(ld, [(X[:4], y[:4]), (X[4:8], y[4:8]), (X[8:], y[8:])], [4, 4, 2])
    assert ld.num_batches() == len(loader) == 3
    assert isinstance(next(iter(loader)), list)  # what a DataLoader yields; the source gives tuples
    weighted = LoaderData(loader, examples_in=lambda b: 2 * len(b[1]))
    assert [weighted.examples_in(b) for b in weighted] == [8, 8, 4]


def test_loader_data_minibatch_equals_the_tensor_batches_draw():
    X, y = _data(30)
    loader = DataLoader(TensorDataset(X, y), batch_size=4, shuffle=True)
    ld, tb = LoaderData(loader), TensorBatches((X, y), 4)
    for seed in (0, 7):
        _equal_batches(ld.minibatch(gen(seed), 5), tb.minibatch(gen(seed), 5))
    _equal_batches(ld.minibatch(gen(2)), tb.minibatch(gen(2)))  # default: the loader's batch size
    assert not torch.equal(ld.minibatch(gen(0), 5)[1], ld.minibatch(gen(1), 5)[1])
    with pytest.raises(ValueError, match="exceeds"):
        ld.minibatch(gen(0), 31)


def test_loader_data_counts_what_a_pass_yields():
    """``num_examples`` is the number of examples the batches hold (as ``examples_in`` counts
    them): a loader that drops its last batch, or samples a subset of its dataset, holds fewer
    than ``len(dataset)``; one with its own ``examples_in`` counts by it."""
    X, y = _data(10)
    dropping = LoaderData(DataLoader(TensorDataset(X, y), batch_size=4, drop_last=True))
    assert dropping.num_examples() == sum(dropping.examples_in(b) for b in dropping) == 8
    subset = LoaderData(
        DataLoader(TensorDataset(X, y), batch_size=3, sampler=list(range(0, 10, 2)))
    )
    assert subset.num_examples() == sum(subset.examples_in(b) for b in subset) == 5
    counted = LoaderData(DataLoader(TensorDataset(X, y), batch_size=4), examples_in=lambda b: 1)
    assert counted.num_examples() == sum(counted.examples_in(b) for b in counted) == 3


def test_loader_data_minibatches_come_from_the_examples_the_loader_yields():
    """A minibatch (LiSSA's sample of the dataset mean) holds only examples a pass over the loader
    yields: with a sampler over the even indices, never an odd one."""
    X, y = _data(20)
    even = list(range(0, 20, 2))
    ld = LoaderData(DataLoader(TensorDataset(X, y), batch_size=4, sampler=even))
    assert sorted(torch.cat([b[1] for b in ld]).tolist()) == even
    for seed in range(5):
        drawn = ld.minibatch(gen(seed), 5)[1].tolist()
        assert set(drawn) <= set(even), drawn


class _Stream(IterableDataset):
    """An iterable-style dataset: no length, no indexing."""

    def __init__(self, X, y):
        self.X, self.y = X, y

    def __iter__(self):
        return zip(self.X, self.y, strict=True)


def test_loader_data_over_an_iterable_dataset():
    X, y = _data(10)
    ld = LoaderData(DataLoader(_Stream(X, y), batch_size=4))
    _protocol(ld, [(X[:4], y[:4]), (X[4:8], y[4:8]), (X[8:], y[8:])], [4, 4, 2])
    assert ld.num_batches() is None
    with pytest.raises(TypeError, match="cannot draw"):
        ld.minibatch(gen(0), 2)


# --------------------------------------------------------------------------------------- Batches
@pytest.mark.parametrize("container", [list, tuple])
@pytest.mark.parametrize("batch_type", [tuple, list])
def test_batches_protocol(container, batch_type):
    X, y = _data(10)
    raw = container(batch_type(b) for b in [(X[:3], y[:3]), (X[3:9], y[3:9]), (X[9:], y[9:])])
    source = Batches(raw)
    _protocol(source, [(X[:3], y[:3]), (X[3:9], y[3:9]), (X[9:], y[9:])], [3, 6, 1])
    assert source.num_batches() == 3


def test_batches_of_single_tensors_and_custom_counts():
    X, _ = _data(10)
    source = Batches([X[:4], X[4:]])
    _protocol(source, [(X[:4],), (X[4:],)], [4, 6])
    counted = Batches([(X[:4], "meta"), (X[4:], "meta")], examples_in=lambda b: 1)
    assert counted.num_examples() == 2 and counted.examples_in(next(iter(counted))) == 1


def test_batches_minibatch_draws_one_whole_batch_reproducibly():
    X, y = _data(20)
    raw = [[X[i : i + 4], y[i : i + 4]] for i in range(0, 20, 4)]  # batches as lists
    source = Batches(raw)
    drawn = [source.minibatch(gen(seed)) for seed in range(20)]
    for seed, batch in enumerate(drawn):
        assert isinstance(batch, tuple)
        assert any(torch.equal(batch[1], b[1]) for b in raw)  # one of the batches, whole
        _equal_batches(batch, source.minibatch(gen(seed)))  # same seed, same batch
    assert len({tuple(b[1].tolist()) for b in drawn}) > 1  # other seeds draw other batches
    with pytest.raises(ValueError, match="batch_size=None"):
        source.minibatch(gen(0), 2)


class _Reiterable:
    """A re-iterable that is not a sequence."""

    def __init__(self, batches):
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)


def test_batches_of_a_reiterable_and_of_a_generator():
    X, y = _data(10)
    source = Batches(_Reiterable([(X[:5], y[:5]), (X[5:], y[5:])]))
    _protocol(source, [(X[:5], y[:5]), (X[5:], y[5:])], [5, 5])
    assert source.num_batches() is None
    with pytest.raises(TypeError, match="cannot draw"):
        source.minibatch(gen(0))
    with pytest.raises(TypeError, match="one-shot"):
        Batches((X[i : i + 5], y[i : i + 5]) for i in (0, 5))


# ---------------------------------------------------------------------- the protocol's defaults
class _OnlyIter(DataSource):
    def __init__(self, batches):
        super().__init__()
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)


def test_a_source_that_implements_only_iteration_gets_the_rest():
    X, y = _data(10)
    source = _OnlyIter([(X[:6], y[:6]), (X[6:], y[6:])])
    _protocol(source, [(X[:6], y[:6]), (X[6:], y[6:])], [6, 4])
    assert source.num_batches() is None
    with pytest.raises(TypeError, match="cannot draw"):
        source.minibatch(gen(0))
    with pytest.raises(NotImplementedError):
        iter(DataSource())
    with pytest.raises(ValueError, match="batch size"):
        DataSource().examples_in(("no tensor",))


# -------------------------------------------------------------------------------------- restrict
def _sources():
    X, y = _data(12)
    s = torch.ones(3, dtype=torch.float64)
    loader = DataLoader(TensorDataset(X, y), batch_size=5)
    return {
        "tensors": TensorBatches((X, y), 5),
        "tensors-in_dims": TensorBatches((X.T, s, y), 5, in_dims=(1, None, 0)),
        "loader": LoaderData(loader),
        "list": Batches([(X[:5], y[:5]), (X[5:], y[5:])]),
        "counted": Batches([(X[:5], y[:5]), (X[5:], y[5:])], examples_in=lambda b: 3 * len(b[1])),
    }


@pytest.mark.parametrize("name", list(_sources()))
def test_restrict_holds_one_batch_counted_like_its_source(name):
    source = _sources()[name]
    batch = list(source)[-1]
    one = source.restrict(batch)
    assert isinstance(one, DataSource)
    _protocol(one, [batch], [source.examples_in(batch)])


# ------------------------------------------------------------------------------------- as_source
def test_as_source_chooses_the_implementation():
    X, y = _data(10)
    tb = TensorBatches((X, y), 4)
    assert as_source(tb) is tb
    loader = DataLoader(TensorDataset(X, y), batch_size=4)
    ld = as_source(loader)
    assert isinstance(ld, LoaderData) and ld.loader is loader
    batches = [(X[:5], y[:5]), (X[5:], y[5:])]
    assert isinstance(as_source(batches), Batches) and as_source(batches).batches is batches
    assert isinstance(as_source(tuple(batches)), Batches)
    with pytest.raises(TypeError, match="one-shot"):
        as_source(b for b in batches)


def test_as_source_passes_examples_in_to_loaders_and_lists_only():
    X, y = _data(10)
    count = lambda b: 1  # noqa: E731
    for data in (DataLoader(TensorDataset(X, y), batch_size=4), [(X[:5], y[:5]), (X[5:], y[5:])]):
        source = as_source(data, examples_in=count)
        assert [source.examples_in(b) for b in source] == [1] * len(list(source))
    with pytest.raises(ValueError, match="examples_in"):
        as_source(TensorBatches((X, y), 4), examples_in=count)


def test_a_process_group_without_torch_distributed_is_a_clear_error():
    X, y = _data(10)
    with pytest.raises(DistributedError, match="init_process_group"):
        as_source([(X, y)], process_group="world")
    with pytest.raises(DistributedError, match="init_process_group"):
        ShardedData(TensorBatches((X, y), 4), "world")
