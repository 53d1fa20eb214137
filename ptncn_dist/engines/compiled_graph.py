"""The exact step of every layer as one Ray compiled graph (`engine.compiled = true`): a start
node and K + 1 round nodes per layer (K = inference_steps), each fed by its own previous node and
its neighbours' (`GraphWorker`, messages through ptncn_dist/transports/compiled.py). The driver
feeds the segment's steps in plan order, up to engine.in_flight at once, and reads every layer's
segment outcome with the last step: the loss tally stays in layer 1, and counters come back
without tearing the graph down. Compiled graphs are an experimental Ray API (`ray.dag`)."""
from __future__ import annotations

from collections import deque

from ..core.schedule import Segment


class CompiledGraph:
    """The graph of `actors` (GraphWorkers, layer order), built once for a batch size."""

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

    def run(self, seg: Segment, x, mask, timeout: float) -> list[dict] | None:
        """The segment's steps, one graph execution each (input: x_t, m_t, the segment, the
        step's plan); returns every layer's outcome (`SegmentRun.end`), None without steps."""
        pending, last = deque(), None
        for p in seg.plan():
            pending.append(self.graph.execute((x[p.t], mask[p.t], seg, p)))
            if len(pending) >= self.depth:
                last = self._get(pending.popleft(), timeout)
        while pending:
            last = self._get(pending.popleft(), timeout)
        if last is not None:
            self.stats = [o["stats"] for o in last]
        return last

    def _get(self, ref, timeout: float) -> list:
        try:
            return self.ray.get(ref, timeout=timeout)
        except self.ray.exceptions.RayChannelTimeoutError as exc:
            exc.detection_s = timeout
            raise

    def teardown(self, kill_actors: bool = False) -> None:
        self.graph.teardown(kill_actors=kill_actors)
