"""Data streams for P-TNCN: bouncing-sprite videos and Penn Treebank text."""
from .batch import Batch
from .bouncing import BouncingSpec, BouncingStream, bounce
from .idx import download, find_idx, load_idx_images, load_idx_labels, read_idx, sha256_file
from .ptb import Corpus, SentenceStream, build_vocab, detect_format, load_corpus, words_to_chars
from .sources import DataConfig, Streams, open_corpus, open_streams

__all__ = [
    "Batch", "BouncingSpec", "BouncingStream", "bounce",
    "download", "find_idx", "load_idx_images", "load_idx_labels", "read_idx", "sha256_file",
    "Corpus", "SentenceStream", "build_vocab", "detect_format", "load_corpus", "words_to_chars",
    "DataConfig", "Streams", "open_corpus", "open_streams",
]
