"""Structure tags (linop.tags): the rules themselves, and that whatever the algebra builds carries
sound tags (Hypothesis)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from linop.tags import Tags
from linop.testing import assert_close
from tests.linop._helpers import KINDS
from tests.linop._helpers import random_operator as _random_operator


def test_psd_and_nsd_imply_symmetric():
    assert Tags(psd=True).symmetric and Tags(nsd=True).symmetric
    assert not Tags().symmetric and not Tags().psd and not Tags().nsd


def test_replace():
    t = Tags(psd=True)
    assert t.replace(nsd=True) == Tags(psd=True, nsd=True)
    assert t.replace(symmetric=False) == Tags()  # psd and nsd need symmetry
    assert Tags().replace(psd=True) == Tags(symmetric=True, psd=True)
    with pytest.raises(TypeError, match="unknown tag"):
        t.replace(positive=True)


@pytest.mark.parametrize("tags", [Tags(), Tags(symmetric=True), Tags(psd=True), Tags(nsd=True)])
def test_scale(tags):
    assert tags.scale(2.5) == tags
    assert tags.scale(-1.0) == Tags(symmetric=tags.symmetric, psd=tags.nsd, nsd=tags.psd)
    assert tags.scale(0.0) == Tags(psd=True, nsd=True)


def test_sum_keeps_what_every_term_has_and_product_drops_everything():
    assert Tags.sum([Tags(psd=True), Tags(psd=True)]) == Tags(psd=True)
    assert Tags.sum([Tags(psd=True), Tags(nsd=True)]) == Tags(symmetric=True)
    assert Tags.sum([Tags(psd=True), Tags()]) == Tags()
    assert Tags.product([Tags(psd=True)]) == Tags(psd=True)
    assert Tags.product([Tags(psd=True), Tags(psd=True)]) == Tags()


def test_tags_follow_the_rules():
    P = _random_operator("spd", 4, 0)
    N = -1.0 * P
    assert P.tags.psd and N.tags.nsd and not N.tags.psd and N.tags.symmetric
    assert (0 * P).tags.psd and (0 * P).tags.nsd
    assert (P + P).tags.psd
    assert not (P + N).tags.psd and (P + N).tags.symmetric
    assert not (P @ P).tags.psd and not (P @ P).tags.symmetric
    assert P.T.tags == P.tags
    D = _random_operator("dense", 4, 1)
    assert not (P + D).tags.symmetric


@settings(max_examples=40, deadline=None)
@given(
    kinds=st.lists(st.sampled_from(KINDS), min_size=1, max_size=3),
    scalars=st.lists(st.floats(-2, 2, allow_nan=False), min_size=3, max_size=3),
    seed=st.integers(0, 10_000),
    product=st.booleans(),
)
def test_tags_are_sound(kinds, scalars, seed, product):
    """Whatever the algebra builds, its tags hold for its dense matrix."""
    ops = [
        c * _random_operator(k, 4, seed + i)
        for i, (k, c) in enumerate(zip(kinds, scalars, strict=False))
    ]
    op = ops[0]
    for other in ops[1:]:
        op = op @ other if product else op + other
    M = op.to_dense()
    if op.tags.symmetric:
        assert_close(M, M.T, 1e-12)
    eig = torch.linalg.eigvalsh((M + M.T) / 2)
    tol = 1e-9 * max(1.0, float(eig.abs().max()))
    if op.tags.psd:
        assert float(eig.min()) >= -tol
    if op.tags.nsd:
        assert float(eig.max()) <= tol
