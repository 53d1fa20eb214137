"""Direct TCP links between neighbouring layer actors (`engine.transport = "tcp"`).

An actor call costs about half a millisecond on a small machine; a step of the exact schedule
makes up to four per layer. Here each layer actor listens on its own Ray node address (a
127.0.0.x address on one machine) and its neighbours connect once; after a handshake with the
run's random token, messages are the same msgpack records as with actor calls, each prefixed by
its length. A connection that does not present the token is closed before anything is read.
"""
from __future__ import annotations

import asyncio
import hmac

_LEN = 4


def frame(data: bytes) -> bytes:
    return len(data).to_bytes(_LEN, "big") + data


class TcpLinks:
    """One server (incoming messages from both neighbours) and one client link per neighbour."""

    def __init__(self, token: bytes, on_message):
        self.token, self.on_message = token, on_message
        self.server = None
        self.writers: dict[int, asyncio.StreamWriter] = {}

    async def listen(self, host: str) -> tuple[str, int]:
        self.server = await asyncio.start_server(self._serve, host=host, port=0)
        return host, self.server.sockets[0].getsockname()[1]

    async def connect(self, peer: int, host: str, port: int) -> None:
        _, writer = await asyncio.open_connection(host, port)
        writer.write(frame(self.token))
        await writer.drain()
        self.writers[peer] = writer

    def send(self, peer: int, datas) -> None:
        self.writers[peer].write(b"".join(frame(d) for d in datas))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            n = int.from_bytes(await reader.readexactly(_LEN), "big")
            if n != len(self.token) or not hmac.compare_digest(await reader.readexactly(n), self.token):
                return
            while True:
                n = int.from_bytes(await reader.readexactly(_LEN), "big")
                self.on_message(await reader.readexactly(n))
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            writer.close()

    def close(self) -> None:
        for w in self.writers.values():
            w.close()
        self.writers = {}
        if self.server is not None:
            self.server.close()
            self.server = None
