"""The floor under the encrypted links: a zmq CURVE ping-pong between two processes on this
machine, with no Python work between messages. An exact Ray step over links waits for two
one-way trips in sequence, so half of this round trip, twice, is the least a step can wait,
however little runs around the messages (`ptncn bench overhead` prints it beside the links)."""
from __future__ import annotations

import multiprocessing as mp
import statistics
import time

FRAME = b"\0" * 200  # about one tiny layer's message (4 x 8 float32 and the header)
HOST = "127.0.0.1"


def _sockets(ctx, conn):
    """A CURVE-server PULL bound on HOST and a CURVE-client PUSH to the other side's PULL; the
    ports and server keys cross over `conn`."""
    import zmq
    public, secret = zmq.curve_keypair()
    pull = ctx.socket(zmq.PULL)
    pull.curve_server, pull.curve_publickey, pull.curve_secretkey = True, public, secret
    pull.linger, pull.rcvtimeo = 0, 30_000  # a peer that stopped answering: zmq.Again, not a hang
    conn.send((pull.bind_to_random_port(f"tcp://{HOST}"), public))
    if not conn.poll(60):
        raise TimeoutError("the other side of the ping-pong did not answer within 60 s")
    port, server_public = conn.recv()
    push = ctx.socket(zmq.PUSH)
    push.curve_serverkey = server_public
    push.curve_publickey, push.curve_secretkey = zmq.curve_keypair()
    push.linger = 0
    push.connect(f"tcp://{HOST}:{port}")
    return pull, push


def _echo(conn, frames: int) -> None:
    import zmq
    ctx = zmq.Context()
    pull, push = _sockets(ctx, conn)
    try:
        for _ in range(frames):
            push.send(pull.recv())
    finally:
        pull.close()
        push.close()
        ctx.term()


def curve_round_trip_us(n: int = 5000, rounds: int = 3, warm: int = 100) -> float:
    """Median over `rounds` of the mean round trip, in microseconds, of a 200-byte frame between
    this process and a spawned one over zmq CURVE on loopback."""
    import zmq
    spawn = mp.get_context("spawn")
    here, there = spawn.Pipe()
    peer = spawn.Process(target=_echo, args=(there, warm + rounds * n), daemon=True)
    peer.start()
    ctx = zmq.Context()
    pull = push = None
    try:
        pull, push = _sockets(ctx, here)
        for _ in range(warm):
            push.send(FRAME)
            pull.recv()
        times = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            for _ in range(n):
                push.send(FRAME)
                pull.recv()
            times.append((time.perf_counter() - t0) / n * 1e6)
        return statistics.median(times)
    finally:
        for sock in (pull, push):
            if sock is not None:
                sock.close()
        ctx.term()
        peer.join(timeout=10)
        if peer.is_alive():
            peer.kill()
