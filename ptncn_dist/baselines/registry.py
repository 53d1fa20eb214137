"""The trainer-facing interface of the baselines and the factory that builds any of them."""
from __future__ import annotations

from typing import Protocol

import numpy as np

from ..errors import ConfigError
from .bptt import BPTT
from .config import BaselineConfig
from .esn import ESN
from .lstm import LSTM
from .rtrl import RTRL
from .uoro import UORO

KINDS = ("bptt", "tbptt", "rtrl", "uoro", "esn", "lstm")
DATA_KINDS = ("frames", "tokens")
DATA_KIND_ALIASES = {"video": "frames", "text": "tokens"}


class Baseline(Protocol):
    """What the trainer drives; implemented by BPTT, RTRL, UORO, ESN and LSTM."""

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
        raise ConfigError(f"model.output must be one of {valid} for {data_kind}, not {cfg.output!r}")
    if kind == "bptt" and cfg.truncation != 0:
        raise ConfigError(f"baseline.truncation must be 0 for kind 'bptt' (full BPTT), not "
                          f"{cfg.truncation!r}; use kind 'tbptt' for truncated BPTT")
    if kind == "tbptt" and cfg.truncation < 1:
        raise ConfigError(f"baseline.truncation must be an integer >= 1 for kind 'tbptt', "
                          f"not {cfg.truncation!r}")
    init_seq, noise_seq = np.random.SeedSequence(seed).spawn(2)
    rng = np.random.default_rng(init_seq)
    if kind == "lstm":
        return LSTM(cfg, x_dim, data_kind, xp, dtype, rng)
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
