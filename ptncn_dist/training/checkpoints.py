"""The trainer's checkpoints: write (each layer its own shard), verify, restore, and when one is due.

A mixin of `train.Trainer`, which holds the engine, the data position and the run's namespace
(`ckpt_root`, `run_id`); kept apart so the training loop reads on its own.
"""
from __future__ import annotations

import sys
import time

import numpy as np

from .. import checkpoint
from ..engines.base import shard_name
from ..errors import CheckpointError, DivergenceError
from ..core.finite import NonFiniteState
from ..checkpoint.storage import display


def expect_for(cfg, engine, dim: int, run_id: str | None) -> checkpoint.Expect:
    """What a checkpoint of `cfg` holds: one shard per layer, in order, each at most a bound from
    the config's shapes (weights, four optimizer slots each, carried state for inputs of `dim`),
    written by run `run_id` (None: any)."""
    if engine.whole_sequences:
        from ..engines.baseline import SHARD
        names = (SHARD,)
    else:
        names = tuple(shard_name(l) for l in range(1, len(cfg.model.hidden) + 1))
    values = sum(int(np.size(v)) for st in engine.layer_states() for v in st["params"].values())
    carry = cfg.data.batch * (dim + sum(cfg.model.hidden)) * 8
    return checkpoint.Expect(names, 8 * 8 * (values + carry) + (1 << 20), run_id)


class CheckpointsMixin:
    def save_checkpoint(self) -> str | None:
        """Write this step's checkpoint (each layer its own shard), then prune older ones; a
        failed write raises CheckpointWriteError and keeps every complete checkpoint."""
        if not self.ckpt_root:
            return None
        try:
            path = checkpoint.save(self.ckpt_root, self.step, self.engine.save_shards,
                                   position={"batch": self.position, "t": self.t}, config_hash=self.config_hash,
                                   extra={"engine": self.engine.name, "data": self.streams.description,
                                          "train_s": round(self.train_s, 6)},
                                   passthrough=self.engine.failure_types() + (NonFiniteState,),
                                   run_id=self.run_id)
        except NonFiniteState as exc:
            first = str(getattr(exc, "cause", None) or exc).strip().splitlines()[0]  # a Ray task error's cause
            raise DivergenceError(f"{first} at step {self.step}: its checkpoint is not written; the "
                                  f"last good checkpoint is {self._last_good()}") from None
        checkpoint.prune(self.ckpt_root, self.cfg.train.keep_checkpoints)
        self._last_ckpt_time, self._saved_step = time.monotonic(), self.step
        return path

    def checkpoint_expect(self) -> checkpoint.Expect:
        """What a checkpoint of this run holds (`expect_for`)."""
        return expect_for(self.cfg, self.engine, self.streams.train.dim, self.run_id)

    def load_latest(self, warn):
        """The newest checkpoint that verifies, restored into the engine (see checkpoint.latest_valid)."""
        return checkpoint.latest_valid(self.ckpt_root, self.config_hash, restore=self.engine.load_shards,
                                       expect=self.checkpoint_expect(), warn=warn,
                                       passthrough=self.engine.failure_types())

    def restore_latest(self, required: bool = False) -> bool:
        loaded = self.load_latest(warn=lambda msg: None) if self.ckpt_root else None
        if loaded is None:
            if required:
                raise CheckpointError(f"no checkpoint to resume from under {display(self.ckpt_root)}")
            return False
        m = loaded.manifest
        self.step, self.position, self.t = m["step"], m["position"]["batch"], m["position"]["t"]
        spent = m.get("extra", {}).get("train_s", 0.0)
        self.train_s = float(spent) if isinstance(spent, (int, float)) else 0.0
        for msg in loaded.skipped:
            line = (f"warning: damaged checkpoint skipped: {msg}; falling back to step {self.step} "
                    f"({display(loaded.path)})")
            print(line, file=sys.stderr, flush=True)
        self.log(f"resumed from {display(loaded.path)} at step {self.step}")
        return True

    def _checkpoint_due(self, before: int) -> bool:
        """A checkpoint is due when the last segment crossed a multiple of checkpoint_every (or
        checkpoint_minutes passed)."""
        tc = self.cfg.train
        if tc.checkpoint_every and self.step // tc.checkpoint_every > before // tc.checkpoint_every:
            return True
        return tc.checkpoint_minutes > 0 and time.monotonic() - self._last_ckpt_time >= 60 * tc.checkpoint_minutes

    def _last_good(self) -> str:
        kept = checkpoint.list_checkpoints(self.ckpt_root)[-1:] if self.ckpt_root else []
        return display(kept[0]) if kept else "none (no run dir or none written yet)"

