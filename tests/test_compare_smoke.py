"""Every method on every experiment of experiments.compare at the smoke scale, through the Ray
Tune runner: each writes a table, a CSV, plots and meta.json holding every learner with finite
numbers; and a scale whose Bouncing runs serve zero-shot and continual reuses them.

The runs share one Ray session of this module (`ray_up`, from conftest). Experiments that need
NotMNIST or Penn Treebank skip when ../shared/data lacks them.
"""
from __future__ import annotations

import csv
import importlib.util
import math

import pytest

from experiments.compare import cli as compare
from helpers import COMPARE_RAY as RAY, DATA, need_data

pytestmark = pytest.mark.usefixtures("no_ray_left")

HAS_TORCH = importlib.util.find_spec("torch") is not None  # the LSTM needs the torch extra (not in CI)
LEARNERS = ("ptncn", "ptncn_sign", "bptt", "tbptt", "rtrl", "uoro", "esn") + (("lstm",) if HAS_TORCH else ())
TEXT = ("ptncn", "esn") + (("lstm",) if HAS_TORCH else ())


def run(experiment: str, out, *extra) -> list[dict]:
    """Run the smoke scale of `experiment` into `out`; its CSV rows (after the file checks)."""
    outcome = compare.main([experiment, "--scale", "smoke", "--out", str(out), "--storage", str(out / "tune"),
                            "--data", str(DATA), *RAY, *extra],
                           log=lambda *a: None)
    assert not outcome.failed, outcome.failed
    for name in ("results.md", "results.csv", "meta.json"):
        assert (out / name).is_file(), name
    assert list(out.glob("*.png")), "no plot written"
    with open(out / "results.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def finite(rows: list[dict], field: str) -> bool:
    return bool(rows) and all(r[field] != "" and math.isfinite(float(r[field])) for r in rows)


LABELS = {"ptncn": "P-TNCN (tanh)", "ptncn_sign": "P-TNCN (sign)", "bptt": "BPTT", "tbptt": "TBPTT",
          "rtrl": "RTRL (tiny", "uoro": "UORO", "esn": "ESN", "lstm": "LSTM (k="}
FEW = ("ptncn",)  # zeroshot and continual: their own logic is method-agnostic (every learner runs in bouncing)


def check_learners(rows: list[dict], metric: str, table: str, learners=LEARNERS, **match) -> None:
    """Every learner has finite `metric` rows matching `match`, and a row in the Markdown table."""
    for method in learners:
        hits = [r for r in rows if r["method"] == method and all(r[k] == v for k, v in match.items())]
        assert finite(hits, metric), (method, match)
        assert finite(hits, "params") and finite(hits, "peak_rss_mib") and finite(hits, "wall_s")
        assert f"| {LABELS[method]}" in table, method


@pytest.mark.ray
@pytest.mark.slow
def test_bouncing_smoke(tmp_path, ray_up):
    """Every learner on Bouncing MNIST (NotMNIST goes through the same path in zeroshot and
    continual)."""
    rows = run("bouncing", tmp_path, "--tune-trials", "0", "--datasets", "mnist", "--methods", ",".join(LEARNERS))
    table = (tmp_path / "results.md").read_text()
    check_learners(rows, "test_bce", table, phase="1", eval_on="mnist")
    check_learners(rows, "test_se", table, phase="1", eval_on="mnist")
    assert finite([r for r in rows if r["method"] == "mean_frame" and r["eval_on"] == "mnist"], "test_bce")


@pytest.mark.ray
@pytest.mark.slow
def test_ptb_smoke(tmp_path, ray_up):
    """Every method on characters and words; the unigram and bigram references in the table."""
    need_data("ptb_word")
    rows = run("ptb", tmp_path, "--tune-trials", "0", "--methods", ",".join(TEXT))
    table = (tmp_path / "results.md").read_text()
    check_learners(rows, "test_bpc", table, TEXT, phase="1", eval_on="char")
    check_learners(rows, "test_ppl", table, TEXT, phase="1", eval_on="word")
    assert "| Unigram frequencies (reference)" in table and "| Bigram frequencies (reference)" in table


@pytest.mark.ray
@pytest.mark.slow
def test_zeroshot_smoke(tmp_path, ray_up):
    need_data("notmnist")
    rows = run("zeroshot", tmp_path, "--tune-trials", "0", "--methods", ",".join(FEW))
    table = (tmp_path / "results.md").read_text()
    check_learners(rows, "test_bce", table, FEW, phase="1", trained_on="mnist", eval_on="notmnist")
    check_learners(rows, "test_bce", table, FEW, phase="1", trained_on="notmnist", eval_on="notmnist")
    off = [r for r in rows if r["method"] == "ptncn" and r["correction"] == "off"]
    assert finite(off, "test_bce")
    assert "correction off" in table


@pytest.mark.ray
@pytest.mark.slow
def test_continual_smoke(tmp_path, ray_up):
    need_data("notmnist")
    rows = run("continual", tmp_path, "--tune-trials", "0", "--methods", ",".join(FEW))
    table = (tmp_path / "results.md").read_text()
    for phase, trained in (("1", "mnist"), ("2", "notmnist"), ("3", "mnist")):
        for ds in ("mnist", "notmnist"):
            check_learners(rows, "test_bce", table, FEW, phase=phase, trained_on=trained, eval_on=ds)


@pytest.mark.ray
@pytest.mark.slow
def test_shared_video_scale_reuses_the_bouncing_trials(tmp_path, ray_up, monkeypatch):
    """At a scale whose Bouncing runs are also tested on NotMNIST (the long scale), zero-shot
    trains nothing (its table comes from the Bouncing trials, correction on and off) and continual
    runs no tuning of its own (Bouncing MNIST's tuning trials chose its settings)."""
    import dataclasses
    from experiments.compare import scales
    need_data("notmnist")
    smoke = scales.SCALES["smoke"]  # a continual phase gets a video run's budget, as at the long scale
    monkeypatch.setitem(scales.SCALES, "smoke", dataclasses.replace(smoke, shared_video=True,
                                                                    continual_steps=smoke.video_steps))

    def go(experiment):
        return compare.main([experiment, "--scale", "smoke", "--out", str(tmp_path / experiment / "smoke"),
                             "--storage", str(tmp_path / "tune"), "--data", str(DATA), "--methods", "ptncn",
                             "--tune-trials", "1", *RAY], log=lambda *_: None)
    first = go("bouncing")
    assert not first.failed and len(first.ran) == 2 + 4  # tuning on both sets; reference and P-TNCN on both
    mnist = [j for j in first.jobs if j["kind"] == "model" and j["stage"] == "test" and j["phases"][0]["data"] == "mnist"]
    assert mnist and all(j["evals"] == ["mnist", "notmnist"] and j["nocorr"] for j in mnist)
    zero = go("zeroshot")
    assert zero.ran == [] and not zero.failed
    with open(tmp_path / "zeroshot" / "smoke" / "results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert finite([r for r in rows if r["method"] == "ptncn" and r["trained_on"] == "mnist"
                   and r["eval_on"] == "notmnist" and r["correction"] == "off"], "test_bce")
    cont = go("continual")
    assert not cont.failed and all(not i.startswith("tune-") for i in cont.ran) and len(cont.ran) == 2
