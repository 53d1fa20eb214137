"""The baseline config, the trainer-facing interface and the factory that builds any baseline."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from ..errors import ConfigError
from ..optim import OptimConfig
from . import elman
from .bptt import BPTT
from .esn import ESN
from .rtrl import RTRL
from .uoro import UORO

KINDS = ("bptt", "tbptt", "rtrl", "uoro", "esn")
DATA_KINDS = ("frames", "tokens")
DATA_KIND_ALIASES = {"video": "frames", "text": "tokens"}


@dataclass
class BaselineConfig:
    """Settings of the baseline learners; esn_* only matter to the ESN, optim not to it.

    truncation: 0 = full BPTT ("bptt"); k >= 1 = truncated BPTT over windows of k ("tbptt").
    rtrl_online: update every step (True) or once per sequence with the exact BPTT gradient.
    rtrl_force: allow RTRL above rtrl.RTRL_MAX_HIDDEN hidden units.
    esn_online: recursive least squares readout instead of the ridge closed form.
    """

    hidden: int = 256
    output: str = "sigmoid"
    truncation: int = 0
    t_prime: int = 1
    weight_sd: float = 0.1
    clip_norm: float = 0.0
    esn_spectral_radius: float = 0.9
    esn_density: float = 0.1
    esn_input_scale: float = 1.0
    esn_leak: float = 1.0
    esn_ridge: float = 1e-4
    esn_online: bool = False
    rtrl_online: bool = True
    rtrl_force: bool = False
    optim: OptimConfig = field(default_factory=OptimConfig)

    def __post_init__(self):
        if isinstance(self.optim, dict):
            self.optim = OptimConfig(**self.optim)
        if self.output not in elman.OUTPUTS:
            raise ConfigError(f"baseline.output must be one of {list(elman.OUTPUTS)}, not {self.output!r}")
        _check(self.hidden >= 1, "hidden", self.hidden, "an integer >= 1")
        _check(self.truncation >= 0, "truncation", self.truncation, "0 (full BPTT) or an integer >= 1")
        _check(self.t_prime >= 0, "t_prime", self.t_prime, "an integer >= 0")
        _check(self.weight_sd > 0, "weight_sd", self.weight_sd, "> 0")
        _check(self.clip_norm >= 0, "clip_norm", self.clip_norm, ">= 0 (0 = no clipping)")
        _check(self.esn_spectral_radius > 0, "esn_spectral_radius", self.esn_spectral_radius, "> 0")
        _check(0 < self.esn_density <= 1, "esn_density", self.esn_density, "in (0, 1]")
        _check(self.esn_input_scale >= 0, "esn_input_scale", self.esn_input_scale, ">= 0")
        _check(0 < self.esn_leak <= 1, "esn_leak", self.esn_leak, "in (0, 1]")
        _check(self.esn_ridge > 0, "esn_ridge", self.esn_ridge, "> 0")


def _check(ok: bool, key: str, value, valid: str) -> None:
    if not ok:
        raise ConfigError(f"baseline.{key} must be {valid}, not {value!r}")


class Baseline(Protocol):
    """What the trainer drives; implemented by BPTT, RTRL, UORO and ESN."""

    kind: str

    def run_sequence(self, x, mask, learn: bool, by_t: bool = False) -> dict:
        """Loss sums over steps t >= t_prime (metrics.*_loss_sums keys, per position under
        "by_t" when asked); updates if learn."""

    def state_dict(self) -> dict:
        """Weights and optimizer/learning state as host NumPy arrays and plain numbers."""

    def load_state_dict(self, d) -> None:
        """Restore exactly what state_dict returned."""

    def num_params(self) -> int:
        """Number of trained parameters."""


def build_baseline(kind: str, cfg: BaselineConfig, x_dim: int, data_kind: str, xp, dtype,
                   seed: int) -> Baseline:
    """A baseline of `kind` for data of `x_dim` features (frames) or vocabulary size (tokens)."""
    if kind not in KINDS:
        raise ConfigError(f"baseline kind must be one of {list(KINDS)}, not {kind!r}")
    data_kind = DATA_KIND_ALIASES.get(data_kind, data_kind)
    if data_kind not in DATA_KINDS:
        raise ConfigError(f"data_kind must be one of {list(DATA_KINDS)}, not {data_kind!r}")
    if (data_kind == "tokens") != (cfg.output == "softmax"):
        valid = ["softmax"] if data_kind == "tokens" else ["identity", "sigmoid", "tanh"]
        raise ConfigError(f"baseline.output must be one of {valid} for {data_kind}, not {cfg.output!r}")
    if kind == "bptt" and cfg.truncation != 0:
        raise ConfigError(f"baseline.truncation must be 0 for kind 'bptt' (full BPTT), not "
                          f"{cfg.truncation!r}; use kind 'tbptt' for truncated BPTT")
    if kind == "tbptt" and cfg.truncation < 1:
        raise ConfigError(f"baseline.truncation must be an integer >= 1 for kind 'tbptt', "
                          f"not {cfg.truncation!r}")
    init_seq, noise_seq = np.random.SeedSequence(seed).spawn(2)
    rng = np.random.default_rng(init_seq)
    if kind == "esn":
        return ESN(cfg, x_dim, data_kind, xp, dtype, rng)
    if kind == "rtrl":
        return RTRL(cfg, x_dim, data_kind, xp, dtype, rng)
    if kind == "uoro":
        return UORO(cfg, x_dim, data_kind, xp, dtype, rng, np.random.default_rng(noise_seq))
    return BPTT(cfg, x_dim, data_kind, xp, dtype, rng)


def frozen_eval(baseline: Baseline, x, mask=None) -> dict:
    """Zero-shot evaluation: run the network over a sequence and return loss sums, learning nothing."""
    return baseline.run_sequence(x, mask, learn=False)
