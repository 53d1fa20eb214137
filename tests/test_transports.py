"""The layer actor's logic without Ray: `LayerWorker`s wired by the in-process transport run
their segments concurrently in one event loop (the schedule, the codec, the mailbox) and must
equal the local engine and the golden runs; the mailbox drops what a neighbour may not send."""
import asyncio
import dataclasses

import numpy as np
import pytest

from conftest import golden_files
from ptncn_dist.engines.layer_actor import LayerWorker, run_workers
from ptncn_dist.engines.local import LocalEngine
from ptncn_dist.golden import load_golden
from ptncn_dist.layer_spec import init_params, layer_specs
from ptncn_dist.messages import Message, MessageError
from ptncn_dist.optim import OptimConfig
from ptncn_dist.schedule import LayerSchedule, StepPlan, run_lockstep
from ptncn_dist.transports.inprocess import InProcess
from ptncn_dist.transports.mailbox import Mailbox


def workers(specs, params, opt, mode="exact", dtype="float64", max_batch=0):
    ws = [LayerWorker(s, dataclasses.asdict(opt), 0, dtype, "cpu", 0.1, 0.1, 0, mode=mode, max_batch=max_batch)
          for s in specs]
    for w, p in zip(ws, params):
        w.set_params(p)
    for i, w in enumerate(ws):
        w.connect_direct({j + 1: ws[j] for j in (i - 1, i + 1) if 0 <= j < len(ws)})
    return ws


def segments(ws, x, mask, cuts, t_prime=1):
    xhats = []
    for t0, t1 in zip(cuts, cuts[1:]):
        out = asyncio.run(run_workers(ws, x, mask, t0, t1, learn=True, t_prime=t_prime, keep_xhat=True))
        xhats += out["xhats"]
    return np.array(xhats)


def weights_of(layers_states):
    return {f"{k}{l}": v for l, st in enumerate(layers_states, start=1) for k, v in st["params"].items()}


@pytest.mark.parametrize("path", golden_files(), ids=lambda p: p.stem)
def test_workers_reproduce_golden_runs(path):
    g = load_golden(path)
    ws = workers(g.specs, g.init, g.opt)
    xhats = segments(ws, g.x.astype(np.float64), g.mask.astype(np.float64), [0, 2, g.mask.shape[0]],
                     g.config["t_prime"])
    for t, want in enumerate(g.steps):
        np.testing.assert_allclose(xhats[t], want["xhat"], rtol=0, atol=1e-9, err_msg=f"step {t}")
    for w, want in zip(ws, g.after[-1]):
        for name, arr in want.items():
            np.testing.assert_allclose(w.state()["params"][name], arr, rtol=0, atol=1e-9, err_msg=name)


@pytest.mark.parametrize("mode", ["exact", "pipelined"])
@pytest.mark.parametrize("n_layers", [1, 2, 4])
def test_workers_equal_the_local_engine(mode, n_layers):
    specs = layer_specs(10, [7, 6, 5, 4][:n_layers])
    params = [init_params(s, 2, 0.3, 0.3, np.float64) for s in specs]
    rng = np.random.default_rng(n_layers)
    x = (rng.random((9, 3, 10)) > 0.5).astype(np.float64)
    mask = np.ones((9, 3))
    mask[6:, 1] = 0
    opt = OptimConfig("nag", 0.05, 0.9)
    local = LocalEngine(specs, [{k: v.copy() for k, v in p.items()} for p in params], opt, np, np.float64, mode=mode)
    want = []
    for t0, t1 in ((0, 4), (4, 9)):
        want += local.run_segment(x, mask, t0, t1, learn=True, t_prime=1, keep_xhat=True)[1]
    ws = workers(specs, params, opt, mode)
    got = segments(ws, x, mask, [0, 4, 9])
    assert np.array_equal(got, np.array(want))
    a, b = weights_of(local.layer_states()), weights_of([w.state() for w in ws])
    assert all(np.array_equal(a[k], b[k]) for k in a)
    if n_layers > 1:
        assert ws[1].counters["recv_msgs"] > 0 and not ws[1].box.dropped


def test_a_schedule_that_waits_for_a_message_nobody_sends_is_reported():
    specs = layer_specs(4, [3, 3])
    cores = LocalEngine(specs, [init_params(s, 1, 0.3, 0.3, np.float64) for s in specs],
                        OptimConfig("sgd", 0.1), np, np.float64).layers
    boxes = [{}, {}]
    scheds = [LayerSchedule(cores[0], InProcess(1, boxes).send, "exact"),
              LayerSchedule(cores[1], lambda *a: None, "exact")]
    for c in cores:
        c.reset(2)
    with pytest.raises(RuntimeError, match="deadlock"):
        run_lockstep([scheds[0].step(np.zeros((2, 4)), np.ones((2, 1)), StepPlan(0, True, True, False)),
                      scheds[1].step(None, np.ones((2, 1)), StepPlan(0, True, True, False))], boxes)


# -- the mailbox: what a neighbour may send ---------------------------------------------------------

def _box():
    spec = layer_specs(6, [5, 4, 3])[1]  # layer 2: below 5 wide, itself 4, above 3
    return Mailbox(spec, max_batch=8)


def _msg(step=0, layer=1, kind="z", rows=2, cols=5, iteration=0):
    return Message(step, layer, kind, np.ones((rows, cols)), iteration).encode()


@pytest.mark.parametrize("data, link, reason", [
    (_msg(cols=4), 1, "wrong shape"),
    (_msg(rows=9), 1, "wrong shape"),
    (_msg(kind="pred"), 1, "kind or sender not expected"),
    (_msg(layer=4, cols=3, kind="y"), None, "kind or sender not expected"),
    (_msg(layer=1), 3, "claims another sender"),
    (_msg(step=2), 1, "clock out of window"),
    (_msg(iteration=1), 1, "bad iteration"),
    (b"\x93not a message", 1, "undecodable"),
])
def test_the_mailbox_drops_what_a_neighbour_may_not_send(data, link, reason):
    box = _box()
    assert not box.put(data, link)
    assert box.dropped == {reason: 1} and not box.arrived
    assert box.put(_msg(), 1) and box.put(_msg(layer=3, kind="pred", cols=4), 3)


def test_the_mailbox_drops_duplicates_and_forgets_old_steps():
    box = _box()
    assert box.put(_msg(), 1) and not box.put(_msg(), 1)
    assert box.dropped == {"duplicate": 1}
    box.advance(2)
    assert not box.arrived


def test_a_message_of_another_batch_is_a_recoverable_error():
    box = _box()
    box.batch = 3
    box.put(_msg(rows=2), 1)
    with pytest.raises(MessageError, match="batch is 3"):
        box.take((0, 0, "z", 1))
