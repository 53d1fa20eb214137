"""Search spaces for `ptncn tune`: a TOML file read into a validated, Tune-free description.

A space file has three parts, each optional:

    [search]                       # how the study runs
    num_samples = 1                # samples of [space] per variant
    max_concurrent = 2             # trials at once (each takes cpus_per_trial CPUs)
    cpus_per_trial = 1
    time_budget_s = 0              # 0: no limit for the whole study
    [scheduler]                    # ASHA early stopping on the test loss
    grace_period = 2000            # steps before a trial can be stopped
    reduction_factor = 3
    [space]                        # config keys sampled for every trial
    "optim.lr" = { loguniform = [0.01, 0.2] }
    "model.beta" = { grid = [0.05, 0.1, 0.2] }
    "optim.name" = { choice = ["nag", "adam"] }
    "train.steps" = 12000          # a plain value: fixed
    [[variant]]                    # one-at-a-time changes from the base config (grid over them)
    name = "adam"
    set = { "optim.name" = "adam", "optim.lr" = 0.001 }

Keys are `section.key` names of the run config (`ptncn train --set` takes the same), checked
against the config before any trial starts.
"""
from __future__ import annotations

import tomllib
from dataclasses import dataclass, field

from ..config import from_dict, load, valid_keys
from ..errors import ConfigError

DISTRIBUTIONS = ("grid", "choice", "uniform", "loguniform", "randint")


@dataclass
class Dist:
    """One sampled key: `kind` in DISTRIBUTIONS, `args` its values or bounds."""

    kind: str
    args: list


@dataclass
class Variant:
    name: str
    overrides: dict = field(default_factory=dict)


@dataclass
class SearchSpace:
    num_samples: int = 1
    max_concurrent: int = 2
    cpus_per_trial: float = 1.0
    time_budget_s: float = 0.0
    grace_period: int = 2000
    reduction_factor: float = 3.0
    fixed: dict = field(default_factory=dict)
    sampled: dict = field(default_factory=dict)
    variants: list = field(default_factory=list)


_SEARCH_KEYS = {"num_samples": int, "max_concurrent": int, "cpus_per_trial": float, "time_budget_s": float}
_SCHED_KEYS = {"grace_period": int, "reduction_factor": float}


def _section(raw: dict, name: str, keys: dict, path: str) -> dict:
    values = raw.get(name, {})
    out = {}
    for key, value in values.items():
        if key not in keys:
            raise ConfigError(f"{path}: unknown key [{name}].{key}; valid: {', '.join(keys)}")
        typ = keys[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (typ is int and not isinstance(value, int)):
            raise ConfigError(f"{path}: [{name}].{key} must be a number ({typ.__name__}), not {value!r}")
        out[key] = typ(value)
    return out


def _dist(key: str, value, path: str):
    """A plain value is fixed; a one-key table {kind = args} is sampled."""
    if not isinstance(value, dict):
        return value
    if len(value) != 1 or next(iter(value)) not in DISTRIBUTIONS:
        raise ConfigError(f"{path}: [space] {key} must be a value or one of "
                          f"{{{' | '.join(DISTRIBUTIONS)} = [...]}}, not {value!r}")
    kind, args = next(iter(value.items()))
    if not isinstance(args, list) or not args:
        raise ConfigError(f"{path}: [space] {key}: {kind} takes a non-empty list, not {args!r}")
    if kind in ("uniform", "loguniform", "randint") and (len(args) != 2 or not args[0] < args[1]):
        raise ConfigError(f"{path}: [space] {key}: {kind} takes [low, high] with low < high, not {args!r}")
    if kind == "loguniform" and args[0] <= 0:
        raise ConfigError(f"{path}: [space] {key}: loguniform needs low > 0, not {args[0]!r}")
    return Dist(kind, list(args))


def _check_key(key: str, path: str, where: str) -> None:
    if key not in valid_keys():
        raise ConfigError(f"{path}: {where} names unknown config key {key!r}; valid keys: {', '.join(valid_keys())}")


def read_space(path: str) -> SearchSpace:
    """Read and validate a space file (every key checked against the run config)."""
    try:
        with open(path, "rb") as fh:
            raw = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"space file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    unknown = set(raw) - {"search", "scheduler", "space", "variant"}
    if unknown:
        raise ConfigError(f"{path}: unknown section(s) {sorted(unknown)}; valid: search, scheduler, space, variant")
    space = SearchSpace(**_section(raw, "search", _SEARCH_KEYS, path), **_section(raw, "scheduler", _SCHED_KEYS, path))
    for key, value in raw.get("space", {}).items():
        _check_key(key, path, "[space]")
        d = _dist(key, value, path)
        (space.sampled if isinstance(d, Dist) else space.fixed)[key] = d
    names = set()
    for i, v in enumerate(raw.get("variant", [])):
        name, sets = v.get("name"), v.get("set", {})
        if not isinstance(name, str) or not name or name in names:
            raise ConfigError(f"{path}: [[variant]] {i + 1} needs a unique non-empty name, not {name!r}")
        if set(v) - {"name", "set"} or not isinstance(sets, dict):
            raise ConfigError(f"{path}: [[variant]] {name!r} takes only name and set = {{...}}")
        for key in sets:
            _check_key(key, path, f"variant {name!r}")
        names.add(name)
        space.variants.append(Variant(name, dict(sets)))
    if space.num_samples < 1 or space.max_concurrent < 1 or space.cpus_per_trial <= 0:
        raise ConfigError(f"{path}: [search] num_samples, max_concurrent and cpus_per_trial must be positive")
    return space


def nest(flat: dict) -> dict:
    """{'optim.lr': 0.1} -> {'optim': {'lr': 0.1}}."""
    out: dict = {}
    for key, value in flat.items():
        section, name = key.split(".", 1)
        out.setdefault(section, {})[name] = value
    return out


def trial_config(base_path: str | None, overrides: dict):
    """The run config of one trial: the base file, then `section.key` overrides (validated)."""
    base = load(base_path).to_dict()
    for section, values in nest(overrides).items():
        base.setdefault(section, {}).update(values)
    return from_dict(base)
