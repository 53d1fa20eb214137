"""Messages as ordinary Ray actor calls: one `receive` call on the neighbour per round. Ray
authenticates the caller's cluster; the receiving mailbox checks the rest."""
from __future__ import annotations

from .base import Encoded


class RayCalls(Encoded):
    def __init__(self, layer: int, counters: dict, clock=None, handles: dict | None = None):
        super().__init__(layer, counters, clock)
        self.handles = handles or {}

    def deliver(self, to: int, datas: list[bytes]) -> None:
        self.handles[to].receive.remote(self.layer, *datas)
