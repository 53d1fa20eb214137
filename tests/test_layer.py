"""The layer math beyond the golden runs: one-hot ids, optimizers, clipping, activations."""
import numpy as np
import pytest

from ptncn_dist.core import optim
from ptncn_dist.engines.local import LocalEngine
from ptncn_dist.engines.factory import engine_config
from ptncn_dist.core.activations import ACTIVATIONS
from ptncn_dist.core.spec import init_params, layer_specs
from ptncn_dist.core.optim import OptimConfig


def make_engine(x_dim, hidden, sparse, opt="nag", dtype=np.float64, **hyper):
    specs = layer_specs(x_dim, hidden, sparse_input=sparse, **hyper)
    params = [init_params(s, 3, 0.2, 0.2, dtype) for s in specs]
    return LocalEngine(engine_config(OptimConfig(opt, 0.05, 0.9), dtype), specs, params)


@pytest.mark.parametrize("opt", ["sgd", "momentum", "nag", "adam"])
def test_token_ids_equal_dense_one_hot(opt):
    """ids (gather + scatter-add) and dense one-hot rows give the same run, padding included."""
    rng = np.random.default_rng(0)
    V, T, B = 11, 7, 5
    ids = rng.integers(0, V, (T, B))
    mask = np.ones((T, B))
    mask[4:, 1] = 0
    mask[6, 3] = 0
    onehot = np.eye(V)[ids] * mask[..., None]
    sparse = make_engine(V, [8, 6], True, opt, output="softmax")
    dense = make_engine(V, [8, 6], False, opt, output="softmax")
    s1, _ = sparse.run_segment(ids, mask, 0, T, learn=True, t_prime=1)
    s2, _ = dense.run_segment(onehot, mask, 0, T, learn=True, t_prime=1)
    for a, b in zip(sparse.layer_states(), dense.layer_states()):
        for k in a["params"]:
            np.testing.assert_allclose(a["params"][k], b["params"][k], atol=1e-12, err_msg=k)
    assert s1["count"] == mask[1:].sum()


@pytest.mark.parametrize("name", optim.OPTIMIZERS)
def test_outer_and_row_updates_equal_dense(name):
    """apply_outer (low-rank, fused) and apply_rows (sparse) equal apply on the dense gradient."""
    rng = np.random.default_rng(1)
    cfg = OptimConfig(name, 0.1, 0.9)
    a, b = rng.standard_normal((4, 6)), rng.standard_normal((4, 5))
    p0 = rng.standard_normal((6, 5))
    p1, p2 = p0.copy(), p0.copy()
    s1, s2 = optim.init_slots(cfg, p1, np), optim.init_slots(cfg, p2, np)
    for _ in range(3):
        optim.apply(cfg, p1, 0.7 * (a.T @ b), s1, np)
        optim.apply_outer(cfg, p2, a, b, 0.7, s2, np)
    np.testing.assert_allclose(p1, p2, atol=1e-12)
    rows, g_rows = np.array([1, 4]), rng.standard_normal((2, 5))
    dense = np.zeros_like(p0)
    dense[rows] = g_rows
    optim.apply(cfg, p1, dense, s1, np)
    optim.apply_rows(cfg, p2, rows, g_rows, s2, np)
    np.testing.assert_allclose(p1, p2, atol=1e-12)


def test_nag_is_tensorflow_convention():
    cfg = OptimConfig("nag", 0.1, 0.9)
    p, g = np.array([1.0]), np.array([2.0])
    slots = optim.init_slots(cfg, p, np)
    optim.apply(cfg, p, g, slots, np)
    optim.apply(cfg, p, g, slots, np)
    v1 = 2.0
    p1 = 1.0 - 0.1 * (2.0 + 0.9 * v1)
    v2 = 0.9 * v1 + 2.0
    assert p[0] == pytest.approx(p1 - 0.1 * (2.0 + 0.9 * v2))


def test_update_radius_clips_each_delta():
    """With a tiny radius no weight moves further than lr * radius / B per step (sgd)."""
    eng = make_engine(6, [5, 4], False, "sgd", update_radius=1e-3)
    before = {k: v.copy() for k, v in eng.layers[0].p.items()}
    x = np.random.default_rng(2).random((3, 4, 6))
    eng.run_segment(x, np.ones((3, 4)), 0, 3, learn=True, t_prime=1)
    for k, v in eng.layers[0].p.items():
        assert np.linalg.norm(v - before[k]) <= 2 * 0.05 * 1e-3 / 4 + 1e-15, k


@pytest.mark.parametrize("act", ["sign", "step", "tanh"])
def test_non_differentiable_units_learn(act):
    """sign and step units train: the loss on a repeating pattern falls (no derivative used)."""
    rng = np.random.default_rng(4)
    pattern = (rng.random((4, 16)) > 0.5).astype(float)
    x = np.stack([np.tile(pattern, (5, 1))] * 8, axis=1)
    eng = make_engine(16, [32], False, "nag", activation=act, output="sigmoid", update_radius=1.0)
    first, _ = eng.run_segment(x, np.ones(x.shape[:2]), 0, x.shape[0], learn=False, t_prime=1)
    for _ in range(30):
        eng.run_segment(x, np.ones(x.shape[:2]), 0, x.shape[0], learn=True, t_prime=1)
    last, _ = eng.run_segment(x, np.ones(x.shape[:2]), 0, x.shape[0], learn=False, t_prime=1)
    assert last["bce"] < 0.8 * first["bce"], (act, first["bce"], last["bce"])


def test_row_norm_bound_holds():
    eng = make_engine(6, [5, 4], False, "sgd", row_norm_bound=0.3)
    eng.run_segment(np.random.default_rng(5).random((4, 3, 6)), np.ones((4, 3)), 0, 4, learn=True, t_prime=1)
    for layer in eng.layers:
        for k, w in layer.p.items():
            assert np.linalg.norm(w, axis=1).max() <= 0.3 + 1e-12, k


class NoDerivative:
    """phi(h) = sign(h) sqrt|h|: finite everywhere, its derivative 1 / (2 sqrt|h|) infinite at
    h = 0 (a rule that used it would put inf or NaN into the weights there). It is a bare callable:
    any attribute a derivative path could ask for (`derivative`, `grad`, `deriv`, ...) raises.
    `zeros` counts the exact zeros it was given."""

    def __init__(self):
        self.__dict__["calls"] = self.__dict__["zeros"] = 0

    def __call__(self, xp, h):
        self.__dict__["calls"] += 1
        self.__dict__["zeros"] += int((h == 0).sum())
        return xp.sign(h) * xp.sqrt(xp.abs(h))

    def __getattr__(self, name):
        raise AssertionError(f"the update rule asked the activation for {name!r}: a derivative path")


def train_repeated(eng, x, segments: int) -> tuple[float, float]:
    """`segments` passes over the same batch of sequences; the mean loss of the first and last."""
    T, B = x.shape[:2]
    losses = []
    for _ in range(segments):
        sums, _ = eng.run_segment(x, np.ones((T, B)), 0, T, learn=True, t_prime=1)
        losses.append(sums["bce"] / sums["count"])
    return losses[0], losses[-1]


@pytest.mark.parametrize("activation", ["sign", "step", "no-derivative"])
def test_activations_take_no_derivative(monkeypatch, activation):
    """The update rule uses phi's outputs only: layers whose phi has a derivative of 0 almost
    everywhere (sign, step: a gradient rule would never move them) or none at all (NoDerivative,
    registered for this test: infinite at h = 0, which the first step's all-zero frames give
    exactly, and no attribute to ask a derivative of) train through the real layer math: the
    weights stay finite, every one of them moves, and the loss on the sequences they see falls."""
    if activation == "no-derivative":
        phi = NoDerivative()
        monkeypatch.setitem(ACTIVATIONS, activation, phi)
    rng = np.random.default_rng(0)
    T, B, D = 10, 4, 12
    x = (rng.random((T, B, D)) > 0.7).astype(np.float64)
    x[0] = 0.0  # the first step: no input, no state, h = 0 exactly in layer 1
    eng = make_engine(D, [10, 8], False, "nag", activation=activation, output="sigmoid")
    before = {k: np.array(v) for k, v in eng.weights().items()}
    first, last = train_repeated(eng, x, 60)
    after = eng.weights()
    for k, w in after.items():
        assert np.all(np.isfinite(w)), k
        assert np.abs(w - before[k]).max() > 1e-2, f"{k} did not move"
    assert last < 0.9 * first, (first, last)
    if activation == "no-derivative":
        assert phi.calls > 0 and phi.zeros > 0


def test_float32_run_stays_float32():
    eng = make_engine(6, [5, 4], False, "nag", dtype=np.float32)
    eng.run_segment(np.random.default_rng(6).random((4, 3, 6)).astype(np.float32), np.ones((4, 3), np.float32),
                    0, 4, learn=True, t_prime=1)
    for layer in eng.layers:
        for k, w in layer.p.items():
            assert w.dtype == np.float32, k
        for k, sl in layer.slots.items():
            assert all(v.dtype == np.float32 for v in sl.values() if hasattr(v, "dtype")), k
        assert layer.carry["y"].dtype == np.float32


@pytest.mark.parametrize("name", ["momentum", "nag"])
def test_scaled_velocity_matches_the_plain_rule_over_many_steps(name):
    """The velocity kept as v_scale * v (decay folded into the scale, multiplied back in when the
    scale gets small) gives the plain rule: v = mu v + g; p -= lr v (momentum) or
    p -= lr (g + mu v) (nag, TensorFlow 1)."""
    rng = np.random.default_rng(7)
    cfg = OptimConfig(name, 0.05, 0.5)
    p0 = rng.standard_normal((9, 6))
    p, ref, v = p0.copy(), p0.copy(), np.zeros_like(p0)
    slots = optim.init_slots(cfg, p, np)
    rescaled = 0
    for _ in range(60):
        a, b = rng.standard_normal((3, 9)), rng.standard_normal((3, 6))
        before = slots["v_scale"]
        optim.apply_outer(cfg, p, a, b, 0.3, slots, np)
        rescaled += slots["v_scale"] > before
        g = 0.3 * a.T @ b
        v = 0.5 * v + g
        ref -= 0.05 * (v if name == "momentum" else g + 0.5 * v)
    assert rescaled >= 2
    np.testing.assert_allclose(p, ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(optim.velocity(slots), v, rtol=1e-12, atol=1e-12)


def test_row_blocked_update_equals_whole_array_update():
    """With one BLAS thread a momentum update runs in row blocks; it equals the one-pass update."""
    from threadpoolctl import threadpool_limits
    rng = np.random.default_rng(8)
    cfg = OptimConfig("nag", 0.05, 0.9)
    a, b = rng.standard_normal((16, 1500)).astype(np.float32), rng.standard_normal((16, 700)).astype(np.float32)
    p0 = rng.standard_normal((1500, 700)).astype(np.float32)
    out = []
    for threads in (1, 2):
        p = p0.copy()
        slots = optim.init_slots(cfg, p, np)
        with threadpool_limits(threads, user_api="blas"):
            if threads == 1:
                assert len(optim._row_blocks(p, np)) > 1 or optim.blas_threads() == 0
            for _ in range(3):
                optim.apply_outer(cfg, p, a, b, 0.01, slots, np)
        out.append(p)
    np.testing.assert_allclose(out[0], out[1], rtol=1e-6, atol=1e-7)


def test_frame_loss_sums_match_the_formula():
    from ptncn_dist.metrics import frame_loss_sums
    rng = np.random.default_rng(9)
    xhat, x = rng.random((6, 10)).astype(np.float32), (rng.random((6, 10)) > 0.5).astype(np.float32)
    xhat[0, 0] = 1.0
    m = np.array([1, 1, 0, 1, 1, 1], np.float32)[:, None]
    got = frame_loss_sums(xhat, x, m, np)
    p = np.clip(xhat.astype(np.float64), 1e-7, 1 - 1e-7)
    bce = -(x * np.log(p) + (1 - x) * np.log(1 - p)).sum(axis=1)
    se = ((xhat.astype(np.float64) - x) ** 2).sum(axis=1)
    assert got["count"] == 5
    assert got["bce"] == pytest.approx(float(bce @ m[:, 0]), rel=1e-5)
    assert got["se"] == pytest.approx(float(se @ m[:, 0]), rel=1e-5)


def test_each_phase_runs_on_its_own_and_the_recurrent_update_runs_once():
    """Phases are separate calls on typed step state; M, V, U learn once per step (a second call
    would apply the update to inputs the first one scaled), and it says so."""
    engine = make_engine(6, [5, 4], sparse=False, update_radius=1e-3)
    layer = engine.layers[1]
    rng = np.random.default_rng(0)
    layer.reset(3)
    layer.carry["inp"], layer.carry["y"] = rng.normal(size=(3, 5)), rng.normal(size=(3, 4))
    z = layer.forward_state()
    assert layer.step_values()["z"] is z and layer.iteration == 0
    pred = layer.predict()
    z_below = rng.normal(size=(3, 5))
    y, eps = layer.correct(np.ones((3, 1)), z_below=z_below, pred_above=None)
    assert layer.iteration == 1 and pred.shape == (3, 5) and y.shape == eps.shape == (3, 4)
    before = layer.p["M"].copy()
    layer.learn_recurrent()
    assert not np.array_equal(layer.p["M"], before)
    with pytest.raises(RuntimeError, match="layer 2: M, V, U already learned from this step"):
        layer.learn_recurrent()


def weights_for(opt, spec=None, mu=0.9):
    """LayerWeights of a middle layer (M, V, U stacked; W, E apart) and its initial weights."""
    from ptncn_dist.core.weights import LayerWeights
    spec = spec or layer_specs(6, [5, 4, 3])[1]
    params = init_params(spec, 3, 0.2, 0.2, np.float64)
    return LayerWeights(spec, params, OptimConfig(opt, 0.05, mu), np, np.float64), params


def drive(w, rng, steps):
    """`steps` low-rank updates of the stack and of W through the optimizer; returns the
    dense gradients each weight received, by name."""
    spec, grads = w.spec, {name: [] for name in w.p}
    for _ in range(steps):
        a, b = rng.standard_normal((3, w.stack.shape[0])), rng.standard_normal((3, spec.d))
        optim.apply_outer(w.opt_cfg, w.stack, a, b, 0.3, w.stack_slots, np)
        for name, rows in w.rows.items():
            grads[name].append(0.3 * a[:, rows].T @ b)
        a, b = rng.standard_normal((3, spec.d)), rng.standard_normal((3, spec.d_in))
        optim.apply_outer(w.opt_cfg, w.p["W"], a, b, 0.7, w.slots["W"], np)
        grads["W"].append(0.7 * a.T @ b)
    return grads


@pytest.mark.parametrize("opt", optim.OPTIMIZERS)
def test_weights_state_is_plain_and_round_trips(opt):
    """`state` names plain weights and each weight's plain slots (no scale, no scratch), and a
    fresh LayerWeights loaded from it holds the same state and takes the same next update."""
    w, params = weights_for(opt)
    drive(w, np.random.default_rng(10), 4)
    st = w.state()
    assert set(st["params"]) == set(st["slots"]) == {"M", "V", "U", "W", "E"}
    for name, sl in st["slots"].items():
        assert tuple(sl) == optim.slot_names(w.opt_cfg), name
        for n, v in sl.items():
            if n in optim.ARRAY_SLOTS:
                assert v.shape == st["params"][name].shape and isinstance(v, np.ndarray), (name, n)
    fresh, _ = weights_for(opt)
    fresh.load_state(st)
    for name, v in fresh.state()["params"].items():
        np.testing.assert_array_equal(v, st["params"][name], err_msg=name)
    for x in (w, fresh):
        drive(x, np.random.default_rng(11), 2)
    again, once = w.state(), fresh.state()
    for name in again["params"]:
        np.testing.assert_array_equal(again["params"][name], once["params"][name], err_msg=name)
        for n in optim.slot_names(w.opt_cfg):
            np.testing.assert_array_equal(again["slots"][name][n], once["slots"][name][n], err_msg=f"{name}.{n}")


@pytest.mark.parametrize("opt", ["momentum", "nag"])
def test_state_holds_the_true_velocity(opt):
    """The saved velocity of each weight, stacked or not, is the plain rule's v = mu v + g,
    re-run here in NumPy from the gradients the optimizer received (mu = 0.3: the scale gets
    small and is multiplied back in along the way)."""
    w, _ = weights_for(opt, mu=0.3)
    grads = drive(w, np.random.default_rng(12), 12)
    assert w.stack_slots["v_scale"] != 1.0
    st = w.state()
    assert w.stack_slots["v_scale"] == 1.0
    for name, gs in grads.items():
        v = np.zeros_like(w.p[name])
        for g in gs:
            v = 0.3 * v + g
        np.testing.assert_allclose(st["slots"][name]["v"], v, rtol=1e-12, atol=1e-14, err_msg=name)
        assert set(st["slots"][name]) == {"v"}


@pytest.mark.parametrize("change, message", [
    (lambda st: st["params"].pop("U"), r"layer 2: saved weights for \['E', 'M', 'V', 'W'\]"),
    (lambda st: st["params"].update(V=np.zeros((4, 5))), r"layer 2: saved weight V has shape \(4, 5\)"),
    (lambda st: st["slots"]["E"].pop("m"), r"layer 2: saved optimizer slots \['t', 'v'\] for weight E"),
    (lambda st: st["slots"]["W"].update(v_scale=1.0), r"slots \['m', 't', 'v', 'v_scale'\] for weight W"),
    (lambda st: st["slots"]["M"].update(v=np.zeros((5, 3))), r"slot v of weight M has shape \(5, 3\)"),
    (lambda st: st["slots"]["U"].update(t=99), r"stacked weights \['M', 'U', 'V'\] share one optimizer step"),
])
def test_load_state_names_layer_and_weight(change, message):
    """A state that does not fit is refused whole, naming the layer, the weight and the slot;
    nothing is written."""
    from ptncn_dist.errors import ConfigError
    w, _ = weights_for("adam")
    drive(w, np.random.default_rng(13), 2)
    st = w.state()
    before = {k: v.copy() for k, v in w.p.items()}
    bad = w.state()
    for sl in bad["slots"].values():
        sl["t"] = 5
    change(bad)
    with pytest.raises(ConfigError, match=message):
        w.load_state(bad)
    for name, v in w.p.items():
        np.testing.assert_array_equal(v, before[name], err_msg=name)
    assert w.state()["slots"]["V"]["t"] == st["slots"]["V"]["t"] == 2


def test_set_params_zeroes_the_slots():
    w, params = weights_for("nag")
    drive(w, np.random.default_rng(14), 3)
    w.set_params(params)
    st = w.state()
    assert w.stack_slots["v_scale"] == 1.0
    for name in params:
        np.testing.assert_array_equal(st["params"][name], params[name], err_msg=name)
        assert not st["slots"][name]["v"].any(), name
