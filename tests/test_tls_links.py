"""TlsLinks on real sockets on 127.0.0.1: delivery, refused certificates, garbage, size limits,
idle connection floods, the pending-handshake limit, a raising on_message, close. No Ray."""
import logging
import os
import queue
import resource
import socket
import ssl
import threading

import numpy as np
import pytest

from ptncn_dist.messages import Message
from ptncn_dist.transports.tls_links import LinkError, TlsLinks, _Identity

HOST = "127.0.0.1"
HANDSHAKE_S = 0.5


class Endpoint:
    """A TlsLinks whose received frames land in a queue."""

    def __init__(self, layer, **kw):
        self.got = queue.Queue()
        kw.setdefault("handshake_s", HANDSHAKE_S)
        self.links = TlsLinks(layer, lambda peer, data: self.got.put((peer, data)), HOST, **kw)

    def next(self, timeout=5.0):
        return self.got.get(timeout=timeout)


@pytest.fixture
def endpoints():
    made = []

    def make(layer, **kw):
        made.append(Endpoint(layer, **kw))
        return made[-1]

    yield make
    for e in made:
        e.links.close()


def link(sender, receiver, max_bytes=4096):
    """The two rounds of the key exchange for the link sender -> receiver (the receiver started
    first, as connect() needs); returns its address."""
    host, port, server_cert = receiver.links.incoming(sender.links.layer, max_bytes)
    receiver.links.start()
    receiver.links.allow(sender.links.layer, sender.links.client_key())
    sender.links.connect(receiver.links.layer, host, port, server_cert)
    return host, port, server_cert


def raw_tls(host, port, server_cert, identity):
    """A bare TLS client presenting `identity`: its handshake ends before the server has checked
    its certificate (TLS 1.3), so it can write at once."""
    ctx = identity.context(server=False, trusted_pem=server_cert)
    return ctx.wrap_socket(socket.create_connection((host, port), timeout=5))


def read_to_close(sock, timeout):
    """Read a socket until the server closes it; True if it did within `timeout`."""
    sock.settimeout(timeout)
    try:
        while sock.recv(4096):
            pass
    except (ConnectionResetError, ssl.SSLError):
        pass
    except socket.timeout:
        return False
    return True


def test_round_trip_both_ways(endpoints):
    a, b = endpoints(1), endpoints(2)
    big = 16 * 1024 * 8 + 62
    host_b, port_b, cert_b = b.links.incoming(1, big)
    host_a, port_a, cert_a = a.links.incoming(2, big)
    a.links.start()
    b.links.start()
    b.links.allow(1, a.links.client_key())
    a.links.allow(2, b.links.client_key())
    a.links.connect(2, host_b, port_b, cert_b)
    b.links.connect(1, host_a, port_a, cert_a)
    up = [Message(7, 1, "z", np.random.default_rng(0).standard_normal((16, 1024))),
          Message(7, 1, "z", np.ones((16, 3)), iteration=1)]
    down = Message(7, 2, "pred", np.full((16, 3), -2.5, np.float32))
    a.links.send(2, [m.encode() for m in up])
    b.links.send(1, [down.encode()])
    for m in up:
        peer, data = b.next()
        got = Message.decode(data)
        assert peer == 1 and (got.step, got.kind, got.iteration) == (m.step, m.kind, m.iteration)
        np.testing.assert_array_equal(got.array, m.array)
    peer, data = a.next()
    assert peer == 2 and Message.decode(data).array.dtype == np.float32
    np.testing.assert_array_equal(Message.decode(data).array, down.array)


def test_an_unknown_certificate_cannot_deliver(endpoints):
    """Before allow() nobody gets in; afterwards a stranger's certificate is refused, even when
    it writes right after its own handshake; the good link goes on."""
    a, b, stranger = endpoints(1), endpoints(2), endpoints(9)
    host, port, cert = b.links.incoming(1, 4096)
    b.links.start()
    with pytest.raises(LinkError, match="refused"):
        a.links.connect(2, host, port, cert)
    b.links.allow(1, a.links.client_key())
    a.links.connect(2, host, port, cert)
    with pytest.raises(LinkError, match="refused"):
        stranger.links.connect(2, host, port, cert)
    with raw_tls(host, port, cert, _Identity("stranger")) as raw:
        try:
            raw.sendall(b"\x00\x00\x00\x08stranger")
        except OSError:
            pass  # the server's refusal may already have arrived
        assert read_to_close(raw, 5)
    a.links.send(2, [b"from 1"])
    assert b.next() == (1, b"from 1")
    assert b.got.empty()


def test_the_other_neighbours_certificate_is_refused_on_the_wrong_socket(endpoints):
    a, b, c = endpoints(1), endpoints(2), endpoints(3)
    host, port1, cert1 = b.links.incoming(1, 4096)
    _, port3, cert3 = b.links.incoming(3, 4096)
    b.links.start()
    b.links.allow(1, a.links.client_key())
    b.links.allow(3, c.links.client_key())
    with pytest.raises(LinkError, match="refused"):
        c.links.connect(2, host, port1, cert1)
    with pytest.raises(LinkError, match="layer 2"):  # its trust check fails before the pin
        c.links.connect(2, host, port3, cert1)
    c.links.connect(2, host, port3, cert3)
    a.links.connect(2, host, port1, cert1)
    c.links.send(2, [b"from 3"])
    a.links.send(2, [b"from 1"])
    assert sorted([b.next(), b.next()]) == [(1, b"from 1"), (3, b"from 3")]
    assert b.got.empty()


@pytest.mark.parametrize("garbage", [b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", os.urandom(4096),
                                     b"\x00\x00\x00\x05hello", b"\x16\x03\x01\xff\xff" + bytes(64)])
def test_tcp_garbage_is_dropped(endpoints, garbage):
    a, b = endpoints(1), endpoints(2)
    host, port, _ = link(a, b)
    with socket.create_connection((host, port), timeout=5) as raw:
        raw.sendall(garbage)
        assert read_to_close(raw, 5)
    a.links.send(2, [b"still here"])
    assert b.next() == (1, b"still here")


def test_oversized_frame_drops_the_connection_and_the_sender_reconnects(endpoints):
    """Exactly max_bytes passes; a header announcing one more closes the connection before the
    payload is read. Frames of the same send before it were delivered, those after it are lost;
    a later send raises LinkError once (the receiver closed the link), the next reconnects."""
    a, b = endpoints(1), endpoints(2)
    link(a, b, max_bytes=2000)
    a.links.send(2, [b"x" * 2000])
    assert b.next() == (1, b"x" * 2000)
    a.links.send(2, [b"part 1", b"y" * 2001, b"part 3"])
    assert b.next() == (1, b"part 1")
    failures, sent = 0, []
    for i in range(100):
        try:
            a.links.send(2, [b"probe %d" % i])
            sent.append(b"probe %d" % i)
        except LinkError as exc:
            assert "layer 2" in str(exc)
            failures += 1
        try:
            peer, first = b.next(timeout=0.05)
            break
        except queue.Empty:
            continue
    else:
        raise AssertionError("the link did not recover")
    assert failures == 1 and peer == 1 and first == sent[-1]
    assert b.got.empty() and b.links.dropped == {"oversized": 1}


def test_idle_connection_flood(endpoints):
    """Connections that never handshake do not hold up the good link; those over max_pending are
    closed at once, the others after handshake_s, so descriptors stay bounded."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    n = min(500, (soft - 100) // 2)
    if n < 50:
        pytest.skip(f"RLIMIT_NOFILE {soft} is too low for a flood")
    a, b = endpoints(1), endpoints(2)
    host, port, _ = link(a, b)
    a.links.send(2, [b"warm"])
    assert b.next() == (1, b"warm")
    fds = (lambda: len(os.listdir("/proc/self/fd"))) if os.path.isdir("/proc/self/fd") else None
    before = fds() if fds else 0
    flood = [socket.create_connection((host, port), timeout=5) for _ in range(n)]
    try:
        a.links.send(2, [b"during"])
        assert b.next() == (1, b"during")
        assert all(read_to_close(s, HANDSHAKE_S + 5) for s in flood)
        if fds:
            assert fds() <= before + n + 8
        a.links.send(2, [b"after"])
        assert b.next() == (1, b"after")
    finally:
        for s in flood:
            s.close()


def test_max_pending_is_enforced(endpoints):
    """With max_pending connections waiting for their handshake, the next ones are closed at
    once (well before handshake_s), a genuine sender included; when one leaves, it gets in."""
    a, b = endpoints(1), endpoints(2, max_pending=4, handshake_s=30)
    host, port, cert = b.links.incoming(1, 4096)
    b.links.start()
    b.links.allow(1, a.links.client_key())
    idle = [socket.create_connection((host, port), timeout=5) for _ in range(4)]
    extra = [socket.create_connection((host, port), timeout=5) for _ in range(6)]
    try:
        assert all(read_to_close(s, 5) for s in extra)
        for s in idle:
            s.setblocking(False)
            with pytest.raises(BlockingIOError):
                s.recv(1)
        with pytest.raises(LinkError):
            a.links.connect(2, host, port, cert)
        idle[0].close()
        for _ in range(50):
            try:
                a.links.connect(2, host, port, cert)
                break
            except LinkError:
                continue
        a.links.send(2, [b"in"])
        assert b.next() == (1, b"in")
    finally:
        for s in idle + extra:
            s.close()


def test_on_message_that_raises_is_counted_and_delivery_goes_on(endpoints, caplog):
    got = queue.Queue()

    def on_message(peer, data):
        if data == b"bad":
            raise ValueError("no")
        got.put((peer, data))

    a = endpoints(1)
    b = TlsLinks(2, on_message, HOST, handshake_s=HANDSHAKE_S)
    try:
        host, port, cert = b.incoming(1, 100)
        b.start()
        b.allow(1, a.links.client_key())
        a.links.connect(2, host, port, cert)
        with caplog.at_level(logging.WARNING, logger="ptncn_dist.transports.tls_links"):
            a.links.send(2, [b"bad"])
            a.links.send(2, [b"bad", b"good"])
            assert got.get(timeout=5) == (1, b"good")
        assert b.dropped == {"ValueError": 2}
        assert len([r for r in caplog.records if "dropped" in r.getMessage()]) == 1
    finally:
        b.close()


def test_send_that_cannot_complete_raises_link_error(endpoints):
    """A receiver stuck in on_message stops reading; once TCP's buffers are full, the send times
    out with LinkError. Unknown peers and closed ports raise LinkError too."""
    release = threading.Event()
    a = endpoints(1, send_timeout_s=0.2)
    b = TlsLinks(2, lambda peer, data: release.wait(10), HOST, handshake_s=HANDSHAKE_S)
    try:
        host, port, cert = b.incoming(1, 1 << 20)
        b.start()
        b.allow(1, a.links.client_key())
        a.links.connect(2, host, port, cert)
        with pytest.raises(LinkError, match="layer 2"):
            for _ in range(200):
                a.links.send(2, [bytes(1 << 20)])
    finally:
        release.set()
        b.close()
    with pytest.raises(LinkError, match="layer 3"):
        a.links.send(3, [b"x"])
    with socket.socket() as unused:
        unused.bind((HOST, 0))
        with pytest.raises(LinkError, match="layer 4"):
            a.links.connect(4, HOST, unused.getsockname()[1], cert)


def test_close_is_idempotent_and_leaves_no_thread():
    before = set(threading.enumerate())
    a = Endpoint(1)
    b = Endpoint(2)
    link(a, b)
    a.links.start()
    a.links.send(2, [b"x"])
    assert b.next() == (1, b"x")
    for e in (a, b):
        e.links.close()
        e.links.close()
    assert set(threading.enumerate()) <= before
    with pytest.raises(LinkError):
        a.links.send(2, [b"x"])


@pytest.mark.parametrize("host", ["0.0.0.0", "", "::", "*"])
def test_wildcard_host_is_refused(host):
    with pytest.raises(ValueError, match="wildcard"):
        TlsLinks(1, lambda peer, data: None, host)
