"""Penn Treebank corpora in three on-disk formats, and a sentence-batching stream.

Formats (all one sentence per line):
- word: Mikolov's ptb.{train,valid,test}.txt; tokens split on whitespace plus `<eos>` per line.
- char: Mikolov's ptb.char.{split}.txt; space-separated characters, `_` between words,
  `<unk>` kept as one token; no end-of-sentence token.
- char_from_words: the char format derived from the word files by `words_to_chars` (the
  same transform that produced Mikolov's char files; used because ptb.char.train.txt is rare).
- ids: the P-TNCN authors' vocab.txt (line index = id) plus comma-separated {train,sub,valid,test}X.txt;
  `<unk>` is spelled as five characters there.

Every file's size is checked before it is read (`MAX_TEXT_BYTES`), and a split whose lines are all
blank is refused: it would train and evaluate on nothing.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError
from .batch import Batch, check_position

EOS = "<eos>"
UNK = "<unk>"
WORD_SEP = "_"
SPLITS = ("train", "valid", "test")
FORMATS = ("word", "char", "char_from_words", "ids")
# The largest text file read: 512 MiB, about 100 times PTB's largest file (ptb.train.txt, 5 MB)
# and 5 times enwik8. Parsing keeps every token, so reading peaks near 5 times the file's size.
MAX_TEXT_BYTES = 512 << 20


@dataclass(frozen=True)
class Corpus:
    """Sentences as int32 id arrays over `vocab`, plus a one-line note of where they came from."""

    sentences: list
    vocab: list
    source: str


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise DataError(f"unknown corpus split {split!r}; expected one of {SPLITS}")


def word_path(directory, split: str) -> Path:
    _check_split(split)
    return Path(directory) / f"ptb.{split}.txt"


def char_path(directory, split: str) -> Path:
    _check_split(split)
    return Path(directory) / f"ptb.char.{split}.txt"


def ids_path(directory, split: str) -> Path:
    """trainX.txt for train, falling back to the authors' 2,000-sentence subX.txt when it is absent."""
    _check_split(split)
    directory = Path(directory)
    if split == "train" and not (directory / "trainX.txt").is_file():
        return directory / "subX.txt"
    return directory / f"{split}X.txt"


def _size(n: int) -> str:
    return f"{n / (1 << 20):,.1f} MiB" if n >= 1 << 20 else f"{n:,} bytes"


def read_lines(path: Path) -> list:
    """The lines of a text file without their line ends; DataError naming the file if it is
    unreadable or larger than `MAX_TEXT_BYTES`, its size checked before anything is read (and
    the read itself bounded, for a pipe or a device)."""
    limit = MAX_TEXT_BYTES
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            raw = f.read(limit + 1) if size <= limit else b""
        if size > limit or len(raw) > limit:
            got = (f"{size:,} bytes" + (f" ({_size(size)})" if size >= 1 << 20 else "") if size > limit
                   else f"more than {_size(limit)}")
            raise DataError(f"{path}: {got}, larger than the {_size(limit)} a text file may have "
                            f"(ptb.MAX_TEXT_BYTES; PTB's largest file is 5 MB)")
        try:
            return raw.decode("utf-8").splitlines()
        except UnicodeDecodeError as e:
            line = raw.count(b"\n", 0, e.start) + 1
            raise DataError(f"{path}: not UTF-8 text: byte {e.start:,} (0x{raw[e.start]:02x}, line {line}) "
                            f"cannot be decoded ({e.reason}); save the file as UTF-8") from None
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read text file ({e})") from None


def read_sentences(path: Path) -> list:
    """`read_lines` of a corpus file, refused when it holds no sentence (every line blank)."""
    lines = read_lines(path)
    if lines and not any(line.strip() for line in lines):
        raise DataError(f"{path}: all {len(lines):,} lines are blank; expected one sentence per line")
    return lines


def word_tokens(line: str) -> list:
    """Word-level tokens of one line: whitespace split plus `<eos>`."""
    return line.split() + [EOS]


def words_to_chars(line: str) -> list:
    """Mikolov's word -> char transform: each word's characters, `_` between words, `<unk>` kept whole."""
    tokens = []
    for i, word in enumerate(line.split()):
        if i:
            tokens.append(WORD_SEP)
        tokens.extend([UNK] if word == UNK else list(word))
    return tokens


def encode(token_lines, vocab: list, path: Path) -> list:
    """Map token lists to int32 id arrays; DataError naming file, line and token if one is unknown."""
    index = {tok: i for i, tok in enumerate(vocab)}
    sentences = []
    for n, tokens in enumerate(token_lines, 1):
        try:
            sentences.append(np.array([index[t] for t in tokens], dtype=np.int32))
        except KeyError as e:
            raise DataError(
                f"{path}:{n}: token {e.args[0]!r} is not in the {len(vocab)}-symbol training vocabulary"
            ) from None
    return sentences


def _tokens(fmt: str, directory, split: str) -> tuple:
    """(path, token lists) of a word/char/char_from_words split."""
    if fmt == "word":
        path = word_path(directory, split)
        return path, [word_tokens(line) for line in read_sentences(path)]
    if fmt == "char":
        path = char_path(directory, split)
        return path, [line.split() for line in read_sentences(path)]
    path = word_path(directory, split)
    return path, [words_to_chars(line) for line in read_sentences(path)]


def read_ids_vocab(directory) -> list:
    """The authors' vocab.txt: one symbol per line, line index = id."""
    path = Path(directory) / "vocab.txt"
    vocab = read_lines(path)
    if not vocab or any(v == "" for v in vocab) or len(set(vocab)) != len(vocab):
        raise DataError(f"{path}: expected one distinct non-empty symbol per line")
    return vocab


def read_ids(path: Path, vocab_size: int) -> list:
    """Comma-separated id lines as int32 arrays; DataError on a non-integer or out-of-range id."""
    sentences = []
    for n, line in enumerate(read_sentences(path), 1):
        parts = line.split(",") if line else []
        try:
            ids = np.array(parts, dtype=np.int64)
        except OverflowError:  # an id of 20 digits does not fit int64
            big = max(parts, key=lambda p: len(p.strip())).strip()
            raise DataError(f"{path}:{n}: id {big[:40]} is outside the vocabulary range 0..{vocab_size - 1}") from None
        except ValueError:
            raise DataError(f"{path}:{n}: expected comma-separated integer ids, got {line[:60]!r}") from None
        bad = (ids < 0) | (ids >= vocab_size)
        if bad.any():
            raise DataError(
                f"{path}:{n}: id {int(ids[bad][0])} is outside the vocabulary range 0..{vocab_size - 1}"
            )
        sentences.append(ids.astype(np.int32))
    return sentences


def vocab_of(token_lines, fmt: str) -> list:
    """Sorted distinct training tokens; the word format adds `<eos>`."""
    symbols = {t for tokens in token_lines for t in tokens}
    return sorted(symbols | {EOS}) if fmt == "word" else sorted(symbols)


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise DataError(f"unknown corpus format {fmt!r}; expected one of {FORMATS}")


def build_vocab(directory, fmt: str) -> list:
    """The vocabulary of a format: vocab.txt for ids, else the sorted training tokens (word adds `<eos>`)."""
    _check_format(fmt)
    if fmt == "ids":
        return read_ids_vocab(directory)
    return vocab_of(_tokens(fmt, directory, "train")[1], fmt)


def describe(directory, fmt: str, split: str) -> str:
    """One line naming the file(s) a split is read from."""
    if fmt == "word":
        return f"PTB words from {word_path(directory, split)}"
    if fmt == "char":
        return f"PTB characters from {char_path(directory, split)}"
    if fmt == "char_from_words":
        return f"PTB characters derived from {word_path(directory, split)}"
    path = ids_path(directory, split)
    note = ""
    if split == "train" and path.name == "subX.txt":
        note = " (trainX.txt absent: the authors' 2,000-sentence training subsample)"
    return f"PTB character ids from {path}{note}"


def load_corpus(directory, fmt: str, split: str, vocab=None) -> Corpus:
    """One split of a corpus; pass `vocab` (e.g. the train corpus's) to skip re-reading the training file."""
    _check_split(split)
    _check_format(fmt)
    if fmt == "ids":
        vocab = read_ids_vocab(directory) if vocab is None else list(vocab)
        sentences = read_ids(ids_path(directory, split), len(vocab))
    else:
        path, lines = _tokens(fmt, directory, split)
        if vocab is None:
            vocab = vocab_of(lines, fmt) if split == "train" else build_vocab(directory, fmt)
        sentences = encode(lines, list(vocab), path)
    if not sentences:
        raise DataError(f"{describe(directory, fmt, split)}: expected at least one sentence, got none")
    return Corpus(sentences=sentences, vocab=list(vocab), source=describe(directory, fmt, split))


def detect_format(directory, level: str) -> str:
    """Pick the on-disk format for 'word' or 'char' level from the files present in `directory`."""
    directory = Path(directory)
    if level == "word":
        return "word"
    if all(char_path(directory, s).is_file() for s in SPLITS):
        return "char"
    if (directory / "vocab.txt").is_file():
        return "ids"
    if all(word_path(directory, s).is_file() for s in SPLITS):
        return "char_from_words"
    raise DataError(
        f"{directory}: no character-level PTB found; expected ptb.char.{{train,valid,test}}.txt, "
        f"or vocab.txt with trainX/subX/validX/testX.txt, or ptb.{{train,valid,test}}.txt"
    )


class SentenceStream:
    """Batches of whole sentences, time-major, padded with id 0 and mask 0.

    shuffle=True (training): infinite; position p is batch p % batches_per_epoch of epoch
    p // batches_per_epoch, whose order is a permutation seeded by (seed, epoch).
    shuffle=False (evaluation): file order, `num_batches` batches. A short last batch is
    padded with fully masked columns so every batch has `batch_size` columns.

    bucket=True (training only): each epoch's batches hold sentences of about one length (the
    epoch's permutation, stably sorted by length, cut into batches, the batches in a seeded
    order; a short remainder batch, the longest sentences, ends the epoch), so padding nearly
    vanishes and an epoch of PTB characters takes 96,442 steps at batch 50 instead of 225,525
    (`epoch_steps()`). Every sentence is still seen once per epoch.
    """

    kind = "tokens"

    def __init__(self, corpus: Corpus, batch_size: int, seed: int = 0, shuffle: bool = True,
                 max_len: int = 0, name: str = "", bucket: bool = False):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch size must be an integer >= 1, got {batch_size!r}")
        self.sentences = corpus.sentences
        self.vocab = corpus.vocab
        self.dim = len(corpus.vocab)
        self.batch_size = batch_size
        self.seed = int(seed)
        self.shuffle = shuffle
        self.bucket = bool(bucket) and shuffle
        self.max_len = int(max_len)
        self.name = name or corpus.source
        self.lengths = np.array([len(s) for s in corpus.sentences], dtype=np.int64)
        self.batches_per_epoch = -(-len(corpus.sentences) // batch_size)
        self.num_batches = None if shuffle else self.batches_per_epoch
        self._order = (None, None)

    def order(self, epoch: int) -> np.ndarray:
        """Sentence indices in the order of `epoch` (file order when not shuffling)."""
        if not self.shuffle:
            return np.arange(len(self.sentences))
        if self._order[0] != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            order = rng.permutation(len(self.sentences))
            if self.bucket:
                order = order[np.argsort(self.lengths[order], kind="stable")]
                full = len(order) // self.batch_size
                cuts = np.arange(full)[rng.permutation(full)] * self.batch_size
                order = np.concatenate([order[c:c + self.batch_size] for c in cuts] + [order[full * self.batch_size:]])
            self._order = (epoch, order)
        return self._order[1]

    def epoch_steps(self) -> int:
        """Time steps (padding included) of epoch 0, the sum of its batches' lengths; the same for
        every epoch when bucketing."""
        return int(sum(self.batch(p).x.shape[0] for p in range(self.batches_per_epoch)))

    def batch(self, position: int) -> Batch:
        """The batch at `position`: a pure function of (corpus, seed, position)."""
        position = check_position(self.name, position, self.num_batches)
        epoch, index = divmod(int(position), self.batches_per_epoch)
        chosen = self.order(epoch)[index * self.batch_size:(index + 1) * self.batch_size]
        longest = int(self.lengths[chosen].max())
        steps = max(1, min(longest, self.max_len) if self.max_len > 0 else longest)
        x = np.zeros((steps, self.batch_size), dtype=np.int32)
        mask = np.zeros((steps, self.batch_size), dtype=np.float32)
        for col, i in enumerate(chosen):
            ids = self.sentences[i][:steps]
            x[: len(ids), col] = ids
            mask[: len(ids), col] = 1.0
        return Batch(x=x, mask=mask, position=int(position))
