"""What a baseline learner is built from: the `[baseline]` config section (BaselineSection) and,
on top of it, the keys the learner takes from `[model]` and `[optim]` (BaselineConfig).

Each setting is defined and checked once, here, so a config file's `[baseline]` section reaches
the learner unchanged and a bad value fails when the config loads, naming the key.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ..errors import ConfigError
from ..core.optim import OptimConfig
from . import elman

NEW_KEYS = ("embed",)


@dataclass
class BaselineSection:
    """The `[baseline]` section: settings only the baselines read (model.type other than 'ptncn');
    esn_* only matter to the ESN, rtrl_* only to RTRL. Output, t_prime and the optimizer come from
    `[model]` and `[optim]`. Keys added after the config hash existed (`NEW_KEYS`) enter the hash
    only when set.
    """

    hidden: int = 256
    """The hidden width of the baseline's recurrent network (Elman, reservoir or LSTM)."""
    truncation: int = 5
    """The window k of truncated BPTT (model.type tbptt) and of the LSTM; 0 is full BPTT, which
    every other kind runs with."""
    weight_sd: float = 0.1
    """Standard deviation of the baseline's initial weights."""
    clip_norm: float = 0.0
    """Gradient norm clip of the gradient learners and the LSTM; 0 is no clipping."""
    esn_spectral_radius: float = 0.9
    """ESN: the spectral radius the reservoir's recurrent weights are scaled to."""
    esn_density: float = 0.1
    """ESN: the fraction of non-zero reservoir weights, in (0, 1]."""
    esn_input_scale: float = 1.0
    """ESN: the scale of the input weights."""
    esn_leak: float = 1.0
    """ESN: the leak rate of the reservoir units, in (0, 1]; 1 is no leak."""
    esn_ridge: float = 1e-4
    """ESN: the ridge penalty of the readout (frames)."""
    esn_online: bool = False
    """ESN: a recursive least squares readout instead of the ridge closed form (frames)."""
    rtrl_online: bool = True
    """RTRL: update every step (true) or once per sequence with the exact BPTT gradient."""
    rtrl_force: bool = False
    """RTRL: allow RTRL above `rtrl.RTRL_MAX_HIDDEN` hidden units (its cost grows as H^4)."""
    embed: int = 64
    """LSTM: the token embedding width (model.type lstm; frames need none)."""

    def __post_init__(self):
        _check(self.hidden >= 1, "hidden", self.hidden, "an integer >= 1")
        _check(self.truncation >= 0, "truncation", self.truncation, "0 (full BPTT) or an integer >= 1")
        _check(self.weight_sd > 0, "weight_sd", self.weight_sd, "> 0")
        _check(self.clip_norm >= 0, "clip_norm", self.clip_norm, ">= 0 (0 = no clipping)")
        _check(self.esn_spectral_radius > 0, "esn_spectral_radius", self.esn_spectral_radius, "> 0")
        _check(0 < self.esn_density <= 1, "esn_density", self.esn_density, "in (0, 1]")
        _check(self.esn_input_scale >= 0, "esn_input_scale", self.esn_input_scale, ">= 0")
        _check(0 < self.esn_leak <= 1, "esn_leak", self.esn_leak, "in (0, 1]")
        _check(self.esn_ridge > 0, "esn_ridge", self.esn_ridge, "> 0")
        _check(self.embed >= 1, "embed", self.embed, "an integer >= 1")

    def numbers(self) -> dict:
        """The section for the config hash: `NEW_KEYS` only when set, so that a config without
        them keeps the hash it had before they existed."""
        d = dataclasses.asdict(self)
        for f in dataclasses.fields(BaselineSection):
            if f.name in NEW_KEYS and d[f.name] == f.default:
                del d[f.name]
        return d


@dataclass
class BaselineConfig(BaselineSection):
    """A learner's whole config: the `[baseline]` section plus model.output, model.t_prime and
    the `[optim]` section (which the ESN uses for its token readout only)."""

    output: str = "sigmoid"
    t_prime: int = 1
    optim: OptimConfig = field(default_factory=OptimConfig)

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.optim, dict):
            self.optim = OptimConfig(**self.optim)
        if self.output not in elman.OUTPUTS:
            raise ConfigError(f"model.output must be one of {list(elman.OUTPUTS)} for a baseline, "
                              f"not {self.output!r}")
        if self.t_prime < 0:
            raise ConfigError(f"model.t_prime must be >= 0, not {self.t_prime!r}")


def _check(ok: bool, key: str, value, valid: str) -> None:
    if not ok:
        raise ConfigError(f"baseline.{key} must be {valid}, not {value!r}")
