"""Tests of the text data: PTB corpora in each format (words, characters derived from the words,
Mikolov's character files, ids), their vocabularies and streams, padding and bucketed epochs.

Real data comes from $PTNCN_DATA_DIR or <repo>/../shared/data; tests that need it skip when absent.
"""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from ptncn_dist.data import (DataConfig, SentenceStream, build_vocab, detect_format, load_corpus,
                             open_corpus, open_streams, words_to_chars)
from ptncn_dist.data.ptb import Corpus
from ptncn_dist.errors import ConfigError, DataError

from helpers import DATA, need_data as need  # need(*parts): DATA/parts, or skip naming it


# ---------------------------------------------------------------- PTB

@pytest.fixture(scope="module")
def word_dir():
    return need("ptb_word")


@pytest.fixture(scope="module")
def words(word_dir):
    train = load_corpus(word_dir, "word", "train")
    return {"train": train, "test": load_corpus(word_dir, "word", "test", train.vocab)}


@pytest.fixture(scope="module")
def derived_chars(word_dir):
    train = load_corpus(word_dir, "char_from_words", "train")
    return {"train": train, **{s: load_corpus(word_dir, "char_from_words", s, train.vocab)
                               for s in ("valid", "test")}}


def test_word_vocabulary_and_counts(words, word_dir):
    train, test = words["train"], words["test"]
    assert len(train.vocab) == 10_000 and "<eos>" in train.vocab and "<unk>" in train.vocab
    assert train.vocab == sorted(train.vocab)
    assert len(train.sentences) == 42_068 and sum(map(len, train.sentences)) == 929_589
    assert len(test.sentences) == 3_761 and sum(map(len, test.sentences)) == 82_430
    eos = train.vocab.index("<eos>")
    assert all(s[-1] == eos and s.dtype == np.int32 for s in test.sentences)
    first = (word_dir / "ptb.test.txt").read_text().splitlines()[0].split()
    assert [test.vocab[i] for i in test.sentences[0]] == first + ["<eos>"]


@pytest.mark.parametrize("split", ["valid", "test"])
def test_char_derivation_reproduces_mikolov_char_files(word_dir, split):
    char_file = need("ptb_char", f"ptb.char.{split}.txt")
    word_lines = (word_dir / f"ptb.{split}.txt").read_text().splitlines()
    char_lines = char_file.read_text().splitlines()
    assert len(word_lines) == len(char_lines)
    derived = [words_to_chars(line) for line in word_lines]
    assert derived == [line.split() for line in char_lines]
    rebuilt = "".join(" ".join(tokens) + " \n" for tokens in derived)
    assert rebuilt.encode() == char_file.read_bytes()


def test_char_format_loader_agrees_with_derivation(derived_chars):
    need("ptb_char", "ptb.char.test.txt")
    vocab = derived_chars["train"].vocab
    assert len(vocab) == 48 and "_" in vocab and "<unk>" in vocab and "<eos>" not in vocab
    mikolov = load_corpus(DATA / "ptb_char", "char", "test", vocab)
    assert len(mikolov.sentences) == 3_761
    assert sum(map(len, mikolov.sentences)) == 419_486
    assert all(np.array_equal(a, b) for a, b in zip(mikolov.sentences, derived_chars["test"].sentences))


@pytest.mark.parametrize("split", ["valid", "test"])
def test_ids_format_decodes_to_the_word_text(word_dir, split):
    d = need("contptncn_ptb_char")
    corpus = load_corpus(d, "ids", split)
    assert len(corpus.vocab) == 49 and corpus.vocab[22] == "_"
    lines = (word_dir / f"ptb.{split}.txt").read_text().splitlines()
    text = [line.strip().replace(" ", "_") for line in lines]
    assert ["".join(corpus.vocab[i] for i in s) for s in corpus.sentences] == text


def test_ids_train_falls_back_to_subx():
    d = need("contptncn_ptb_char")
    if (d / "trainX.txt").exists():
        pytest.skip("trainX.txt present")
    corpus = load_corpus(d, "ids", "train")
    assert len(corpus.sentences) == 2_000
    assert "subX.txt" in corpus.source and "trainX.txt absent" in corpus.source


def write_ids(tmp_path, line):
    (tmp_path / "vocab.txt").write_text("a\nb\n_\n")
    for name in ("subX.txt", "validX.txt"):
        (tmp_path / name).write_text("0,1\n")
    (tmp_path / "testX.txt").write_text("0,1,2\n" + line + "\n")


def test_ids_out_of_range_and_garbage(tmp_path):
    write_ids(tmp_path, "1,3,0")
    with pytest.raises(DataError, match=r"testX.txt:2: id 3 is outside the vocabulary range 0..2"):
        load_corpus(tmp_path, "ids", "test")
    write_ids(tmp_path, "1,x")
    with pytest.raises(DataError, match=r"testX.txt:2: expected comma-separated integer ids"):
        load_corpus(tmp_path, "ids", "test")
    write_ids(tmp_path, "2,2")
    assert [s.tolist() for s in load_corpus(tmp_path, "ids", "test").sentences] == [[0, 1, 2], [2, 2]]


def test_unknown_word_and_missing_file(tmp_path):
    (tmp_path / "ptb.train.txt").write_text(" a b \n b c \n")
    (tmp_path / "ptb.test.txt").write_text(" a d \n")
    assert build_vocab(tmp_path, "word") == ["<eos>", "a", "b", "c"]
    with pytest.raises(DataError, match=r"ptb.test.txt:1: token 'd' is not in the 4-symbol"):
        load_corpus(tmp_path, "word", "test")
    with pytest.raises(DataError, match=r"ptb.valid.txt: file not found"):
        load_corpus(tmp_path, "word", "valid")


def test_detect_format(tmp_path):
    assert detect_format(need("ptb_word"), "char") == "char_from_words"
    assert detect_format(need("contptncn_ptb_char"), "char") == "ids"
    for s in ("train", "valid", "test"):
        (tmp_path / f"ptb.char.{s}.txt").write_text("a _ b \n")
    assert detect_format(tmp_path, "char") == "char"
    (tmp_path / "ptb.char.train.txt").unlink()
    with pytest.raises(DataError, match="no character-level PTB found"):
        detect_format(tmp_path, "char")


def toy_corpus(lengths):
    return Corpus([np.arange(1, n + 1, dtype=np.int32) for n in lengths], [str(i) for i in range(30)], "toy")


def test_eval_stream_padding_and_file_order():
    lengths = [3, 7, 1, 5, 2, 9, 4]
    s = SentenceStream(toy_corpus(lengths), 3, shuffle=False)
    assert (s.kind, s.dim, s.num_batches) == ("tokens", 30, 3)
    batches = [s.batch(p) for p in range(3)]
    assert [b.x.shape for b in batches] == [(7, 3), (9, 3), (4, 3)]
    seen = [int(m) for b in batches for m in b.mask.sum(axis=0)]
    assert seen == lengths + [0, 0]
    for b in batches:
        assert b.x.dtype == np.int32 and b.mask.dtype == np.float32
        assert np.all(b.x[b.mask == 0] == 0) and np.all(b.x[b.mask == 1] > 0)
        assert np.all(np.diff(b.mask, axis=0) <= 0)
    assert batches[1].x[:, 1].tolist() == [1, 2] + [0] * 7
    with pytest.raises(IndexError):
        s.batch(3)
    capped = SentenceStream(toy_corpus(lengths), 3, shuffle=False, max_len=4).batch(1)
    assert capped.x.shape == (4, 3) and capped.mask.sum(axis=0).tolist() == [4, 2, 4]


def test_train_stream_epochs_are_deterministic_permutations():
    lengths = list(range(1, 12))
    s = SentenceStream(toy_corpus(lengths), 4, seed=3, shuffle=True)
    assert s.num_batches is None and s.batches_per_epoch == 3

    def epoch(stream, e):
        return [int(n) for p in range(3 * e, 3 * e + 3) for n in stream.batch(p).mask.sum(axis=0) if n]

    e0, e1 = epoch(s, 0), epoch(s, 1)
    assert sorted(e0) == lengths and sorted(e1) == lengths and e0 != e1 and e0 != lengths
    again = SentenceStream(toy_corpus(lengths), 4, seed=3, shuffle=True)
    assert epoch(again, 1) == e1 and epoch(again, 0) == e0
    assert epoch(SentenceStream(toy_corpus(lengths), 4, seed=4), 0) != e0



def test_bucketed_epochs_see_every_sentence_once_with_little_padding():
    rng = np.random.default_rng(0)
    lengths = [int(n) for n in rng.integers(1, 60, size=103)]
    s = SentenceStream(toy_corpus(lengths), 10, seed=5, shuffle=True, bucket=True)
    plain = SentenceStream(toy_corpus(lengths), 10, seed=5, shuffle=True)
    for e in (0, 1):
        batches = [s.batch(p) for p in range(11 * e, 11 * e + 11)]
        got = sorted(int(n) for b in batches for n in b.mask.sum(axis=0) if n)
        assert got == sorted(lengths)
        # each batch's columns: sentences of neighbouring lengths (a slice of the sorted lengths)
        cols = sorted((sorted(int(n) for n in b.mask.sum(axis=0) if n) for b in batches), key=lambda c: (c[0], c[-1]))
        assert [n for c in cols for n in c] == sorted(lengths)
        assert batches[-1].mask.sum(axis=0).astype(bool).sum() == 3  # the short remainder ends the epoch
        assert sum(b.x.shape[0] for b in batches) == s.epoch_steps()
    assert s.epoch_steps() < 0.7 * plain.epoch_steps()
    assert [s.batch(p).x.shape[0] for p in range(11)] != [s.batch(p).x.shape[0] for p in range(11, 22)]
    again = SentenceStream(toy_corpus(lengths), 10, seed=5, shuffle=True, bucket=True)
    assert all((again.batch(p).x == s.batch(p).x).all() for p in (0, 7, 13))


def test_bucket_needs_a_text_source():
    with pytest.raises(ConfigError, match="data.bucket"):
        DataConfig(source="bouncing_mnist", bucket=True)
    with pytest.raises(ConfigError, match="data.bucket must be true or false"):
        DataConfig(source="ptb_char", bucket=1)


def test_text_streams_on_shared_data(word_dir):
    cfg = DataConfig(source="ptb_char", path=str(word_dir), batch=8, eval_batch=4, max_len=100)
    streams = open_streams(cfg, seed=1)
    assert "char_from_words" in streams.description and "derived" in streams.test.name
    assert streams.train.dim == 48 and streams.test.num_batches == -(-3_761 // 4)
    b = streams.train.batch(10)
    assert b.x.shape[1] == 8 and b.x.shape[0] <= 100 and b.x.max() < 48
    valid = open_corpus(cfg, "valid", streams.train.vocab)
    assert len(valid.sentences) == 3_370
    ids = open_streams(DataConfig(source="ptb_char", path=str(need("contptncn_ptb_char"))), seed=1)
    assert "subX.txt" in ids.train.name and ids.train.dim == 49


def test_words_to_chars_keeps_unk_whole():
    assert words_to_chars(" the <unk> cat ") == ["t", "h", "e", "_", "<unk>", "_", "c", "a", "t"]
    assert Counter(words_to_chars(" a  b "))["_"] == 1
