"""A layer in a Ray compiled graph (`engine.compiled = true`, exact schedule): the same
schedule (ptncn_dist/core/schedule.py) driven one round per graph node. A step of K state-correction
iterations is K + 2 nodes per layer: `g_start` runs the step until it first waits, and each
`g_round` takes the neighbours' messages of the round before (from their nodes' outputs), lets
the step run until it waits again, and returns what it sent. Messages go through the graph's
channels (ptncn_dist/transports/compiled.py); the driver sees only layer 1's loss sums, its
forecast when asked for, and every layer's counters at the end of a segment."""
from __future__ import annotations

from ..core.schedule import SegmentLoss, StepPlan, advance
from ..transports.compiled import GraphOutbox
from .layer_host import LayerHost


class GraphWorker(LayerHost):
    """Graph input per step: (x_t, m_t, do_learn, reset, t, t_prime, keep_xhat, segment_end)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.transport = GraphOutbox(self.l, self.counters, self.clock_t)
        self._gen = self._wait = None

    def g_start(self, inp):
        x, m, do_learn, reset, t, t_prime, keep, end = inp
        if reset:
            self.core.reset(m.shape[0])
        self.box.batch = m.shape[0]
        self._x, self._m = self._segment_inputs(x if self.l == 1 else None, m)
        self.clock_t.begin()
        self._gen = self.sched.step(self._x, self._m, StepPlan(t, do_learn, reset, False))
        self._wait = advance(self._gen, None)
        self.clock_t.end("compute", "compute")
        return self.transport.take()

    def g_round(self, inp, own, *neighbours):
        """One round: file the neighbours' messages for this layer (below first, then above),
        resume the step with what it waits for; its last round ends the step."""
        peers = [p for p, has in ((self.l - 1, not self.spec.is_bottom), (self.l + 1, not self.spec.is_top)) if has]
        for peer, out in zip(peers, neighbours):
            datas = out.get(self.l, ())
            if datas:
                self.receive(peer, *datas)
        got = tuple(None if k is None else self.box.take(k) for k in self._wait.keys)
        self.clock_t.end("wait", self._wait.name)
        self._wait = advance(self._gen, got)
        self.clock_t.end("compute", "compute")
        if self._wait is not None:
            return self.transport.take()
        return self._finish(inp)

    def _finish(self, inp):
        x, m, do_learn, reset, t, t_prime, keep, end = inp
        self._step_done()
        out = {}
        if self.l == 1:
            tally = SegmentLoss(keep=keep)
            tally.add(self.xp, self.core.xhat, self._x, self._m, t, t_prime)
            out = {"sums": tally.sums, "diverged": tally.diverged,
                   "xhat": tally.xhats[0] if keep else None}
        if end:
            self.sched.end_segment()
            self._publish()
            out["stats"] = self.stats()
            out["nonfinite"] = self.sched.watch.first
        return out
