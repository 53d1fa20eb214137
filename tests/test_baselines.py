"""Baseline learners: exact gradients, RTRL = BPTT, UORO unbiasedness, ESN readouts, training."""
from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

import numpy as np
import pytest

from ptncn_dist.baselines import BaselineConfig, bptt_gradients, build_baseline, frozen_eval, init_params, ridge_readout, rtrl_gradients, sequence_objective, uoro_gradients
from ptncn_dist.baselines import elman, esn, uoro
from ptncn_dist.baselines.config import BaselineSection
from ptncn_dist.config import load
from ptncn_dist.engines.factory import build_engine
from ptncn_dist.errors import ConfigError
from ptncn_dist.core.optim import OptimConfig

T, B, D, H = 6, 3, 4, 5
CASES = [("frames", "sigmoid"), ("frames", "identity"), ("frames", "tanh"), ("tokens", "softmax")]


def problem(data_kind, output, seed=0, T=T, B=B, D=D, H=H):
    """Random float64 params (nonzero biases), data and a loss weight with a padded row."""
    rng = np.random.default_rng(seed)
    p = init_params(rng, D, H, np, np.float64, 0.5)
    p["b"] += rng.normal(0, 0.3, H)
    p["bo"] += rng.normal(0, 0.3, D)
    if data_kind == "tokens":
        x = rng.integers(0, D, (T, B))
    elif output == "tanh":
        x = rng.uniform(-1, 1, (T, B, D))
    else:
        x = rng.random((T, B, D))
    mask = np.ones((T, B))
    if B > 1:
        mask[-2:, 1] = 0.0
    return p, x, elman.loss_weights(mask, 1)


def finite_differences(p, x, w, output, eps=1e-6):
    out = {}
    for name, arr in p.items():
        fd = np.zeros_like(arr)
        for i in np.ndindex(arr.shape):
            old = arr[i]
            arr[i] = old + eps
            up = sequence_objective(p, x, w, output, np)
            arr[i] = old - eps
            down = sequence_objective(p, x, w, output, np)
            arr[i] = old
            fd[i] = (up - down) / (2 * eps)
        out[name] = fd
    return out


def rel_err(a, b):
    return np.linalg.norm(a - b) / max(np.linalg.norm(a) + np.linalg.norm(b), 1e-300)


def flat(g, names=elman.PARAMS):
    return np.concatenate([g[n].ravel() for n in names])


@pytest.mark.parametrize("data_kind,output", CASES)
def test_bptt_matches_finite_differences(data_kind, output):
    p, x, w = problem(data_kind, output)
    g = bptt_gradients(p, x, w, output, np)
    fd = finite_differences(p, x, w, output)
    for name in elman.PARAMS:
        assert np.linalg.norm(fd[name]) > 1e-4, name
        assert rel_err(g[name], fd[name]) < 1e-6, name


def test_padding_is_ignored():
    p, x, w = problem("frames", "sigmoid")
    g = bptt_gradients(p, x, w, "sigmoid", np)
    x2 = x.copy()
    x2[-1, 1] = 1.0 - x2[-1, 1]
    g2 = bptt_gradients(p, x2, w, "sigmoid", np)
    for name in elman.PARAMS:
        np.testing.assert_array_equal(g[name], g2[name])


@pytest.mark.parametrize("data_kind,output", [CASES[0], CASES[3]])
def test_rtrl_equals_bptt(data_kind, output):
    p, x, w = problem(data_kind, output, seed=1, T=8)
    g_bptt = bptt_gradients(p, x, w, output, np)
    g_rtrl = rtrl_gradients(p, x, w, output, np)
    for name in elman.PARAMS:
        np.testing.assert_allclose(g_rtrl[name], g_bptt[name], rtol=0, atol=1e-10)


def test_truncated_bptt():
    p, x, w = problem("frames", "sigmoid", seed=2)
    full = bptt_gradients(p, x, w, "sigmoid", np)
    for k in (T, T + 3):
        g = bptt_gradients(p, x, w, "sigmoid", np, truncation=k)
        for name in elman.PARAMS:
            np.testing.assert_array_equal(g[name], full[name])
    g1 = bptt_gradients(p, x, w, "sigmoid", np, truncation=1)
    assert rel_err(g1["Wh"], full["Wh"]) > 1e-2
    np.testing.assert_allclose(g1["Wo"], full["Wo"], atol=1e-12)

    def trained(kind, k):
        cfg = BaselineConfig(hidden=H, truncation=k, optim=OptimConfig(name="sgd", lr=0.1))
        b = build_baseline(kind, cfg, D, "frames", np, np.float64, seed=3)
        b.run_sequence(x, w, learn=True)
        return b.state_dict()

    ref = trained("bptt", 0)
    long = trained("tbptt", T + 1)
    short = trained("tbptt", 1)
    for key in ref:
        np.testing.assert_array_equal(long[key], ref[key])
    assert not np.allclose(short["param.Wh"], ref["param.Wh"])


@pytest.mark.parametrize("data_kind,output", [CASES[0], CASES[3]])
def test_uoro_is_unbiased(data_kind, output):
    """Mean of 20,000 draws (100 batches of 200 replicas) is within a few standard errors."""
    p, x1, w1 = problem(data_kind, output, seed=4, T=6, B=1, D=3, H=4)
    rec = elman.RECURRENT
    true = flat(bptt_gradients(p, x1, w1, output, np), rec)
    reps, batches = 200, 100
    xr, wr = np.repeat(x1, reps, axis=1), np.repeat(w1, reps, axis=1)
    noise = np.random.default_rng(5)
    means = np.stack([flat(uoro_gradients(p, xr, wr, output, noise, np), rec) for _ in range(batches)])
    mean = means.mean(axis=0)
    se = means.std(axis=0, ddof=1) / np.sqrt(batches)
    z = (mean - true) / se
    per_draw_rms = np.sqrt(reps * np.mean(((means - true) ** 2).sum(axis=1)))
    single = flat(uoro_gradients(p, x1, w1, output, np.random.default_rng(6), np), rec)
    err = np.linalg.norm(mean - true)
    assert np.linalg.norm(single - true) > 0.1 * per_draw_rms
    assert err < 0.02 * per_draw_rms
    assert err < 0.1 * np.linalg.norm(single - true)
    assert np.mean(z ** 2) < 2.0 and np.abs(z).max() < 5.0
    out = ["Wo", "bo"]
    np.testing.assert_allclose(flat(uoro_gradients(p, x1, w1, output, noise, np), out),
                               flat(bptt_gradients(p, x1, w1, output, np), out), atol=1e-12)


@pytest.mark.parametrize("data_kind", ["frames", "tokens"])
def test_uoro_vjp_norm_matches_the_formed_vjp(data_kind):
    rng = np.random.default_rng(11)
    u = rng.integers(0, D, B) if data_kind == "tokens" else rng.random((B, D))
    h_prev, da = rng.normal(size=(B, H)), rng.normal(size=(B, H))
    theta = {"Wx": np.zeros((B, D, H)), "Wh": np.zeros((B, H, H)), "b": np.zeros((B, H))}
    uoro.add_direct_vjp(theta, da, u, h_prev, np)
    formed = np.sqrt(sum((t.reshape(B, -1) ** 2).sum(axis=1) for t in theta.values()))
    np.testing.assert_allclose(uoro.direct_vjp_norm(da, u, h_prev, np), formed, rtol=1e-12)
    if data_kind == "tokens":
        np.testing.assert_array_equal(theta["Wx"][np.arange(B), u], da)


def test_esn_ridge_matches_lstsq():
    rng = np.random.default_rng(7)
    S = rng.normal(size=(40, 9))
    Y = rng.normal(size=(40, 3))
    lam = 0.3
    W = ridge_readout(S, Y, lam, np)
    aug_S = np.vstack([S, np.sqrt(lam) * np.eye(9)])
    aug_Y = np.vstack([Y, np.zeros((9, 3))])
    np.testing.assert_allclose(W, np.linalg.lstsq(aug_S, aug_Y, rcond=None)[0], atol=1e-12)


def test_esn_reservoir():
    cfg = BaselineConfig(hidden=60, esn_spectral_radius=0.77, esn_density=0.2)
    net = build_baseline("esn", cfg, D, "frames", np, np.float64, seed=8)
    W = net.res["W"]
    assert abs(np.max(np.abs(np.linalg.eigvals(W))) - 0.77) < 1e-10
    assert 0.15 < np.mean(W != 0) < 0.25
    with pytest.raises(ConfigError, match="esn_density"):
        esn.scale_to_spectral_radius(np.triu(np.ones((4, 4)), 1), 0.9)


def sequences(n, seed, T=10, B=3):
    rng = np.random.default_rng(seed)
    return [(rng.random((T, B, D)), np.ones((T, B))) for _ in range(n)]


def test_esn_online_reaches_ridge_solution():
    cfg = dict(hidden=20, esn_density=0.3, esn_ridge=1e-2, output="identity")
    ridge = build_baseline("esn", BaselineConfig(**cfg), D, "frames", np, np.float64, seed=9)
    online = build_baseline("esn", BaselineConfig(esn_online=True, **cfg), D, "frames", np,
                            np.float64, seed=9)
    for x, m in sequences(4, seed=10):
        ridge.run_sequence(x, m, learn=True)
        online.run_sequence(x, m, learn=True)
    scale = np.abs(ridge.Wout).max()
    assert scale > 1e-2
    np.testing.assert_allclose(online.Wout, ridge.Wout, atol=1e-8 * scale)


def successor_sequences(n, V, seed, T=20, B=8):
    """Token sequences in which each id is followed by the next one (mod V), from random starts."""
    rng = np.random.default_rng(seed)
    return [(rng.integers(0, V, B)[None, :] + np.arange(T)[:, None]) % V for _ in range(n)]


def test_esn_text_readout_is_trained_for_probabilities():
    V = 24
    cfg = BaselineConfig(hidden=80, esn_density=0.2, output="softmax",
                         optim=OptimConfig(name="adam", lr=0.05))
    net = build_baseline("esn", cfg, V, "tokens", np, np.float64, seed=5)
    for x in successor_sequences(150, V, seed=6):
        net.run_sequence(x, None, learn=True)
    train = successor_sequences(150, V, seed=6)
    test = successor_sequences(5, V, seed=7)
    states = lambda xs: np.concatenate([esn.augment(esn.reservoir_states(net.res, x, 1.0, np), np)[1:]
                                        for x in xs]).reshape(-1, 81)
    ones = lambda xs: esn.targets(np.concatenate([x[1:] for x in xs]).reshape(-1), V, np.float64, np)
    least_squares = esn.ridge_readout(states(train), ones(train), cfg.esn_ridge, np)
    probs = esn.finish(states(test) @ least_squares, "softmax", np)
    old = -np.log(probs[np.arange(len(probs)), np.concatenate([x[1:] for x in test]).reshape(-1)]).mean()
    new = sum(frozen_eval(net, x, None)["nll"] for x in test) / sum(x[1:].size for x in test)
    assert old > 2.0 and math.log(V) > 3.1
    assert new < 0.25
    assert net.num_params() == 81 * V and set(net.state_dict()) == {
        "param.Win", "param.W", "param.bias", "param.Wout", "slot.Wout.m", "slot.Wout.v", "slot.Wout.t"}


def repeating_task(data_kind, T=12):
    """Two phase-shifted copies of a period-3 pattern (frames) or period-4 cycle (tokens)."""
    if data_kind == "tokens":
        x = np.array([[(t + ph) % 4 for ph in (0, 2)] for t in range(T)])
    else:
        pat = np.array([[1, 0, 0, 1], [0, 1, 0, 0], [0, 0, 1, 1]], float)
        x = np.array([[pat[(t + ph) % 3] for ph in (0, 1)] for t in range(T)])
    mask = np.ones((T, 2))
    mask[-3:, 1] = 0.0
    return x, mask


def make(kind, data_kind, seed=0, **kw):
    cfg = BaselineConfig(hidden=30 if kind == "esn" else 8, truncation=3 if kind == "tbptt" else 0,
                         output="sigmoid" if data_kind == "frames" else "softmax", weight_sd=0.3,
                         esn_density=0.3, esn_ridge=1e-3, optim=OptimConfig(name="adam", lr=0.05), **kw)
    return build_baseline(kind, cfg, 4, data_kind, np, np.float64, seed)


KINDS = ["bptt", "tbptt", "rtrl", "uoro", "esn"]


@pytest.mark.parametrize("data_kind", ["frames", "tokens"])
@pytest.mark.parametrize("kind", KINDS)
def test_training_reduces_loss(kind, data_kind):
    x, mask = repeating_task(data_kind)
    net = make(kind, data_kind)
    key = "bce" if data_kind == "frames" else "nll"
    before = frozen_eval(net, x, mask)
    assert before["count"] == 11 + 8
    for _ in range(1 if kind == "esn" and data_kind == "frames" else 100):
        net.run_sequence(x, mask, learn=True)
    after = frozen_eval(net, x, mask)
    assert after[key] < 0.6 * before[key]


@pytest.mark.parametrize("kind", KINDS)
def test_frozen_eval_changes_nothing(kind):
    x, mask = repeating_task("frames")
    net = make(kind, "frames")
    net.run_sequence(x, mask, learn=True)
    before = net.state_dict()
    a = frozen_eval(net, x, mask)
    assert frozen_eval(net, x, mask) == a
    for k, v in net.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


@pytest.mark.parametrize("kind,extra", [(k, {}) for k in KINDS] + [("esn", {"esn_online": True}),
                                       ("rtrl", {"rtrl_online": False})])
def test_state_dict_round_trip(kind, extra):
    x, mask = repeating_task("tokens")
    a = make(kind, "tokens", seed=1, **extra)
    for _ in range(3):
        a.run_sequence(x, mask, learn=True)
    b = make(kind, "tokens", seed=2, **extra)
    b.load_state_dict(a.state_dict())
    for k, v in a.state_dict().items():
        np.testing.assert_array_equal(b.state_dict()[k], v)
    assert a.run_sequence(x, mask, learn=True) == b.run_sequence(x, mask, learn=True)
    sa, sb = a.state_dict(), b.state_dict()
    for k in sa:
        np.testing.assert_array_equal(sb[k], sa[k])
    assert a.num_params() == b.num_params() > 0


def test_rtrl_per_sequence_update_equals_bptt():
    x, mask = repeating_task("frames")
    states = []
    for kind, extra in (("bptt", {}), ("rtrl", {"rtrl_online": False})):
        net = make(kind, "frames", seed=3, **extra)
        net.run_sequence(x, mask, learn=True)
        states.append(net.state_dict())
    for k in states[0]:
        np.testing.assert_allclose(states[1][k], states[0][k], atol=1e-12)


def test_clip_norm_bounds_the_step():
    x, mask = repeating_task("frames")
    cfg = BaselineConfig(hidden=8, truncation=0, clip_norm=1e-3, optim=OptimConfig(name="sgd", lr=1.0))
    net = build_baseline("bptt", cfg, 4, "frames", np, np.float64, seed=4)
    before = net.state_dict()
    net.run_sequence(x, mask, learn=True)
    step = np.sqrt(sum(((net.state_dict()[k] - v) ** 2).sum() for k, v in before.items()))
    assert step == pytest.approx(1e-3, rel=1e-9)


def test_config_errors():
    with pytest.raises(ConfigError, match="kind"):
        build_baseline("gru", BaselineConfig(), 4, "frames", np, np.float64, 0)
    with pytest.raises(ConfigError, match="output"):
        BaselineConfig(output="relu")
    with pytest.raises(ConfigError, match="softmax"):
        build_baseline("bptt", BaselineConfig(), 4, "tokens", np, np.float64, 0)
    with pytest.raises(ConfigError, match="truncation"):
        build_baseline("bptt", BaselineConfig(), 4, "frames", np, np.float64, 0)
    with pytest.raises(ConfigError, match="truncation"):
        build_baseline("tbptt", BaselineConfig(truncation=0), 4, "frames", np, np.float64, 0)
    with pytest.raises(ConfigError, match="esn_leak"):
        BaselineConfig(esn_leak=0.0)
    with pytest.raises(ConfigError, match="rtrl_force"):
        build_baseline("rtrl", BaselineConfig(hidden=65), 4, "frames", np, np.float64, 0)
    net = build_baseline("rtrl", BaselineConfig(hidden=65, rtrl_force=True), 4, "frames", np,
                         np.float64, 0)
    assert net.num_params() == 4 * 65 + 65 * 65 + 65 + 65 * 4 + 4


# -- the [baseline] config section ----------------------------------------------------------------

SECTION = {"hidden": 7, "truncation": 3, "weight_sd": 0.2, "clip_norm": 2.5, "esn_spectral_radius": 0.5,
           "esn_density": 0.4, "esn_input_scale": 0.7, "esn_leak": 0.6, "esn_ridge": 0.01,
           "esn_online": True, "rtrl_online": False, "rtrl_force": True, "embed": 9}


def test_config_file_baseline_section_reaches_the_learner(tmp_path):
    assert set(SECTION) == {f.name for f in dataclasses.fields(BaselineSection)}
    assert all(v != getattr(BaselineSection(), k) for k, v in SECTION.items())
    toml = "\n".join(f"{k} = {str(v).lower() if isinstance(v, bool) else v}" for k, v in SECTION.items())
    path = tmp_path / "tbptt.toml"
    path.write_text(f'[model]\ntype = "tbptt"\nt_prime = 2\n[optim]\nname = "sgd"\nlr = 0.3\n'
                    f"[baseline]\n{toml}\n")
    cfg = load(str(path))
    learner = build_engine(cfg, 4, "frames").model
    assert learner.kind == "tbptt"
    assert {k: getattr(learner.cfg, k) for k in SECTION} == dataclasses.asdict(cfg.baseline) == SECTION
    assert (learner.cfg.output, learner.cfg.t_prime, learner.cfg.optim) == ("sigmoid", 2, cfg.optim)


def test_truncation_default_is_what_the_docs_say():
    docs = (Path(__file__).resolve().parents[1] / "docs" / "results.md").read_text()
    stated = re.search(r"`baseline\.truncation`[^.]*?defaults to (\d+)", docs)
    assert stated, "docs/results.md states the default of baseline.truncation"
    k = int(stated.group(1))
    assert BaselineSection().truncation == BaselineConfig().truncation == load(None, []).baseline.truncation == k
    small = ["model.hidden=[8]", "baseline.hidden=6"]
    assert build_engine(load(None, small + ['model.type="tbptt"']), 4, "frames").model.cfg.truncation == k
    assert build_engine(load(None, small + ['model.type="bptt"']), 4, "frames").model.cfg.truncation == 0


@pytest.mark.parametrize("override, key", [
    ("baseline.hidden=0", "baseline.hidden"), ("baseline.truncation=-1", "baseline.truncation"),
    ("baseline.esn_density=1.5", "baseline.esn_density"), ("baseline.weight_sd=0", "baseline.weight_sd")])
def test_bad_baseline_values_fail_when_the_config_loads(override, key):
    with pytest.raises(ConfigError) as err:
        load(None, [override])
    assert key in str(err.value) and "\n" not in str(err.value)
