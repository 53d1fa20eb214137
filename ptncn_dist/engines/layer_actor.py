"""One P-TNCN layer as a Ray actor: its own weights (on its own CPU or GPU) and what it needs to
talk to its two neighbours. Within a step it sends and receives MODEL.md's messages directly to
and from them; the driver only starts segments and collects loss sums.

Exact schedule (two exchanges per step, all layers at once in each):
  forward  -> send z up, prediction down -> receive z from below, prediction from above
  [iterate -> send s^k up, s^k @ W down  -> receive the same from the neighbours]
           (only with K = model.inference_steps > 1: K - 1 more exchanges, tagged k = 1..K-1)
  correct  -> send eps and y up, y down  -> receive y, eps from below, y from above
  finish   (local updates, carry)
Pipelined schedule (one exchange per step, K = 1 only): at step t a layer reads what its neighbours sent at
step t-1 (zeros at a sequence's first step), computes its whole step without waiting, and sends
(z, eps, y) up and (pred, y) down. What that changes in the model: `LayerCore.finish_pipelined`.

Two transports: `MailboxWorker` here (ordinary actor calls into an asyncio mailbox) and
`graph_worker.GraphWorker` (a Ray compiled graph whose nodes are the phases, one per iteration;
messages go through its channels).
"""
from __future__ import annotations

import asyncio
import os
import time

import numpy as np

from .. import checkpoint, metrics
from ..backend import get_dtype, get_xp, limit_blas_threads, to_numpy, to_xp
from ..layer import LayerCore, init_params
from ..messages import Message
from ..optim import OptimConfig
from .base import step_loss_sums


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
                 error_weight_sd: float, blas_threads: int, trace_steps: int = 0):
        limit_blas_threads(blas_threads if blas_threads > 0 else None)
        self.clock_t = PhaseClock(spec.index, trace_steps)
        self._gauges = _ray_gauges()
        self.xp, self.dtype, self.device = get_xp(device), get_dtype(dtype), device
        params = init_params(spec, seed, weight_sd, error_weight_sd, self.dtype)
        self.core = LayerCore(spec, params, OptimConfig(**opt), self.xp, self.dtype)
        self.spec, self.l = spec, spec.index
        self.clock = 0
        self.received: dict = {}
        self.counters = {"sent_bytes": 0, "recv_bytes": 0, "sent_msgs": 0, "recv_msgs": 0, "steps": 0}

    # -- messages: encode and count ---------------------------------------------------------------
    def _encode(self, kind: str, arr, iteration: int = 0) -> bytes:
        data = Message(self.clock, self.l, kind, to_numpy(arr), iteration).encode()
        self.counters["sent_bytes"] += len(data)
        self.counters["sent_msgs"] += 1
        return data

    def _decode(self, data: bytes) -> Message:
        msg = Message.decode(data)
        self.counters["recv_bytes"] += len(data)
        self.counters["recv_msgs"] += 1
        self.received.setdefault(msg.kind, set()).add((msg.layer, *msg.array.shape))
        return msg

    def _device(self, arr):
        return arr if self.xp is np else to_xp(self.xp, arr)

    def _segment_inputs(self, x, mask):
        ms = to_xp(self.xp, np.asarray(mask)[..., None], self.dtype)
        xs = None
        if x is not None:
            xs = to_xp(self.xp, x) if x.dtype.kind in "iu" else to_xp(self.xp, x, self.dtype)
        return xs, ms

    def _bottom_loss(self, xt, m, t, t_prime, out) -> None:
        """Layer 1: add step t's loss sums (per position too when out["by_t"]), note the first
        non-finite step, keep xhat if asked."""
        part = step_loss_sums(self.xp, self.core.xhat, xt, m)
        if out["diverged"] is None and not all(np.isfinite(v) for v in part.values()):
            out["diverged"] = t
        if t >= t_prime:
            metrics.accumulate(out["sums"], part, t, by_t=out.get("by_t", False))
        if out["keep"]:
            out["xhats"].append(np.array(to_numpy(self.core.xhat), copy=True))

    # -- introspection ----------------------------------------------------------------------------
    def where(self) -> dict:
        import ray
        ctx = ray.get_runtime_context()
        return {"layer": self.l, "node_id": ctx.get_node_id(), "ip": ray.util.get_node_ip_address(),
                "pid": os.getpid(), "device": self.device,
                "gpu_ids": [str(g) for g in ray.get_gpu_ids()] if self.device == "gpu" else []}

    def stats(self) -> dict:
        return {**self.counters, **{f"{k}_s": v for k, v in self.clock_t.totals.items()},
                "received": {k: sorted(v) for k, v in self.received.items()}}

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
        st = self.core.state()
        arrays = list(st["params"].items()) + [(k, v) for k, v in (st["carry"] or {}).items()
                                               if v is not None and v.dtype.kind == "f"]
        return [k for k, v in arrays if not np.all(np.isfinite(v))]

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
        return checkpoint.write_shard(ckpt_dir, name, self.core.state())

    def load_shard(self, ckpt_dir: str, record: dict) -> None:
        self.core.load_state(checkpoint.read_shard(ckpt_dir, record))
        self.reset_clock()

    def reset_clock(self) -> None:
        self.clock = 0


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


class MailboxWorker(LayerHost):
    """Messages as ordinary actor calls: a neighbour's `deliver` puts them in an asyncio mailbox
    keyed by (clock, iteration, kind, sender), where the step awaits them. A round's messages to one
    neighbour travel in one call."""

    def __init__(self, *args, mode: str = "exact", trace_steps: int = 0):
        super().__init__(*args, trace_steps=trace_steps)
        self.mode = mode
        self.below = self.above = None
        self.box: dict = {}
        self.pending = None
        self.links = None

    def connect(self, below, above) -> int:
        self.below, self.above = below, above
        return os.getpid()

    async def open_link(self, token: bytes) -> tuple[str, int]:
        """Listen for the neighbours' TCP links on this node's address (transport "tcp")."""
        import ray
        from .tcp_links import TcpLinks
        self.links = TcpLinks(token, self._deliver_one)
        return await self.links.listen(ray.util.get_node_ip_address())

    async def link_to(self, below_addr, above_addr) -> None:
        if below_addr is not None:
            await self.links.connect(self.l - 1, *below_addr)
        if above_addr is not None:
            await self.links.connect(self.l + 1, *above_addr)

    def reset_clock(self) -> None:
        super().reset_clock()
        self.box = {}

    def _slot(self, key):
        fut = self.box.get(key)
        if fut is None:
            fut = self.box[key] = asyncio.get_running_loop().create_future()
        return fut

    async def deliver(self, *datas: bytes) -> None:
        for data in datas:
            self._deliver_one(data)

    def _deliver_one(self, data: bytes) -> None:
        msg = self._decode(data)
        self._slot((msg.step, msg.iteration, msg.kind, msg.layer)).set_result(msg.array)

    def _send(self, handle, *kind_arrays, iteration: int = 0) -> None:
        datas = [self._encode(kind, arr, iteration) for kind, arr in kind_arrays]
        if self.links is not None:
            self.links.send(self.l - 1 if handle is self.below else self.l + 1, datas)
        else:
            handle.deliver.remote(*datas)

    async def _recv(self, kind: str, sender: int, clock: int, iteration: int = 0):
        key = (clock, iteration, kind, sender)
        arr = await self._slot(key)
        del self.box[key]
        return self._device(arr)

    async def _recv_states(self, clock: int, iteration: int):
        """The state of the layer below and the prediction of the layer above, of `iteration`."""
        l = self.l
        z_below = await self._recv("z", l - 1, clock, iteration) if self.below is not None else None
        pred_above = await self._recv("pred", l + 1, clock, iteration) if self.above is not None else None
        return z_below, pred_above

    async def exact_step(self, x, m, do_learn: bool) -> None:
        """The exact step, ordered so that each wait overlaps work that does not need what is
        awaited: M, V, U learn while the second round's messages travel, and the W, E update of
        step t is applied at step t+1 just before W (prediction) and E (correction) are used."""
        core, l, c, clk = self.core, self.l, self.clock, self.clock_t
        clk.begin()
        z = core.forward_state()
        clk.end("compute", "forward")
        if self.above is not None:
            self._send(self.above, ("z", z))
            clk.end("comm", "send z")
        pending, self.pending = self.pending, None
        if pending is not None:
            core.learn_generative(pending)
        pred = core.predict(x, m)
        clk.end("compute", "learn W,E (t-1); predict")
        if self.below is not None:
            self._send(self.below, ("pred", pred))
            clk.end("comm", "send pred")
        z_below, pred_above = await self._recv_states(c, 0)
        clk.end("wait", "wait z, pred")
        for k in range(1, self.spec.inference_steps):
            s, pred_k = core.iterate(m, z_below=z_below, pred_above=pred_above)
            clk.end("compute", "iterate")
            if self.above is not None:
                self._send(self.above, ("z", s), iteration=k)
            if self.below is not None:
                self._send(self.below, ("pred", pred_k), iteration=k)
            clk.end("comm", "send s, pred")
            z_below, pred_above = await self._recv_states(c, k)
            clk.end("wait", "wait s, pred")
        y, eps = core.correct(m, z_below=z_below, pred_above=pred_above)
        clk.end("compute", "correct")
        if self.above is not None:
            self._send(self.above, ("eps", eps), ("y", y))
        if self.below is not None:
            self._send(self.below, ("y", y))
        clk.end("comm", "send eps, y")
        if do_learn:
            core.learn_recurrent()
        clk.end("compute", "learn M,V,U")
        y_below = eps_below = y_above = None
        if self.below is not None:
            y_below, eps_below = await self._recv("y", l - 1, c), await self._recv("eps", l - 1, c)
        if self.above is not None:
            y_above = await self._recv("y", l + 1, c)
        clk.end("wait", "wait y, eps")
        if do_learn:
            self.pending = core.generative_pair(eps_below)
        core.carry_forward(x, y_below, y_above)

    def flush(self) -> None:
        """Apply a W, E update still held from the last step (end of a segment)."""
        pending, self.pending = self.pending, None
        if pending is not None:
            self.core.learn_generative(pending)

    async def pipelined_step(self, x, m, do_learn: bool, first: bool, last: bool) -> None:
        core, l, xp, c, clk = self.core, self.l, self.xp, self.clock, self.clock_t
        below = above = None
        clk.begin()
        if not first:
            if self.below is not None:
                below = {k: await self._recv(k, l - 1, c - 1) for k in ("z", "eps", "y")}
            if self.above is not None:
                above = {k: await self._recv(k, l + 1, c - 1) for k in ("pred", "y")}
            core.take_neighbours(y_below=below["y"] if below else None, y_above=above["y"] if above else None)
        clk.end("wait", "wait for step t-1 messages")
        z, pred = core.forward(x, m) if self.below is None else core.forward()
        z_below = pred_above = None
        if self.below is not None:
            z_below = below["z"] if below else xp.zeros((z.shape[0], self.spec.d_in), self.dtype)
        if self.above is not None:
            pred_above = above["pred"] if above else xp.zeros_like(z)
        y, eps = core.correct(m, z_below=z_below, pred_above=pred_above)
        core.finish_pipelined(do_learn, x=x, eps_below_prev=below["eps"] if below else None)
        clk.end("compute", "step")
        if not last:
            if self.above is not None:
                self._send(self.above, ("z", z), ("eps", eps), ("y", y))
            if self.below is not None:
                self._send(self.below, ("pred", pred), ("y", y))
        clk.end("comm", "send")

    async def run_segment(self, x, mask, t0: int, t1: int, learn: bool, t_prime: int,
                          keep_xhat: bool = False, by_t: bool = False) -> dict:
        """Steps t0..t1-1; layer 1 gets the inputs `x`, every layer the mask. Layer 1 returns the
        loss sums, per position too with `by_t` (and the first non-finite step, if any)."""
        xs, ms = self._segment_inputs(x, mask)
        if t0 == 0:
            self.core.reset(mask.shape[1])
        out = {"sums": {}, "xhats": [], "diverged": None, "keep": keep_xhat, "by_t": by_t}
        for t in range(t0, t1):
            xt = xs[t] if xs is not None else None
            do_learn = learn and t >= t_prime
            if self.mode == "exact":
                await self.exact_step(xt, ms[t], do_learn)
            else:
                await self.pipelined_step(xt, ms[t], do_learn, t == 0, t == mask.shape[0] - 1)
            self.clock += 1
            self.clock_t.step += 1
            self.counters["steps"] += 1
            if xs is not None:
                self._bottom_loss(xt, ms[t], t, t_prime, out)
        self.flush()
        self._publish()
        return out
