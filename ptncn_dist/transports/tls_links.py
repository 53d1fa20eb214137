"""Encrypted, authenticated links between neighbouring layers on TLS 1.3 (the standard `ssl`
module, AES-GCM): the API of `links.SecureLinks`, without CURVE's slower cipher.

Each layer endpoint listens on one TCP socket per neighbour it hears from and opens one TLS
connection per neighbour it talks to. Every listening socket has its own server certificate and
trusts exactly one client certificate, the one allowed for that neighbour (mutual TLS, then
pinned: the peer's certificate must equal it byte for byte), so a frame is attributed to the
socket it came in on, never to anything the sender says. Keys are ECDSA P-256 and never leave
the object; certificates are self-signed, valid `CERT_DAYS`. A stranger's cost is bounded:
connections not through the handshake within `handshake_s` are closed, at most `max_pending` of
them are held per socket (more are closed as soon as accepted), and a frame header announcing
more than the socket's `max_bytes` closes its connection before any payload is buffered.

A frame is a 4-byte big-endian length and the bytes; one `send` is one write; frames arrive in
order. When a connection drops (a frame over the limit, even from the allowed sender, drops it)
what was on the wire behind the break is lost, though frames of the same `send` before it may
have arrived; the next `send` raises LinkError, the one after reconnects.

Keys travel through Ray actor calls, which Ray authenticates, in two rounds:

1. every endpoint calls `incoming(peer, max_bytes)` for each neighbour it receives from, and
   `client_key()`; the driver collects the (host, port, server certificate) of each link and the
   client certificate of each endpoint;
2. the driver calls `allow(peer, client certificate of peer)` on each receiver, then
   `connect(peer, host, port, server certificate)` on each sender.

`connect` completes the handshake at once, so the receiver must have called `start()` before.
Threads: every method except `on_message` is called from the owner's thread, which does all
sends. One receiver thread (`start()`, after every `incoming()`) serves all sockets with a
selector and calls `on_message(peer, data)` for each frame.
"""
from __future__ import annotations

import datetime
import hmac
import logging
import os
import select
import selectors
import shutil
import socket
import ssl
import struct
import tempfile
import threading
import time
from typing import Callable

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from .links import _WILDCARDS, LinkError, max_frame_bytes

__all__ = ["TlsLinks", "LinkError", "max_frame_bytes"]

log = logging.getLogger(__name__)

CERT_DAYS = 30
"""How long a link certificate is valid: longer than any run, since a reconnect re-verifies it."""

READ_BUDGET = 4 << 20
"""Bytes read from one connection per turn before the others get theirs."""

_LEN = struct.Struct(">I")


class _Identity:
    """A P-256 key and a self-signed certificate for it; the key stays in this object."""

    def __init__(self, name: str):
        self._key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
                     .public_key(self._key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(now - datetime.timedelta(minutes=5))
                     .not_valid_after(now + datetime.timedelta(days=CERT_DAYS))
                     .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                     .sign(self._key, hashes.SHA256()))
        self.pem = self.cert.public_bytes(serialization.Encoding.PEM)

    def context(self, server: bool, trusted_pem: bytes | None) -> ssl.SSLContext:
        """A TLS 1.3 context presenting this identity and trusting exactly `trusted_pem` (nobody
        while None). load_cert_chain only reads files: the key is written to a private directory
        and deleted at once."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_REQUIRED
        if server:
            ctx.num_tickets = 1  # sent only once the client is verified: connect() waits for it
        key = self._key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())
        folder = tempfile.mkdtemp(prefix="tls-links-")
        try:
            os.chmod(folder, 0o700)
            path = os.path.join(folder, "identity.pem")
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(key + self.pem)
            ctx.load_cert_chain(path)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        if trusted_pem is not None:
            ctx.load_verify_locations(cadata=trusted_pem.decode("ascii"))
        return ctx


def _der(pem: bytes) -> bytes:
    """The DER form of a PEM certificate; ValueError if it is none."""
    return x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)


class _Conn:
    """An accepted connection: its handshake deadline (None once authenticated) and the frame
    being read: its header, then its payload into a buffer kept for the connection (grown to the
    largest frame seen, at most max_bytes)."""

    def __init__(self, sock: ssl.SSLSocket, peer: int, deadline: float):
        self.sock, self.peer, self.deadline = sock, peer, deadline
        self.header, self.got, self.size = bytearray(4), 0, -1
        self.buf = bytearray()


class TlsLinks:
    """The links of one layer endpoint: a TLS server socket per incoming neighbour, a TLS client
    connection per outgoing neighbour. `hwm` is accepted for SecureLinks' signature; TCP's own
    buffers bound the queue here."""

    def __init__(self, layer: int, on_message: Callable[[int, bytes], None], host: str, *,
                 hwm: int = 64, handshake_s: float = 5.0, send_timeout_s: float = 60.0,
                 max_pending: int = 64):
        if host in _WILDCARDS:
            raise ValueError(f"layer {layer}: links bind a given address, not the wildcard {host!r}")
        self.layer, self.on_message, self.host = layer, on_message, host
        self.hwm, self.handshake_s, self.send_timeout_s = hwm, handshake_s, send_timeout_s
        self.max_pending = max_pending
        self.dropped: dict[str, int] = {}
        self._client = _Identity(f"layer{layer}-client")
        self._in: dict[int, socket.socket] = {}
        self._max: dict[int, int] = {}
        self._server: dict[int, _Identity] = {}
        self._ctx: dict[int, ssl.SSLContext] = {}
        self._allowed: dict[int, bytes | None] = {}
        self._targets: dict[int, tuple[str, int, ssl.SSLContext, bytes]] = {}
        self._out: dict[int, tuple[ssl.SSLSocket, select.poll] | None] = {}
        self._wake_r, self._wake_w = socket.socketpair()
        self._thread: threading.Thread | None = None
        self._closed = False

    def incoming(self, peer: int, max_bytes: int) -> tuple[str, int, bytes]:
        """Listen for `peer` on a random port; return (host, port, server certificate PEM).
        Frames over `max_bytes` are never delivered; no client gets in before `allow()`."""
        if self._closed or self._thread is not None or peer in self._in:
            raise LinkError(f"layer {self.layer}: incoming({peer}) after start, close or twice")
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.create_server((self.host, 0), family=family, backlog=socket.SOMAXCONN)
        sock.setblocking(False)
        self._server[peer] = _Identity(f"layer{self.layer}-from{peer}")
        self._ctx[peer] = self._server[peer].context(server=True, trusted_pem=None)
        self._in[peer], self._max[peer], self._allowed[peer] = sock, max_bytes, None
        return self.host, sock.getsockname()[1], self._server[peer].pem

    def client_key(self) -> bytes:
        """This endpoint's client certificate (PEM, public); its key never leaves."""
        return self._client.pem

    def allow(self, peer: int, client_cert_pem: bytes) -> None:
        """Trust on the socket for `peer` only `client_cert_pem`, replacing any earlier one (a new
        server context, since a context cannot forget a certificate)."""
        if peer not in self._in:
            raise LinkError(f"layer {self.layer} has no incoming link from layer {peer}")
        der = _der(client_cert_pem)
        self._ctx[peer] = self._server[peer].context(server=True, trusted_pem=client_cert_pem)
        self._allowed[peer] = der

    def connect(self, peer: int, host: str, port: int, server_cert_pem: bytes) -> None:
        """Open the link to `peer` trusting exactly `server_cert_pem`, replacing any earlier one.
        Returns once the receiver has verified this endpoint's certificate; LinkError if it does
        not within handshake_s."""
        if self._closed:
            raise LinkError(f"layer {self.layer}: links are closed")
        self._drop_out(peer)
        ctx = self._client.context(server=False, trusted_pem=server_cert_pem)
        self._targets[peer] = (host, port, ctx, _der(server_cert_pem))
        self._open(peer)

    def _open(self, peer: int) -> None:
        host, port, ctx, der = self._targets[peer]
        deadline = time.monotonic() + self.handshake_s
        raw = None
        try:
            raw = socket.create_connection((host, port), timeout=self.handshake_s)
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            tls = ctx.wrap_socket(raw, server_side=False)
        except (OSError, ValueError) as exc:
            if raw is not None:
                raw.close()
            raise LinkError(f"layer {self.layer}: could not open the link to layer {peer}: {exc}") from None
        try:
            if not hmac.compare_digest(tls.getpeercert(binary_form=True) or b"", der):
                raise LinkError(f"layer {self.layer}: layer {peer} presented another certificate")
            # TLS 1.3 ends the client's handshake before the server has checked the client's
            # certificate; the server's session ticket is the sign that it accepted it.
            tls.setblocking(False)
            poll = select.poll()
            poll.register(tls, select.POLLIN)
            while not (tls.session and tls.session.has_ticket):
                if not poll.poll(max(0, int((deadline - time.monotonic()) * 1000))):
                    raise LinkError(f"layer {self.layer}: layer {peer} did not accept the link "
                                    f"within {self.handshake_s} s")
                try:
                    if tls.recv(1) == b"":
                        raise LinkError(f"layer {self.layer}: layer {peer} closed the link at once")
                except ssl.SSLWantReadError:
                    continue
            tls.settimeout(self.send_timeout_s)
        except (LinkError, OSError) as exc:
            tls.close()
            if isinstance(exc, LinkError):
                raise
            raise LinkError(f"layer {self.layer}: layer {peer} refused the link: {exc}") from None
        self._out[peer] = (tls, poll)

    def _drop_out(self, peer: int) -> None:
        out = self._out.pop(peer, None)
        if out is not None:
            out[0].close()

    def send(self, peer: int, frames: list[bytes]) -> None:
        """Send `frames` to `peer` in one write, each one `on_message` call there, in order.
        Owner's thread only. Raises LinkError when the write does not complete within
        send_timeout_s or the link is broken (the receiver never writes after the handshake, so
        a readable socket means it closed the link); the next call reconnects first."""
        if self._closed:
            raise LinkError(f"layer {self.layer}: links are closed")
        if peer not in self._targets:
            raise LinkError(f"layer {self.layer} has no link to layer {peer}")
        if not frames:
            return
        if self._out.get(peer) is None:
            self._open(peer)
        tls, poll = self._out[peer]
        try:
            if poll.poll(0):
                raise ConnectionResetError("the receiver closed the link")
            tls.sendall(b"".join(part for f in frames for part in (_LEN.pack(len(f)), f)))
        except OSError as exc:
            self._drop_out(peer)
            raise LinkError(f"layer {self.layer}: a send to layer {peer} failed: {exc!r}") from None

    def start(self) -> None:
        """Start the receiver thread (a daemon) serving every listening socket."""
        if self._closed or self._thread is not None:
            raise LinkError(f"layer {self.layer}: start() after start or close")
        self._thread = threading.Thread(target=self._receive, daemon=True, name=f"tls-links-layer{self.layer}")
        self._thread.start()

    def _receive(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self._wake_r, selectors.EVENT_READ)
        for peer, sock in self._in.items():
            sel.register(sock, selectors.EVENT_READ, peer)
        pending: dict[_Conn, float] = {}
        counts = dict.fromkeys(self._in, 0)
        again: set[_Conn] = set()

        def close(conn: _Conn) -> None:
            if pending.pop(conn, None) is not None:
                counts[conn.peer] -= 1
            again.discard(conn)
            sel.unregister(conn.sock)
            conn.sock.close()

        try:
            while True:
                if again:
                    timeout = 0.0
                else:
                    timeout = max(0.0, min(pending.values()) - time.monotonic()) if pending else None
                events = sel.select(timeout)
                for key, mask in events:
                    if key.fileobj is self._wake_r:
                        return
                    if isinstance(key.data, int):
                        self._accept(key.fileobj, key.data, sel, pending, counts)
                    elif key.data.deadline is not None:
                        self._handshake(key.data, sel, pending, counts, again, close)
                    else:
                        self._read(key.data, again, close)
                for conn in [c for c in again if not any(k.data is c for k, _ in events)]:
                    self._read(conn, again, close)
                now = time.monotonic()
                for conn in [c for c, d in pending.items() if d <= now]:
                    close(conn)
        finally:
            for key in list(sel.get_map().values()):
                if isinstance(key.data, _Conn):
                    key.data.sock.close()
            sel.close()

    def _accept(self, listener, peer, sel, pending, counts) -> None:
        """Accept what is waiting; close at once what exceeds max_pending."""
        for _ in range(64):
            try:
                sock, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # out of descriptors: the backlog keeps the rest for later
                return self._drop("accept", peer, repr(exc))
            if counts[peer] >= self.max_pending:
                sock.close()
                continue
            try:
                sock.setblocking(False)
                tls = self._ctx[peer].wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
            except OSError:
                sock.close()
                continue
            conn = _Conn(tls, peer, time.monotonic() + self.handshake_s)
            pending[conn] = conn.deadline
            counts[peer] += 1
            sel.register(tls, selectors.EVENT_READ, conn)

    def _handshake(self, conn, sel, pending, counts, again, close) -> None:
        """Drive the server handshake a step; once done, pin the client's certificate."""
        try:
            conn.sock.do_handshake()
        except ssl.SSLWantReadError:
            return sel.modify(conn.sock, selectors.EVENT_READ, conn)
        except ssl.SSLWantWriteError:
            return sel.modify(conn.sock, selectors.EVENT_WRITE, conn)
        except (OSError, ValueError):
            return close(conn)
        allowed = self._allowed[conn.peer]
        if allowed is None or not hmac.compare_digest(conn.sock.getpeercert(binary_form=True) or b"", allowed):
            return close(conn)
        del pending[conn]
        counts[conn.peer] -= 1
        conn.deadline = None
        sel.modify(conn.sock, selectors.EVENT_READ, conn)
        self._read(conn, again, close)

    def _read(self, conn: _Conn, again: set, close) -> None:
        """Read frames until the socket has nothing more or the turn's budget is spent (then the
        connection is served again without waiting for the selector: TLS may hold decrypted bytes
        the selector cannot see). A header over the limit closes the connection."""
        again.discard(conn)
        budget = READ_BUDGET
        try:
            while budget > 0:
                if conn.size < 0:
                    n = conn.sock.recv_into(memoryview(conn.header)[conn.got:], 4 - conn.got)
                else:
                    n = conn.sock.recv_into(memoryview(conn.buf)[conn.got:conn.size], conn.size - conn.got)
                if n == 0:
                    return close(conn)
                conn.got += n
                budget -= n
                if conn.size < 0 and conn.got == 4:
                    conn.size, conn.got = _LEN.unpack(conn.header)[0], 0
                    if conn.size > self._max[conn.peer]:
                        self._drop("oversized", conn.peer, f"{conn.size} bytes, over the {self._max[conn.peer]}-byte limit")
                        return close(conn)
                    if len(conn.buf) < conn.size:
                        conn.buf = bytearray(conn.size)
                if conn.size >= 0 and conn.got == conn.size:
                    data, conn.size, conn.got = bytes(memoryview(conn.buf)[:conn.size]), -1, 0
                    self._deliver(conn.peer, data)
            again.add(conn)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            if conn.sock.pending():
                again.add(conn)
        except OSError:
            close(conn)

    def _deliver(self, peer: int, data: bytes) -> None:
        """Hand one frame to on_message; an exception from it is counted, and the thread goes on."""
        try:
            self.on_message(peer, data)
        except Exception as exc:
            self._drop(type(exc).__name__, peer, repr(exc))

    def _drop(self, reason: str, peer: int, detail: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1
        if self.dropped[reason] == 1:
            log.warning("layer %d: dropped a message or connection from layer %d (%s); later drops for this reason "
                        "are only counted", self.layer, peer, detail)

    def close(self) -> None:
        """Stop the receiver thread, close every socket. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._thread is not None:
            self._wake_w.send(b"x")
            self._thread.join()
        for peer in list(self._out):
            self._drop_out(peer)
        for sock in [*self._in.values(), self._wake_r, self._wake_w]:
            sock.close()
        self._in, self._targets = {}, {}
