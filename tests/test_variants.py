"""The variants beyond MODEL.md (model.inference_steps K, model.lateral_l1, model.standardize,
model.row_norm_bound): each is live, K = 1 is the default, local equals Ray to 0.0 in float64,
one step agrees with an independent NumPy program, and the forecasting protocol holds (xhat at
step t never depends on x[t] or later frames)."""
import numpy as np
import pytest

from ptncn_dist.config import load
from ptncn_dist.engines.factory import build_engine
from ptncn_dist.engines.local import LocalEngine
from ptncn_dist.engines.factory import engine_config
from ptncn_dist.errors import ConfigError
from ptncn_dist.core.spec import init_params, layer_specs
from ptncn_dist.core.optim import OptimConfig
from helpers import local_ray

X_DIM, T, B = 10, 6, 3
VARIANTS = {
    "K3": ["model.inference_steps=3"],
    "l1": ["model.lateral_l1=0.05"],
    "standardize": ["model.standardize=true"],
    "row_bound": ["model.row_norm_bound=0.3"],
    "all": ["model.inference_steps=3", "model.lateral_l1=0.05", "model.standardize=true",
            "model.row_norm_bound=0.3"],
}
SPEC_VARIANTS = {"default": {}, "K3": {"inference_steps": 3}, "l1": {"lateral_l1": 0.05},
                 "standardize": {"standardize": True}, "row_bound": {"row_norm_bound": 0.3},
                 "all": {"inference_steps": 3, "lateral_l1": 0.05, "standardize": True, "row_norm_bound": 0.3}}


def data(seed=0, n=3):
    """n batches of T binary frames, the second row padded for its last two steps."""
    rng = np.random.default_rng(seed)
    mask = np.ones((T, B))
    mask[T - 2:, 1] = 0
    return [((rng.random((T, B, X_DIM)) > 0.5).astype(np.float64), mask) for _ in range(n)]


def config(hidden, extra=(), ray_engine=False):
    return load(None, [f"model.hidden={list(hidden)}", 'model.dtype="float64"', "model.weight_sd=0.3",
                       "model.error_weight_sd=0.3", 'optim.name="nag"', "optim.lr=0.05", "optim.momentum=0.9",
                       "engine.cpus_per_layer=0.5", *extra, *(['engine.name="ray"'] if ray_engine else [])])


def train(engine, batches):
    for x, mask in batches:
        for t0, t1 in ((0, 2), (2, T)):
            engine.run_segment(x, mask, t0, t1, learn=True, t_prime=1)
    return engine.weights()


def local_weights(hidden, extra=()):
    return train(build_engine(config(hidden, extra), X_DIM, "frames"), data())


# -- each variant is live, and K = 1 is the default ---------------------------------------------

@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_each_variant_changes_the_numbers(name):
    base, var = local_weights([6, 5]), local_weights([6, 5], VARIANTS[name])
    assert max(np.abs(base[k] - var[k]).max() for k in base) > 1e-6


def test_explicit_defaults_equal_the_default_run():
    base = local_weights([6, 5, 4])
    same = local_weights([6, 5, 4], ["model.inference_steps=1", "model.lateral_l1=0.0", "model.standardize=false",
                                     "model.row_norm_bound=0.0"])
    assert all(np.array_equal(base[k], same[k]) for k in base)


def test_defaults_keep_the_config_hash():
    """A run without the variants hashes as before they existed (its checkpoints still resume)."""
    plain, explicit = load(None, []), load(None, ["model.inference_steps=1", "model.standardize=false"])
    assert plain.hash() == explicit.hash() != load(None, ["model.inference_steps=2"]).hash()


@pytest.mark.parametrize("override, words", [
    ("model.inference_steps=0", "inference_steps"), ("model.inference_steps=2.0", "int"),
    ("model.lateral_l1=-0.1", "lateral_l1"), ("model.standardize=1", "bool")])
def test_bad_values_are_clear_errors(override, words):
    with pytest.raises(ConfigError, match=words):
        load(None, [override])


def test_pipelined_rejects_k_above_one():
    with pytest.raises(ConfigError, match="exact"):
        load(None, ["model.inference_steps=2", 'engine.mode="pipelined"'])
    specs = layer_specs(X_DIM, [6, 5], inference_steps=2)
    params = [init_params(s, 0, 0.1, 0.1, np.float64) for s in specs]
    with pytest.raises(ConfigError, match="exact"):
        LocalEngine(engine_config(OptimConfig("sgd", 0.1), mode="pipelined"), specs, params)


# -- the forecasting protocol ---------------------------------------------------------------------

def trace(variant, x, mask, learn):
    """Each step's xhat and corrected states y, from a fresh local engine (seeded weights)."""
    specs = layer_specs(X_DIM, [6, 5, 4], **SPEC_VARIANTS[variant])
    params = [init_params(s, 1, 0.3, 0.3, np.float64) for s in specs]
    engine = LocalEngine(engine_config(OptimConfig("nag", 0.05, 0.9)), specs, params)
    for layer in engine.layers:
        layer.reset(B)
    out = []
    for t in range(T):
        xhat = engine.step(x[t], mask[t][:, None], learn and t >= 1)
        out.append([xhat.copy()] + [layer.step_values()["y"].copy() for layer in engine.layers])
    return out


@pytest.mark.parametrize("learn", [True, False], ids=["learn", "test"])
@pytest.mark.parametrize("variant", sorted(SPEC_VARIANTS))
def test_forecast_of_x_t_uses_only_step_t_minus_1_state(variant, learn):
    """(a) Changing x[t] and every later frame leaves xhat at steps 0..t exactly as it was."""
    (x, mask), (other, _) = data(2, 2)
    ref = trace(variant, x, mask, learn)
    for t in range(1, T):
        changed = np.concatenate([x[:t], other[t:]])
        got = trace(variant, changed, mask, learn)
        for s in range(t + 1):
            assert np.array_equal(got[s][0], ref[s][0]), (t, s)
        assert not np.array_equal(got[t][1], ref[t][1])


@pytest.mark.parametrize("variant", sorted(SPEC_VARIANTS))
def test_correction_at_test_time_uses_no_future_frame(variant):
    """(b) learn=False: changing x[t+1..] leaves xhat and every corrected state y of steps
    0..t unchanged."""
    (x, mask), (other, _) = data(3, 2)
    ref = trace(variant, x, mask, learn=False)
    for t in range(T - 1):
        got = trace(variant, np.concatenate([x[:t + 1], other[t + 1:]]), mask, learn=False)
        for s in range(t + 1):
            for a, b in zip(got[s], ref[s]):
                assert np.array_equal(a, b), (t, s)


# -- one step against an independent NumPy program ------------------------------------------------

def reference_step(w, xprev, y1p, y2p, x, m, K, l1, alpha, beta, gamma, radius, lr, bound):
    """MODEL.md's two-layer step with K inference iterations, the lateral L1 term, standardized
    pre-activations (the authors' formula) and the row bound, written out for SGD."""
    def std(h):
        c = h - h.mean()
        return c / np.sqrt((c * c).mean(axis=1, keepdims=True) + 1e-12)

    def out(a):
        return 1.0 / (1.0 + np.exp(-a))

    def clip(g):
        n = np.linalg.norm(g)
        return g * (radius / n) if n > radius else g

    h1 = std(xprev @ w["M1"] + y1p @ w["V1"] + y2p @ w["U1"])
    h2 = std(y1p @ w["M2"] + y2p @ w["V2"])
    z1, z2 = np.tanh(h1), np.tanh(h2)
    xhat = out(z1 @ w["W1"])
    e0 = (xhat - x) * m
    v1, v2, s1, s2 = h1, h2, z1, z2
    for _ in range(K):
        e0k = (out(s1 @ w["W1"]) - x) * m
        e1k = (s2 @ w["W2"] - s1) * m
        d1 = e0k @ w["E1"] - alpha * e1k + l1 * np.sign(h1)
        d2 = e1k @ w["E2"] + l1 * np.sign(h2)
        v1, v2 = v1 - beta * d1, v2 - beta * d2
        s1, s2 = np.tanh(v1), np.tanh(v2)
    y1, y2 = s1, s2
    eps1, eps2 = (z1 - y1) * m, (z2 - y2) * m
    dW1, dW2 = clip(z1.T @ e0), clip(z2.T @ eps1)
    deltas = {"W1": dW1, "E1": clip(gamma * dW1.T), "W2": dW2, "E2": clip(gamma * dW2.T),
              "M1": clip(xprev.T @ eps1), "V1": clip(y1p.T @ eps1), "U1": clip(y2p.T @ eps1),
              "M2": clip(y1p.T @ eps2), "V2": clip(y2p.T @ eps2)}
    new = {}
    for k, g in deltas.items():
        p = w[k] - lr * g / x.shape[0]
        norms = np.linalg.norm(p, axis=1, keepdims=True)
        new[k] = p * np.minimum(1.0, bound / norms)
    return {"xhat": xhat, "y1": y1, "y2": y2, "eps1": eps1, "eps2": eps2}, new


def test_one_step_equals_an_independent_numpy_program():
    K, l1, bound, lr = 3, 0.05, 0.6, 0.1
    hyper = dict(alpha=0.1, beta=0.2, gamma=0.9, update_radius=0.5)
    specs = layer_specs(X_DIM, [6, 5], inference_steps=K, lateral_l1=l1, standardize=True,
                        row_norm_bound=bound, **hyper)
    params = [init_params(s, 4, 0.3, 0.3, np.float64) for s in specs]
    engine = LocalEngine(engine_config(OptimConfig("sgd", lr)), specs, params)
    rng = np.random.default_rng(5)
    xprev, y1p, y2p = rng.random((B, X_DIM)), np.tanh(rng.standard_normal((B, 6))), np.tanh(rng.standard_normal((B, 5)))
    x, m = (rng.random((B, X_DIM)) > 0.5).astype(np.float64), np.array([[1.0], [0.0], [1.0]])
    l1_layer, l2_layer = engine.layers
    for layer in engine.layers:
        layer.reset(B)
    l1_layer.carry.update(inp=xprev.copy(), y=y1p.copy(), y_up=y2p.copy())
    l2_layer.carry.update(inp=y1p.copy(), y=y2p.copy())
    w = {f"{k}{l}": v for l, p in enumerate(params, start=1) for k, v in p.items()}
    want, want_w = reference_step(w, xprev, y1p, y2p, x, m, K, l1, hyper["alpha"], hyper["beta"], hyper["gamma"],
                                  hyper["update_radius"], lr, bound)
    xhat = engine.step(x, m, True)
    got = {"xhat": xhat, "y1": l1_layer.step_values()["y"], "y2": l2_layer.step_values()["y"],
           "eps1": l1_layer.step_values()["eps"], "eps2": l2_layer.step_values()["eps"]}
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=0, atol=1e-12, err_msg=k)
    got_w = engine.weights()
    assert set(got_w) == set(want_w)
    for k in want_w:
        np.testing.assert_allclose(got_w[k], want_w[k], rtol=0, atol=1e-12, err_msg=k)
    assert max(np.linalg.norm(v, axis=1).max() for v in got_w.values()) <= bound + 1e-12


# -- the Ray engine: every variant equal to the single process, 0.0 in float64 --------------------

@pytest.fixture(scope="module")
def ray_session():
    with local_ray(4):
        yield


def ray_weights(hidden, extra):
    engine = build_engine(config(hidden, extra, ray_engine=True), X_DIM, "frames")
    try:
        return train(engine, data())
    finally:
        engine.close()


def assert_equal_exactly(a, b):
    assert a.keys() == b.keys()
    worst = max(float(np.abs(a[k] - b[k]).max()) for k in a)
    assert worst == 0.0, worst


@pytest.mark.ray
@pytest.mark.parametrize("name,hidden", [pytest.param(n, [6, 5, 4], id=f"{n}-L3") for n in sorted(VARIANTS)]
                         + [pytest.param("all", [6, 5], id="all-L2")])
def test_ray_equals_local_exactly(ray_session, name, hidden):
    assert_equal_exactly(local_weights(hidden, VARIANTS[name]), ray_weights(hidden, VARIANTS[name]))


@pytest.mark.ray
@pytest.mark.parametrize("transport", ["calls", "compiled"])
def test_k_iterations_on_other_transports(ray_session, transport):
    extra = VARIANTS["all"] + (["engine.compiled=true"] if transport == "compiled" else ['engine.transport="calls"'])
    assert_equal_exactly(local_weights([6, 5, 4], VARIANTS["all"]), ray_weights([6, 5, 4], extra))


def test_ray_pipelined_rejects_k_above_one():
    cfg = config([6, 5])
    specs = layer_specs(X_DIM, [6, 5], inference_steps=2)
    cfg.engine.mode = "pipelined"
    from ptncn_dist.engines.ray_engine import RayEngine
    with pytest.raises(ConfigError, match="exact"):
        RayEngine(cfg, specs)
