"""Ray compiled graphs as a transport (`engine.compiled = true`, exact schedule only): every
round of a step is a graph node per layer, fed by its own previous node and its neighbours'
(`GraphWorker`); a node's output is what it sent, {to: [encoded messages]}, and each
neighbour takes only the part addressed to it. The driver feeds each step's inputs and reads
layer 1's loss sums; every layer's counters come back with a segment's last step, so metrics
never tear the graph down. Compiled graphs are an experimental Ray API (`ray.dag`)."""
from __future__ import annotations

import numpy as np

from .. import metrics
from .base import Encoded


class GraphOutbox(Encoded):
    """Collects a round's encoded messages until the graph node returns them (`take`)."""

    def __init__(self, layer: int, counters: dict, clock=None):
        super().__init__(layer, counters, clock)
        self.out: dict = {}

    def deliver(self, to: int, datas: list[bytes]) -> None:
        self.out.setdefault(to, []).extend(datas)

    def take(self) -> dict:
        out, self.out = self.out, {}
        return out


class CompiledGraph:
    """The exact step of `actors` (GraphWorkers, layer order) as one compiled graph: a start
    node and K + 1 round nodes per layer (K = inference_steps)."""

    def __init__(self, ray, actors, specs, batch: int, x_row_bytes: int, in_flight: int):
        from ray.dag import InputNode, MultiOutputNode
        self.ray, n = ray, len(actors)
        near = lambda nodes, i: [nodes[j] for j in (i - 1, i + 1) if 0 <= j < n]
        with InputNode() as inp:
            prev = [a.g_start.bind(inp) for a in actors]
            for _ in range(specs[0].inference_steps + 1):
                prev = [a.g_round.bind(inp, prev[i], *near(prev, i)) for i, a in enumerate(actors)]
            dag = MultiOutputNode(prev)
        widest = max([x_row_bytes] + [4 * batch * max(s.d, s.d_in) * 8 for s in specs])
        self.depth = min(10, in_flight)
        self.graph = dag.experimental_compile(_buffer_size_bytes=max(1 << 20, 4 * widest + 4096),
                                              _max_inflight_executions=self.depth)
        self.stats: list | None = None
        self.sightings: list = []

    def run(self, x, mask, t0, t1, learn, t_prime, keep_xhat, by_t, timeout):
        """Steps t0..t1-1; returns (sums, xhats, layer 1's first non-finite loss step or None);
        every layer's first non-finite sighting is in `sightings` after the segment's last step."""
        sums, xhats, pending, diverged = {}, [], [], None

        def collect(ref, t):
            nonlocal diverged
            try:
                outs = self.ray.get(ref, timeout=timeout)
            except self.ray.exceptions.RayChannelTimeoutError as exc:
                exc.detection_s = timeout
                raise
            first = outs[0]
            if first["sums"]:
                metrics.accumulate(sums, first["sums"], t, by_t=by_t)
            if diverged is None and first["diverged"] is not None:
                diverged = first["diverged"]
            if keep_xhat:
                xhats.append(np.array(first["xhat"], copy=True))
            if "stats" in first:
                self.stats = [o["stats"] for o in outs]
                self.sightings = [o.get("nonfinite") for o in outs]

        for t in range(t0, t1):
            inp = (x[t], mask[t], learn and t >= t_prime, t == 0, t, t_prime, keep_xhat, t == t1 - 1)
            pending.append((self.graph.execute(inp), t))
            if len(pending) >= self.depth:
                collect(*pending.pop(0))
        for ref, t in pending:
            collect(ref, t)
        return sums, xhats, diverged

    def teardown(self, kill_actors: bool = False) -> None:
        self.graph.teardown(kill_actors=kill_actors)
