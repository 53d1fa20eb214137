"""Data streams for P-TNCN: bouncing-sprite videos, Penn Treebank text, and a user's own sequences
(NumPy arrays, UTF-8 text, Moving MNIST)."""
from .arrays import ArrayStream, load_npy, load_npz, open_arrays
from .batch import Batch
from .bouncing import BouncingSpec, BouncingStream, bounce
from .idx import download, find_idx, load_idx_images, load_idx_labels, read_idx, sha256_file
from .ptb import Corpus, SentenceStream, build_vocab, detect_format, load_corpus, words_to_chars
from .sources import DataConfig, Streams, open_corpus, open_streams

__all__ = [
    "ArrayStream", "load_npy", "load_npz", "open_arrays",
    "Batch", "BouncingSpec", "BouncingStream", "bounce",
    "download", "find_idx", "load_idx_images", "load_idx_labels", "read_idx", "sha256_file",
    "Corpus", "SentenceStream", "build_vocab", "detect_format", "load_corpus", "words_to_chars",
    "DataConfig", "Streams", "open_corpus", "open_streams",
]
