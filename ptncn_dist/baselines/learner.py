"""The state every gradient baseline keeps (Elman weights, optimizer slots) and its plumbing.

BPTT, RTRL and UORO differ only in how they compute gradients; this class owns the weights,
turns trainer inputs into device arrays, applies clipped optimizer updates and (de)serializes
everything as host NumPy arrays and plain numbers for msgpack checkpoints.
"""
from __future__ import annotations

import numpy as np

from ..core import optim
from ..core.backend import to_numpy
from ..errors import CheckpointError, DataError
from . import elman


def prepare_inputs(x, mask, x_dim, data_kind, dtype, t_prime, xp):
    """Device arrays: x (int ids, or frames of `dtype`) and the loss weight (T, B).

    A missing mask means every row counts; the weight is the mask with steps t < t_prime zeroed.
    """
    x = xp.asarray(x)
    if data_kind == "tokens":
        if not elman.is_tokens(x) or x.ndim != 2:
            raise DataError(f"token data must be integer ids shaped (T, B), got {x.dtype} {x.shape}")
    else:
        if x.ndim != 3 or x.shape[-1] != x_dim:
            raise DataError(f"frame data must be shaped (T, B, {x_dim}), got {x.shape}")
        x = x.astype(dtype, copy=False)
    if mask is None:
        mask = xp.ones(x.shape[:2], dtype=dtype)
    mask = xp.asarray(mask).astype(dtype)
    if mask.shape != x.shape[:2]:
        raise DataError(f"mask must be shaped {x.shape[:2]} (T, B), got {mask.shape}")
    return x, elman.loss_weights(mask, t_prime)


class GradientLearner:
    """Base of the Elman learners; subclasses implement `_run(x, weight, learn) -> xhat`."""

    kind = ""

    def __init__(self, cfg, x_dim: int, data_kind: str, xp, dtype, rng):
        self.cfg = cfg
        self.x_dim = x_dim
        self.data_kind = data_kind
        self.xp = xp
        self.dtype = np.dtype(dtype)
        self.params = elman.init_params(rng, x_dim, cfg.hidden, xp, self.dtype, cfg.weight_sd)
        self.slots = {n: optim.init_slots(cfg.optim, p, xp) for n, p in self.params.items()}

    def run_sequence(self, x, mask, learn: bool, by_t: bool = False, **run) -> dict:
        """Loss sums over steps t >= t_prime (before each update; per position too with
        `by_t`); updates weights if learn. `run` goes to the learner's `_run`."""
        x, weight = prepare_inputs(x, mask, self.x_dim, self.data_kind, self.dtype,
                                   self.cfg.t_prime, self.xp)
        xhat = self._run(x, weight, learn, **run)
        return elman.loss_sums(xhat, x, weight, self.xp, by_t)

    def update(self, grads: dict) -> None:
        """Clip by global norm (if on) and apply the optimizer in place; `grads` is scratch."""
        elman.clip_global_norm(grads, self.cfg.clip_norm, self.xp)
        for name, p in self.params.items():
            optim.apply(self.cfg.optim, p, grads[name], self.slots[name], self.xp)

    def num_params(self) -> int:
        return int(sum(p.size for p in self.params.values()))

    def state_dict(self) -> dict:
        d = {f"param.{n}": to_numpy(p).copy() for n, p in self.params.items()}
        for n, slots in self.slots.items():
            for k, v in slots.items():
                if not k.startswith("_"):  # "_" slots are optimizer scratch, not state
                    d[f"slot.{n}.{k}"] = v if isinstance(v, (int, float)) else to_numpy(v).copy()
        d.update(self._extra_state())
        return d

    def load_state_dict(self, d) -> None:
        d = {k: v for k, v in d.items()  # scratch slots (older checkpoints kept "_tmp") are not state
             if not (k.startswith("slot.") and k.rsplit(".", 1)[1].startswith("_"))}
        mine = self.state_dict()
        if set(d) != set(mine):
            raise CheckpointError(f"{self.kind} state keys differ: missing {sorted(set(mine) - set(d))}, "
                                  f"unexpected {sorted(set(d) - set(mine))}")
        for key, ref in mine.items():
            if isinstance(ref, np.ndarray) and np.shape(d[key]) != ref.shape:
                raise CheckpointError(f"{self.kind} state {key!r} has shape {np.shape(d[key])}, "
                                      f"expected {ref.shape}")
        for n, p in self.params.items():
            p[...] = self.xp.asarray(d[f"param.{n}"])
        for n, slots in self.slots.items():
            for k, v in slots.items():
                if k.startswith("_"):
                    continue
                val = d[f"slot.{n}.{k}"]
                if isinstance(v, (int, float)):
                    slots[k] = type(v)(val)
                else:
                    v[...] = self.xp.asarray(val)
        self._load_extra_state(d)

    def _extra_state(self) -> dict:
        return {}

    def _load_extra_state(self, d) -> None:
        return None

    def _run(self, x, weight, learn: bool):
        raise NotImplementedError
