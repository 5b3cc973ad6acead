"""Tests of dattri.func.utils (linop-backed): closed-form checks, and every function against
dattri 0.2.0, whose outputs are computed in one child process (the ``reference`` fixture)."""

from __future__ import annotations

import pytest
import torch

from dattri.func.utils import (
    _get_parameter_chunk_sizes,
    _unflatten_params,
    _unflatten_params_layerwise,
    _vectorize,
    flatten_func,
    flatten_params,
    get_parameter_chunk_sizes,
    partial_param,
)
from tests.dattri._reference import run_reference


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    model[2].bias.requires_grad_(False)  # frozen parameters are skipped by _unflatten_params
    return model


def _grads() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return {
        "w": torch.randn(5, 3, 4, generator=g),
        "b": torch.randn(5, 3, generator=g),
        "s": torch.randn(5, generator=g),
    }


MIXED = {
    "a": torch.arange(4.0, dtype=torch.float64).reshape(2, 2),
    "b": torch.tensor([0.5, 1.5, 2.5]),
}
MIXED_BATCH = {"a": torch.randn(2, 3, dtype=torch.float64), "b": torch.randn(2, 2)}
CHUNK_CASES = [([10], 2), ([2**33], 1), ([5 * 2**32 + 3], 7), ([0], 3), ([100, 200], 4)]
GROUP_CASES = [
    ([10, 20, 30], 2),
    ([2**31, 2**31, 5], 1),
    ([2**32 - 2, 3], 1),
    ([5], 2**31),
    ([2**30] * 9, 2),
]
X = torch.randn(6, 3, generator=torch.Generator().manual_seed(5))

REFERENCE_BODY = """
from torch.func import functional_call
from dattri.func.utils import (_get_parameter_chunk_sizes, _unflatten_params,
    _unflatten_params_layerwise, _vectorize, flatten_func, flatten_params,
    get_parameter_chunk_sizes, partial_param)
model, grads, X = inputs["model"], inputs["grads"], inputs["X"]
params = dict(model.named_parameters())
outputs["flatten_params"] = flatten_params(params).detach()
outputs["flatten_params_mixed"] = flatten_params(inputs["mixed"])
outputs["vectorize_batch"] = _vectorize(grads, device="cpu")
outputs["vectorize_flat"] = _vectorize(grads, batch_dim=False, device="cpu")
outputs["vectorize_mixed_batch"] = _vectorize(inputs["mixed_batch"], device="cpu")
outputs["vectorize_arr"] = _vectorize(grads, arr=torch.zeros(5, 20), device="cpu")
try:
    _vectorize({"a": torch.ones(2, 3), "b": torch.ones(3, 3)}, device="cpu")
except ValueError:
    outputs["vectorize_mismatch"] = "ValueError"
outputs["chunks"] = [get_parameter_chunk_sizes(*case) for case in inputs["chunk_cases"]]
outputs["groups"] = [_get_parameter_chunk_sizes(*case) for case in inputs["group_cases"]]
flat = flatten_params(params).detach() * 2
outputs["unflatten"] = _unflatten_params(flat, model)
layers = tuple(p.detach().reshape(-1) + 1 for p in params.values() if p.requires_grad)
outputs["unflatten_layerwise"] = _unflatten_params_layerwise(layers, model)

@flatten_func(model)
def loss(p, x):
    return functional_call(model, p, (x,)).pow(2).sum()
trainable = {k: v.detach() for k, v in params.items() if v.requires_grad}
outputs["flatten_func"] = loss(flatten_params(trainable), X)
outputs["flatten_func_tuple"] = loss(layers, X)
outputs["flatten_func_grad"] = torch.func.grad(loss)(flatten_params(trainable), X)

full = {"l1": torch.zeros(2, 2), "l2": torch.ones(3), "l3": torch.full((2,), 4.0)}
@partial_param(full, ["l3", "l1"], param_num=1)
def identity(a, flat):
    return flat * a
outputs["partial"] = identity(2.0, torch.arange(6.0))
outputs["partial_full"] = dict(full)
"""


@pytest.fixture(scope="module")
def reference() -> dict:
    inputs = {
        "model": _model(),
        "grads": _grads(),
        "X": X,
        "mixed": MIXED,
        "mixed_batch": MIXED_BATCH,
        "chunk_cases": CHUNK_CASES,
        "group_cases": GROUP_CASES,
    }
    return run_reference(REFERENCE_BODY, inputs)


def _same(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
    assert torch.equal(ours, theirs)


def _same_dict(ours: dict, theirs: dict) -> None:
    assert list(ours) == list(theirs)
    for key in ours:
        _same(ours[key].detach(), theirs[key].detach())


# ----------------------------------------------------------------------------- differential
def test_flattening_matches_dattri(reference):
    params = dict(_model().named_parameters())
    _same(flatten_params(params).detach(), reference["flatten_params"])
    _same(flatten_params(MIXED), reference["flatten_params_mixed"])  # dattri: the last dtype
    grads = _grads()
    _same(_vectorize(grads, device="cpu"), reference["vectorize_batch"])
    _same(_vectorize(grads, batch_dim=False, device="cpu"), reference["vectorize_flat"])
    _same(_vectorize(MIXED_BATCH, device="cpu"), reference["vectorize_mixed_batch"])  # first dtype
    _same(_vectorize(grads, arr=torch.zeros(5, 20), device="cpu"), reference["vectorize_arr"])
    assert reference["vectorize_mismatch"] == "ValueError"
    with pytest.raises(ValueError):
        _vectorize({"a": torch.ones(2, 3), "b": torch.ones(3, 3)}, device="cpu")


def test_chunk_sizes_match_dattri(reference):
    assert [get_parameter_chunk_sizes(*case) for case in CHUNK_CASES] == reference["chunks"]
    ours = [_get_parameter_chunk_sizes(*case) for case in GROUP_CASES]
    theirs = [(int(m), [int(c) for c in chunks]) for m, chunks in reference["groups"]]
    assert ours == theirs


def test_unflattening_and_decorators_match_dattri(reference):
    model = _model()
    params = dict(model.named_parameters())
    flat = flatten_params(params).detach() * 2
    _same_dict(_unflatten_params(flat, model), reference["unflatten"])
    layers = tuple(p.detach().reshape(-1) + 1 for p in params.values() if p.requires_grad)
    _same_dict(_unflatten_params_layerwise(layers, model), reference["unflatten_layerwise"])

    @flatten_func(model)
    def loss(p, x):
        return torch.func.functional_call(model, p, (x,)).pow(2).sum()

    trainable = {k: v.detach() for k, v in params.items() if v.requires_grad}
    _same(loss(flatten_params(trainable), X), reference["flatten_func"])
    _same(loss(layers, X), reference["flatten_func_tuple"])
    _same(torch.func.grad(loss)(flatten_params(trainable), X), reference["flatten_func_grad"])

    full = {"l1": torch.zeros(2, 2), "l2": torch.ones(3), "l3": torch.full((2,), 4.0)}

    @partial_param(full, ["l3", "l1"], param_num=1)
    def identity(a, flat):
        return flat * a

    _same(identity(2.0, torch.arange(6.0)), reference["partial"])
    _same_dict(full, reference["partial_full"])  # updated in place, as dattri does


# ------------------------------------------------------------------------------ closed form
def test_flatten_params_is_a_differentiable_copy():
    model = torch.nn.Linear(3, 1, bias=False)
    flat = flatten_params(dict(model.named_parameters()))
    assert flat.shape == (3,) and flat.requires_grad
    flat.sum().backward()
    assert torch.equal(model.weight.grad, torch.ones(1, 3))
    with torch.no_grad():
        flat.zero_()
    assert not torch.equal(model.weight.detach(), torch.zeros(1, 3))  # not a view


def test_round_trip_and_views():
    model = _model()
    spec_size = sum(p.numel() for p in model.parameters() if p.requires_grad)
    flat = torch.arange(float(spec_size))
    tree = _unflatten_params(flat, model)
    assert [k for k in tree] == ["0.weight", "0.bias", "2.weight"]
    assert torch.equal(flatten_params(tree), flat)
    tree["0.bias"].zero_()  # the values are views of the flat tensor, as in dattri
    assert flat[12:16].eq(0).all()
    assert _unflatten_params(flat, torch.nn.Sequential(torch.nn.ReLU())) == {}


def test_vectorize_batched_detaches_and_one_column_per_vector():
    w = torch.randn(4, 2, 3, requires_grad=True)
    s = torch.randn(4)
    out = _vectorize({"w": w, "s": s}, device="cpu")
    assert out.shape == (4, 7) and not out.requires_grad
    assert torch.equal(out[:, 6], s)


def test_chunk_sizes_closed_form():
    limit = (2**32 - 1) // 4
    assert get_parameter_chunk_sizes([2 * limit + 5], 4) == (limit, [limit, limit, 5])
    assert _get_parameter_chunk_sizes([limit - 1, 2, 3], 4) == (limit, [limit - 1, 5])
