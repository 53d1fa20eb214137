"""Configs: TOML in and out, --set overrides, errors that name the key and list valid ones, and
every model hyper-parameter reaching every layer."""
import dataclasses
import typing

import pytest

from ptncn_dist.config import ModelConfig, from_dict, load, parse_override, to_toml, valid_keys
from ptncn_dist.errors import ConfigError
from ptncn_dist.layer_spec import LayerSpec
from ptncn_dist.model import specs_from_config

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
    ("baseline.esn_leak=0", "baseline.esn_leak"), ('baseline.hidden="wide"', "baseline.hidden")])
def test_errors_are_one_line_naming_the_key(override, key):
    with pytest.raises(ConfigError) as err:
        load(None, [override])
    assert key in str(err.value) and "\n" not in str(err.value)
