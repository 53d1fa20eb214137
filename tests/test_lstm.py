"""The PyTorch LSTM baseline (model.type 'lstm', the `torch` extra): it learns, its losses are
the shared metrics' own, its checkpoint resumes exactly, and without torch it fails in one line."""
from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

from ptncn_dist import metrics
from ptncn_dist.baselines import BaselineConfig, build_baseline
from ptncn_dist.baselines.lstm import TORCH_HINT
from ptncn_dist.config import load
from ptncn_dist.engines.factory import build_engine
from ptncn_dist.core.optim import OptimConfig

V = 5


def needs_torch():
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    return torch


def make(data_kind="tokens", dim=V, dtype=np.float64, seed=0, **kw):
    kw = {"hidden": 16, "embed": 4, "truncation": 4, "optim": OptimConfig(name="adam", lr=0.02), **kw}
    cfg = BaselineConfig(output="softmax" if data_kind == "tokens" else "sigmoid", **kw)
    return build_baseline("lstm", cfg, dim, data_kind, np, dtype, seed)


def cycle(T=24, B=4):
    """A deterministic period-V token cycle in B phases, the last column padded at the end."""
    x = np.array([[(t + b) % V for b in range(B)] for t in range(T)])
    mask = np.ones((T, B))
    mask[-5:, -1] = 0.0
    return x, mask


def test_learns_a_periodic_sequence():
    needs_torch()
    x, mask = cycle()
    net = make(dtype=np.float32)
    first = net.run_sequence(x, mask, learn=True)
    for _ in range(40):
        net.run_sequence(x, mask, learn=True)
    after = net.run_sequence(x, mask, learn=False)
    unigram = math.log(V)
    assert first["count"] == after["count"] == 23 * 4 - 5
    assert first["nll"] / first["count"] > 0.8 * unigram
    assert after["nll"] / after["count"] < 0.05 * unigram


def test_learns_frames():
    needs_torch()
    pat = np.array([[1, 0, 0, 1], [0, 1, 0, 0], [0, 0, 1, 1]], float)
    x = np.array([[pat[(t + ph) % 3] for ph in (0, 1)] for t in range(12)])
    net = make("frames", dim=4, optim=OptimConfig(name="adam", lr=0.05))
    before = net.run_sequence(x, None, learn=False)
    for _ in range(100):
        net.run_sequence(x, None, learn=True)
    after = net.run_sequence(x, None, learn=False)
    assert after["bce"] < 0.1 * before["bce"]


def numpy_forecasts(sd, x, tokens):
    """xhat (T, B, D) of the LSTM recomputed in NumPy from its state_dict (gates i, f, g, o)."""
    p = {k[len("param."):]: v for k, v in sd.items() if k.startswith("param.")}
    H = p["Whh"].shape[1]
    h = np.zeros((x.shape[1], H))
    c = np.zeros_like(h)
    sig = lambda a: 1.0 / (1.0 + np.exp(-a))
    out = []
    for t in range(x.shape[0]):
        if t == 0:
            u = np.zeros((x.shape[1], p["Wih"].shape[1]))
        else:
            u = p["E"][x[t - 1]] if tokens else x[t - 1]
        a = u @ p["Wih"].T + p["bih"] + h @ p["Whh"].T + p["bhh"]
        i, f, g, o = sig(a[:, :H]), sig(a[:, H:2 * H]), np.tanh(a[:, 2 * H:3 * H]), sig(a[:, 3 * H:])
        c = f * c + i * g
        h = o * np.tanh(c)
        z = h @ p["Wo"].T + p["bo"]
        if tokens:
            e = np.exp(z - z.max(axis=1, keepdims=True))
            out.append(e / e.sum(axis=1, keepdims=True))
        else:
            out.append(sig(z))
    return np.stack(out)


@pytest.mark.parametrize("data_kind", ["tokens", "frames"])
def test_loss_sums_match_a_numpy_recomputation(data_kind):
    needs_torch()
    rng = np.random.default_rng(3)
    tokens = data_kind == "tokens"
    x, mask = cycle(T=11, B=3)
    if not tokens:
        x = rng.random((11, 3, 6))
    net = make(data_kind, dim=V if tokens else 6, t_prime=2, truncation=3)
    net.run_sequence(x, mask, learn=True)
    got = net.run_sequence(x, mask, learn=False)
    xhat = numpy_forecasts(net.state_dict(), x, tokens)
    w = mask.copy()
    w[:2] = 0.0
    if tokens:
        p = np.clip(np.take_along_axis(xhat, x[..., None], axis=-1)[..., 0], 1e-12, 1.0)
        want = {"nll": float((-np.log(p) * w).sum())}
    else:
        q = np.clip(xhat, 1e-7, 1 - 1e-7)
        bce = -(x * np.log(q) + (1 - x) * np.log(1 - q)).sum(-1)
        want = {"bce": float((bce * w).sum()), "se": float((((xhat - x) ** 2).sum(-1) * w).sum())}
    assert got["count"] == w.sum() == 3 * 9 - 5
    for k, v in want.items():
        assert got[k] == pytest.approx(v, rel=1e-9)
    by_t = net.run_sequence(x, mask, learn=False, by_t=True)
    assert sorted(by_t[metrics.BY_T]) == list(range(2, 11))
    assert metrics.summarize(by_t) == pytest.approx(metrics.summarize(got), rel=1e-9)


def test_checkpoint_round_trip_resumes_bit_for_bit(tmp_path):
    needs_torch()
    base = ['model.type="lstm"', 'model.output="softmax"', "baseline.hidden=12", "baseline.embed=3",
            "baseline.truncation=5", "optim.lr=0.01"]
    x, mask = cycle(T=13)
    a = build_engine(load(None, base), V, "tokens")
    for _ in range(3):
        a.run_segment(x, mask, 0, 13, learn=True, t_prime=1)
    shards = a.save_shards(str(tmp_path))
    b = build_engine(load(None, base + ["train.seed=7"]), V, "tokens")
    assert not np.array_equal(b.weights()["param.Wih"], a.weights()["param.Wih"])
    b.load_shards(str(tmp_path), {"shards": shards})
    step = dict(learn=True, t_prime=1)
    assert a.run_segment(x, mask, 0, 13, **step) == b.run_segment(x, mask, 0, 13, **step)
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert set(sa) == set(sb) and any(k.startswith("slot.E.") for k in sa)
    for k in sa:
        np.testing.assert_array_equal(sb[k], sa[k])
    assert a.stats()["num_params"] == V * 3 + 4 * 12 * (3 + 12 + 2) + 12 * V + V


def test_missing_torch_is_one_config_error_line():
    lstm = "['model.type=\"lstm\"', 'model.output=\"softmax\"']"
    code = ("import sys; sys.modules['torch'] = None\n"
            "from ptncn_dist.config import load\n"
            "from ptncn_dist.engines.factory import build_engine\n"
            "from ptncn_dist.errors import ConfigError\n"
            "try:\n"
            f"    build_engine(load(None, {lstm}), 10, 'tokens')\n"
            "except ConfigError as e:\n"
            "    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout == TORCH_HINT + "\n"


def test_embed_enters_the_config_hash_only_when_set():
    plain = load(None, ['model.type="lstm"'])
    assert plain.baseline.embed == 64 and "embed" not in plain.baseline.numbers()
    assert plain.hash() == load(None, ['model.type="lstm"', "baseline.embed=64"]).hash()
    assert plain.hash() != load(None, ['model.type="lstm"', "baseline.embed=32"]).hash()


def test_contiguous_windows_with_carried_state_equal_one_long_sequence():
    """run_stream carries (h, c) and the last token across windows: three 8-token windows learn
    exactly what one 24-token sequence cut every 4 steps learns (same losses, same weights);
    without the carry (fresh each window) they differ."""
    needs_torch()
    x = np.array([[(3 * t + b * b) % V for b in range(3)] for t in range(24)])
    mask = np.ones(x.shape)
    whole, pieces, cold = (make(t_prime=0) for _ in range(3))
    one = whole.run_sequence(x, mask, learn=True)
    sums = [pieces.run_stream(x[i:i + 8], mask[i:i + 8], learn=True, fresh=i == 0) for i in (0, 8, 16)]
    assert sum(s["nll"] for s in sums) == pytest.approx(one["nll"], rel=1e-12)
    for name, p in whole.params.items():
        np.testing.assert_allclose(pieces.params[name], p, rtol=1e-12, atol=1e-14, err_msg=name)
    for i in (0, 8, 16):
        cold.run_stream(x[i:i + 8], mask[i:i + 8], learn=True, fresh=True)
    assert not np.allclose(cold.params["Whh"], whole.params["Whh"])


def test_contiguous_stream_columns_read_the_joined_split_in_order():
    from ptncn_dist.data.contiguous import ContiguousStream
    sentences = [np.arange(1, 1 + n) for n in (3, 5, 2, 7, 4)]
    s = ContiguousStream(sentences, list(range(10)), batch_size=2, window=3, separator=0)
    joined = np.concatenate([np.append(q, 0) for q in sentences])  # 26 tokens: 13 per column
    assert s.windows_per_pass == 4 and s.starts_pass(0) and s.starts_pass(4) and not s.starts_pass(1)
    got = np.concatenate([s.batch(p).x for p in range(4)])
    np.testing.assert_array_equal(got[:, 0], joined[:12])
    np.testing.assert_array_equal(got[:, 1], joined[13:25])
    np.testing.assert_array_equal(s.batch(4).x, s.batch(0).x)
    with pytest.raises(ValueError, match="cannot fill"):
        ContiguousStream(sentences, list(range(10)), batch_size=20, window=3, separator=0)
