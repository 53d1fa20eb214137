"""The direct data plane as a transport: encoded messages over the layer's `SecureLinks`
(ZeroMQ, CURVE), with the key exchange done through Ray actor calls (which Ray authenticates):
each layer offers its client key and one server socket per neighbour, each receiver allows
exactly its neighbour's client key on that neighbour's socket, then each sender connects.
Frames are read on the actor's event loop (`SecureLinks.attach`), where the mailbox checks
them like any other message."""
from __future__ import annotations

import numpy as np

from .base import Encoded
from .links import SecureLinks, max_frame_bytes


class LinkTransport(Encoded):
    def __init__(self, worker, host: str, loop):
        super().__init__(worker.l, worker.counters, worker.clock_t)
        batch = worker.box.max_batch or 4096
        itemsize = np.dtype(worker.dtype).itemsize
        widths = {}
        for (peer, _), width in worker.box.widths.items():
            widths[peer] = max(width, widths.get(peer, 0))
        self.links = SecureLinks(worker.l, worker.receive, host)
        sockets = {peer: self.links.incoming(peer, max_frame_bytes(batch, w, itemsize)) for peer, w in widths.items()}
        self.offer = {"client": self.links.client_key(), "sockets": sockets}
        self.links.attach(loop)

    def allow(self, offers: dict) -> None:
        for peer, offer in offers.items():
            self.links.allow(peer, offer["client"])

    def connect(self, offers: dict) -> None:
        for peer, offer in offers.items():
            self.links.connect(peer, *offer["sockets"][self.layer])

    def deliver(self, to: int, datas: list[bytes]) -> None:
        self.links.send(to, datas)

    def close(self) -> None:
        self.links.close()
