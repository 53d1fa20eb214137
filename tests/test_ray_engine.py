"""The Ray engine (one actor per layer) against the single-process engine: golden runs, a few
hundred steps of Bouncing MNIST for 1..4 layers, every transport, pipelined mode, locality, and
the direct links under attack."""
import numpy as np
import pytest
import ray

from helpers import golden_files, local_ray
from test_divergence import every_checkpoint_is_finite, run_poisoned
from ptncn_dist.config import load
from ptncn_dist.data import open_streams
from ptncn_dist.engines.factory import build_engine
from ptncn_dist.engines.local import LocalEngine
from ptncn_dist.engines.ray_engine import RayEngine
from ptncn_dist.reference.golden import load_golden
from ptncn_dist.transports.messages import KINDS
from ptncn_dist.trainer import Trainer


pytestmark = pytest.mark.ray  # every test runs in the module's Ray session


@pytest.fixture(scope="module", autouse=True)
def ray_instance():
    with local_ray(4):
        yield


def small(hidden, extra=()):
    """A tiny float64 run with the authors' optimizer (Nesterov 0.075 / 0.95), which learns
    within the few hundred steps these tests take."""
    return ["model.hidden=" + str(list(hidden)), "data.frame=32", "data.batch=4", "data.seq_len=10",
            'model.dtype="float64"', "engine.cpus_per_layer=0.5", "train.progress=false", "train.plots=false",
            'optim.name="nag"', "optim.lr=0.075", *extra]


def run_both(hidden, steps, extra=(), ray_extra=()):
    cfg_l = load(None, small(hidden, extra))
    cfg_r = load(None, small(hidden, extra) + ['engine.name="ray"', *ray_extra])
    streams = open_streams(cfg_l.data, 0)
    local = build_engine(cfg_l, streams.train.dim, "frames")
    remote = build_engine(cfg_r, streams.train.dim, "frames")
    try:
        pos, done, losses = 0, 0, []
        while done < steps:
            b = streams.train.batch(pos)
            for t0, t1 in ((0, 4), (4, 10)):
                a, _ = local.run_segment(b.x, b.mask, t0, t1, learn=True, t_prime=1)
                r, _ = remote.run_segment(b.x, b.mask, t0, t1, learn=True, t_prime=1)
                losses.append((a["bce"], r["bce"]))
            pos, done = pos + 1, done + 10
        return local.weights(), remote.weights(), losses, remote
    finally:
        remote.close()


def test_layers_and_their_links_listen_on_loopback_only():
    """The engine's layer actors run on the private session's node, 127.0.0.1, and each layer's
    direct links listen there only: the addresses a layer offers its neighbours are the sockets
    its process has bound (as the OS lists them), and no socket of a layer process (its links,
    Ray's core worker server) listens off loopback. (tests/test_listeners.py lists every listener
    of a whole `ptncn train --engine ray` session.)"""
    import psutil
    cfg = load(None, small([16, 12, 8]) + ['engine.name="ray"', 'engine.transport="tcp"'])
    engine = build_engine(cfg, 64, "frames")
    try:
        assert [p["ip"] for p in engine.placement] == ["127.0.0.1"] * 3
        pids = {p["pid"] for p in engine.placement}
        offered = {(p["pid"], port): host for p, offer in zip(engine.placement, engine.link_offers)
                   for host, port, _ in offer["sockets"].values()}
        listening = {(c.pid, c.laddr.port): c.laddr.ip for c in psutil.net_connections(kind="tcp")
                     if c.status == psutil.CONN_LISTEN and c.pid in pids}
    finally:
        engine.close()
    assert len(offered) == 4  # layer 1 hears layer 2, layer 2 hears 1 and 3, layer 3 hears 2
    assert {k: listening.get(k) for k in offered} == offered and set(offered.values()) == {"127.0.0.1"}
    assert set(listening.values()) <= {"127.0.0.1", "::ffff:127.0.0.1"}, listening  # (gRPC: IPv4-mapped)


def golden_cases():
    """Every golden file on the links and on actor calls; the compiled graph (slow to build) on
    the golden run with the most layers."""
    files = golden_files()
    deepest = max(files, key=lambda p: len(load_golden(p).specs), default=None)
    return [pytest.param(p, t, id=f"{p.stem}-{t}") for p in files for t in ("tcp", "calls")] + \
        ([pytest.param(deepest, "compiled", id=f"{deepest.stem}-compiled")] if deepest else [])


@pytest.mark.parametrize("path,transport", golden_cases())
def test_golden_on_ray(path, transport):
    g = load_golden(path)
    compiled = transport == "compiled"
    cfg = load(None, ['engine.name="ray"', "engine.cpus_per_layer=0.5", f"engine.compiled={str(compiled).lower()}",
                      f'engine.transport="{"calls" if compiled else transport}"',
                      'model.dtype="float64"', f'optim.name="{g.opt.name}"', f"optim.lr={g.opt.lr}",
                      f"optim.momentum={g.opt.momentum}"])
    engine = RayEngine(cfg, g.specs)
    try:
        engine.set_params(g.init)
        T = g.mask.shape[0]
        for t in range(T):
            engine.run_segment(g.x, g.mask, t, t + 1, learn=True, t_prime=g.config["t_prime"])
            got = engine.layer_states()
            for l, want in enumerate(g.after[t]):
                for name, arr in want.items():
                    np.testing.assert_allclose(got[l]["params"][name], arr, atol=1e-9, rtol=0,
                                               err_msg=f"{path.name} after{t}/{name}{l + 1}")
    finally:
        engine.close()


@pytest.mark.parametrize("hidden", [[24], [24, 16, 12], [20, 16, 12, 8]], ids=lambda h: f"L{len(h)}")
def test_ray_equals_local_for_hundreds_of_steps(hidden):
    a, b, losses, _ = run_both(hidden, 200)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(b[k], a[k], atol=1e-9, rtol=0, err_msg=k)
    assert losses[-1][0] < losses[0][0]


def test_ray_equals_local_with_adam():
    """The default optimizer (Adam, block-wise with its fused kernel) is equal across engines too."""
    a, b, _, _ = run_both([24, 16], 100, extra=['optim.name="adam"', "optim.lr=0.0003"])
    for k in a:
        np.testing.assert_allclose(b[k], a[k], atol=1e-9, rtol=0, err_msg=k)


def test_compiled_graph_equals_local():
    a, b, _, _ = run_both([24, 16, 12], 100, ray_extra=["engine.compiled=true"])
    for k in a:
        np.testing.assert_allclose(b[k], a[k], atol=1e-9, rtol=0, err_msg=k)


def test_float32_within_1e5():
    a, b, _, _ = run_both([24, 16], 200, extra=['model.dtype="float32"'])
    for k in a:
        assert a[k].dtype == np.float32
        np.testing.assert_allclose(b[k], a[k], atol=1e-5, rtol=0, err_msg=k)


def test_pipelined_equals_local_pipelined_and_differs_from_exact():
    a, b, _, _ = run_both([24, 16, 12], 100, extra=['engine.mode="pipelined"'])
    for k in a:
        np.testing.assert_allclose(b[k], a[k], atol=1e-9, rtol=0, err_msg=k)
    exact, _, _, _ = run_both([24, 16, 12], 100, ray_extra=[])
    assert max(np.abs(exact[k] - a[k]).max() for k in ("W2", "W3")) > 1e-6
    np.testing.assert_allclose(exact["W1"], a["W1"], atol=1e-2)


def test_locality_and_bytes():
    """Actors receive only (B, d) activations and errors of their neighbours, never a weight;
    the bytes per step are what those messages weigh."""
    hidden, B = [24, 16, 12], 4
    _, _, _, engine = run_both(hidden, 20)
    engine.close()
    cfg = load(None, small(hidden) + ['engine.name="ray"'])
    streams = open_streams(cfg.data, 0)
    eng = build_engine(cfg, streams.train.dim, "frames")
    try:
        b = streams.train.batch(0)
        eng.run_segment(b.x, b.mask, 0, 10, learn=True, t_prime=1)
        stats = eng.actor_stats()
        widths = [32 * 32] + hidden
        weight_shapes = {tuple(w.shape) for w in eng.weights().values()}
        for l, s in enumerate(stats, start=1):
            assert set(s["received"]) <= set(KINDS)
            for kind, entries in s["received"].items():
                for sender, rows, cols in entries:
                    width = widths[l] if kind == "pred" else widths[sender]
                    assert abs(sender - l) == 1 and rows == B and cols == width, (l, kind, sender, rows, cols)
                    assert (rows, cols) not in weight_shapes
        payload_l2 = (widths[1] + 4 * widths[2]) * B * 8
        sent_l2 = eng.stats()["layer2_sent_bytes_per_step"]
        assert payload_l2 < sent_l2 < payload_l2 + 5 * 64
    finally:
        eng.close()


def test_trainer_with_ray_engine_checkpoints_and_resumes(tmp_path):
    """A ray run writes one shard per layer from the actors, and resuming it with the ray engine
    ends on the weights of an uninterrupted local run."""
    base = small([16, 12], ["train.log_every=7", "train.checkpoint_every=10", "train.eval_batches=1"])
    straight = Trainer(load(None, base + ["train.steps=30"]), None, log=lambda *_: None)
    straight.run()
    first = Trainer(load(None, base + ['engine.name="ray"', "train.steps=17"]), str(tmp_path), log=lambda *_: None)
    first.run()
    first.close()
    second = Trainer(load(None, base + ['engine.name="ray"', "train.steps=30"]), str(tmp_path), resume=True,
                     log=lambda *_: None)
    try:
        second.run()
        a, b = straight.engine.weights(), second.engine.weights()
        for k in a:
            np.testing.assert_allclose(b[k], a[k], atol=1e-12, rtol=0, err_msg=k)
        shards = sorted(p.name for p in (tmp_path / "checkpoints").glob("ckpt-*/layer-*.msgpack"))
        assert shards and {s.split("/")[-1] for s in shards} == {"layer-1.msgpack", "layer-2.msgpack"}
    finally:
        second.close()


def test_unplaceable_spread_times_out_clearly():
    from ptncn_dist.errors import ConfigError
    cfg = load(None, small([8, 8]) + ['engine.name="ray"', 'engine.placement="spread"', "engine.placement_timeout_s=2.0"])
    with pytest.raises(ConfigError, match=r"could not be placed .*; free now, beside what other work holds: "
                                          r"\{'CPU': [\d.]+\}"):
        RayEngine(cfg, LocalEngine.__mro__ and __import__("ptncn_dist.core.model", fromlist=["x"]).specs_from_config(
            cfg.model, 64, False))


def test_compiled_graph_is_built_once_and_reports_counters_without_a_teardown():
    """60 steps logged every 10 (no checkpoints): one graph build, and the logged byte counts
    are the actors' own."""
    cfg = load(None, small([16, 12], ["train.log_every=10", "train.steps=60", "train.checkpoint_every=0",
                                      "train.eval_every=0", 'engine.name="ray"', "engine.compiled=true"]))
    tr = Trainer(cfg, None, log=lambda *_: None)
    try:
        tr.run()
        eng = tr.engine
        assert eng.compiled and eng.graph_builds == 1
        logged = eng.stats()
        assert eng.graph is not None
        assert logged["layer2_sent_bytes_per_step"] > 0
    finally:
        tr.close()


@pytest.mark.parametrize("mode", ["exact", "pipelined"])
def test_actor_call_transport_equals_local(mode):
    a, b, _, _ = run_both([24, 16, 12], 100, extra=[f'engine.mode="{mode}"'], ray_extra=['engine.transport="calls"'])
    for k in a:
        np.testing.assert_allclose(b[k], a[k], atol=1e-9, rtol=0, err_msg=k)


ZMTP_CURVE_GREETING = (b"\xff" + b"\0" * 8 + b"\x7f" + b"\x03\x00" + b"CURVE".ljust(20, b"\0") + b"\0"
                       + b"\0" * 31)


def _attack(offers, stop):
    """Against every layer's link sockets until `stop` is set: a CURVE client with a key the
    layer never allowed sends well-formed messages, plain TCP garbage is written, a proper
    ZeroMQ greeting is followed by a frame announcing 4 GiB, and idle connections pile up (held
    until the end)."""
    import socket
    import zmq
    from ptncn_dist.transports.messages import Message
    ctx, idle = zmq.Context(), []
    try:
        pub, sec = zmq.curve_keypair()
        rogues = []
        for offer in offers:
            for host, port, server_key in offer["sockets"].values():
                s = ctx.socket(zmq.PUSH)
                s.curve_publickey, s.curve_secretkey, s.curve_serverkey = pub, sec, server_key
                s.linger = 0
                s.connect(f"tcp://{host}:{port}")
                rogues.append(s)
                for _ in range(100):
                    c = socket.create_connection((host, port))
                    idle.append(c)
                g = socket.create_connection((host, port))
                g.sendall(b"\xff" * 4096)
                idle.append(g)
                huge = socket.create_connection((host, port))
                huge.sendall(ZMTP_CURVE_GREETING + b"\x06" + (4 << 30).to_bytes(8, "big") + b"\0" * 1024)
                idle.append(huge)
        msg = Message(0, 1, "z", np.full((4, 24), 1e9)).encode()
        while not stop.is_set():
            for s in rogues:
                try:
                    s.send(msg, zmq.NOBLOCK)
                except zmq.Again:
                    pass
            stop.wait(0.01)
    finally:
        for c in idle:
            c.close()
        ctx.destroy(linger=0)


def test_links_keep_the_run_going_under_wrong_keys_garbage_and_idle_floods():
    """While a rogue key, garbage bytes and hundreds of idle connections hit every layer's
    sockets, the run over direct links equals the single-process engine to 1e-9."""
    import threading
    cfg_l = load(None, small([24, 16, 12]))
    cfg_r = load(None, small([24, 16, 12]) + ['engine.name="ray"', 'engine.transport="tcp"'])
    streams = open_streams(cfg_l.data, 0)
    local = build_engine(cfg_l, streams.train.dim, "frames")
    remote = build_engine(cfg_r, streams.train.dim, "frames")
    stop = threading.Event()
    attacker = threading.Thread(target=_attack, args=(remote.link_offers, stop))
    attacker.start()
    try:
        for pos in range(6):
            b = streams.train.batch(pos)
            a, _ = local.run_segment(b.x, b.mask, 0, 10, learn=True, t_prime=1)
            r, _ = remote.run_segment(b.x, b.mask, 0, 10, learn=True, t_prime=1)
            assert r["bce"] == pytest.approx(a["bce"], rel=1e-9)
        stats = remote.actor_stats()
    finally:
        stop.set()
        attacker.join(60)
        remote.close()
    assert not attacker.is_alive()
    assert all(not s["dropped"] for s in stats), "a rogue message got past CURVE into a mailbox"


def test_malformed_messages_are_dropped_and_the_run_goes_on():
    """Messages of the wrong shape, kind, sender, dtype or key, and undecodable bytes, delivered
    into layer 2's mailbox by actor calls: each is dropped and counted; results still equal. A
    message 20 steps ahead (a neighbour out of sync) then fails the next segment at once."""
    import time
    from ptncn_dist.transports.messages import Message, MessageError
    cfg_l = load(None, small([24, 16, 12]))
    cfg_r = load(None, small([24, 16, 12]) + ['engine.name="ray"', 'engine.transport="calls"'])
    streams = open_streams(cfg_l.data, 0)
    local = build_engine(cfg_l, streams.train.dim, "frames")
    remote = build_engine(cfg_r, streams.train.dim, "frames")
    bad = [Message(0, 1, "z", np.ones((4, 5))).encode(), Message(0, 1, "pred", np.ones((4, 24))).encode(),
           Message(0, 3, "y", np.ones((4, 12))).encode(), Message(0, 1, "z", np.ones((4, 24), np.float32)).encode(),
           Message(1, 1, "y", np.ones((4, 24))).encode(), b"\x00garbage"]
    try:
        layer2 = remote.actors[1]
        ray.get(layer2.receive.remote(1, *bad))
        for pos in range(3):
            b = streams.train.batch(pos)
            a, _ = local.run_segment(b.x, b.mask, 0, 10, learn=True, t_prime=1)
            r, _ = remote.run_segment(b.x, b.mask, 0, 10, learn=True, t_prime=1)
            assert r["bce"] == pytest.approx(a["bce"], rel=1e-9)
        dropped = remote.actor_stats()[1]["dropped"]
        ray.get(layer2.receive.remote(1, Message(50, 1, "z", np.ones((4, 24))).encode()))
        t0 = time.monotonic()
        with pytest.raises(MessageError, match="out of sync"):
            remote.run_segment(b.x, b.mask, 0, 10, learn=True, t_prime=1)
        assert time.monotonic() - t0 < 30 < cfg_r.engine.segment_timeout_s
    finally:
        remote.close()
    assert dropped == {"wrong shape": 1, "kind or sender not expected": 1, "claims another sender": 1,
                       "wrong dtype": 1, "not awaited": 1, "undecodable": 1}


@pytest.mark.parametrize("transport,at,layer,start", [
    ("compiled", 15, 2, "non-finite values at step 15 in layer 2 (first seen: its pred sent to layer 1)"),
    ("calls", 20, 3, "layer 3 holds non-finite values in W at step 20: its checkpoint is not written")])
def test_layer_actors_name_the_layer_where_a_nan_appeared(tmp_path, transport, at, layer, start):
    """A NaN put into one layer actor's W: the actors' own watches name that layer, or the actor
    refuses to write its shard; no checkpoint on disk holds a NaN."""
    extra = ['engine.name="ray"', "engine.cpus_per_layer=0.5"] + (
        ["engine.compiled=true"] if transport == "compiled" else [f'engine.transport="{transport}"'])
    msg = run_poisoned(tmp_path, at, layer, "W", extra)
    assert msg.startswith(start), msg
    assert msg.endswith("ckpt-0000000010"), msg
    assert len(every_checkpoint_is_finite(str(tmp_path / "checkpoints"))) == 2
