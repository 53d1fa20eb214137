"""Configs: TOML in and out, --set overrides, errors that name the key and list valid ones, and
every model hyper-parameter reaching every layer."""
import dataclasses
import importlib
import math
import os
import re
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from ptncn_dist.config import ModelConfig, from_dict, load, parse_override, to_toml, valid_keys
from ptncn_dist.errors import ConfigError
from ptncn_dist.core.spec import LayerSpec
from ptncn_dist.core.model import specs_from_config

MODEL_WIDE = {"type", "hidden", "t_prime", "weight_sd", "error_weight_sd", "dtype", "device"}
OTHER_NAME = {"activation": "sign", "output": "softmax"}


def test_defaults_round_trip_through_toml(tmp_path):
    cfg = load(None, ["model.hidden=[32, 16]", "optim.lr=0.5", 'data.source="ptb_char"'])
    path = tmp_path / "c.toml"
    path.write_text(to_toml(cfg))
    assert load(str(path)) == cfg
    assert cfg.model.hidden == [32, 16] and cfg.optim.lr == 0.5


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ConfigError) as err:
        load(None, ["model.hiden=[3]"])
    assert "model.hiden" in str(err.value) and "model.hidden" in str(err.value)
    assert all(k in str(err.value) for k in ("optim.lr", "train.steps", "engine.placement"))


def test_unknown_section():
    with pytest.raises(ConfigError, match=r"unknown config section \[modle\]"):
        from_dict({"modle": {}})


@pytest.mark.parametrize("override, key", [
    ('model.hidden="wide"', "model.hidden"),
    ("train.steps=1.5", "train.steps"),
    ('optim.lr="fast"', "optim.lr"),
    ("train.plots=1", "train.plots"),
    ("model.hidden=[3, 2.5]", "model.hidden"),
])
def test_wrong_types_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load(None, [override])


@pytest.mark.parametrize("override, text", [
    ('model.activation="swish"', "model.activation"),
    ('optim.name="rmsprop"', "optim.name"),
    ('engine.placement="random"', "engine.placement"),
    ("train.steps=0", "train.steps"),
    ('data.source="cifar"', "data.source"),
    ("optim.lr=-1", "optim.lr"),
])
def test_bad_values(override, text):
    with pytest.raises(ConfigError, match=text.replace(".", r"\.")):
        load(None, [override])


def test_override_syntax():
    assert parse_override("model.hidden=[1,2]") == ("model", "hidden", [1, 2])
    assert parse_override("data.path=../shared/data/mnist") == ("data", "path", "../shared/data/mnist")
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_override("steps=3")


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load(str(tmp_path / "nope.toml"))
    bad = tmp_path / "bad.toml"
    bad.write_text("[model\nhidden = [")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(str(bad))


def test_presets_load():
    from pathlib import Path
    for path in sorted((Path(__file__).resolve().parents[1] / "experiments" / "configs").glob("*.toml")):
        load(str(path))
    assert "engine.address" in valid_keys()


def test_hash_ignores_logging_but_not_math():
    a = load(None, [])
    assert a.hash() == load(None, ["train.log_every=7", "train.progress=false"]).hash()
    assert a.hash() != load(None, ["optim.lr=0.01"]).hash()
    assert a.hash() != load(None, ["train.seed=9"]).hash()


def other_value(f: dataclasses.Field):
    """A valid value other than the field's default."""
    typ = typing.get_type_hints(ModelConfig)[f.name]
    if typ is bool:
        return not f.default
    if typ in (int, float):
        return f.default + typ(2 if typ is int else 0.25)
    return OTHER_NAME[f.name]


def test_every_model_hyper_parameter_reaches_every_layer():
    """A [model] key is either about the whole stack (MODEL_WIDE) or a LayerSpec field every layer
    gets from the config: a new key that reaches no layer fails here."""
    spec_fields = {f.name for f in dataclasses.fields(LayerSpec)}
    hyper = [f for f in dataclasses.fields(ModelConfig) if f.name not in MODEL_WIDE]
    assert hyper and all(f.name in spec_fields for f in hyper)
    values = {f.name: other_value(f) for f in hyper}
    cfg = from_dict({"model": {"hidden": [6, 5, 4], **values}})
    for spec in specs_from_config(cfg.model, 9, sparse_input=False):
        assert {k: getattr(spec, k) for k in values} == values


@pytest.mark.parametrize("override, key", [
    ("model.alpha=[1]", "model.alpha"), ('model.output="relu"', "model.output"),
    ("model.inference_steps=0", "model.inference_steps"), ("model.row_norm_bound=nan", "model.row_norm_bound"),
    ("baseline.esn_leak=0", "baseline.esn_leak"), ('baseline.hidden="wide"', "baseline.hidden"),
    ('train.checkpoint_dir="foo://bucket/run"', "train.checkpoint_dir")])
def test_errors_are_one_line_naming_the_key(override, key):
    with pytest.raises(ConfigError) as err:
        load(None, [override])
    assert key in str(err.value) and "\n" not in str(err.value)


# -- numbers checked before anything is allocated -------------------------------------------------
@pytest.mark.parametrize("override, key", [
    ("model.alpha=nan", "model.alpha"), ("model.beta=-0.5", "model.beta"), ("model.weight_sd=inf", "model.weight_sd"),
    ("engine.cpus_per_layer=-1", "engine.cpus_per_layer"), ("engine.gpus_per_layer=nan", "engine.gpus_per_layer"),
    ("engine.segment_timeout_s=0", "engine.segment_timeout_s"), ("optim.beta2=1.0", "optim.beta2"),
    ("optim.eps=inf", "optim.eps"), ("train.checkpoint_minutes=-1", "train.checkpoint_minutes"),
    ("train.seed=-1", "train.seed"), ("baseline.esn_ridge=inf", "baseline.esn_ridge")])
def test_non_finite_or_negative_numbers_name_the_key(override, key):
    with pytest.raises(ConfigError) as err:
        load(None, [override])
    assert str(err.value).startswith(key + " must be") and "\n" not in str(err.value)


def test_unknown_key_suggests_the_nearest():
    with pytest.raises(ConfigError, match=r"unknown config key model\.hiden; did you mean model\.hidden\?"):
        load(None, ["model.hiden=[3]"])
    with pytest.raises(ConfigError, match=r"did you mean engine\.cpus_per_layer\?"):
        load(None, ["engine.cpu_per_layer=2"])
    with pytest.raises(ConfigError, match=r"did you mean model\?"):
        from_dict({"modle": {}})


def test_memory_estimate_from_layer_shapes():
    from ptncn_dist.config_checks import check_memory
    cfg = load(None, ["model.hidden=[10, 20]", 'optim.name="adam"', "data.frame=4", "data.batch=2",
                      "data.eval_batch=3", "data.seq_len=5"])
    est = check_memory(cfg, 16, "frames", available=1 << 40)
    layer1 = (3 * 16 * 10 + 10 * 10 + 20 * 10) * 3 * 4  # M, W, E, V, U; weight + adam's m and v; float32
    layer2 = (3 * 10 * 20 + 20 * 20) * 3 * 4
    assert est["layers"] == [layer1, layer2] and est["data"] == 5 * (2 + 3) * 16 * 4
    with pytest.raises(ConfigError, match=r"model\.hidden=\[10, 20\] needs about 0\.000 GiB .*this machine has"):
        check_memory(cfg, 16, "frames", available=layer1 + layer2 - 1)
    remote = dataclasses.replace(cfg, engine=dataclasses.replace(cfg.engine, name="ray", address="10.0.0.1:6379"))
    check_memory(remote, 16, "frames", available=max(layer1, layer2) + est["data"])  # one layer per node


def _no_engine(*_a, **_k):
    raise AssertionError("the engine was built (weights allocated) before the memory check")


@pytest.mark.parametrize("override, text", [
    ("model.hidden=[10000000]", r"model\.hidden=\[10000000\] needs about [\d,.]+ GiB for weights and optimizer "
                                r"slots; this machine has [\d,.]+ GiB"),
    ("data.frame=100000", r"data\.frame=100000 .* needs about [\d,.]+ GiB for weights and optimizer slots; "
                          r"this machine has [\d,.]+ GiB"),
    ("data.batch=100000000", r"data\.seq_len=20, data\.batch=100000000, .* needs about [\d,.]+ GiB for the data batch arrays")])
def test_a_run_too_big_for_the_machine_stops_with_one_line(override, text, monkeypatch, capsys, tmp_path):
    from ptncn_dist import cli
    monkeypatch.setattr(importlib.import_module("ptncn_dist.trainer"), "build_engine", _no_engine)
    rc = cli.main(["train", "--steps", "1", "--set", override, "--run-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and re.match(r"error: " + text, err), err


def test_a_baseline_that_cannot_hold_its_working_arrays_stops_before_it_allocates(monkeypatch, capsys, tmp_path):
    """RTRL keeps dh/dtheta for every batch row: 16 x 1024 x (4096 x 1024 + ...) floats, far more than
    its 21 MB of weights. The run stops with one line naming what needs the memory."""
    from ptncn_dist import cli
    monkeypatch.setattr(importlib.import_module("ptncn_dist.trainer"), "build_engine", _no_engine)
    sets = ['model.type="rtrl"', "baseline.hidden=1024", "baseline.rtrl_force=true"]
    rc = cli.main(["train", "--steps", "1", "--run-dir", str(tmp_path / "run")] + [a for s in sets for a in ("--set", s)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err, err
    assert re.match(r"error: model\.type='rtrl' with baseline\.hidden=1024 .* needs about [\d,.]+ GiB: [\d,.]+ GiB "
                    r"for its sensitivities, batch x hidden x recurrent weights while it learns a batch", err), err


def test_memory_counts_what_each_baseline_holds_while_it_learns():
    """work_bytes, by hand for each kind: the (T, B, D) predictions and their scores, plus BPTT's
    window of states, RTRL's B x H x P sensitivities twice, UORO's B x P twice."""
    from ptncn_dist.config_checks import check_memory, work_bytes
    base = ["data.frame=4", "data.batch=3", "data.eval_batch=2", "data.seq_len=7", "baseline.hidden=5"]
    t, b, d, h = 7, 3, 16, 5
    p = d * h + h * h + h
    want = {"bptt": 3 * t * b * h, "tbptt": 3 * 2 * b * h, "rtrl": 2 * b * h * p, "uoro": 2 * b * p,
            "esn": t * b * (h + 1), "lstm": 12 * 2 * b * h}
    for kind, extra in want.items():
        sets = base + [f'model.type="{kind}"', f"baseline.truncation={0 if kind == 'bptt' else 2}"]
        cfg = load(None, sets)
        assert work_bytes(cfg, d, "frames", t) == (2 * t * b * d + extra) * 4, kind
        est = check_memory(cfg, d, "frames", available=1 << 40, steps=t)
        assert est["work"] == (2 * t * b * d + extra) * 4 and est["steps"] == t
    assert work_bytes(load(None, base), d, "frames", t) == 0  # P-TNCN unrolls nothing
    lstm = load(None, base + ['model.type="lstm"', 'optim.name="sgd"'])
    assert check_memory(lstm, d, "frames", available=1 << 40, steps=t)["weights"] == \
        (4 * h * d + 4 * h * h + 8 * h + d * h + d) * 4  # nn.LSTM's layout, no optimizer slot


def test_memory_of_file_sequences_grows_with_the_files_length_not_data_seq_len(tmp_path):
    """An arrays source of 3,000-step sequences: the data batches are counted at 3,000 steps (or at
    data.max_len when that cuts them), not at data.seq_len's 20."""
    import numpy as np
    from ptncn_dist.config_checks import check_memory
    np.save(tmp_path / "train.npy", np.zeros((4, 3000, 6), np.float32))
    sets = ['data.source="arrays"', f'data.path="{tmp_path}"', "data.batch=2", "data.eval_batch=1",
            "model.hidden=[4]"]
    est = check_memory(load(None, sets), 6, "frames", available=1 << 40)
    assert est["steps"] == 3000 and est["data"] == 3000 * 3 * 6 * 4
    cut = check_memory(load(None, sets + ["data.max_len=100"]), 6, "frames", available=1 << 40)
    assert cut["steps"] == 100 and cut["data"] == 100 * 3 * 6 * 4
    with pytest.raises(ConfigError, match=r"data\.batch=2, data\.eval_batch=1 \(data\.max_len=0, sequences of up "
                                          r"to 3,000 steps of 6 values\) needs about .* for the data batch arrays"):
        check_memory(load(None, sets), 6, "frames", available=3000 * 3 * 6 * 4 - 1)


# -- what `ptncn bench` and `ptncn chaos` do with good and bad arguments ---------------------------
def _figures(out: str) -> dict[str, dict[str, float]]:
    """`ptncn bench ptb`'s figure lines, per optimizer: {optimizer: {name: value}}."""
    figures, current = {}, None
    for line in out.splitlines():
        if line and not line.startswith(" ") and " " not in line.strip():
            current = figures.setdefault(line.strip(), {})
        elif line.startswith("  ") and current is not None:
            name, value = line.split()
            current[name] = float(value)
    return figures


def test_bench_ptb_runs_a_tiny_measurement_and_prints_its_figures(capsys):
    """`ptncn bench ptb` at the authors' PTB sizes, one short round of nag and sgd: every figure
    it promises, positive and consistent with the others (tokens are batch 50 x steps, GFLOP/s
    are the step's GFLOP x steps/s, the step's GFLOP those of its matrix products), and the
    ratio line equal to the two step times' ratio."""
    from ptncn_dist import cli
    from ptncn_dist.studies.bench import ptb_gemm_shapes
    from ptncn_dist.studies.cost_model import flops
    assert cli.main(["bench", "ptb", "--steps", "10", "--rounds", "1", "--optims", "nag,sgd", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    figures = _figures(out)
    assert sorted(figures) == ["nag", "sgd"]
    gflop = flops(ptb_gemm_shapes(49, 1000, 1000, 50)) / 1e9
    for name, f in figures.items():
        assert set(f) == {"steps_per_s", "tokens_per_s", "gemm_roof_steps_per_s", "share_of_roof",
                          "median_steps_per_s", "median_share_of_roof", "gflop_per_step", "achieved_gflops",
                          "gemm_gflops"}, name
        assert all(v > 0 and math.isfinite(v) for v in f.values()), f
        assert f["gflop_per_step"] == pytest.approx(gflop, abs=1e-3)
        assert f["tokens_per_s"] == pytest.approx(50 * f["steps_per_s"], rel=1e-3)
        assert f["achieved_gflops"] == pytest.approx(f["gflop_per_step"] * f["steps_per_s"], rel=2e-3)
        assert f["share_of_roof"] == pytest.approx(f["steps_per_s"] / f["gemm_roof_steps_per_s"], rel=2e-3)
        assert f["median_steps_per_s"] == f["steps_per_s"]  # one round: its best is its median
    ratio = re.search(r"^time per step sgd / nag: ([\d.]+) \(best vs best\)", out, flags=re.M)
    assert ratio and float(ratio.group(1)) == pytest.approx(
        figures["nag"]["steps_per_s"] / figures["sgd"]["steps_per_s"], abs=2e-3)


@pytest.mark.parametrize("argv, rc, last", [
    (["bench", "ptb", "--optims", "nag,bogus"], 2,
     r"ptncn bench: error: --optims: unknown \['bogus'\]; choose from \['nag', 'momentum', 'sgd', 'adam'\]"),
    (["bench", "sideways"], 2, r"ptncn bench: error: argument what: invalid choice: 'sideways'"),
    (["chaos", "--steps", "100", "--at", "40,150"], 2,
     r"ptncn chaos: error: --at: every step must come before the run's end \(--steps 100\)"),
    (["chaos", "--at", "20,x"], 2, r"ptncn chaos: error: argument --at: not a comma-separated list of steps"),
    (["chaos", "--kill", "rack"], 2, r"ptncn chaos: error: argument --kill: invalid choice: 'rack'"),
    (["chaos", "--set", "model.hidden=[64,"], 2, r"error: .*model\.hidden"),
    (["chaos", "--set", "model.hiden=[64]"], 2, r"error: .*model\.hiden.*model\.hidden")])
def test_bench_and_chaos_refuse_bad_arguments_in_one_line(capsys, argv, rc, last):
    """A bad argument stops `ptncn bench` / `ptncn chaos` with rc 2 before anything is measured
    or any Ray starts (this test is not marked `ray`: conftest's guard would fail it), and the
    error is one line naming what is wrong (argparse puts its usage line above it)."""
    from ptncn_dist import cli
    try:
        got = cli.main(argv)
    except SystemExit as exc:
        got = exc.code
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert got == rc and captured.out == ""
    assert err and re.match(last, err[-1]), err
    usage = err[:-1]  # argparse's usage block, if any: "usage: ..." and its indented continuation
    assert not usage or (usage[0].startswith("usage: ") and all(l.startswith(" ") for l in usage[1:])), err


def test_golden_skips_name_the_directory(tmp_path):
    for golden in (tmp_path / "absent", tmp_path / "empty"):
        if golden.name == "empty":
            golden.mkdir()
        env = {**os.environ, "PTNCN_GOLDEN_DIR": str(golden)}
        tests = Path(__file__).resolve().parent
        out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                              str(tests / "test_golden.py"), "-k", "test_golden_run or not_empty"],
                             env=env, cwd=tests.parent, capture_output=True, text=True, timeout=60).stdout
        skips = [line for line in out.splitlines() if line.startswith("SKIPPED")]
        assert skips and all(str(golden) in line for line in skips), out
