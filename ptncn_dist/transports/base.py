"""What every transport offers the schedule: `send(to, clock, iteration, items)`, where items are
(kind, array) pairs for neighbour layer `to`. Transports move messages and nothing else."""
from __future__ import annotations

from abc import ABC, abstractmethod

from ..core.backend import to_numpy
from .messages import Message


class Transport(ABC):
    """One layer's way of reaching its neighbours."""

    @abstractmethod
    def send(self, to: int, clock: int, iteration: int, items: list) -> None:
        """Hand `items` [(kind, array), ...] of step `clock`, round `iteration` to layer `to`."""

    def close(self) -> None:
        """Release sockets or threads, if any."""


class Encoded(Transport):
    """Messages as msgpack frames (`messages.Message`), counted and timed; a subclass moves the
    bytes (`deliver`). `clock` is the layer's PhaseClock: encoding and handing over is "comm"."""

    def __init__(self, layer: int, counters: dict, clock=None):
        self.layer, self.counters, self.clock = layer, counters, clock

    def send(self, to: int, clock: int, iteration: int, items: list) -> None:
        if self.clock is not None:
            self.clock.end("compute", "compute")
        datas = [Message(clock, self.layer, kind, to_numpy(arr), iteration).encode() for kind, arr in items]
        self.counters["sent_bytes"] += sum(len(d) for d in datas)
        self.counters["sent_msgs"] += len(datas)
        self.deliver(to, datas)
        if self.clock is not None:
            self.clock.end("comm", "send " + ", ".join(k for k, _ in items))

    @abstractmethod
    def deliver(self, to: int, datas: list[bytes]) -> None:
        """Move one round's encoded messages to layer `to`."""
