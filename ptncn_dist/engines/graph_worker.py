"""A layer in a Ray compiled graph (`engine.compiled = true`, exact schedule): the one segment loop
(ptncn_dist/core/schedule.py) fed a step at a time by the graph driver (compiled_graph.py), and
each step driven one round per graph node. A step of K state-correction iterations is K + 2
nodes per layer: `g_start` runs the step until it first waits, and each `g_round` takes the
neighbours' messages of the round before (from their nodes' outputs), lets the step run until it
waits again, and returns what it sent. Messages go through the graph's channels
(ptncn_dist/transports/compiled.py); the driver sees only every layer's segment outcome and
counters, with the segment's last step."""
from __future__ import annotations

from ..core.schedule import SegmentRun, advance
from ..transports.compiled import GraphOutbox
from .layer_host import LayerHost


class GraphWorker(LayerHost):
    """Graph input per step: (x_t, m_t, segment, step plan)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.transport = GraphOutbox(self.l, self.counters, self.clock_t)
        self._run = self._gen = self._wait = None

    def g_start(self, inp):
        x, m, seg, p = inp
        if p.t == seg.t0:
            self._run = SegmentRun(seg, [self.sched])
            self.box.batch = seg.batch
        self._x, self._m = self._run.inputs(x, m)
        if p.t == seg.t0:
            self._run.begin()
        self.clock_t.begin()
        (self._gen,) = self._run.steps(p, self._x, self._m)
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

    def _finish(self, inp) -> dict:
        """The step ended: tallied; after the segment's last step, this layer's outcome and counters."""
        x, m, seg, p = inp
        self._step_done()
        self._run.stepped(p, self._x, self._m)
        if p.t != seg.t1 - 1:
            return {}
        out = self._run.end()
        self._publish()
        return {**out, "stats": self.stats()}
