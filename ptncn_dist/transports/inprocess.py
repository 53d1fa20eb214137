"""In one process: arrays handed over as they are (the local engine), or encoded messages handed
straight to a neighbour worker (the Ray-free test tier of the layer actor)."""
from __future__ import annotations

from .base import Encoded, Transport


class InProcess(Transport):
    """Put each array in the neighbour's mailbox dict, keyed as the schedule awaits it."""

    def __init__(self, layer: int, boxes: list[dict]):
        self.layer, self.boxes = layer, boxes

    def send(self, to: int, clock: int, iteration: int, items: list) -> None:
        box = self.boxes[to - 1]
        for kind, arr in items:
            box[(clock, iteration, kind, self.layer)] = arr


class DirectCalls(Encoded):
    """Encoded messages into the neighbour worker's `receive`, a plain method call: the layer
    actor's logic, mailbox and codec without Ray."""

    def __init__(self, layer: int, counters: dict, clock=None, peers: dict | None = None):
        super().__init__(layer, counters, clock)
        self.peers = peers or {}

    def deliver(self, to: int, datas: list[bytes]) -> None:
        self.peers[to].receive(self.layer, *datas)
