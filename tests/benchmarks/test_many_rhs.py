"""The many-right-hand-side benchmark (benchmarks/many_rhs.py) on its --quick configuration: a
1,210-parameter digits MLP, 4 right-hand sides, λ = 1e-2 (about a minute on 2 CPU cores), and
the estimator benchmark (benchmarks/estimators.py) on its own --quick one. pyDVL is looked for
in a folder that does not exist, so its rows must say "unavailable" without stopping the run."""

from __future__ import annotations

import json
import math

import pytest
import torch

from benchmarks import _rhs_references as refs
from benchmarks import estimators as est
from benchmarks import many_rhs as bench


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("many_rhs")
    out = tmp / "many_rhs_cpu.jsonl"
    result = bench.run(["--quick", "--out", str(out), "--pydvl", str(tmp / "no-pydvl")])
    return result, out


def _rows(quick):
    return quick[0]["results"]["digits"]["rows"]


def test_every_method_has_a_row(quick):
    methods = [r["method"] for r in _rows(quick)]
    for name in bench.OURS:
        assert name in methods
    assert "pydvl" in methods  # the unavailable library, one row per λ
    # curvlinops is not a test dependency (installing it upgrades torch): a row either way
    assert "curvlinops 3 CG inverse" in methods or "curvlinops" in methods


def test_plain_cg_reaches_the_tightest_target_and_errors_fall(quick):
    cg = next(r for r in _rows(quick) if r["method"] == "linop CG")
    trials = cg["trials"]
    assert cg["knob_name"] == "rtol" and trials[0]["knob"] == refs.LADDER[0]
    assert trials[-1]["max_rel_error"] <= min(refs.TARGETS)
    assert trials[-1]["max_rel_error"] < trials[0]["max_rel_error"]
    assert all(t["products"] > 0 and t["seconds"] > 0 for t in trials)
    products = [t["products"] for t in trials]
    assert products == sorted(products)  # tighter tolerances cost more products
    assert bench.reached(trials, min(refs.TARGETS)) is trials[-1]


def test_options_missing_on_this_branch_are_reported_not_raised(quick):
    for row in _rows(quick):
        if row["library"] == "linop":
            assert ("trials" in row) != ("unavailable" in row), row
            if "unavailable" in row:
                assert row["unavailable"].startswith(("TypeError", "ValueError"))


def test_dattri_products_are_counted_from_its_iterations(quick):
    rows = [r for r in _rows(quick) if r["library"] == "dattri"]
    assert rows
    for row in rows:
        if "trials" in row:  # dattri 0.2.0 is present in a checkout with .ref/dattri020
            for t in row["trials"]:
                assert t["products"] == 4 * (t["knob"] + 1)


def test_a_missing_reference_is_unavailable_with_a_pointer(quick):
    rows = [r for r in _rows(quick) if r["library"] == "pydvl"]
    assert rows and all("unavailable" in r for r in rows)
    assert "docstring" in rows[0]["unavailable"]


def test_json_lines_and_the_table(quick):
    result, out = quick
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == len(_rows(quick))
    assert all(r["benchmark"] == "many_rhs" and "machine" in r for r in lines)
    table = "\n".join(result["table"])
    assert "to 0.0001" in table and "targets at 0.0001" in table
    assert "unavailable" in table


def test_search_stops_at_the_target_and_errors_are_per_column():
    ref = torch.ones(3, 2, dtype=torch.float64)
    answers = {1: ref * 1.1, 2: ref * 1.001, 3: ref * 1.000001, 4: ref}
    trials = refs.search(lambda k: (answers[k], 0.5, 10 * k), [1, 2, 3, 4], ref, 1e-4)
    assert [t["knob"] for t in trials] == [1, 2, 3]
    assert math.isclose(trials[0]["max_rel_error"], 0.1)
    bad = ref.clone()
    bad[0, 1] = float("nan")
    assert refs.max_rel_error(bad, ref) == math.inf
    half = ref.clone()
    half[:, 1] *= 1.5
    assert math.isclose(refs.max_rel_error(half, ref), 0.5)


def test_estimator_benchmark_quick(tmp_path):
    result = est.run(["--quick", "--out", str(tmp_path / "estimators.jsonl")])
    records = result["records"]
    methods = {(r["kind"], r["method"]) for r in records}
    assert ("trace", "xtrace") in methods and ("diagonal", "xdiag") in methods
    assert ("spectral density", "slq") in methods
    for r in records:
        if r["kind"] != "spectral density":
            assert all(math.isfinite(e) for e in r["rel_errors"])
    assert "target: XTrace within 1 %" in "\n".join(result["table"])
