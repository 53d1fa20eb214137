"""`ptncn bench overhead`: the per-layer fit and a real run of the single-process engine."""
import numpy as np
import pytest

from ptncn_dist.studies.bench import main as bench_main
from ptncn_dist.studies.harness import timed_stats
from ptncn_dist.studies.overhead import breakdown, fit


def test_fit_recovers_a_known_cost_law():
    layers = [1, 2, 4, 8]
    fixed, per, worst = fit(layers, [0.05 + 0.11 * n for n in layers])
    assert fixed == pytest.approx(0.05, abs=1e-9) and per == pytest.approx(0.11, abs=1e-9) and worst < 1e-9
    rng = np.random.default_rng(0)
    noisy = [(0.05 + 0.11 * n) * (1 + rng.normal(0, 0.02)) for n in layers]
    fixed, per, worst = fit(layers, noisy)
    assert per == pytest.approx(0.11, rel=0.05) and 0 < worst < 0.1


def test_breakdown_averages_each_phase_over_the_layers():
    stats = {"layer1_compute_ms_per_step": 0.1, "layer1_comm_ms_per_step": 0.02, "layer1_wait_ms_per_step": 0.3,
             "layer2_compute_ms_per_step": 0.3, "layer2_comm_ms_per_step": 0.04, "layer2_wait_ms_per_step": 0.1,
             "layer3_compute_ms_per_step": 9.0}
    parts = breakdown(stats, 2)
    assert parts == pytest.approx({"compute": 0.2, "comm": 0.03, "wait": 0.2})
    assert breakdown({"placement": []}, 1) is None  # the single process has no phase clocks
    assert breakdown(stats, 3) is None  # layer 3 lacks comm and wait


def test_timed_stats_leave_the_warm_up_out():
    """10 warm-up steps that cost 5 ms each (a kernel loaded) and 90 of 1 ms: 1 ms per timed step."""
    before = {"layer1_compute_ms_per_step": 5.0, "placement": ["a"]}
    after = {"layer1_compute_ms_per_step": (10 * 5.0 + 90 * 1.0) / 100, "placement": ["b"]}
    out = timed_stats(before, after, 10, 90)
    assert out["layer1_compute_ms_per_step"] == pytest.approx(1.0) and out["placement"] == ["b"]


def test_overhead_of_the_single_process_engine_is_measured_and_fitted(capsys):
    assert bench_main(["overhead", "--engines", "local_1thread", "--layers", "1,2,4", "--steps", "100"]) == 0
    out = capsys.readouterr().out.splitlines()
    row = next(line for line in out if line.startswith("local_1thread ") and "ms/step" not in line).split()
    ms, fixed, per = [float(v) for v in row[1:4]], float(row[4]), float(row[5])
    assert all(v > 0 for v in ms) and ms[2] > ms[0]  # four layers cost more than one
    assert per > 0 and abs(fixed + 4 * per - ms[2]) / ms[2] < 0.5


@pytest.mark.parametrize("args", [["--engines", "nope"], ["--layers", "3"], ["--layers", "a,b"]])
def test_bad_arguments_are_one_line(args, capsys):
    with pytest.raises(SystemExit) as exc:
        bench_main(["overhead", *args])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("ptncn bench overhead: error: ")


def test_loop_beside_engine_runs_both_on_the_same_config(capsys):
    assert bench_main(["loop", "--set", "model.hidden=[16,12]", "--set", "data.frame=32", "--set", "data.batch=4",
                       "--set", "train.eval_batches=1", "--steps", "60", "--rounds", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    engine = [float(v) for v in next(x for x in out if x.startswith("engine alone")).split()[3:]]
    loop = [float(v) for v in next(x for x in out if x.startswith("training loop")).split()[3:]]
    assert len(engine) == len(loop) == 2 and min(engine + loop) > 0
    ratio = float(next(x for x in out if x.startswith("loop / engine")).split()[3])
    assert ratio == pytest.approx(max(loop) / max(engine), rel=1e-2)


def test_loop_bad_arguments_are_one_line(capsys):
    with pytest.raises(SystemExit) as exc:
        bench_main(["loop", "--steps", "0"])
    assert exc.value.code == 2 and capsys.readouterr().err.strip().splitlines()[-1].startswith("ptncn bench loop: error:")


def test_the_links_floor_is_a_real_round_trip():
    """Two processes bounce a frame over zmq CURVE: a positive time, well under a second each."""
    from ptncn_dist.studies.link_floor import curve_round_trip_us
    us = curve_round_trip_us(n=200, rounds=2, warm=10)
    assert 0 < us < 1e5


def test_ptb_profile_names_the_calls_of_a_step(capsys):
    assert bench_main(["ptb", "--profile", "--steps", "50", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "cProfile of 50 steps at the authors' PTB settings, nag" in out
    assert "gemm_tn" in out and "axpy" in out  # the low-rank updates and Nesterov's passes


def test_update_passes_times_every_variant(capsys):
    """The tool behind docs/performance.md's update table runs each variant and prints its time."""
    from experiments.tools import update_passes
    assert update_passes.main(["--updates", "2", "--threads", "1"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[1:]]
    assert [" ".join(r[:2]) for r in rows] == [
        "nag project", "nag fused_blocks", "nag gemm_alone", "adam project", "adam whole_gemm", "adam whole_prange",
        "adam whole_2py"]
    assert all(float(r[-1]) > 0 for r in rows)
