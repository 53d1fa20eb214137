"""Direct TCP links between neighbouring layer actors (`engine.transport = "tcp"`).

An actor call costs about half a millisecond on a small machine; a step of the exact schedule
makes up to four per layer. Here each layer actor listens on its own Ray node address (a
127.0.0.x address on one machine) and its neighbours connect once; after a handshake with the
run's random token, messages are the same msgpack records as with actor calls, each prefixed by
its length. A connection that does not present the token is closed before anything is read.

Each incoming link is read by a thread of its own, never by the actor's event loop: the loop
runs the layer's arithmetic, and a message of a few hundred kilobytes must keep flowing while
it does (NumPy releases the GIL in its kernels). A received message is handed to the loop with
`call_soon_threadsafe`. Sending is a blocking `sendall` from the loop: the peer's reader
thread drains its socket, so a send never waits on the peer's arithmetic.
"""
from __future__ import annotations

import asyncio
import hmac
import socket
import threading

_LEN = 4


def _header(data) -> bytes:
    return len(data).to_bytes(_LEN, "big")


def frame(data: bytes) -> bytes:
    return _header(data) + data


def _read_exactly(sock: socket.socket, n: int) -> bytearray:
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        k = sock.recv_into(view[got:])
        if k == 0:
            raise ConnectionError("link closed")
        got += k
    return buf


class TcpLinks:
    """One listening socket (incoming messages from both neighbours, each link read by a daemon
    thread) and one sending socket per neighbour."""

    def __init__(self, token: bytes, on_message):
        self.token, self.on_message = token, on_message
        self.loop = None
        self.server: socket.socket | None = None
        self.peers: dict[int, socket.socket] = {}
        self.sockets: list[socket.socket] = []

    async def listen(self, host: str) -> tuple[str, int]:
        self.loop = asyncio.get_running_loop()
        self.server = socket.create_server((host, 0))
        threading.Thread(target=self._accept, args=(self.server,), daemon=True).start()
        return host, self.server.getsockname()[1]

    async def connect(self, peer: int, host: str, port: int) -> None:
        sock = await asyncio.get_running_loop().run_in_executor(None, socket.create_connection, (host, port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(frame(self.token))
        self.sockets.append(sock)
        self.peers[peer] = sock

    def send(self, peer: int, datas) -> None:
        """One round's messages for `peer`, framed and written in one call. A peer whose link
        is broken is dropped: its process is gone, and the driver, which sees that failure
        itself, rebuilds the layers; this side just waits to be replaced."""
        sock = self.peers.get(peer)
        if sock is None:
            return
        try:
            sock.sendall(b"".join(part for d in datas for part in (_header(d), d)))
        except OSError:
            self.peers.pop(peer, None)

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            self.sockets.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            n = int.from_bytes(_read_exactly(conn, _LEN), "big")
            if n != len(self.token) or not hmac.compare_digest(_read_exactly(conn, n), self.token):
                return
            while True:
                n = int.from_bytes(_read_exactly(conn, _LEN), "big")
                self.loop.call_soon_threadsafe(self.on_message, _read_exactly(conn, n))
        except (ConnectionError, OSError, RuntimeError):
            return
        finally:
            conn.close()

    def close(self) -> None:
        self.peers = {}
        for s in self.sockets + ([self.server] if self.server is not None else []):
            try:
                s.close()
            except OSError:
                pass
        self.sockets, self.server = [], None
