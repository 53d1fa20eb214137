"""A user's own data, refused: each bad file or setting (wrong rank or dtype, non-finite values,
too few sequences, mismatched splits, token ids outside the vocabulary, empty, damaged or
pickle-bearing files, text that is not UTF-8, bad masks, a wrong Moving MNIST layout, wrong
config keys) stops `ptncn train` with one `error:` line naming the file and what is wrong, and
writes no run. No Ray."""
from __future__ import annotations

import numpy as np
import pytest

from own_data import SMALL, arrays_args, one_error, sets, sines, train_run, write_moving_mnist, write_text
from ptncn_dist.config import load
from ptncn_dist.data import moving_mnist
from ptncn_dist.data.sources import DataConfig
from ptncn_dist.errors import ConfigError


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
