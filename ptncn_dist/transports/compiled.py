"""Ray compiled graphs as a transport (`engine.compiled = true`, exact schedule only): a graph
node's output is what its layer sent in that round, {to: [encoded messages]}, and each neighbour
takes only the part addressed to it. The graph and its driver are ptncn_dist/engines/
compiled_graph.py; the layer's node methods ptncn_dist/engines/graph_worker.py."""
from __future__ import annotations

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
