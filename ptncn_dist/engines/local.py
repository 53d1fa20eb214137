"""All layers in one process: the reference every engine must match, and the fastest choice on
a single device. It runs the one segment loop (ptncn_dist/core/schedule.py) over every layer in
lock step; messages are arrays put straight into the neighbour's mailbox dict (in-process
transport): nothing is encoded or sent anywhere."""
from __future__ import annotations

from ..core.backend import get_dtype, get_xp, limit_blas_threads
from ..core.layer import LayerCore
from ..core.model import initial_params
from ..core.schedule import LayerSchedule, Segment, SegmentRun, StepPlan, finish, run_lockstep
from ..core.spec import check_schedule
from ..core.weights import StateError
from ..transports.inprocess import InProcess
from .base import Engine


class LocalEngine(Engine):
    """Every layer of `specs` in this process, on cfg.model's device and dtype, with cfg.optim's
    optimizer and cfg.engine's schedule; weights `params` (one dict per layer) or, by default,
    drawn from cfg.train.seed."""

    name = "local"

    def __init__(self, cfg, specs, params: list[dict] | None = None):
        mode = cfg.engine.mode
        check_schedule(specs, mode)
        limit_blas_threads(cfg.engine.blas_threads if cfg.engine.blas_threads > 0 else None)
        self.xp, self.dtype, self.mode = get_xp(cfg.model.device), get_dtype(cfg.model.dtype), mode
        if params is None:
            params = initial_params(specs, cfg.model, cfg.train.seed)
        self.layers = [LayerCore(s, p, cfg.optim, self.xp, self.dtype) for s, p in zip(specs, params)]
        self.boxes = [{} for _ in self.layers]
        self.scheds = [LayerSchedule(core, InProcess(core.spec.index, self.boxes).send, mode) for core in self.layers]

    def _step(self, x, m, p: StepPlan):
        run_lockstep([s.step(x if i == 0 else None, m, p) for i, s in enumerate(self.scheds)], self.boxes)
        return self.layers[0].xhat

    def step(self, x, m, do_learn: bool):
        """One exact MODEL.md step on device arrays x (B, D) or ids (B,), m (B, 1), every update
        applied when it returns; returns xhat (for tests that inspect a step at a time)."""
        xhat = self._step(x, m, StepPlan(0, do_learn, True, False))
        for s in self.scheds:
            s.flush()
        return xhat

    def run_segment(self, x, mask, t0, t1, *, learn, t_prime, keep_xhat=False, by_t=False):
        run = SegmentRun(Segment.of(mask, t0, t1, learn=learn, t_prime=t_prime, keep_xhat=keep_xhat, by_t=by_t),
                         self.scheds)
        for steps in run.loop(x, mask):
            run_lockstep(steps, self.boxes)
        return finish([run.outcome])

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
