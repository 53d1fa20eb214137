"""`ptncn tune`: space files are validated, and a real Ray Tune study trains each variant as the
ordinary trainer would (same numbers), keeps diverged trials as results and writes its tables."""
import csv
import json

import pytest

from ptncn_dist.errors import ConfigError
from ptncn_dist.tune.space import Dist, nest, read_space, trial_config

TINY = """
[search]
max_concurrent = 2
cpus_per_trial = 1
[scheduler]
grace_period = 40
reduction_factor = 2
[space]
"train.steps" = 80
"train.log_every" = 20
"train.eval_every" = 40
"train.eval_batches" = 1
"model.hidden" = [16, 16]
"data.frame" = 32
"data.sprites" = 1
"data.seq_len" = 10
"data.batch" = 4
"data.eval_batch" = 4
[[variant]]
name = "base"
[[variant]]
name = "blows_up"
set = { "optim.lr" = 1e6, "model.update_radius" = 0.0, "model.activation" = "identity" }
"""


def _write(tmp_path, text, name="space.toml"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_space_file_is_read_and_checked(tmp_path):
    s = read_space(_write(tmp_path, TINY))
    assert [v.name for v in s.variants] == ["base", "blows_up"]
    assert s.fixed["model.hidden"] == [16, 16] and s.grace_period == 40
    s = read_space(_write(tmp_path, '[space]\n"optim.lr" = { loguniform = [0.01, 0.1] }\n'
                                    '"model.beta" = { grid = [0.1, 0.2] }\n'))
    assert s.sampled["optim.lr"] == Dist("loguniform", [0.01, 0.1])
    assert nest({"optim.lr": 1, "model.beta": 2}) == {"optim": {"lr": 1}, "model": {"beta": 2}}
    cfg = trial_config(None, {"optim.lr": 0.5, "model.hidden": [8]})
    assert cfg.optim.lr == 0.5 and cfg.model.hidden == [8]


@pytest.mark.parametrize("text, words", [
    ('[space]\n"optim.lrr" = 0.1\n', "unknown config key 'optim.lrr'"),
    ('[space]\n"optim.lr" = { normal = [0, 1] }\n', "must be a value or one of"),
    ('[space]\n"optim.lr" = { loguniform = [0.0, 1.0] }\n', "loguniform needs low > 0"),
    ('[space]\n"optim.lr" = { uniform = [1.0, 0.5] }\n', "low < high"),
    ('[search]\nworkers = 2\n', "unknown key [search].workers"),
    ('[sweep]\n', "unknown section"),
    ('[[variant]]\nname = "a"\n[[variant]]\nname = "a"\n', "unique non-empty name"),
    ('[[variant]]\nname = "a"\nset = { "model.nope" = 1 }\n', "unknown config key 'model.nope'"),
])
def test_bad_space_files_name_the_problem(tmp_path, text, words):
    with pytest.raises(ConfigError) as err:
        read_space(_write(tmp_path, text))
    assert words in str(err.value)


def test_bad_override_type_fails_before_any_trial(tmp_path):
    with pytest.raises(ConfigError, match="optim.lr must be of type float"):
        trial_config(None, {"optim.lr": "fast"})


@pytest.mark.ray
@pytest.mark.slow
def test_tiny_study_runs_real_trials(tmp_path):
    pytest.importorskip("ray.tune")
    from ptncn_dist.trainer import train
    from ptncn_dist.tune import study
    out = tmp_path / "out"
    rows = study(None, _write(tmp_path, TINY), str(out), str(tmp_path / "storage"), "tiny", num_cpus=2)
    by_name = {r["variant"]: r for r in rows}
    assert set(by_name) == {"base", "blows_up"}
    assert by_name["blows_up"]["diverged"] == 1 and by_name["base"]["diverged"] == 0
    assert rows[0]["variant"] == "base"
    with open(out / "trials.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    assert len(table) == 2 and table[0]["variant"] == "base"
    curves = [json.loads(line) for line in open(out / "curves.jsonl")]
    base_curve = [c for c in curves if c["variant"] == "base"]
    assert [c["step"] for c in base_curve] == [0, 40, 80]
    # the trial trained exactly as the ordinary trainer does with the same settings
    space = read_space(_write(tmp_path, TINY))
    cfg = trial_config(None, {**space.fixed, "engine.blas_threads": 1, "train.progress": False,
                              "train.plots": False})
    direct = train(cfg, None, log=lambda *_: None)
    assert base_curve[-1]["test_bce"] == pytest.approx(direct.final_test["test_bce"], rel=1e-6)
    assert (out / "curves.png").stat().st_size > 0
