"""Encrypted, authenticated links between neighbouring layers, on ZeroMQ with CURVE.

Each layer endpoint binds one PULL socket per neighbour it hears from and connects one PUSH
socket per neighbour it talks to. Every link has its own CURVE server keypair, and a ZAP handler
accepts on it only the one client key the driver allowed for that neighbour, so a message is
attributed to the link's socket, never to anything it says about itself. zmq bounds what a
stranger can cost: frames over the link's size limit drop the connection, connections that do
not finish the handshake within `handshake_s` are closed, and queues stop at `hwm` messages.
A frame over the limit, even from the allowed sender, drops its connection: that message and
any already on the wire behind it are lost; zmq reconnects the sender (in about 0.1 s) and then
delivers what it still held.

Keys travel through Ray actor calls, which Ray authenticates, in two rounds:

1. every endpoint calls `incoming(peer, max_bytes)` for each neighbour it receives from, and
   `client_key()`; the driver collects the (host, port, server key) of each link and the client
   key of each endpoint;
2. the driver calls `allow(peer, client key of peer)` on each receiver, then
   `connect(peer, host, port, server key)` on each sender; each endpoint then calls `start()`.

Threads: every method except `on_message` is called from one thread, the owner's (zmq sockets
are not thread-safe); all sends happen on that thread. `start()` hands the incoming sockets to
one receiver thread, which calls `on_message(peer, data)` for each frame received; `attach(loop)`
instead delivers on the owner's asyncio loop (the layer actors use it: one thread hop fewer per
message); `incoming()` comes before either. The ZAP handler is pyzmq's authenticator thread.
On the loop, a socket's read stops after DRAIN_BATCH frames (a multipart message is read whole)
and goes on in a later turn: a flood, even of frames the mailbox drops, cannot starve the
layer's own step.
"""
from __future__ import annotations

import hmac
import logging
import threading
from typing import Callable

import zmq
import zmq.auth.thread
from zmq.utils import z85

from ..errors import PtncnError

log = logging.getLogger(__name__)

HEADER_BYTES = 62
"""Largest msgpack overhead of one `Message.encode`: array header (1), version (1), step,
iteration and layer (9 each), kind (5), dtype (4), shape (1 + 9 + 9), bin header (5)."""

CURVE_OVERHEAD = 33
"""Bytes CURVE adds to a frame on the wire ("MESSAGE" command 8, nonce 8, MAC 16, flags 1);
zmq applies ZMQ_MAXMSGSIZE to the wire frame, so the limit given to zmq adds them."""

HANDSHAKE_FLOOR = 1024
"""The least ZMQ_MAXMSGSIZE given to zmq: the CURVE handshake (INITIATE, about 280 bytes) must
fit under the same limit. Frames between max_bytes and this are dropped by the receiver thread."""

DRAIN_BATCH = 64
"""Frames read from one socket per turn of the event loop before the read yields to the loop."""

_WILDCARDS = {"", "*", "0.0.0.0", "::"}


class LinkError(PtncnError, ConnectionError):
    """A link is missing, closed, or a send to it did not complete in time."""


def max_frame_bytes(batch: int, width: int, itemsize: int) -> int:
    """The largest `Message.encode` of a (batch, width) array of `itemsize`-byte floats: a size
    limit for a link that no proper message reaches."""
    return batch * width * itemsize + HEADER_BYTES


class _AllowedKey:
    """The one client key a link accepts; none until `allow()`. Called by the ZAP handler."""

    def __init__(self):
        self.key: bytes | None = None

    def callback(self, domain: str, key: bytes) -> bool:
        return self.key is not None and hmac.compare_digest(key, self.key)


class SecureLinks:
    """The links of one layer endpoint: a CURVE-server PULL socket per incoming neighbour, a
    CURVE-client PUSH socket per outgoing neighbour, all in a zmq context of its own (its ZAP
    handler then serves only these sockets)."""

    def __init__(self, layer: int, on_message: Callable[[int, bytes], None], host: str, *,
                 hwm: int = 64, handshake_s: float = 5.0, send_timeout_s: float = 60.0):
        if host in _WILDCARDS:
            raise ValueError(f"layer {layer}: links bind a given address, not the wildcard {host!r}")
        self.layer, self.on_message, self.host = layer, on_message, host
        self.hwm, self.handshake_s, self.send_timeout_s = hwm, handshake_s, send_timeout_s
        self.dropped: dict[str, int] = {}
        self._public, self._secret = zmq.curve_keypair()
        self._ctx = zmq.Context()
        # The authenticator runs before any socket binds: without a ZAP handler, CURVE accepts any key.
        self._auth = zmq.auth.thread.ThreadAuthenticator(self._ctx, log=log.getChild("zap"))
        self._auth.start()
        self._in: dict[int, zmq.Socket] = {}
        self._max: dict[int, int] = {}
        self._allowed: dict[int, _AllowedKey] = {}
        self._out: dict[int, zmq.Socket] = {}
        self._stop: zmq.Socket | None = None
        self._thread: threading.Thread | None = None
        self._loop = None
        self._queued: set[int] = set()  # peers whose socket has a read waiting on the loop
        self._closed = False

    def incoming(self, peer: int, max_bytes: int) -> tuple[str, int, bytes]:
        """Bind the socket that receives from `peer` on a random port; return (host, port, server
        public key). Frames over `max_bytes` are never delivered; no client gets in before
        `allow()`."""
        if self._closed or self._thread is not None or self._loop is not None or peer in self._in:
            raise LinkError(f"layer {self.layer}: incoming({peer}) after start, close or twice")
        public, secret = zmq.curve_keypair()
        domain = f"layer{self.layer}-from{peer}"
        self._allowed[peer] = _AllowedKey()
        self._auth.configure_curve_callback(domain, self._allowed[peer])
        sock = self._ctx.socket(zmq.PULL)
        sock.curve_server, sock.curve_publickey, sock.curve_secretkey = True, public, secret
        sock.zap_domain = domain.encode()
        sock.maxmsgsize = max(max_bytes + CURVE_OVERHEAD, HANDSHAKE_FLOOR)
        sock.rcvhwm, sock.linger = self.hwm, 0
        sock.handshake_ivl = int(self.handshake_s * 1000)
        port = sock.bind_to_random_port(f"tcp://{self.host}")
        self._in[peer], self._max[peer] = sock, max_bytes
        return self.host, port, public

    def client_key(self) -> bytes:
        """This endpoint's CURVE client public key (z85); the secret key never leaves."""
        return self._public

    def allow(self, peer: int, client_public: bytes) -> None:
        """Accept on the link from `peer` only the client key `client_public` (z85), replacing
        any earlier one; every other key is refused by the ZAP handler."""
        if peer not in self._allowed:
            raise LinkError(f"layer {self.layer} has no incoming link from layer {peer}")
        if len(client_public) != 40 or len(z85.decode(client_public)) != 32:
            raise ValueError(f"layer {self.layer}: a CURVE public key is 40 z85 characters")
        self._allowed[peer].key = bytes(client_public)

    def connect(self, peer: int, host: str, port: int, server_public: bytes) -> None:
        """Open the link to `peer`, replacing any earlier one. zmq connects in the background,
        reconnects after a drop, and keeps up to `hwm` messages until the handshake is done."""
        if self._closed:
            raise LinkError(f"layer {self.layer}: links are closed")
        old = self._out.pop(peer, None)
        if old is not None:
            old.close()
        sock = self._ctx.socket(zmq.PUSH)
        sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = server_public, self._public, self._secret
        sock.sndhwm, sock.linger = self.hwm, 0
        sock.sndtimeo = int(self.send_timeout_s * 1000)
        sock.handshake_ivl = int(self.handshake_s * 1000)
        sock.connect(f"tcp://{host}:{port}")
        self._out[peer] = sock

    def send(self, peer: int, frames: list[bytes]) -> None:
        """Send `frames` to `peer` as one multipart message: all arrive, in order, or none do; each
        frame is one `on_message` call there. Owner's thread only. Raises LinkError when zmq
        cannot take the message within send_timeout_s (the peer's queue is full or it is gone)."""
        sock = self._out.get(peer)
        if sock is None:
            raise LinkError(f"layer {self.layer} has no link to layer {peer}")
        if not frames:
            return
        try:
            sock.send_multipart(frames)
        except zmq.Again:
            raise LinkError(f"layer {self.layer}: a send to layer {peer} did not complete within "
                            f"{self.send_timeout_s} s") from None
        except zmq.ZMQError as exc:
            raise LinkError(f"layer {self.layer}: the link to layer {peer} failed: {exc}") from None

    def start(self) -> None:
        """Start the receiver thread (a daemon) that polls every incoming socket."""
        if self._closed or self._thread is not None or self._loop is not None:
            raise LinkError(f"layer {self.layer}: start() after start, attach or close")
        self._stop = self._ctx.socket(zmq.PAIR)
        self._stop.bind("inproc://stop")
        stopped = self._ctx.socket(zmq.PAIR)
        stopped.connect("inproc://stop")
        self._thread = threading.Thread(target=self._receive, args=(stopped,), daemon=True,
                                        name=f"links-layer{self.layer}")
        self._thread.start()

    def attach(self, loop) -> None:
        """Instead of `start()`: deliver on the owner's asyncio event loop (call this on it). The
        loop watches each incoming socket's notification descriptor and drains the socket when
        it fires, so a frame reaches `on_message` without a thread hop; zmq's I/O thread keeps
        receiving into the queue while the loop computes."""
        if self._closed or self._thread is not None or self._loop is not None:
            raise LinkError(f"layer {self.layer}: attach() after start, attach or close")
        self._loop = loop
        for peer, sock in self._in.items():
            loop.add_reader(sock.getsockopt(zmq.FD), self._readable, peer, sock)
            self._queue_drain(peer, sock)

    def _readable(self, peer: int, sock: zmq.Socket) -> None:
        if peer not in self._queued:
            self._drain(peer, sock)

    def _queue_drain(self, peer: int, sock: zmq.Socket) -> None:
        self._queued.add(peer)
        self._loop.call_soon(self._drain, peer, sock)

    def _drain(self, peer: int, sock: zmq.Socket) -> None:
        """About DRAIN_BATCH frames waiting on `sock`; if more wait, another read later in the
        loop (zmq's descriptor is edge-triggered: it does not fire again for frames already
        queued, so the socket is read until empty, a batch per turn)."""
        self._queued.discard(peer)
        budget = DRAIN_BATCH
        while budget > 0:
            if self._closed or not sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                return
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            budget -= len(frames)
            for data in frames:
                self._deliver(peer, data)
        if not self._closed:
            self._queue_drain(peer, sock)

    def _receive(self, stopped: zmq.Socket) -> None:
        poller = zmq.Poller()
        poller.register(stopped, zmq.POLLIN)
        peers = {}
        for peer, sock in self._in.items():
            poller.register(sock, zmq.POLLIN)
            peers[sock] = peer
        try:
            while True:
                for sock, _ in poller.poll():
                    if sock is stopped:
                        return
                    try:
                        frames = sock.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        continue
                    for data in frames:
                        self._deliver(peers[sock], data)
        finally:
            stopped.close()

    def _deliver(self, peer: int, data: bytes) -> None:
        """Hand one frame to on_message. A frame over the link's limit, or one on_message raises
        for, is counted in `dropped` by reason (logged the first time); the thread goes on."""
        if len(data) > self._max[peer]:
            return self._drop("oversized", peer, f"{len(data)} bytes, over the {self._max[peer]}-byte limit")
        try:
            self.on_message(peer, data)
        except Exception as exc:
            self._drop(type(exc).__name__, peer, repr(exc))

    def _drop(self, reason: str, peer: int, detail: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1
        if self.dropped[reason] == 1:
            log.warning("layer %d: dropped a message from layer %d (%s); later drops for this reason "
                        "are only counted", self.layer, peer, detail)

    def close(self) -> None:
        """Stop the receiver thread, close every socket, stop the ZAP handler, end the context.
        Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._thread is not None:
            self._stop.send(b"")
            self._thread.join()
            self._stop.close()
        if self._loop is not None and not self._loop.is_closed():
            for sock in self._in.values():
                self._loop.remove_reader(sock.getsockopt(zmq.FD))
        for sock in [*self._in.values(), *self._out.values()]:
            sock.close()
        self._in, self._out = {}, {}
        self._auth.stop()
        self._ctx.term()
