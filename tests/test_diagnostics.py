"""Does a model use time? The loss by position and the reference forecasts: each reference
against a direct NumPy computation, by-position losses summing back to the overall loss, equal
across engines, and present in metrics.jsonl, summary.json, TensorBoard and `ptncn eval`."""
import json
import math
import struct
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest

from helpers import DATA, REPO, local_ray, need_data
from ptncn_dist import metrics
from ptncn_dist.diagnostics import references
from ptncn_dist.config import load
from ptncn_dist.data import open_streams
from ptncn_dist.data.batch import Batch
from ptncn_dist.engines.factory import build_engine
from ptncn_dist.diagnostics.evaluation import evaluate, run_evaluation
from ptncn_dist.trainer import train

EPS = 1e-7
SMALL = ["model.hidden=[24, 16]", "data.frame=32", "data.batch=4", "data.eval_batch=4", "data.seq_len=6",
         "train.progress=false", "train.plots=false", "train.log_every=12", "train.eval_every=0",
         "train.eval_batches=2", "engine.blas_threads=1"]


def quiet(*_):
    pass


def bce(p, x):
    """Clipped BCE summed over pixels, per row."""
    p = np.clip(p, EPS, 1 - EPS)
    return -(x * np.log(p) + (1 - x) * np.log(1 - p)).sum(axis=-1)


def frames(seed, T=5, B=3, side=6):
    rng = np.random.default_rng(seed)
    x = (rng.random((T, B, side * side)) * (rng.random((T, B, side * side)) < 0.4)).astype(np.float32)
    mask = np.ones((T, B), np.float32)
    return Batch(x=x, mask=mask, position=seed)


def box_by_loops(img):
    side = img.shape[0]
    out = np.zeros_like(img, dtype=np.float64)
    for r in range(side):
        for c in range(side):
            total = 0.0
            for dr in range(-2, 3):
                for dc in range(-2, 3):
                    if 0 <= r + dr < side and 0 <= c + dc < side:
                        total += img[r + dr, c + dc]
            out[r, c] = total / 25.0
    return out


def test_mean_frame_and_copy_previous_against_numpy():
    train_b = [frames(s) for s in range(3)]
    test_b = [frames(10 + s) for s in range(2)]
    test_b[1].mask[3, 1] = 0.0
    fit = references.fit_frames(train_b)
    mean = np.concatenate([b.x.reshape(-1, 36) for b in train_b]).astype(np.float64).mean(axis=0)
    np.testing.assert_allclose(fit.mean, mean, rtol=1e-12)
    got = references.score_frames(fit, test_b, t_prime=1)
    want = {"mean_frame": [0.0, 0.0, 0], "copy_previous": [0.0, 0.0, 0]}
    for b in test_b:
        x = b.x.astype(np.float64)
        for t in range(1, x.shape[0]):
            for i in range(x.shape[1]):
                if b.mask[t, i] == 0:
                    continue
                for name, p in (("mean_frame", mean), ("copy_previous", x[t - 1, i])):
                    want[name][0] += bce(p, x[t, i])
                    want[name][1] += ((p - x[t, i]) ** 2).sum()
                    want[name][2] += 1
    for name, (b_sum, s_sum, n) in want.items():
        assert got[f"{name}_bce"] == pytest.approx(b_sum / n, rel=1e-9)
        assert got[f"{name}_se"] == pytest.approx(s_sum / n, rel=1e-9)
        assert len(got[f"{name}_bce_by_t"]) == 4


def test_blur_blend_against_hand_rolled_blur():
    train_b = [frames(s) for s in range(3)]
    test_b = [frames(20)]
    img = train_b[0].x[2, 1].reshape(6, 6).astype(np.float64)
    np.testing.assert_allclose(references.box5(img.reshape(36), 6).reshape(6, 6), box_by_loops(img), atol=1e-12)
    fit = references.fit_frames(train_b)

    pairs = [(box_by_loops(x[t - 1, i].reshape(6, 6)).reshape(36), x[t, i])
             for x in (b.x.astype(np.float64) for b in train_b[:references.FIT_BATCHES])
             for t in range(1, x.shape[0]) for i in range(x.shape[1])]
    grid = {w: sum(bce(w * blur + (1 - w) * fit.mean, target) for blur, target in pairs)
            for w in (i / 100 for i in range(101))}
    assert grid[fit.w] <= min(grid.values()) + 1e-9
    got = references.score_frames(fit, test_b, t_prime=2)
    x = test_b[0].x.astype(np.float64)
    rows = [(t, i) for t in range(2, x.shape[0]) for i in range(x.shape[1])]
    preds = {(t, i): fit.w * box_by_loops(x[t - 1, i].reshape(6, 6)).reshape(36) + (1 - fit.w) * fit.mean
             for t, i in rows}
    assert got["blur_blend_bce"] == pytest.approx(np.mean([bce(preds[r], x[r]) for r in rows]), rel=1e-9)
    assert got["blur_blend_se"] == pytest.approx(np.mean([((preds[r] - x[r]) ** 2).sum() for r in rows]), rel=1e-9)
    assert got["blur_blend_bce_by_t"][0] is None and got["blur_blend_bce_by_t"][1] is not None


def ngram_nll_by_loops(train, order, V, max_len, sentence):
    """-ln P of every token of `sentence` under add-one counts, by explicit loops."""
    full, ctx = Counter(), Counter()
    for s in train:
        s = list(s[:max_len])
        for t, w in enumerate(s):
            h = tuple(s[t - k] if t - k >= 0 else "<s>" for k in range(1, order))
            full[h + (w,)] += 1
            ctx[h] += 1
    out = []
    for t, w in enumerate(sentence):
        h = tuple(sentence[t - k] if t - k >= 0 else "<s>" for k in range(1, order))
        out.append(-math.log((full[h + (w,)] + 1) / (ctx[h] + V)))
    return out


def test_ngram_references_against_loops():
    V = 5
    train_s = [np.array(s, np.int32) for s in ([0, 1, 2, 1, 2, 3], [1, 1, 3], [2, 0, 1, 2], [4, 1])]
    test_s = [[1, 2, 3, 0], [2, 1, 2, 4, 4, 0], [0, 1]]
    T = max(map(len, test_s))
    x = np.zeros((T, len(test_s)), np.int32)
    mask = np.zeros((T, len(test_s)), np.float32)
    for j, s in enumerate(test_s):
        x[:len(s), j], mask[:len(s), j] = s, 1
    models = {name: references.count_ngrams(train_s, order, V, max_len=5)
              for name, order in references.TEXT_ORDERS.items()}
    got = references.score_text(models, [Batch(x=x, mask=mask, position=0)], t_prime=1)
    for name, order in references.TEXT_ORDERS.items():
        nll = [v for s in test_s for v in ngram_nll_by_loops(train_s, order, V, 5, s)[1:]]
        assert got[f"{name}_bpc"] == pytest.approx(np.mean(nll) / math.log(2), rel=1e-12), name
        assert got[f"{name}_ppl"] == pytest.approx(math.exp(np.mean(nll)), rel=1e-12), name
        first = [ngram_nll_by_loops(train_s, order, V, 5, s)[1] for s in test_s]
        assert got[f"{name}_bpc_by_t"]["1"] == pytest.approx(np.mean(first) / math.log(2), rel=1e-12)
        assert set(got[f"{name}_bpc_by_t"]) == {"1", "2", "3-4", "5-8"}


def weighted(by_t, counts):
    vals = by_t.values() if isinstance(by_t, dict) else by_t
    cnts = counts.values() if isinstance(counts, dict) else counts
    pairs = [(v, c) for v, c in zip(vals, cnts) if v is not None]
    return sum(v * c for v, c in pairs) / sum(c for _, c in pairs)


@pytest.mark.parametrize("model", ["ptncn", "bptt", "esn"])
def test_loss_by_position_sums_back_to_overall(model):
    cfg = load(None, SMALL + [f'model.type="{model}"', "baseline.hidden=16"])
    streams = open_streams(cfg.data, 0)
    engine = build_engine(cfg, streams.train.dim, "frames")
    b = streams.train.batch(0)
    engine.run_segment(b.x, b.mask, 0, b.x.shape[0], learn=True, t_prime=1)
    res = evaluate(engine, streams.test, 2, 1)
    assert len(res["test_bce_by_t"]) == 5 and res["test_count_by_t"] == [8.0] * 5
    assert weighted(res["test_bce_by_t"], res["test_count_by_t"]) == pytest.approx(res["test_bce"], rel=1e-9)
    assert weighted(res["test_se_by_t"], res["test_count_by_t"]) == pytest.approx(res["test_se"], rel=1e-9)
    if model == "ptncn":
        later = evaluate(engine, streams.test, 2, 3)
        assert later["test_bce_by_t"][:2] == [None, None] and later["test_bce_by_t"][2] is not None


def test_text_loss_by_position_and_evaluations_at_sentence_ends(tmp_path):
    need_data("ptb_word")
    seen = []
    cfg = load(None, ['data.source="ptb_char"', f'data.path="{DATA / "ptb_word"}"', 'model.output="softmax"',
                      "model.hidden=[16]", "data.batch=4", "data.eval_batch=8", "data.max_len=20",
                      "train.progress=false", "train.log_every=1000", "train.eval_every=30", "train.eval_batches=1",
                      "train.steps=200", "engine.blas_threads=1", "train.tensorboard=false"])
    res = train(cfg, str(tmp_path), log=quiet, on_record=seen.append)
    evals = [r for r in metrics.read_metrics(str(tmp_path / "metrics.jsonl")) if "test_bpc" in r and r["step"] > 0]
    assert len(evals) >= 5, [r["step"] for r in evals]
    assert all(r["test_bpc_by_t"] and set(r["test_bpc_by_t"]) <= {"1", "2", "3-4", "5-8", "9-16", "17-32", "33+"}
               for r in evals)
    assert [r["step"] for r in seen if "test_bpc_by_t" in r] == [0] + [r["step"] for r in evals]
    final = res.final_test
    assert weighted(final["test_bpc_by_t"], final["test_count_by_t"]) == pytest.approx(final["test_bpc"], rel=1e-9)
    ref = json.loads((tmp_path / "summary.json").read_text())["reference"]
    for name in ("unigram", "bigram", "trigram"):
        assert ref[f"{name}_ppl"] == pytest.approx(2 ** ref[f"{name}_bpc"], rel=1e-9)
    assert ref["trigram_bpc"] < ref["bigram_bpc"] < ref["unigram_bpc"]


@pytest.fixture(scope="module")
def private_ray():
    with local_ray(2, "127.0.0.5") as ray:
        yield ray


@pytest.mark.ray
@pytest.mark.parametrize("extra", [[], ['engine.transport="calls"', "engine.compiled=true"]],
                         ids=["tcp", "compiled"])
def test_local_and_ray_give_equal_loss_by_position(private_ray, extra):
    base = SMALL + ['model.dtype="float64"', "engine.cpus_per_layer=0.5"]
    cfg_l, cfg_r = load(None, base), load(None, base + ['engine.name="ray"', *extra])
    streams = open_streams(cfg_l.data, 0)
    local = build_engine(cfg_l, streams.train.dim, "frames")
    remote = build_engine(cfg_r, streams.train.dim, "frames")
    try:
        for pos in range(2):
            b = streams.train.batch(pos)
            for eng in (local, remote):
                eng.run_segment(b.x, b.mask, 0, b.x.shape[0], learn=True, t_prime=1)
        a = run_evaluation(local, streams.test, 2, 1, strip_seqs=2)
        r = run_evaluation(remote, streams.test, 2, 1, strip_seqs=2)
    finally:
        remote.close()
    assert a.losses.keys() == r.losses.keys()
    for key in ("test_bce_by_t", "test_se_by_t"):
        np.testing.assert_allclose(r.losses[key], a.losses[key], rtol=1e-12, atol=0)
    np.testing.assert_allclose(r.strip[1], a.strip[1], rtol=1e-12, atol=0)


def event_tags(run_dir):
    """Scalar and image tags of the TensorBoard event files in `run_dir`, read record by record
    (length, crc, Event proto, crc) with tensorboardX's own proto."""
    event_pb2 = pytest.importorskip("tensorboardX.proto.event_pb2")
    tags = set()
    for path in run_dir.glob("events.out.tfevents.*"):
        data = path.read_bytes()
        i = 0
        while i < len(data):
            (n,) = struct.unpack("<Q", data[i:i + 8])
            ev = event_pb2.Event.FromString(data[i + 12:i + 12 + n])
            tags.update(v.tag for v in ev.summary.value)
            i += 12 + n + 4
    return tags


def test_run_dir_holds_the_diagnostics(tmp_path):
    pytest.importorskip("tensorboardX")
    run = tmp_path / "run"
    cfg = load(None, SMALL + ["train.steps=36", "train.eval_every=18", "train.plots=true"])
    train(cfg, str(run), log=quiet)
    summary = json.loads((run / "summary.json").read_text())
    ref = summary["reference"]
    for name in references.FRAME_NAMES:
        for k in ("bce", "se"):
            assert np.isfinite(ref[f"{name}_{k}"]) and len(ref[f"{name}_{k}_by_t"]) == 5
    assert 0.0 <= ref["blur_blend_w"] <= 1.0
    assert len(summary["final_test"]["test_bce_by_t"]) == 5
    recs = metrics.read_metrics(str(run / "metrics.jsonl"))
    assert recs[0]["step"] == 0 and recs[0]["reference"]["blur_blend_bce"] == ref["blur_blend_bce"]
    assert all("test_bce_by_t" in r and "test_se_by_t" in r for r in recs if "test_bce" in r)
    assert [r["step"] for r in recs if "test_bce" in r] == [0, 18, 36]
    for name in ("frames.png", "loss_by_position.png", "loss_curves.png"):
        assert (run / name).stat().st_size > 0, name
    tags = event_tags(run)
    assert {"train_loss", "test_bce", "test_se", "test_bce_by_t/t01", "test_se_by_t/t05",
            "reference/blur_blend_bce", "reference/copy_previous_se", "reference/mean_frame_bce", "frames"} <= tags

    out = subprocess.run([sys.executable, "-m", "ptncn_dist.cli", "eval", str(run)], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    shown = json.loads(out.stdout)
    assert shown["step"] == 36 and len(shown["test_bce_by_t"]) == 5
    assert shown["reference"]["blur_blend_bce"] == pytest.approx(ref["blur_blend_bce"], rel=1e-12)
    assert shown["test_bce"] == pytest.approx(summary["final_test"]["test_bce"], rel=1e-6)


def test_tensorboard_off_without_tensorboardx(tmp_path, monkeypatch):
    from ptncn_dist.diagnostics.tboard import Board
    monkeypatch.setitem(sys.modules, "tensorboardX", None)
    lines = []
    board = Board(str(tmp_path), log=lines.append)
    board.record({"step": 1, "test_bce": 1.0})
    board.close()
    assert not board.active and len(lines) == 1 and "tensorboard" in lines[0]
    assert not list(tmp_path.iterdir())


def test_final_line_compares_with_the_best_reference():
    ref = {"mean_frame_bce": 420.0, "blur_blend_bce": 404.3, "copy_previous_bce": 900.0, "blur_blend_bce_by_t": [1.0]}
    line = references.comparison({"test_bce": 372.1}, ref, "bce")
    assert line == "test_bce 372.1 vs best reference blur_blend_bce 404.3 (model better by 8.0%)"
    assert "worse" in references.comparison({"test_bce": 500.0}, ref, "bce")
    assert references.comparison({"test_bce": 1.0}, {}, "bce") is None
