"""All layers in one process: the reference every engine must match, and the fastest choice on
a single device. It drives the one schedule (ptncn_dist/core/schedule.py) for every layer in lock
step; messages are arrays put straight into the neighbour's mailbox dict (in-process
transport): nothing is encoded or sent anywhere."""
from __future__ import annotations

from ..core.backend import to_xp
from ..errors import CheckpointError
from ..core.layer import LayerCore
from ..core.spec import check_schedule
from ..core.schedule import LayerSchedule, SegmentLoss, StepPlan, plan, run_lockstep
from ..transports.inprocess import InProcess
from ..core.weights import StateError
from .base import Engine, diverged, token_ids


def check_carried(layers, batch: int, t0: int) -> None:
    """Before continuing a sequence at step t0 > 0: every layer carries a state (restored from a
    checkpoint) for a batch of `batch` sequences; else a one-line CheckpointError."""
    for layer in layers:
        c = layer.carry
        got = None if c is None else int(c["y"].shape[0])
        if got != batch:
            have = "no carried state" if c is None else f"a carried state for a batch of {got}"
            raise CheckpointError(f"layer {layer.spec.index} has {have}, and continuing a sequence at step {t0} "
                                  f"needs one for the data's batch of {batch}: the checkpoint it was restored "
                                  f"from does not fit this data")


class LocalEngine(Engine):
    name = "local"

    def __init__(self, specs, params: list[dict], opt_cfg, xp, dtype, mode: str = "exact"):
        check_schedule(specs, mode)
        self.xp, self.dtype, self.mode = xp, dtype, mode
        self.layers = [LayerCore(s, p, opt_cfg, xp, dtype) for s, p in zip(specs, params)]
        self.boxes = [{} for _ in self.layers]
        self.scheds = [LayerSchedule(core, InProcess(core.spec.index, self.boxes).send, mode) for core in self.layers]

    def _step(self, x, m, p: StepPlan):
        run_lockstep([s.step(x if i == 0 else None, m, p) for i, s in enumerate(self.scheds)], self.boxes)
        return self.layers[0].xhat

    def step(self, x, m, do_learn: bool):
        """One exact MODEL.md step on device arrays x (B, D) or ids (B,), m (B, 1), every update
        applied when it returns; returns xhat (for tests that inspect a step at a time)."""
        xhat = self._step(x, m, StepPlan(0, do_learn, True, False))
        self._flush()
        return xhat

    def _flush(self) -> None:
        for s in self.scheds:
            s.flush()

    def run_segment(self, x, mask, t0, t1, *, learn, t_prime, keep_xhat=False, by_t=False):
        xp = self.xp
        xs = to_xp(xp, token_ids(x, mask)) if x.dtype.kind in "iu" else to_xp(xp, x, self.dtype)
        ms = to_xp(xp, mask[..., None], self.dtype)
        if t0 == 0:
            for layer in self.layers:
                layer.reset(x.shape[1])
        else:
            check_carried(self.layers, x.shape[1], t0)
        tally = SegmentLoss(by_t, keep_xhat)
        for p in plan(t0, t1, mask.shape[0], learn, t_prime):
            xhat = self._step(xs[p.t], ms[p.t], p)
            tally.add(xp, xhat, xs[p.t], ms[p.t], p.t, t_prime)
            if tally.diverged is not None or any(s.watch.first for s in self.scheds):
                break
        for s in self.scheds:
            s.end_segment()
        bad = diverged(tally.diverged, [s.watch.first for s in self.scheds])
        if bad is not None:
            raise bad
        return tally.sums, tally.xhats

    def set_params(self, per_layer):
        for layer, p in zip(self.layers, per_layer):
            layer.set_params(p)
        self._restart()

    def layer_states(self):
        return [layer.state() for layer in self.layers]

    def load_layer_states(self, states):
        for layer, st in zip(self.layers, states):
            layer.load_state(st)
        self._restart()
        batches = [None if layer.carry is None else int(layer.carry["y"].shape[0]) for layer in self.layers]
        what = lambda n: "no carried state" if n is None else f"carried state for a batch of {n}"
        for l, b in enumerate(batches[1:], start=2):
            if b != batches[0]:
                raise StateError(l, f"saved {what(b)}, but layer 1 saved {what(batches[0])}: the layers' "
                                    f"carried states must agree")

    def _restart(self) -> None:
        for s, box in zip(self.scheds, self.boxes):
            s.restart()
            box.clear()
