"""The paper's baselines (BPTT, truncated BPTT, RTRL, UORO, ESN) and an LSTM behind the engine
interface, so that `ptncn train` runs them on the same data, metrics and checkpoints as P-TNCN.
They learn from whole sequences (the trainer never splits one) and keep one checkpoint shard."""
from __future__ import annotations

import dataclasses

import numpy as np

from .. import checkpoint, metrics
from ..core.backend import get_dtype, get_xp
from ..baselines import BaselineConfig, build_baseline
from ..errors import ConfigError
from ..core.finite import StepDiverged
from .base import Engine

SHARD = "model.msgpack"


class BaselineEngine(Engine):
    whole_sequences = True

    def __init__(self, cfg, x_dim: int, data_kind: str):
        m = cfg.model
        section = dataclasses.asdict(cfg.baseline)
        section["truncation"] = section["truncation"] if m.type in ("tbptt", "lstm") else 0
        bc = BaselineConfig(**section, output=m.output, t_prime=m.t_prime, optim=cfg.optim)
        self.name = m.type
        self.model = build_baseline(m.type, bc, x_dim, data_kind, get_xp(m.device), get_dtype(m.dtype),
                                    cfg.train.seed)
        if m.type == "lstm" and cfg.engine.blas_threads > 0:
            self.model.torch.set_num_threads(cfg.engine.blas_threads)

    def run_segment(self, x, mask, t0, t1, *, learn, t_prime, keep_xhat=False, by_t=False):
        if t0 != 0 or t1 != x.shape[0]:
            raise ConfigError(f"{self.name} learns from whole sequences; it cannot run steps {t0}..{t1} "
                              f"of a {x.shape[0]}-step sequence")
        sums = self.model.run_sequence(x, mask, learn, by_t=by_t)
        if not all(np.isfinite(v) for k, v in sums.items() if k != metrics.BY_T):
            raise StepDiverged(0)
        return sums, []

    def layer_states(self):
        return [{"params": {k: v for k, v in self.model.state_dict().items() if isinstance(v, np.ndarray)}}]

    def load_layer_states(self, states):
        raise ConfigError("baselines restore from their checkpoint shard only")

    def set_params(self, per_layer):
        raise ConfigError("baselines have no MODEL.md weights to set")

    def save_shards(self, ckpt_dir):
        return [checkpoint.write_shard(ckpt_dir, SHARD, self.model.state_dict())]

    def load_shards(self, ckpt_dir, manifest):
        self.model.load_state_dict(checkpoint.read_shard(ckpt_dir, manifest["shards"][0]))

    def weights(self):
        return self.layer_states()[0]["params"]

    def nonfinite_layers(self):
        bad = [k for k, v in self.weights().items() if v.dtype.kind == "f" and not np.all(np.isfinite(v))]
        return {1: bad} if bad else {}

    def stats(self):
        return {"num_params": self.model.num_params()}
