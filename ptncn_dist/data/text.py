"""Any UTF-8 text as sentences of characters or words (`data.source = "text"`).

Files in the directory `data.path`: `train.txt` (required), `valid.txt` and `test.txt` (optional),
UTF-8, one sentence per line (blank lines are skipped), each at most ptb.MAX_TEXT_BYTES.

- `data.format = "char"`: every character of a line is a token (spaces included); no
  end-of-sentence token (as PTB's character files). The reported figure is bits per character.
- `data.format = "word"`: whitespace-separated words plus `<eos>` at the end of each line (as PTB's
  word files). The reported figure is perplexity per word.

The vocabulary is built from the training sentences (sorted), plus `<unk>`, to which every symbol
of valid or test unseen in training is mapped (a literal `<unk>` word in the text is the same
symbol). `data.vocab_size` > 0 keeps only that many symbols: `<unk>` (and `<eos>` for words) and
the most frequent training symbols (ties by symbol order); the rest become `<unk>` in every split.

Split rule when `valid.txt` or `test.txt` is absent: as arrays' (`arrays.holdout`): the missing
splits are carved from train.txt's sentences by a fixed permutation (seed arrays.SPLIT_SEED): test
the last 10%, valid the 10% before it, each kept in file order; the vocabulary then comes from the
remaining training sentences only.

Batches come from ptb.SentenceStream: whole sentences, padded, a seeded permutation per epoch.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError
from . import ptb
from .arrays import SPLIT_SEED, holdout

UNK = ptb.UNK
EOS = ptb.EOS
LEVELS = ("char", "word")
SPLITS = ("train", "valid", "test")


def path_of(directory, split: str) -> Path:
    return Path(directory) / f"{split}.txt"


def read_text_lines(path: Path) -> list:
    """The non-blank lines of a UTF-8 text file; DataError naming the file when it is missing,
    empty, all blank, larger than ptb.MAX_TEXT_BYTES or not UTF-8 (with the byte offset)."""
    if path.is_file() and path.stat().st_size == 0:
        raise DataError(f"{path}: empty file (0 bytes); expected UTF-8 text, one sentence per line")
    lines = ptb.read_sentences(path)
    return [line for line in lines if line.strip()]


def tokens_of(line: str, level: str) -> list:
    return list(line) if level == "char" else line.split() + [EOS]


def _lines(directory, split: str) -> tuple:
    """(path, lines, note) of `split`: its own file, or the carved part of train.txt."""
    directory = Path(directory)
    own = path_of(directory, split)
    missing = tuple(s for s in ("valid", "test") if not path_of(directory, s).is_file())
    if split != "train" and split not in missing:
        return own, read_text_lines(own), f"{own}"
    train_path = path_of(directory, "train")
    if not train_path.is_file():
        raise DataError(f"{directory}: no train.txt (data.source = \"text\" reads train.txt, and valid.txt "
                        f"and test.txt when present)")
    lines = read_text_lines(train_path)
    if not missing:
        return train_path, lines, f"{train_path}"
    if len(lines) < len(missing) + 1:
        raise DataError(f"{train_path}: {len(lines)} sentence(s) cannot be split into train and "
                        f"{' and '.join(missing)} (no {' or '.join(s + '.txt' for s in missing)}); "
                        f"give more lines or the held-out files")
    rows = holdout(len(lines), missing)[split]
    note = (f"{train_path} ({'the rest' if split == 'train' else f'{len(rows):,}'} of its sentences"
            f"{', the others held out by a fixed permutation, seed ' + str(SPLIT_SEED) if split == 'train' else ''})")
    return train_path, [lines[i] for i in rows], note


def build_vocab(token_lines, level: str, vocab_size: int = 0) -> list:
    """Sorted training symbols plus `<unk>` (and `<eos>` for words), cut to the `vocab_size` most
    frequent when > 0."""
    counts = Counter(t for tokens in token_lines for t in tokens)
    fixed = {UNK} | ({EOS} if level == "word" else set())
    if vocab_size > 0:
        if vocab_size <= len(fixed):
            raise ConfigError(f"data.vocab_size = {vocab_size} leaves no room beside {', '.join(sorted(fixed))}")
        ranked = sorted((s for s in counts if s not in fixed), key=lambda s: (-counts[s], s))
        return sorted(fixed | set(ranked[:vocab_size - len(fixed)]))
    return sorted(fixed | set(counts))


def load_corpus(directory, level: str, split: str, vocab=None, vocab_size: int = 0) -> ptb.Corpus:
    """One split as a ptb.Corpus; `vocab` (the train corpus's) skips re-reading train."""
    if level not in LEVELS:
        raise DataError(f"text format must be one of {', '.join(LEVELS)}; got {level!r}")
    if split not in SPLITS:
        raise DataError(f"unknown text split {split!r}; expected one of {SPLITS}")
    if vocab is None:
        _, train_lines, _ = _lines(directory, "train")
        vocab = build_vocab([tokens_of(line, level) for line in train_lines], level, vocab_size)
    path, lines, note = _lines(directory, split)
    index = {s: i for i, s in enumerate(vocab)}
    unk = index[UNK]
    sentences, unseen = [], 0
    for line in lines:
        ids = np.array([index.get(t, unk) for t in tokens_of(line, level)], dtype=np.int32)
        sentences.append(ids)
        unseen += int(np.count_nonzero(ids == unk))
    what = "characters" if level == "char" else "words"
    source = (f"{what} from {note}: {len(sentences):,} sentences, {sum(map(len, sentences)):,} tokens"
              f"{f', {unseen:,} of them <unk>' if unseen else ''}")
    return ptb.Corpus(sentences=sentences, vocab=list(vocab), source=source)
