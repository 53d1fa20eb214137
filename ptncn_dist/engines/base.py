"""What every engine offers the trainer: run a segment of a batch of sequences, and hand over
its state (weights, optimizer slots, carried state) as host arrays for checkpoints."""
from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from .. import checkpoint
from ..checkpoint.manifest import MANIFEST
from ..core.finite import check_state, nonfinite_names
from ..core.weights import StateError


def state_arrays(state: dict):
    """(name, array) of a layer state's weights, optimizer slots and carried state."""
    yield from state["params"].items()
    for name, sl in (state.get("slots") or {}).items():
        yield from ((f"{name}.{k}", v) for k, v in sl.items())
    yield from ((f"carry.{k}", v) for k, v in (state.get("carry") or {}).items() if v is not None)


def shard_name(layer: int) -> str:
    return f"layer-{layer}.msgpack"


class Engine(ABC):
    """A P-TNCN stack that can run steps. Subclasses differ in placement and transport only."""

    name = "engine"
    whole_sequences = False  # True: it runs a sequence only from its start to its end (baselines)
    traces = False  # True: it records a phase trace of the first engine.trace_steps steps

    @abstractmethod
    def run_segment(self, x: np.ndarray, mask: np.ndarray, t0: int, t1: int, *, learn: bool,
                    t_prime: int, keep_xhat: bool = False, by_t: bool = False) -> tuple[dict, list]:
        """Steps t0..t1-1 of a (T, B, ...) batch (t0 = 0 resets the carried state). Learns at
        t >= t_prime when `learn`; returns the loss sums of steps t >= t_prime (with `by_t`, also
        per position under "by_t", via metrics.accumulate) and, if asked, each step's forecast
        xhat as host arrays."""

    @abstractmethod
    def layer_states(self) -> list[dict]:
        """Per layer: {'params': {name: array}, 'slots': {...}, 'carry': {...}} as host arrays."""

    @abstractmethod
    def load_layer_states(self, states: list[dict]) -> None:
        """Put every layer back into a state `layer_states` returned."""

    @abstractmethod
    def set_params(self, per_layer: list[dict]) -> None:
        """Give every layer new weights, optimizer slots reset (e.g. a golden run's init)."""

    def save_shards(self, ckpt_dir: str) -> list[dict]:
        """Write one shard per layer into `ckpt_dir`; returns the manifest records."""
        states = self.layer_states()
        for l, st in enumerate(states, start=1):
            check_state(np, l, state_arrays(st))
        return [checkpoint.write_shard(ckpt_dir, shard_name(l), st) for l, st in enumerate(states, start=1)]

    def load_shards(self, ckpt_dir: str, manifest: dict) -> None:
        """Restore every layer from the shards a manifest lists, each verified as it is read and
        as its layer takes it (CheckpointError names a bad one and what is wrong in it)."""
        records = manifest["shards"]
        states = [checkpoint.read_shard(ckpt_dir, rec) for rec in records]
        try:
            self.load_layer_states(states)
        except StateError as exc:
            name = records[exc.layer - 1]["name"] if 0 < exc.layer <= len(records) else MANIFEST
            raise checkpoint.damaged_shard(ckpt_dir, name, exc) from None

    def nonfinite_layers(self) -> dict:
        """{layer: [names of arrays holding NaN or Inf]} for every layer that has any."""
        found = {l: nonfinite_names(np, state_arrays(st)) for l, st in enumerate(self.layer_states(), start=1)}
        return {l: names for l, names in found.items() if names}

    def weights(self) -> dict[str, np.ndarray]:
        return {f"{k}{l}": v for l, s in enumerate(self.layer_states(), start=1)
                for k, v in s["params"].items()}

    def stats(self) -> dict:
        """Engine counters for metrics (bytes moved, placement, ...)."""
        return {}

    def write_trace(self, path: str) -> int:
        """Write the recorded phase trace as a Chrome trace file; returns the number of events."""
        raise NotImplementedError(f"the {self.name} engine records no trace")

    def failure_types(self) -> tuple:
        """Exceptions that mean a worker was lost (recoverable by `rebuild` and a rollback)."""
        return ()

    def rebuild(self) -> None:
        """Replace lost workers; only engines with workers to lose implement it."""
        raise NotImplementedError

    def close(self) -> None:
        """Release workers and devices."""
