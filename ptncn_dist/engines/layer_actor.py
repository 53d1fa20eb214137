"""One P-TNCN layer as a Ray actor: its own weights (on its own CPU or GPU), a mailbox, and
handles to its two neighbours. Within a step it sends and receives MODEL.md's messages directly
to and from those neighbours; the driver only starts segments and collects loss sums.

Exact schedule (two exchanges per step, all layers at once in each):
  forward  -> send z up, prediction down -> receive z from below, prediction from above
  correct  -> send eps and y up, y down  -> receive y, eps from below, y from above
  finish   (local updates, carry)
"""
from __future__ import annotations

import asyncio
import os

import numpy as np

from .. import checkpoint, metrics
from ..backend import get_dtype, get_xp, limit_blas_threads, to_numpy, to_xp
from ..layer import LayerCore, init_params
from ..messages import Message
from ..optim import OptimConfig
from .base import step_loss_sums


class LayerWorker:
    """The actor class (wrapped with ray.remote by the engine)."""

    def __init__(self, spec, opt: dict, seed: int, dtype: str, device: str, weight_sd: float,
                 error_weight_sd: float, blas_threads: int):
        limit_blas_threads(blas_threads if blas_threads > 0 else None)
        self.xp, self.dtype = get_xp(device), get_dtype(dtype)
        self.device = device
        params = init_params(spec, seed, weight_sd, error_weight_sd, self.dtype)
        self.core = LayerCore(spec, params, OptimConfig(**opt), self.xp, self.dtype)
        self.spec, self.l = spec, spec.index
        self.below = self.above = None
        self.clock = 0
        self.box: dict = {}
        self.received: dict = {}
        self.counters = {"sent_bytes": 0, "recv_bytes": 0, "sent_msgs": 0, "recv_msgs": 0, "steps": 0}

    # -- wiring and introspection ---------------------------------------------------------------
    def connect(self, below, above) -> int:
        self.below, self.above = below, above
        return os.getpid()

    def where(self) -> dict:
        import ray
        ctx = ray.get_runtime_context()
        return {"layer": self.l, "node_id": ctx.get_node_id(), "ip": ray.util.get_node_ip_address(),
                "pid": os.getpid(), "device": self.device,
                "gpu_ids": [str(g) for g in ray.get_gpu_ids()] if self.device == "gpu" else []}

    def stats(self) -> dict:
        return {**self.counters, "received": {k: sorted(v) for k, v in self.received.items()}}

    # -- messages --------------------------------------------------------------------------------
    def _slot(self, key):
        fut = self.box.get(key)
        if fut is None:
            fut = self.box[key] = asyncio.get_running_loop().create_future()
        return fut

    async def deliver(self, *datas: bytes) -> None:
        """Receive one or more encoded messages (a round's messages to one neighbour travel in
        one call)."""
        for data in datas:
            msg = Message.decode(data)
            self.counters["recv_bytes"] += len(data)
            self.counters["recv_msgs"] += 1
            self.received.setdefault(msg.kind, set()).add((msg.layer, *msg.array.shape))
            self._slot((msg.step, msg.kind, msg.layer)).set_result(msg.array)

    def _send(self, handle, *kind_arrays) -> None:
        datas = [Message(self.clock, self.l, kind, to_numpy(arr)).encode() for kind, arr in kind_arrays]
        self.counters["sent_bytes"] += sum(len(d) for d in datas)
        self.counters["sent_msgs"] += len(datas)
        handle.deliver.remote(*datas)

    async def _recv(self, kind: str, sender: int, clock: int | None = None):
        key = (self.clock if clock is None else clock, kind, sender)
        arr = await self._slot(key)
        del self.box[key]
        return to_xp(self.xp, arr) if self.xp is not np else arr

    # -- steps -----------------------------------------------------------------------------------
    async def exact_step(self, x, m, do_learn: bool):
        core, l = self.core, self.l
        z, pred = core.forward(x, m) if self.below is None else core.forward()
        if self.above is not None:
            self._send(self.above, ("z", z))
        if self.below is not None:
            self._send(self.below, ("pred", pred))
        z_below = await self._recv("z", l - 1) if self.below is not None else None
        pred_above = await self._recv("pred", l + 1) if self.above is not None else None
        y, eps = core.correct(m, z_below=z_below, pred_above=pred_above)
        if self.above is not None:
            self._send(self.above, ("eps", eps), ("y", y))
        if self.below is not None:
            self._send(self.below, ("y", y))
        y_below = eps_below = y_above = None
        if self.below is not None:
            y_below, eps_below = await self._recv("y", l - 1), await self._recv("eps", l - 1)
        if self.above is not None:
            y_above = await self._recv("y", l + 1)
        core.finish(do_learn, x=x, y_below=y_below, eps_below=eps_below, y_above=y_above)

    async def run_segment(self, x, mask, t0: int, t1: int, learn: bool, t_prime: int,
                          keep_xhat: bool = False) -> dict:
        """Steps t0..t1-1; layer 1 gets the inputs `x`, every layer the mask. Layer 1 returns the
        loss sums (and the first non-finite step, if any); the others return their counters."""
        xp = self.xp
        ms = to_xp(xp, np.asarray(mask)[..., None], self.dtype)
        xs = None
        if x is not None:
            xs = to_xp(xp, x) if x.dtype.kind in "iu" else to_xp(xp, x, self.dtype)
        if t0 == 0:
            self.core.reset(mask.shape[1])
        sums, xhats, diverged = {}, [], None
        for t in range(t0, t1):
            xt = xs[t] if xs is not None else None
            await self.exact_step(xt, ms[t], learn and t >= t_prime)
            self.clock += 1
            self.counters["steps"] += 1
            if xs is not None:
                part = step_loss_sums(xp, self.core.xhat, xt, ms[t])
                if diverged is None and not all(np.isfinite(v) for v in part.values()):
                    diverged = t
                if t >= t_prime:
                    metrics.add_sums(sums, part)
                if keep_xhat:
                    xhats.append(np.array(to_numpy(self.core.xhat), copy=True))
        return {"sums": sums, "xhats": xhats, "diverged": diverged}

    # -- state and checkpoints (a shard never travels through the driver) -------------------------
    def state(self) -> dict:
        return self.core.state()

    def load_state(self, state: dict, clock: int = 0) -> None:
        self.core.load_state(state)
        self.reset_clock(clock)

    def reset_clock(self, clock: int = 0) -> None:
        self.clock = clock
        self.box.clear()

    def save_shard(self, ckpt_dir: str, name: str) -> dict:
        return checkpoint.write_shard(ckpt_dir, name, self.core.state())

    def load_shard(self, ckpt_dir: str, record: dict) -> None:
        self.core.load_state(checkpoint.read_shard(ckpt_dir, record))
        self.reset_clock(0)

    def nonfinite(self) -> list[str]:
        st = self.core.state()
        arrays = list(st["params"].items()) + [(k, v) for k, v in (st["carry"] or {}).items()
                                               if v is not None and v.dtype.kind == "f"]
        return [k for k, v in arrays if not np.all(np.isfinite(v))]
