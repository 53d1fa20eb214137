"""What every layer actor holds and offers, whatever carries its messages: its LayerCore, its
phase clock (where its time goes), message counters, its place, its state and its checkpoint
shard (written by the actor itself: a shard never travels through the driver)."""
from __future__ import annotations

import os
import time

from .. import checkpoint
from ..core.backend import get_dtype, get_xp, limit_blas_threads
from ..core.finite import check_state, nonfinite_names
from ..core.layer import LayerCore
from ..core.optim import OptimConfig
from ..core.spec import init_params
from ..core.weights import StateError
from ..core.schedule import LayerSchedule
from ..transports.base import Transport
from ..transports.mailbox import Mailbox
from .heartbeat import Beater, BeatTarget


class PhaseClock:
    """Where a layer's time goes: compute, message encode/send/decode ("comm") and waiting for
    neighbours ("wait"); totals for metrics, and per-phase events of the first `trace_steps`
    steps for a Chrome trace (chrome://tracing, Perfetto)."""

    KINDS = ("compute", "comm", "wait")

    def __init__(self, layer: int, trace_steps: int = 0):
        self.layer, self.trace_steps = layer, trace_steps
        self.totals = dict.fromkeys(self.KINDS, 0.0)
        self.events: list = []
        self.step = 0
        self._start = None

    def begin(self) -> None:
        self._start = time.perf_counter()

    def end(self, kind: str, name: str) -> None:
        now = time.perf_counter()
        dt = now - self._start
        self.totals[kind] += dt
        if self.step < self.trace_steps:
            self.events.append({"name": name, "cat": kind, "ph": "X", "pid": f"layer {self.layer}", "tid": kind,
                                "ts": (time.time() - (now - self._start)) * 1e6, "dur": dt * 1e6,
                                "args": {"step": self.step}})
        self._start = now


class LayerHost:
    """What every layer actor holds and offers, whatever carries its messages: its LayerCore,
    message counters, its place, its state and its checkpoint shard."""

    def __init__(self, spec, opt: dict, seed: int, dtype: str, device: str, weight_sd: float,
                 error_weight_sd: float, blas_threads: int, *, mode: str = "exact", trace_steps: int = 0,
                 max_batch: int = 0, heartbeat: BeatTarget | None = None):
        limit_blas_threads(blas_threads if blas_threads > 0 else None)
        self.clock_t = PhaseClock(spec.index, trace_steps)
        self._gauges = _ray_gauges()
        self.xp, self.dtype, self.device = get_xp(device), get_dtype(dtype), device
        params = init_params(spec, seed, weight_sd, error_weight_sd, self.dtype)
        self.core = LayerCore(spec, params, OptimConfig(**opt), self.xp, self.dtype)
        self.spec, self.l = spec, spec.index
        self.counters = {"sent_bytes": 0, "recv_bytes": 0, "sent_msgs": 0, "recv_msgs": 0, "steps": 0}
        self.box = Mailbox(spec, max_batch, self.dtype, mode)
        self.transport: Transport | None = None
        self.sched = LayerSchedule(self.core, self._send, mode)
        self.beater = self._start_heartbeat(heartbeat)

    def _start_heartbeat(self, target: BeatTarget | None) -> Beater | None:
        """Beats to the driver's heartbeat board from a thread of their own (none without Ray)."""
        if target is None:
            return None
        beater = Beater(target, self.l, lambda: self.counters["steps"])
        beater.start()
        return beater

    def _send(self, to: int, clock: int, iteration: int, items: list) -> None:
        self.transport.send(to, clock, iteration, items)

    def receive(self, sender: int | None, *datas: bytes) -> None:
        """Messages from neighbour `sender` (None: not known) into the mailbox; bad ones dropped."""
        for data in datas:
            self.counters["recv_bytes"] += len(data)
            self.counters["recv_msgs"] += 1
            self.box.put(data, sender)

    def _step_done(self) -> None:
        self.box.advance(self.sched.clock)
        self.clock_t.step += 1
        self.counters["steps"] += 1

    # -- introspection ----------------------------------------------------------------------------
    def where(self) -> dict:
        import ray
        ctx = ray.get_runtime_context()
        return {"layer": self.l, "node_id": ctx.get_node_id(), "ip": ray.util.get_node_ip_address(),
                "pid": os.getpid(), "device": self.device,
                "gpu_ids": [str(g) for g in ray.get_gpu_ids()] if self.device == "gpu" else []}

    def stats(self) -> dict:
        return {**self.counters, **{f"{k}_s": v for k, v in self.clock_t.totals.items()},
                "received": {k: sorted(v) for k, v in self.box.received.items()},
                "dropped": dict(self.box.dropped)}

    def trace_events(self) -> list:
        return list(self.clock_t.events)

    def _publish(self) -> None:
        """Per-layer totals through Ray's metrics API (a Prometheus scrape of the cluster sees
        them as ptncn_layer_*), once per segment."""
        if self._gauges:
            tags = {"layer": str(self.l)}
            for k, v in self.clock_t.totals.items():
                self._gauges[k].set(v, tags=tags)
            self._gauges["bytes"].set(self.counters["sent_bytes"], tags=tags)
            self._gauges["steps"].set(self.counters["steps"], tags=tags)

    def nonfinite(self) -> list[str]:
        """Names of this layer's weights, slots and carried state that hold NaN or Inf."""
        return nonfinite_names(self.xp, self.core.named_arrays())

    # -- state and checkpoints (a shard never travels through the driver) -------------------------
    def state(self) -> dict:
        return self.core.state()

    def load_state(self, state: dict) -> None:
        self.core.load_state(state)
        self.reset_clock()

    def set_params(self, params: dict) -> None:
        self.core.set_params(params)
        self.reset_clock()

    def save_shard(self, ckpt_dir: str, name: str) -> dict:
        """Write this layer's shard, after checking it holds no NaN or Inf (NonFiniteState)."""
        check_state(self.xp, self.l, self.core.named_arrays())
        return checkpoint.write_shard(ckpt_dir, name, self.core.state())

    def load_shard(self, ckpt_dir: str, record: dict) -> None:
        """Read, verify and take this layer's shard; a state that does not fit the layer is a
        CheckpointError naming the shard file (the checkpoint counts as damaged)."""
        state = checkpoint.read_shard(ckpt_dir, record)
        try:
            self.core.load_state(state)
        except StateError as exc:
            raise checkpoint.damaged_shard(ckpt_dir, record["name"], exc) from None
        self.reset_clock()

    def reset_clock(self) -> None:
        """New weights or a restored state: no held update, no old messages, clock 0."""
        self.sched.restart()
        self.box.clear()


def _ray_gauges() -> dict:
    try:
        from ray.util.metrics import Gauge
        keys = ("layer",)
        g = {k: Gauge(f"ptncn_layer_{k}_seconds_total", f"seconds a layer spent in {k}", tag_keys=keys)
             for k in PhaseClock.KINDS}
        g["bytes"] = Gauge("ptncn_layer_bytes_sent_total", "message bytes a layer sent", tag_keys=keys)
        g["steps"] = Gauge("ptncn_layer_steps_total", "steps a layer ran", tag_keys=keys)
        return g
    except Exception:
        return {}
