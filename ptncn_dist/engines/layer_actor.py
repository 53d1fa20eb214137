"""One P-TNCN layer as a Ray actor: its own weights (on its own CPU or GPU), driving the one
schedule (ptncn_dist/core/schedule.py) through a transport; the driver only starts segments and
collects loss sums. Awaited messages come from the actor's mailbox, filled by whichever
transport carries them:

- "calls": a neighbour's `receive` actor call per round (ptncn_dist/transports/ray_calls.py);
- "tcp": direct ZeroMQ links, CURVE-authenticated and encrypted, keys exchanged through these
  actor calls (ptncn_dist/transports/links.py, wired by `open_links` / `link_to`);
- in-process (`connect_direct`): the same worker without Ray, for the unit-test tier.

The compiled-graph worker (graph_worker.py) drives the same schedule a round per graph node.
"""
from __future__ import annotations

import asyncio
import os

from ..core.schedule import Segment, SegmentRun, advance
from ..transports.inprocess import DirectCalls
from ..transports.ray_calls import RayCalls
from .layer_host import LayerHost


class LayerWorker(LayerHost):
    """A layer that runs whole segments on its own, awaiting its neighbours' messages."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.links = None

    # -- wiring -----------------------------------------------------------------------------------
    def connect(self, below, above) -> int:
        """Ray actor calls to the neighbour actors (None where there is none)."""
        handles = {k: h for k, h in ((self.l - 1, below), (self.l + 1, above)) if h is not None}
        self.transport = RayCalls(self.l, self.counters, self.clock_t, handles)
        return os.getpid()

    def connect_direct(self, peers: dict) -> None:
        """Plain method calls into neighbour workers of this process ({layer: worker})."""
        self.transport = DirectCalls(self.l, self.counters, self.clock_t, peers)

    async def open_links(self, host: str | None = None) -> dict:
        """Listen for each neighbour on this node's address (a fresh CURVE key per link);
        returns what the neighbours need: this layer's client key and, per neighbour, the
        (host, port, server key) of the socket that takes its messages."""
        from ..transports.direct import LinkTransport
        if host is None:
            import ray
            host = ray.util.get_node_ip_address()
        self.links = LinkTransport(self, host, asyncio.get_running_loop())
        return self.links.offer

    def allow_links(self, offers: dict) -> None:
        """Round 1 of the key exchange: accept only each neighbour's own client key
        (`offers`: {peer: that peer's `open_links` answer})."""
        self.links.allow(offers)

    def connect_links(self, offers: dict) -> None:
        """Round 2: connect to each neighbour's socket for this layer; messages go by links."""
        self.links.connect(offers)
        self.transport = self.links

    def close_links(self) -> None:
        if self.links is not None:
            self.links.close()
            self.links = None

    # -- running ----------------------------------------------------------------------------------
    async def run_segment(self, x, mask, seg: Segment) -> dict:
        """The one segment loop, this layer's messages awaited from its mailbox; layer 1 gets the
        inputs `x`, every layer the mask. Returns `SegmentRun.end`'s outcome: layer 1's loss sums
        and first non-finite step, every layer its first non-finite sighting, if any."""
        run, clk, box = SegmentRun(seg, [self.sched]), self.clock_t, self.box
        box.batch = seg.batch
        for (gen,) in run.loop(x, mask):
            clk.begin()
            wait = advance(gen, None)
            while wait is not None:
                clk.end("compute", "compute")
                got = tuple([None if k is None else await box.get(k) for k in wait.keys])
                clk.end("wait", wait.name)
                wait = advance(gen, got)
            clk.end("compute", "compute")
            self._step_done()
        self._publish()
        return run.outcome


async def run_workers(workers: list[LayerWorker], x, mask, t0: int, t1: int, **kw) -> dict:
    """Every worker's segment at once in this process's event loop (the Ray-free tier); returns
    layer 1's outcome (`kw`: those of `Segment.of`)."""
    seg = Segment.of(mask, t0, t1, **kw)
    outs = await asyncio.gather(*[w.run_segment(x if w.l == 1 else None, mask, seg) for w in workers])
    return outs[0]
