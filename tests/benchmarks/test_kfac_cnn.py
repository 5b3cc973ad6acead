"""The K-FAC/EK-FAC CNN benchmark (benchmarks/kfac_cnn.py) on its --quick configuration: a
682-parameter residual CNN on 150 digits, linop's side only (a few seconds). kronfluence is
looked for in a folder that does not exist, so its rows must say "unavailable" without stopping
the run."""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks import kfac_cnn as bench
from benchmarks._digits import limit_threads


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("kfac_cnn")
    out = tmp / "kfac_cnn_cpu.jsonl"
    result = bench.run(["--quick", "--out", str(out), "--kronfluence", str(tmp / "none")])
    return result, out


def test_linop_rows_are_timed_and_kronfluence_is_unavailable(quick):
    result, _ = quick
    rows = result["rows"]
    ours = [r for r in rows if r["library"] == "linop"]
    assert [r["method"] for r in ours] == list(bench.METHODS)
    assert all(r["fit_seconds"] > 0 and r["score_seconds"] > 0 for r in ours)
    theirs = [r for r in rows if r["library"] == "kronfluence"]
    assert len(theirs) == len(bench.METHODS)
    assert all(r["unavailable"].startswith("unavailable: kronfluence is not") for r in theirs)
    assert all("pip install" in r["unavailable"] for r in theirs)
    table = "\n".join(result["table"])
    assert "unavailable" in table and "EK-FAC empirical" in table


def test_the_rescaled_kfac_divides_conv_blocks_by_their_locations(quick):
    result, _ = quick
    locs = result["locations"]
    convs = ["stem", "block1.conv1", "block1.conv2", "block2.conv1", "block2.conv2"]
    expected = {**dict.fromkeys(convs, 64), "head": 1}
    assert locs == expected
    problem, cfg = result["problem"], result["config"]
    with limit_threads(1):
        K = bench.linop_scores(problem, cfg, "KFACOperator", "empirical")["operator"]
    scaled = bench.rescaled_kfac(K, locs)
    for b, s in zip(K.blocks, scaled.blocks, strict=True):
        torch.testing.assert_close(s.values * locs[b.layer.name], b.values)
    v = torch.randn(K.shape[0], 2, dtype=torch.float64)
    head = K.blocks[-1].layer
    sl = slice(head.weight[0], head.bias[1])  # the head's rows: not rescaled
    torch.testing.assert_close((scaled @ v)[sl], (K @ v)[sl])


def test_compare_and_json_lines(quick):
    result, out = quick
    S = torch.randn(3, 7, dtype=torch.float64)
    same = bench.compare(S, S)
    assert same["rel_fro"] == 0 and same["spearman"] == pytest.approx(1.0)
    assert bench.compare(2 * S, S)["row_spearman"] == pytest.approx(1.0)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == len(result["rows"])
    assert all(r["benchmark"] == "kfac_cnn" and "machine" in r for r in lines)
