"""The direct links as they were before the ZeroMQ data plane (own framing, the run's token in
clear, unbounded), kept only so `ptncn bench engines` can measure the new links against them
in one run (`engine.transport = "tcp-token"`). Not for use: use "tcp"."""
from __future__ import annotations

from ..engines.tcp_links import TcpLinks
from .base import Encoded


class TokenTcp(Encoded):
    def __init__(self, worker, token: bytes):
        super().__init__(worker.l, worker.counters, worker.clock_t)
        self.worker = worker
        self.links = TcpLinks(token, lambda data: worker.receive(None, data))

    def deliver(self, to: int, datas: list[bytes]) -> None:
        self.links.send(to, datas)
