"""A user's own sequences: NumPy arrays (frames and token ids, with masks), UTF-8 text at character
and word level, and Moving MNIST in its distributed layout. Each test builds its data in tmp_path
and runs in process through `cli.main` or the data API; no Ray, no download."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from ptncn_dist import cli
from ptncn_dist.config import load
from ptncn_dist.data import arrays, moving_mnist, open_streams, text
from ptncn_dist.data.sources import DataConfig
from ptncn_dist.diagnostics import references
from ptncn_dist.errors import ConfigError

QUIET = ["--set", "train.progress=false", "--set", "train.plots=false", "--set", "train.tensorboard=false"]


def sets(**kv) -> list:
    """--set arguments; strings quoted as TOML strings."""
    out = []
    for key, value in kv.items():
        value = json.dumps(value) if isinstance(value, str) else value
        out += ["--set", f"{key.replace('__', '.')}={value}"]
    return out


def run_cli(capsys, *argv) -> tuple:
    """(exit status, stderr, stdout) of `ptncn ARGV` run in this process."""
    rc = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return rc, captured.err, captured.out


def train_run(tmp_path, capsys, steps: int, *extra) -> dict:
    """Train through the CLI; the run's summary.json, with what it printed under "_stdout"."""
    run = tmp_path / "run"
    rc, err, out = run_cli(capsys, "train", "--steps", steps, *QUIET, *extra, "--run-dir", run)
    assert rc == 0, err
    return {**json.loads((run / "summary.json").read_text()), "_stdout": out}


def one_error(tmp_path, capsys, *argv) -> str:
    """The one `error:` line of a refused `ptncn train`, status 2, no traceback, no run written."""
    run = tmp_path / "run"
    rc, err, _ = run_cli(capsys, "train", "--steps", 10, *QUIET, "--set", "model.hidden=[8,8]",
                      "--set", "data.batch=4", "--set", "data.eval_batch=4", *argv, "--run-dir", run)
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: "), (rc, err)
    assert "Traceback" not in err
    assert not (run / "config.toml").exists()
    return lines[0][len("error: "):]


def sines(n=64, steps=20, dim=4, seed=0, noise=0.05) -> np.ndarray:
    """Noisy sines (N, T, D) float32: each sequence and dimension its own frequency and phase."""
    rng = np.random.default_rng(seed)
    t = np.arange(steps)[None, :, None]
    freq = rng.uniform(0.2, 0.5, (n, 1, dim))
    phase = rng.uniform(0, 2 * np.pi, (n, 1, dim))
    x = np.sin(freq * t + phase) + noise * rng.standard_normal((n, steps, dim))
    return x.astype(np.float32)


def arrays_args(path, output="identity", **more) -> list:
    return sets(data__source="arrays", data__path=str(path), model__output=output, **more)


SMALL = ["--set", "model.hidden=[16,16]", "--set", "data.batch=8", "--set", "data.eval_batch=16",
         "--set", "train.eval_batches=1"]


# -- arrays ----------------------------------------------------------------------------------------
def test_noisy_sines_train_and_beat_the_untrained_model(tmp_path, capsys):
    np.save(tmp_path / "train.npy", sines())
    s = train_run(tmp_path, capsys, 200, *arrays_args(tmp_path), *SMALL)
    assert s["final_test"]["test_se"] < s["initial_test"]["test_se"]
    ref = references.headline(s["reference"])
    assert set(ref) == {"mean_frame_bce", "mean_frame_se", "copy_previous_bce", "copy_previous_se"}
    assert all(np.isfinite(v) for v in ref.values())
    assert re.search(r"test_se [0-9.]+ vs best reference \w+_se ", s["_stdout"])


def test_batches_are_a_pure_function_of_seed_and_position(tmp_path):
    np.save(tmp_path / "train.npy", sines(n=30, steps=7, dim=3))
    cfg = DataConfig(source="arrays", path=str(tmp_path), batch=4, eval_batch=5)
    a, b = open_streams(cfg, 3), open_streams(cfg, 3)
    per_epoch = a.train.batches_per_epoch
    assert per_epoch == 6  # 24 train sequences
    for p in (0, 1, per_epoch - 1, per_epoch, 5 * per_epoch + 2, 1000):
        x, y = a.train.batch(p), b.train.batch(p)
        assert x.position == p and x.x.shape == (7, 4, 3) and x.x.dtype == np.float32
        np.testing.assert_array_equal(x.x, y.x)
        np.testing.assert_array_equal(x.mask, y.mask)
    assert not np.array_equal(a.train.batch(0).x, open_streams(cfg, 4).train.batch(0).x)
    # each epoch sees every training sequence once
    rows = np.concatenate([a.train.chosen(p) for p in range(per_epoch, 2 * per_epoch)])
    assert sorted(rows) == sorted(a.train.rows)
    # evaluation: finite, in file order, time-major
    assert a.test.num_batches == 1
    data = np.load(tmp_path / "train.npy")
    first = a.test.batch(0)
    np.testing.assert_array_equal(first.x[:, :3], data[a.test.rows].transpose(1, 0, 2))
    assert first.mask[:, 3:].sum() == 0  # 3 test sequences, padded to 5 columns
    with pytest.raises(IndexError):
        a.test.batch(1)


def test_arrays_are_memory_mapped(tmp_path):
    x = sines(n=10, steps=5, dim=2)
    np.save(tmp_path / "a.npy", x)
    assert isinstance(arrays.load_npy(tmp_path / "a.npy"), np.memmap)
    np.savez(tmp_path / "b.npz", x=x, mask=np.ones((10, 5), bool))
    stored, mask = arrays.load_npz(tmp_path / "b.npz")
    assert isinstance(stored, np.memmap) and isinstance(mask, np.memmap)
    np.testing.assert_array_equal(stored, x)
    np.savez_compressed(tmp_path / "c.npz", x)  # compressed: read whole, as documented
    whole, none = arrays.load_npz(tmp_path / "c.npz")
    assert none is None and not isinstance(whole, np.memmap)
    np.testing.assert_array_equal(whole, x)
    np.save(tmp_path / "train.npy", x)
    streams = open_streams(DataConfig(source="arrays", path=str(tmp_path)), 0)
    assert isinstance(streams.train.source.x, np.memmap)


def test_split_rule(tmp_path):
    n = 50
    np.save(tmp_path / "train.npy", sines(n=n, steps=4, dim=2))
    aset = arrays.open_arrays(tmp_path)
    perm = np.random.default_rng(arrays.SPLIT_SEED).permutation(n)
    got = {s: aset.parts[s][1] for s in arrays.SPLITS}
    assert [len(got[s]) for s in arrays.SPLITS] == [40, 5, 5]
    np.testing.assert_array_equal(got["test"], np.sort(perm[45:]))
    np.testing.assert_array_equal(got["valid"], np.sort(perm[40:45]))
    np.testing.assert_array_equal(got["train"], np.sort(perm[:40]))
    # a test file given: only valid is carved (the last 10% of the permutation)
    np.save(tmp_path / "test.npy", sines(n=7, steps=4, dim=2, seed=1))
    aset = arrays.open_arrays(tmp_path)
    assert aset.parts["test"][0].path.name == "test.npy" and len(aset.parts["test"][1]) == 7
    np.testing.assert_array_equal(aset.parts["valid"][1], np.sort(perm[45:]))
    assert len(aset.parts["train"][1]) == 45
    # both held-out files given: every train sequence trains
    np.save(tmp_path / "valid.npy", sines(n=3, steps=4, dim=2, seed=2))
    aset = arrays.open_arrays(tmp_path)
    assert len(aset.parts["train"][1]) == n and aset.parts["valid"][0].path.name == "valid.npy"
    valid = open_streams(DataConfig(source="arrays", path=str(tmp_path)), 0, split="valid")
    assert valid.test.rows.tolist() == [0, 1, 2]


def test_token_arrays_train(tmp_path, capsys):
    rng = np.random.default_rng(0)
    ids = np.cumsum(rng.integers(1, 3, (80, 12)), axis=1) % 7  # a mostly predictable walk over 7 ids
    np.save(tmp_path / "train.npy", ids.astype(np.int16))
    cfg = DataConfig(source="arrays", path=str(tmp_path), batch=8)
    streams = open_streams(cfg, 0)
    assert (streams.train.kind, streams.train.dim) == ("tokens", 7)
    b = streams.train.batch(0)
    assert b.x.shape == (12, 8) and b.x.dtype == np.int32
    s = train_run(tmp_path, capsys, 240, *arrays_args(tmp_path, "softmax"), *SMALL)
    assert s["final_test"]["test_bpc"] < s["initial_test"]["test_bpc"]
    assert np.isfinite(references.headline(s["reference"])["bigram_bpc"])
    assert references.headline(s["reference"])["bigram_bpc"] < references.headline(s["reference"])["unigram_bpc"]


def test_masks_are_honoured(tmp_path, capsys):
    rng = np.random.default_rng(1)
    n, steps = 40, 10
    x = sines(n=n, steps=steps, dim=3)
    lengths = rng.integers(2, steps + 1, n)
    mask = np.arange(steps)[None, :] < lengths[:, None]
    x[~mask] = np.nan  # padding under a mask is never read
    np.save(tmp_path / "train.npy", x)
    np.save(tmp_path / "train_mask.npy", mask)
    streams = open_streams(DataConfig(source="arrays", path=str(tmp_path), batch=4, eval_batch=4), 0)
    b = streams.test.batch(0)
    rows = streams.test.rows[:4]
    assert b.x.shape[0] == lengths[rows].max()  # cut to the batch's longest sequence
    np.testing.assert_array_equal(b.mask, mask[rows].T[:b.x.shape[0]].astype(np.float32))
    assert np.isfinite(b.x).all() and (b.x[b.mask == 0] == 0).all()
    s = train_run(tmp_path, capsys, 60, *arrays_args(tmp_path), *SMALL)
    counts = s["final_test"]["test_count_by_t"]  # positions 1.. (t_prime = 1)
    test_rows = streams.test.rows
    assert sum(c or 0 for c in counts) == mask[test_rows][:, 1:].sum()
    # a mask inside the .npz does the same
    (tmp_path / "train.npy").unlink()
    (tmp_path / "train_mask.npy").unlink()
    np.savez(tmp_path / "train.npz", x=x, mask=mask.astype(np.uint8))
    again = open_streams(DataConfig(source="arrays", path=str(tmp_path), batch=4, eval_batch=4), 0)
    np.testing.assert_array_equal(again.test.batch(0).mask, b.mask)


def test_identity_output_reports_squared_error(tmp_path):
    cfg = load(None, ['data.source="arrays"', 'model.output="identity"'])
    assert references.report_metric(cfg, "frames") == "se"
    assert references.report_metric(load(None, []), "frames") == "bce"
    assert references.report_metric(load(None, ['data.source="text"', 'data.format="word"']), "tokens") == "ppl"
    assert references.report_metric(load(None, ['data.source="text"', 'data.format="char"']), "tokens") == "bpc"


def test_nan_is_found_chunk_by_chunk(tmp_path, monkeypatch):
    x = sines(n=200, steps=5, dim=2)
    x[173, 4, 1] = np.nan
    np.save(tmp_path / "train.npy", x)
    monkeypatch.setattr(arrays, "SCAN_BYTES", 5 * 2 * 4 * 10)  # 10 sequences a chunk
    seen = []
    real = arrays.read_chunk
    monkeypatch.setattr(arrays, "read_chunk", lambda x, i, j: (seen.append((i, j)), real(x, i, j))[1])
    with pytest.raises(arrays.DataError, match=r"nan at sequence 173, step 4, dim 1"):
        arrays.open_file(tmp_path, "train")
    assert seen == [(i, i + 10) for i in range(0, 180, 10)]  # never the whole array at once


# -- text ------------------------------------------------------------------------------------------
def write_text(d: Path, train: str, test: str, valid: str | None = None) -> None:
    d.mkdir(parents=True, exist_ok=True)
    (d / "train.txt").write_text(train, encoding="utf-8")
    (d / "test.txt").write_text(test, encoding="utf-8")
    (d / "valid.txt").write_text(valid if valid is not None else test, encoding="utf-8")


def story(n=200, seed=0) -> str:
    rng = np.random.default_rng(seed)
    words = "the cat sat on a mat and the dog ran to the big red house".split()
    return "".join(" ".join(rng.choice(words, rng.integers(3, 8))) + "\n" for _ in range(n))


@pytest.mark.parametrize("level, metric", [("char", "bpc"), ("word", "ppl")])
def test_text_trains_at_both_levels(tmp_path, capsys, level, metric):
    write_text(tmp_path / "txt", story(), story(20, seed=1) + "the zebra sat\n")
    s = train_run(tmp_path, capsys, 200, *sets(data__source="text", data__path=str(tmp_path / "txt"),
                                               data__format=level, model__output="softmax"), *SMALL)
    assert s["final_test"][f"test_{metric}"] < s["initial_test"][f"test_{metric}"]
    ref = references.headline(s["reference"])
    assert all(np.isfinite(ref[f"{n}_{metric}"]) for n in ("unigram", "bigram", "trigram"))
    assert "<unk>" in s["data"]
    assert re.search(rf"test_{metric} [0-9.]+ vs best reference \w+_{metric} ", s["_stdout"])


def test_unknown_symbols_map_to_unk(tmp_path):
    write_text(tmp_path, "ab ab\nba\n", "abz\nq ab\n")
    train = text.load_corpus(tmp_path, "word", "train")
    assert train.vocab == ["<eos>", "<unk>", "ab", "ba"]
    test = text.load_corpus(tmp_path, "word", "test", train.vocab)
    assert [[test.vocab[i] for i in s] for s in test.sentences] == [["<unk>", "<eos>"], ["<unk>", "ab", "<eos>"]]
    chars = text.load_corpus(tmp_path, "char", "train")
    assert chars.vocab == [" ", "<unk>", "a", "b"]
    ctest = text.load_corpus(tmp_path, "char", "test", chars.vocab)
    assert [[ctest.vocab[i] for i in s] for s in ctest.sentences][0] == ["a", "b", "<unk>"]
    capped = text.load_corpus(tmp_path, "word", "train", vocab_size=3)
    assert capped.vocab == ["<eos>", "<unk>", "ab"]


def test_text_references_and_held_out_split(tmp_path):
    d = tmp_path / "t"
    d.mkdir()
    (d / "train.txt").write_text(story(100))  # no valid.txt or test.txt: both carved out of train
    cfg = DataConfig(source="text", path=str(d), format="char", batch=8)
    streams = open_streams(cfg, 0)
    assert len(streams.train.sentences) == 80 and len(streams.test.sentences) == 10
    fitted = references.fit(streams.train)
    scores = references.headline(references.score(fitted, [streams.test.batch(0)], 1))
    assert all(np.isfinite(v) for v in scores.values())
    assert scores["trigram_bpc"] < scores["unigram_bpc"]


# -- Moving MNIST ----------------------------------------------------------------------------------
def write_moving_mnist(d: Path, n=30, steps=20, side=64) -> np.ndarray:
    """A small file in the distributed layout: uint8 (T, N, H, W), a square moving per sequence."""
    d.mkdir(parents=True, exist_ok=True)
    x = np.zeros((steps, n, side, side), np.uint8)
    for s in range(n):
        for t in range(steps):
            r, c = (3 + 2 * t + s) % (side - 10), (5 + 3 * t) % (side - 10)
            x[t, s, r:r + 10, c:c + 10] = 255
    np.save(d / moving_mnist.FILE, x)
    return x


def test_moving_mnist_trains_with_the_documented_split(tmp_path, capsys):
    x = write_moving_mnist(tmp_path / "mm")
    cfg = DataConfig(source="moving_mnist", path=str(tmp_path / "mm"), batch=4, eval_batch=4)
    streams = open_streams(cfg, 0)
    mm = streams.train.source
    assert isinstance(mm.x, np.memmap)
    assert [len(mm.parts[s]) for s in ("train", "valid", "test")] == [24, 3, 3]
    assert streams.test.rows.tolist() == [27, 28, 29]
    b = streams.test.batch(0)
    assert b.x.shape == (20, 4, 64 * 64) and b.x.max() == 1.0
    np.testing.assert_array_equal(b.x[:, 0], x[:, 27].reshape(20, -1) / 255.0)
    full = moving_mnist.split_rows(10_000)
    assert [(r[0], r[-1]) for r in full.values()] == [(0, 7999), (8000, 8999), (9000, 9999)]
    s = train_run(tmp_path, capsys, 100, *sets(data__source="moving_mnist", data__path=str(tmp_path / "mm")),
                  "--set", "model.hidden=[16,16]", "--set", "data.batch=4", "--set", "data.eval_batch=4",
                  "--set", "train.eval_batches=1")
    assert s["final_test"]["test_bce"] < s["initial_test"]["test_bce"]
    assert "blur_blend_bce" in s["reference"]


# -- bad input: one line, no run -------------------------------------------------------------------
def npy_bad(tmp_path, capsys, x, *more, output="identity", name="train.npy"):
    np.save(tmp_path / name, x)
    return one_error(tmp_path, capsys, *arrays_args(tmp_path, output), *more)


def test_wrong_rank(tmp_path, capsys):
    assert npy_bad(tmp_path, capsys, np.zeros((2, 3, 4, 5), np.float32)) == (
        f"{tmp_path / 'train.npy'}: shape (2, 3, 4, 5) has rank 4; expected (N, T, D) real values (frames) "
        f"or (N, T) integer token ids")


def test_wrong_dtype(tmp_path, capsys):
    assert npy_bad(tmp_path, capsys, np.zeros((2, 3, 4), np.complex64)) == (
        f"{tmp_path / 'train.npy'}: dtype complex64 cannot hold frames: (N, T, D) arrays must be real numbers "
        f"(floating point, integer or bool)")
    assert npy_bad(tmp_path, capsys, np.zeros((2, 3), np.float32)) == (
        f"{tmp_path / 'train.npy'}: dtype float32 with shape (2, 3): token ids (N, T) must be integers "
        f"(for real values give (N, T, D), D = 1 for one series)")


@pytest.mark.parametrize("value, text_", [(np.nan, "nan"), (np.inf, "inf"), (1e300, "1e+300 (beyond float32's range)")])
def test_non_finite_values(tmp_path, capsys, value, text_):
    x = sines(n=10, steps=5, dim=3).astype(np.float64)
    x[7, 2, 1] = value
    assert npy_bad(tmp_path, capsys, x) == (
        f"{tmp_path / 'train.npy'}: {text_} at sequence 7, step 2, dim 1: the data must be finite "
        f"(mark padding 0 in a mask instead)")


def test_values_outside_the_sigmoid_range(tmp_path, capsys):
    x = sines(n=10, steps=5, dim=3)
    lo, hi = float(x.min()), float(x.max())
    assert npy_bad(tmp_path, capsys, x, output="sigmoid") == (
        f"model.output = 'sigmoid' forecasts values in [0, 1] (binary cross-entropy), but {tmp_path / 'train.npy'} "
        f"holds values in [{lo:.4g}, {hi:.4g}]; scale the data into [0, 1] or set model.output = \"identity\" "
        f"(squared error)")


def test_values_inside_the_sigmoid_range_train(tmp_path, capsys):
    x = (sines(n=20, steps=5, dim=3) + 1.2) / 2.4
    np.save(tmp_path / "train.npy", x)
    s = train_run(tmp_path, capsys, 20, *arrays_args(tmp_path, "sigmoid"), *SMALL)
    assert "test_bce" in s["final_test"]


def test_too_few_sequences_to_split(tmp_path, capsys):
    assert npy_bad(tmp_path, capsys, sines(n=2, steps=5, dim=2)) == (
        f"{tmp_path / 'train.npy'}: 2 sequence(s) cannot be split into train and valid and test (no valid.npy|.npz "
        f"or test.npy|.npz); give more sequences or the held-out files")


def test_splits_of_different_kinds(tmp_path, capsys):
    np.save(tmp_path / "valid.npy", np.zeros((3, 5), np.int32))
    assert npy_bad(tmp_path, capsys, sines(n=10, steps=5, dim=2)) == (
        f"{tmp_path / 'valid.npy'}: holds token ids (N, T) but train.npy holds real frames (N, T, D); every "
        f"split must be of one kind")


def test_token_ids_outside_the_vocabulary(tmp_path, capsys):
    ids = np.ones((6, 5), np.int64)
    ids[4, 3] = -2
    assert npy_bad(tmp_path, capsys, ids, output="softmax") == (
        f"{tmp_path / 'train.npy'}: token id -2 at sequence 4, step 3 is outside 0 or more")
    ids[4, 3] = 9
    assert npy_bad(tmp_path, capsys, ids, "--set", "data.vocab_size=9", output="softmax") == (
        f"{tmp_path / 'train.npy'}: token id 9 at sequence 4, step 3 is outside the vocabulary 0..8 "
        f"(data.vocab_size = 9)")
    assert npy_bad(tmp_path, capsys, ids, output="sigmoid") == (
        "model.output = 'sigmoid' cannot forecast token ids (source arrays); set model.output = \"softmax\"")


def test_empty_files(tmp_path, capsys):
    (tmp_path / "train.npy").write_bytes(b"")
    assert one_error(tmp_path, capsys, *arrays_args(tmp_path)) == (
        f"{tmp_path / 'train.npy'}: empty file (0 bytes), not a NumPy .npy file")
    assert npy_bad(tmp_path, capsys, np.zeros((0, 5, 2), np.float32)) == (
        f"{tmp_path / 'train.npy'}: shape (0, 5, 2) holds no data (an axis of length 0)")
    d = tmp_path / "txt"
    write_text(d, "", "a\n")
    assert one_error(tmp_path, capsys, *sets(data__source="text", data__path=str(d), data__format="char",
                                             model__output="softmax")) == (
        f"{d / 'train.txt'}: empty file (0 bytes); expected UTF-8 text, one sentence per line")


def test_splits_with_different_widths(tmp_path, capsys):
    np.save(tmp_path / "test.npy", sines(n=4, steps=5, dim=2))
    assert npy_bad(tmp_path, capsys, sines(n=10, steps=5, dim=3)) == (
        f"{tmp_path / 'test.npy'}: frames have D = 2 values, but train.npy has D = 3; every split must have "
        f"the same D")


def test_not_an_npy(tmp_path, capsys):
    np.save(tmp_path / "good.npy", sines(n=4, steps=5, dim=2))
    raw = (tmp_path / "good.npy").read_bytes()
    (tmp_path / "train.npy").write_bytes(raw[:40])  # the header cut short
    msg = one_error(tmp_path, capsys, *arrays_args(tmp_path))
    assert msg.startswith(f"{tmp_path / 'train.npy'}: not a NumPy .npy file: its header is truncated or damaged (")
    (tmp_path / "train.npy").write_bytes(raw[:-8])  # the data cut short
    assert one_error(tmp_path, capsys, *arrays_args(tmp_path)) == (
        f"{tmp_path / 'train.npy'}: truncated: its header says shape (4, 5, 2) float32, 160 bytes of data, "
        f"but it holds 152")
    (tmp_path / "train.npy").write_bytes(b"N,T,D\n1,2,3\n")
    assert one_error(tmp_path, capsys, *arrays_args(tmp_path)) == (
        f"{tmp_path / 'train.npy'}: not a NumPy .npy file (it starts with b'N,T,D\\n', not the .npy magic "
        f"b'\\x93NUMPY')")


def test_pickle_bearing_object_array_is_never_loaded(tmp_path, capsys):
    obj = np.empty((2, 3, 1), dtype=object)
    obj[...] = 1.0
    np.save(tmp_path / "train.npy", obj, allow_pickle=True)
    assert one_error(tmp_path, capsys, *arrays_args(tmp_path)) == (
        f"{tmp_path / 'train.npy'}: holds Python objects (dtype object), which load only by unpickling; pickles "
        f"are never loaded (allow_pickle=False): save a numeric array")
    (tmp_path / "train.npy").unlink()
    np.savez(tmp_path / "train.npz", x=obj)
    assert one_error(tmp_path, capsys, *arrays_args(tmp_path)) == (
        f"{tmp_path / 'train.npz'} (member 'x'): holds Python objects (dtype object), which load only by "
        f"unpickling; pickles are never loaded (allow_pickle=False): save a numeric array")


def test_npz_that_is_not_a_zip(tmp_path, capsys):
    (tmp_path / "train.npz").write_bytes(b"not a zip at all")
    assert one_error(tmp_path, capsys, *arrays_args(tmp_path)) == (
        f"{tmp_path / 'train.npz'}: not a NumPy .npz file (not a zip archive: File is not a zip file)")


def test_text_that_is_not_utf8(tmp_path, capsys):
    d = tmp_path / "txt"
    write_text(d, "ok\n", "fine\n")
    (d / "test.txt").write_bytes(b"good line\ncaf\xe9\n")
    assert one_error(tmp_path, capsys, *sets(data__source="text", data__path=str(d), data__format="word",
                                             model__output="softmax")) == (
        f"{d / 'test.txt'}: not UTF-8 text: byte 13 (0xe9, line 2) cannot be decoded (invalid continuation "
        f"byte); save the file as UTF-8")


def test_bad_masks(tmp_path, capsys):
    np.save(tmp_path / "train_mask.npy", np.ones((10, 4), np.float32))
    assert npy_bad(tmp_path, capsys, sines(n=10, steps=5, dim=2)) == (
        f"{tmp_path / 'train_mask.npy'}: shape (10, 4) does not match the data's (N, T) = (10, 5)")
    m = np.ones((10, 5), np.float32)
    m[3, 2] = 0.5
    np.save(tmp_path / "train_mask.npy", m)
    assert one_error(tmp_path, capsys, *arrays_args(tmp_path)) == (
        f"{tmp_path / 'train_mask.npy'}: value 0.5 at sequence 3, step 2; a mask holds 0 (padding) or 1 "
        f"(a real step)")
    np.save(tmp_path / "train_mask.npy", np.zeros((10, 5), bool))
    assert one_error(tmp_path, capsys, *arrays_args(tmp_path)) == (
        f"{tmp_path / 'train.npy'}: every step is masked out by {tmp_path / 'train_mask.npy'}: nothing to "
        f"train or score on")


def test_moving_mnist_bad_layout(tmp_path, capsys):
    d = tmp_path / "mm"
    d.mkdir()
    np.save(d / moving_mnist.FILE, np.zeros((20, 5, 64, 64), np.float32))
    assert one_error(tmp_path, capsys, *sets(data__source="moving_mnist", data__path=str(d))) == (
        f"{d / moving_mnist.FILE}: shape (20, 5, 64, 64) float32; Moving MNIST's mnist_test_seq.npy is uint8 "
        f"(T, N, H, W), frames first, e.g. (20, 10000, 64, 64)")
    write_moving_mnist(d, n=5)
    assert one_error(tmp_path, capsys, *sets(data__source="moving_mnist", data__path=str(d)),
                     "--set", "data.frame=32") == (
        f"data.frame = 32, but the frames of {d / moving_mnist.FILE} are 64x64; set data.frame = 64")


def test_config_keys(tmp_path):
    with pytest.raises(ConfigError, match="data.format 'auto' does not apply to source text; valid choices: char, word"):
        DataConfig(source="text")
    with pytest.raises(ConfigError, match="data.format 'char' does not apply to source arrays"):
        DataConfig(source="arrays", format="char")
    with pytest.raises(ConfigError, match="data.vocab_size applies to sources arrays and text"):
        DataConfig(source="ptb_char", vocab_size=5)
    with pytest.raises(ConfigError, match="data.vocab_size must be an integer >= 0"):
        DataConfig(source="arrays", vocab_size=-1)
    assert DataConfig(source="text", format="word", bucket=True).bucket
    assert load(None, []).hash() == load(None, ["data.vocab_size=0"]).hash()
