"""A user's own sequences: NumPy arrays (frames and token ids, with masks), UTF-8 text at character
and word level, and Moving MNIST in its distributed layout, each trained or read as documented.
Each test builds its data in tmp_path (tests/own_data.py) and runs in process through `cli.main`
or the data API; no Ray, no download. Bad input is in tests/test_own_data_errors.py."""
from __future__ import annotations

import re

import numpy as np
import pytest

from own_data import SMALL, arrays_args, sets, sines, story, train_run, write_moving_mnist, write_text
from ptncn_dist.config import load
from ptncn_dist.data import arrays, moving_mnist, open_streams, text
from ptncn_dist.data.sources import DataConfig
from ptncn_dist.diagnostics import references


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
