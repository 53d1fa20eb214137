"""The layer actor's logic without Ray: `LayerWorker`s wired by the in-process transport run
their segments concurrently in one event loop (the schedule, the codec, the mailbox) and must
equal the local engine and the golden runs; the mailbox drops what a neighbour may not send."""
import asyncio
import dataclasses

import numpy as np
import pytest

from helpers import golden_files
from ptncn_dist.engines.layer_actor import LayerWorker, run_workers
from ptncn_dist.engines.local import LocalEngine
from ptncn_dist.engines.factory import engine_config
from ptncn_dist.reference.golden import load_golden
from ptncn_dist.core.spec import init_params, layer_specs
from ptncn_dist.transports.messages import Message, MessageError
from ptncn_dist.core.optim import OptimConfig
from ptncn_dist.core.schedule import LayerSchedule, StepPlan, run_lockstep
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
    local = LocalEngine(engine_config(opt, mode=mode), specs, [{k: v.copy() for k, v in p.items()} for p in params])
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
    cores = LocalEngine(engine_config(OptimConfig("sgd", 0.1)), specs,
                        [init_params(s, 1, 0.3, 0.3, np.float64) for s in specs]).layers
    boxes = [{}, {}]
    scheds = [LayerSchedule(cores[0], InProcess(1, boxes).send, "exact"),
              LayerSchedule(cores[1], lambda *a: None, "exact")]
    for c in cores:
        c.reset(2)
    with pytest.raises(RuntimeError, match="deadlock"):
        run_lockstep([scheds[0].step(np.zeros((2, 4)), np.ones((2, 1)), StepPlan(0, True, True, False)),
                      scheds[1].step(None, np.ones((2, 1)), StepPlan(0, True, True, False))], boxes)


# -- the mailbox: what a neighbour may send ---------------------------------------------------------

def _box(mode="exact"):
    spec = layer_specs(6, [5, 4, 3])[1]  # layer 2: below 5 wide, itself 4, above 3
    return Mailbox(spec, max_batch=8, mode=mode)


def _msg(step=0, layer=1, kind="z", rows=2, cols=5, iteration=0):
    return Message(step, layer, kind, np.ones((rows, cols)), iteration).encode()


@pytest.mark.parametrize("data, link, reason", [
    (_msg(cols=4), 1, "wrong shape"),
    (_msg(rows=9), 1, "wrong shape"),
    (_msg(kind="pred"), 1, "kind or sender not expected"),
    (_msg(layer=4, cols=3, kind="y"), None, "kind or sender not expected"),
    (_msg(layer=1), 3, "claims another sender"),
    (_msg(step=1, kind="y"), 1, "not awaited"),
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


# -- the mailbox: a message is for one (step, iteration) and is used once ----------------------------

def _arr(v=1.0, rows=2, cols=5, dtype=np.float64):
    return np.full((rows, cols), v, dtype)


def _worker_box(mode="exact", dtype="float64"):
    """The mailbox of layer 2 (as `_box`) in a layer worker of that schedule and dtype."""
    specs = layer_specs(6, [5, 4, 3])
    return workers(specs, [init_params(s, 1, 0.3, 0.3, np.float64) for s in specs], OptimConfig("sgd", 0.1),
                   mode, dtype, max_batch=8)[1].box


def _put(box, step=0, layer=1, kind="z", v=1.0, iteration=0, dtype=np.float64):
    cols = 5 if layer == 1 else (4 if kind == "pred" else 3)
    return box.put(Message(step, layer, kind, _arr(v, cols=cols, dtype=dtype), iteration).encode(), layer)


def test_a_message_sent_ahead_cannot_displace_the_real_one():
    """A forged message for the next step is filed under the key the real one will take; the
    real one then differs from it, and the step that takes that key fails (recoverably) rather
    than running on whichever came first."""
    box = _box()
    assert _put(box, step=1, v=666.0)  # (1, 0, "z", 1): the one key a neighbour may send ahead
    assert not _put(box, step=1, v=1.0)  # the real message of step 1 under the same key: neither is kept
    box.advance(1)
    with pytest.raises(MessageError, match="two different messages"):
        box.take((1, 0, "z", 1))
    assert box.dropped == {"conflicting duplicate": 1}


def test_only_the_keys_the_schedule_awaits_are_taken_ahead():
    """Exact schedule: a neighbour can be one step ahead only with its iteration-0 z or pred;
    pipelined: never ahead (a step awaits its neighbours' previous step)."""
    box = _box()
    assert not _put(box, step=1, kind="y") and not _put(box, step=1, kind="eps")
    assert not _put(box, step=-1)
    assert box.dropped == {"not awaited": 3} and not box.arrived
    assert _put(box, step=1) and _put(box, step=1, layer=3, kind="pred")
    k3 = Mailbox(layer_specs(6, [5, 4, 3], inference_steps=3)[1], max_batch=8)  # K = 3
    assert not _put(k3, step=1, iteration=1) and not _put(k3, iteration=1, kind="y")
    assert k3.dropped == {"not awaited": 2}
    assert _put(k3, iteration=2) and _put(k3, iteration=1, layer=3, kind="pred")
    piped = _worker_box(mode="pipelined")
    assert not _put(piped, step=1) and piped.dropped == {"not awaited": 1}
    assert _put(piped, step=0) and _put(piped, step=-1, kind="eps")


def test_an_identical_duplicate_is_dropped_and_the_message_kept():
    box = _box()
    assert _put(box) and not _put(box)
    assert box.dropped == {"duplicate": 1}
    np.testing.assert_array_equal(box.take((0, 0, "z", 1)), _arr())


def test_a_message_already_used_is_not_taken_again():
    box = _box()
    assert _put(box)
    box.take((0, 0, "z", 1))
    assert not _put(box) and not box.arrived
    box.advance(1)
    assert not _put(box) and not box.arrived  # one step later: still remembered, still a replay
    assert box.dropped == {"replay": 2}

    async def waited():
        task = asyncio.ensure_future(box.get((1, 0, "pred", 3)))
        await asyncio.sleep(0)
        assert _put(box, step=1, layer=3, kind="pred")  # handed straight to the waiting step
        await task
        return _put(box, step=1, layer=3, kind="pred")

    assert not asyncio.run(waited()) and box.dropped["replay"] == 3


def test_a_message_of_another_dtype_is_dropped():
    box = _worker_box(dtype="float32")
    assert not _put(box, dtype=np.float64)
    assert box.dropped == {"wrong dtype": 1} and not box.arrived
    assert _put(box, dtype=np.float32)
    assert box.take((0, 0, "z", 1)).dtype == np.float32


@pytest.mark.parametrize("step", [2, 5, -2, -7])
def test_a_neighbour_two_steps_away_fails_the_waiting_step_at_once(step):
    """Not a wait for engine.segment_timeout_s: the step waiting now, and any later one, raises
    a MessageError (which the trainer recovers from) as soon as such a message arrives."""
    box = _box()
    if step < 0:
        box.advance(3)
    clock = box.clock

    async def waiting():
        task = asyncio.ensure_future(box.get((clock, 0, "z", 1)))
        await asyncio.sleep(0)
        assert not _put(box, step=clock + step, layer=3, kind="pred")
        return await asyncio.wait_for(task, 2.0)

    with pytest.raises(MessageError, match="out of sync"):
        asyncio.run(waiting())
    assert box.dropped == {"out of sync": 1}
    with pytest.raises(MessageError, match="out of sync"):
        box.take((clock, 0, "pred", 3))


def test_a_late_message_of_a_step_never_awaited_is_stale_not_out_of_sync():
    """Pipelined: a segment that stops mid-sequence leaves its last step's messages unawaited
    when the next step begins a new sequence; one that arrives late is only dropped."""
    box = _box("pipelined")
    box.advance(1)  # step 0 begins a sequence: it awaits nothing
    assert _put(box, step=0)
    box.take((0, 0, "z", 1))  # step 1 awaits step 0
    box.advance(2)
    box.advance(3)  # step 2 begins a new sequence: step 1's messages are never awaited
    assert not _put(box, step=1) and box.failure is None
    assert box.dropped == {"stale": 1}
    assert not _put(box, step=5) and box.failure is not None


def test_workers_whose_clocks_disagree_fail_at_once():
    """A layer restarted on its own (clock 0) beside neighbours at clock 3: every layer's segment
    raises a MessageError at once instead of waiting for messages that never come."""
    specs = layer_specs(6, [5, 4])
    opt = OptimConfig("sgd", 0.1)
    ws = workers(specs, [init_params(s, 1, 0.3, 0.3, np.float64) for s in specs], opt)
    x, mask = np.ones((6, 2, 6)), np.ones((6, 2))
    asyncio.run(run_workers(ws, x, mask, 0, 3, learn=True, t_prime=1))
    ws[0].reset_clock()

    async def rest():
        return await asyncio.wait_for(run_workers(ws, x, mask, 3, 6, learn=True, t_prime=1), 5.0)

    with pytest.raises(MessageError, match="out of sync"):
        asyncio.run(rest())


@pytest.mark.parametrize("mode", ["exact", "pipelined"])
def test_float32_workers_exchange_float32_messages(mode):
    """The dtype check drops nothing the layers send each other in float32, K = 3 too."""
    ks = [1, 3] if mode == "exact" else [1]
    for k in ks:
        specs = layer_specs(6, [5, 4, 3], inference_steps=k) if k > 1 else layer_specs(6, [5, 4, 3])
        ws = workers(specs, [init_params(s, 1, 0.3, 0.3, np.float32) for s in specs], OptimConfig("sgd", 0.1),
                     mode, dtype="float32")
        x, mask = np.ones((5, 2, 6), np.float32), np.ones((5, 2))

        async def run():
            return await asyncio.wait_for(run_workers(ws, x, mask, 0, 5, learn=True, t_prime=1), 20.0)

        asyncio.run(run())
        assert all(w.counters["recv_msgs"] > 0 and not w.box.dropped for w in ws)
