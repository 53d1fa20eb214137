"""Tests of experiments.compare without Ray: the plans and trial keys each scale makes (dry runs
against the committed results), the validation streams, the claims and the strongest reference,
the setup text of timed scales, the cost record, and the trial-curve reader.
"""
from __future__ import annotations

import json
import math

import pytest

from experiments.compare import cli as compare
from experiments.compare import jobs as compare_jobs
from experiments.compare import runner
from experiments.compare.jobs import config_for, setting_for
from experiments.compare.tuning import choose, tune_jobs
from helpers import DATA, REPO, need_data


def test_validation_streams_never_touch_the_test_split():
    """Tuning scores on ptb.valid, and for video on new videos of the training sprites."""
    from ptncn_dist.config import load
    from ptncn_dist.data import open_streams
    video = load(None, ["data.frame=32", "data.seq_len=4", "data.batch=2", "data.eval_batch=2"]).data
    test, valid = open_streams(video, 0), open_streams(video, 0, "valid")
    assert valid.test.pool is valid.train.pool and test.test.pool is not test.train.pool
    assert not (valid.test.batch(0).x == valid.train.batch(0).x).all()
    if (DATA / "ptb_word").is_dir():
        text = load(None, [f'data.path="{DATA / "ptb_word"}"', 'data.source="ptb_word"', "data.batch=2",
                           "data.eval_batch=2"]).data
        assert "ptb.valid" in open_streams(text, 0, "valid").test.name
        assert "ptb.test" in open_streams(text, 0).test.name


def found(argv: list, done) -> list:
    """The tuning and test trials of `python -m experiments.compare ARGV` and whether each has a
    result in the committed DONE: a rerun of the command runs none that has."""
    plan = compare.make_plan(compare.parse_args(argv))
    st = setting_for(plan)
    tunes = tune_jobs(plan, st)
    st.chosen = choose(runner.collect(tunes, done))
    jobs = tunes + compare_jobs.test_jobs(plan, st)
    return [(j, runner.load_trial(done, j) is not None) for j in jobs]


def test_trial_keys_hold_only_the_datasets_a_trial_uses(tmp_path):
    """Adding a dataset to a command leaves the keys of the other datasets' trials as they were;
    a saved result is found under its key, and an unreadable one counts as not run."""
    need_data("ptb_word")
    one = compare.main(["ptb", "--scale", "epoch", "--dry-run", "--data", str(DATA)], log=lambda *_: None).jobs
    both = compare.main(["ptb", "--scale", "epoch", "--datasets", "char,word", "--dry-run", "--data", str(DATA)],
                        log=lambda *_: None).jobs
    assert {j["id"]: j["key"] for j in one} == {j["id"]: j["key"] for j in both if j["id"] in {i["id"] for i in one}}
    assert len(both) == 2 * len(one) and all(set(j["datasets"]) == set(j["evals"]) for j in both)
    job = both[0]
    assert runner.load_trial(tmp_path, job) is None
    runner.save_trial(tmp_path, job, {"status": "ok", "run": 2})
    assert runner.load_trial(tmp_path, job)["run"] == 2
    runner.trial_path(tmp_path, job["key"]).write_text("{half")
    assert runner.load_trial(tmp_path, job) is None and runner.to_run([job], tmp_path, None) == [job]


def test_text_runs_share_one_time_budget_and_finished_video_trials_keep_their_keys(monkeypatch):
    """Medium PTB runs stop on training minutes (tuning trials on a quarter of them) with the
    step cap at one epoch of characters and a quarter of words; UORO's text width is named as
    not matched; the video experiments' jobs are unchanged, so their committed trials are reused."""
    need_data("ptb_word")
    plan = compare.make_plan(compare.parse_args(["ptb", "--data", str(DATA)]))
    st = setting_for(plan)
    tests, tunes = compare_jobs.test_jobs(plan, st), tune_jobs(plan, st)
    models = [j for j in tests if j["kind"] == "model"]
    assert models and all(j["phases"][0]["minutes"] == plan.scale.text_minutes > 0 for j in models)
    assert all(j["phases"][0]["minutes"] == pytest.approx(plan.scale.text_minutes * plan.scale.tune_fraction)
               for j in tunes)
    assert {j["phases"][0]["steps"] for j in models if j["phases"][0]["data"] == "char"} == {225_525}
    cfg = config_for(models[0], models[0]["phases"][0]["data"], models[0]["phases"][0]["steps"],
                     minutes=models[0]["phases"][0]["minutes"])
    assert cfg.train.max_minutes == plan.scale.text_minutes and cfg.train.eval_every == 0
    assert cfg.train.eval_every_minutes == pytest.approx(plan.scale.text_minutes / plan.scale.curve_points)
    assert all("not matched" in j["label"] for j in models if j["method"] == "uoro")
    done = REPO / "experiments" / "results" / "bouncing" / "medium" / "trials"
    monkeypatch.chdir(REPO)  # the committed trials were run with the default data root, ../shared/data
    if done.is_dir() and (REPO.parent / "shared" / "data" / "notmnist").is_dir():
        jobs = found(["bouncing"], done)
        assert jobs and all(ok for _, ok in jobs)


def test_epoch_scale_is_one_bucketed_epoch_of_characters_at_the_authors_settings(monkeypatch):
    """`--scale epoch`: PTB only; P-TNCN and the LSTM on characters, one trial at a time on 2
    CPUs, no tuning, P-TNCN at Nesterov 0.075 / 0.95; its step budget is exactly one bucketed
    epoch of the real training split; the committed medium and epoch PTB trials are all found."""
    need_data("ptb_word")
    from ptncn_dist.data import open_streams
    with pytest.raises(SystemExit):
        compare.parse_args(["bouncing", "--scale", "epoch"])
    lines = []
    outcome = compare.main(["ptb", "--scale", "epoch", "--dry-run", "--data", str(DATA)], log=lines.append)
    models = [j for j in outcome.jobs if j["kind"] == "model"]
    assert sorted(j["method"] for j in models) == ["lstm", "ptncn"] and not any(j["stage"] == "tune" for j in outcome.jobs)
    assert all(j["threads"] == 2 and j["phases"][0]["data"] == "char" and "minutes" not in j["phases"][0] for j in models)
    ptncn = next(j for j in models if j["method"] == "ptncn")
    cfg = config_for(ptncn, "char", ptncn["phases"][0]["steps"])
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.momentum) == ("nag", 0.075, 0.95)
    assert cfg.model.hidden == [1000, 1000] and cfg.data.bucket and cfg.data.batch == 50
    train = open_streams(cfg.data, 0).train
    assert ptncn["phases"][0]["steps"] == train.epoch_steps() == sum(train.batch(p).x.shape[0]
                                                                     for p in range(train.batches_per_epoch))
    done = REPO / "experiments" / "results" / "ptb" / "medium" / "trials"
    monkeypatch.chdir(REPO)
    if done.is_dir() and (REPO.parent / "shared" / "data" / "ptb_word").is_dir():
        jobs = found(["ptb"], done)
        assert jobs and all(ok for _, ok in jobs)
        for argv, where in ((["ptb", "--scale", "epoch"], "epoch"), (["ptb", "--scale", "epoch", "--datasets", "word"],
                                                                        "epoch_words")):
            jobs = found(argv, done.parent.parent / where / "trials")
            assert jobs and all(ok for _, ok in jobs)


def test_claims_say_whether_ptncn_beats_the_papers_rivals():
    """The claims section: 'holds' only when P-TNCN's mean is below each of RTRL, UORO and the
    ESN, 'clearly' only when the seeds' spreads do not overlap, one seed said as such, the rank
    among learners, the other scale's rank, and the strongest reference beaten or not."""
    from experiments.compare.claims import claims_lines
    from experiments.compare.methods import METHOD_KEYS
    from experiments.compare.tables import separated

    def st(label, mean, std=1.0, n=3):
        return {"label": label, "test_bce": (mean, std, n)}
    stats = {"ptncn": st("P-TNCN", 100.0), "rtrl": st("RTRL", 150.0), "uoro": st("UORO", 101.0, 5.0),
             "esn": st("ESN", 120.0), "lstm": st("LSTM", 90.0, 1.0, 1), "blur_blend": st("Blur", 95.0, math.nan, 1)}
    lines = claims_lines(stats, "test_bce", "B-MNIST", "blur_blend", METHOD_KEYS, separated,
                         [("medium", {**stats, "ptncn": st("P-TNCN", 200.0)}),
                          ("epoch_tuned", {"ptncn": st("P-TNCN", 300.0, 0.0, 1)})])
    text = "\n".join(lines)
    assert "it holds." in text and "ahead of RTRL (150.0 ± 1.0; clearly)" in text
    assert "ahead of UORO (101.0 ± 5.0; within the seeds' spread)" in text and "behind LSTM (90.00; one seed)" in text
    assert "Rank: 2 of 5 learners here." in text and "At the `medium` scale it ranked 5 of 5" in text
    assert "At the `epoch_tuned` scale it was the only learner run (300.0)." in text
    assert "P-TNCN does not beat it." in text
    stats["esn"] = st("ESN", 99.0)
    assert "it holds in part." in "\n".join(claims_lines(stats, "test_bce", "x", None, METHOD_KEYS, separated))


def test_long_scale_zeroshot_and_continual_reuse_the_bouncing_trials():
    """At the long scale, zero-shot's trials are the Bouncing trials (the same keys) and
    continual's tuning trials are Bouncing MNIST's; every run there is budgeted in minutes of
    process CPU time, checkpointed every 2 minutes through Tune."""
    need_data("notmnist")

    def jobs(experiment):
        return compare.main([experiment, "--scale", "long", "--dry-run", "--data", str(DATA)], log=lambda *_: None).jobs
    bouncing, zeroshot, continual = jobs("bouncing"), jobs("zeroshot"), jobs("continual")
    keys = {j["key"] for j in bouncing}
    assert {j["key"] for j in zeroshot} == keys
    tunes = [j for j in continual if j["stage"] == "tune"]
    assert tunes and {j["key"] for j in tunes} <= keys
    assert not {j["key"] for j in continual if j["stage"] == "test" and j["kind"] == "model"} & keys
    models = [j for j in bouncing + continual if j["kind"] == "model"]
    assert all(j["clock"] == "process" and j["checkpoint_minutes"] == 2.0 for j in models)
    assert {p["minutes"] for j in models if j["stage"] == "test" for p in j["phases"]} == {10.0}
    assert {p["minutes"] for j in models if j["stage"] == "tune" for p in j["phases"]} == {2.5}
    seeds = {(j["phases"][0]["data"], j["seed"]) for j in bouncing if j["stage"] == "test"}
    assert seeds == {("mnist", 0), ("mnist", 1), ("mnist", 2), ("notmnist", 0)}


def test_seeds_asked_for_reach_every_run_and_keep_the_default_runs_keys():
    """At the long scale the default runs 3 seeds on Bouncing MNIST and 1 elsewhere; `--seeds N`,
    asked for, gives every run N seeds, and the runs the default already has keep their keys."""
    need_data("notmnist")

    def jobs(*extra):
        return compare.main(["bouncing", "--scale", "long", *extra, "--dry-run", "--data", str(DATA)],
                            log=lambda *_: None).jobs
    keys = {j["key"] for j in jobs()}
    asked = jobs("--seeds", "2")
    assert {(j["phases"][0]["data"], j["seed"]) for j in asked if j["stage"] == "test"} == \
        {(d, s) for d in ("mnist", "notmnist") for s in (0, 1)}
    new = [j for j in asked if j["stage"] == "test" and j["seed"] == 1 and j["phases"][0]["data"] == "notmnist"]
    assert new and not {j["key"] for j in new} & keys and {j["key"] for j in asked if j not in new} <= keys


def test_strongest_reference_is_the_lowest_loss_not_the_most_elaborate():
    """On held-out words an unsmoothed trigram loses to the unigram: the unigram is what a learner
    must beat. A reference with no finite figure is passed over."""
    from experiments.compare.report import strongest_reference
    stats = {"unigram": {"test_ppl": (686.9, 0.0, 3)}, "bigram": {"test_ppl": (886.5, 0.0, 3)},
             "trigram": {"test_ppl": (3890.0, 0.0, 3)}, "ptncn": {"test_ppl": (500.0, 1.0, 3)}}
    assert strongest_reference(stats, ("unigram", "bigram", "trigram"), "test_ppl") == "unigram"
    stats["unigram"]["test_ppl"] = (math.nan, 0.0, 0)
    assert strongest_reference(stats, ("unigram", "bigram", "trigram"), "test_ppl") == "bigram"
    assert strongest_reference(stats, ("mean_frame",), "test_ppl") is None


def test_timed_scales_say_minutes_and_the_steps_each_method_took():
    """A scale that budgets time says so (never "10,000,000 training steps"), names its clock and
    says tuning took a share of the time; the steps each learner took are listed from the rows."""
    from experiments.compare.scales import SCALES
    from experiments.compare.seen import video_steps
    from experiments.compare.text import setup_text
    long, medium = SCALES["long"], SCALES["medium"]
    for experiment, per in (("bouncing", "per run"), ("continual", "per phase")):
        text = setup_text(experiment, long, [0, 1, 2], 1, 2, 2)
        assert f"the same 10 minutes of training time {per} (CPU seconds of the trial's own process" in text
        assert "10,000,000 training steps" not in text and "25% of a test run's training time" in text
    ptb = setup_text("ptb", long, [0], 1, 2, 2)
    assert "the same 20 minutes of training time per run (CPU seconds" in ptb and "(one epoch)" not in ptb
    assert "225,525 steps on characters (one epoch)" in setup_text("ptb", medium, [0], 1, 2, 2)
    # the seeds each run had: the long scale runs three on Bouncing MNIST, one elsewhere
    assert "seeds [0, 1, 2] for runs trained on Bouncing MNIST, [0] for runs trained on other data;" in \
        setup_text("bouncing", long, [0, 1, 2], 1, 2, 2)
    assert "seeds [0];" in setup_text("continual", long, [0, 1, 2], 1, 2, 2) and "seeds [0];" in ptb
    assert "seeds [0, 1, 2];" in setup_text("continual", medium, [0, 1, 2], 1, 2, 2)
    steady = setup_text("bouncing", medium, [0], 1, 2, 2)
    assert "1,200 training steps (960 videos)" in steady and "25% of a test run's steps" in steady
    rows = [{"method": "ptncn", "label": "P-TNCN", "steps": s} for s in (100, 300)] + \
           [{"method": "bptt", "label": "BPTT", "steps": 40}]
    assert video_steps(rows, long) == ("- Training steps per run in the time (mean over seeds): "
                                       "P-TNCN 200 (160 videos); BPTT 40 (32 videos).")
    assert video_steps([], long) == ""


def test_cost_counts_training_hours_and_the_busy_wall_time_across_sessions():
    """Two trials side by side, a third in a later session after a gap: busy time is the union of
    their spans (the gap left out); training hours include a resumed trial's earlier attempts."""
    from experiments.compare.output import compute_cost
    done = [({}, {"status": "ok", "start": 0.0, "end": 3600.0, "wall_s": 3600.0, "train_s_total": 3000.0}),
            ({}, {"status": "ok", "start": 1800.0, "end": 5400.0, "wall_s": 3600.0, "train_s_total": 3600.0,
                  "resumed": [{"phase": 0, "step": 10, "train_s": 100.0}]}),
            ({}, {"status": "ok", "start": 90000.0, "end": 91800.0, "wall_s": 1800.0,
                  "phases": [{"train_s": 1200.0}, {"train_s": 600.0}]}),
            ({}, {})]
    assert compute_cost(done) == {"trials": 3, "train_hours": 2.33, "wall_hours_recorded": 2.5,
                                  "resumed_trials": 1, "busy_hours": 2.0}
    from experiments.compare.output import cost_line
    assert cost_line(compute_cost([]), 84) == ("- Cost: no trial of its own; it reads 84 trials of the Bouncing "
                                               "experiment, whose cost is stated there.")
    assert "3 trials (and 2 trials of the Bouncing experiment, reused" in cost_line(compute_cost(done), 2)


def test_trial_curves_prints_each_matching_trials_held_out_curve(tmp_path):
    from experiments.tools.trial_curves import curves
    (tmp_path / "trials").mkdir()
    for jid, loss in (("bouncing-ptncn-notmnist-s0", 736.1), ("bouncing-bptt-mnist-s0", 353.3)):
        rec = {"job": {"id": jid}, "result": {"phases": [{"curve": [
            {"step": 0, "train_s": 0.0, "loss": 3000.7}, {"step": 66200, "train_s": 600.2, "loss": loss}]}]}}
        (tmp_path / "trials" / f"{jid}.json").write_text(json.dumps(rec), encoding="utf-8")
    assert curves(tmp_path, "notmnist") == ("### bouncing-ptncn-notmnist-s0\n\n| step | train s | held-out loss |\n"
                                            "|---|---|---|\n| 0 | 0 | 3001 |\n| 66,200 | 600 | 736.1 |\n")
    with pytest.raises(SystemExit, match="no trial id contains 'word'"):
        curves(tmp_path, "word")


def test_a_trial_that_diverges_keeps_its_training_seconds_and_names_no_deleted_path(tmp_path):
    """BPTT at lr 1e300 overflows after its first segment: the trial's record is a diverged
    result that says how far it trained (its seconds count in the cost) and names nothing inside
    its working directory, which is deleted when the trial ends."""
    from experiments.compare.trial import run_spec
    jobs = compare.main(["bouncing", "--scale", "smoke", "--dry-run", "--methods", "bptt", "--datasets", "mnist",
                         "--data", str(DATA), "--inject", "bptt:optim.lr=1e300"], log=lambda *_: None).jobs
    job = next(j for j in jobs if j["stage"] == "test" and j["kind"] == "model")
    work = tmp_path / "work"
    work.mkdir()
    with pytest.warns(RuntimeWarning):
        out = run_spec(job, work)
    assert out["status"].startswith("DivergenceError: non-finite values at step ") and runner.finished(out)
    assert str(tmp_path) not in out["status"] and "checkpoint" not in out["status"]
    assert (work / "phase-0" / "checkpoints").is_dir()  # there was a checkpoint to name
    stopped = out["stopped"]
    assert stopped["phase"] == 0 and 0 < stopped["step"] < job["phases"][0]["steps"]
    assert 0 < stopped["train_s"] == out["train_s_total"] < out["wall_s"]
