"""What a run checks once its data is open: that some step of its sequences is scored
(`check_scored`, which also gives the longest sequence a batch can hold) and that the model's
output can forecast a user's data (`check_output`)."""
from __future__ import annotations

from ..errors import ConfigError
from . import moving_mnist
from .sources import FILE_SEQUENCES, TEXT_FORMATS, DataConfig, data_directory, open_arrays, open_corpus


def _longest(cfg: DataConfig, split: str) -> list:
    """(longest, where, unit, cut) for the train and the held-out `split` split (one entry for
    generated videos): the most steps any one sequence has (cut to data.max_len when that is
    shorter), where it is, what a step is, and how it was cut."""
    out = []
    if cfg.source in TEXT_FORMATS:
        train = open_corpus(cfg, "train")
        found = [(max(len(s) for s in c.sentences), f"sentence of {c.source}", "tokens")
                 for c in (train, open_corpus(cfg, split, train.vocab))]
    elif cfg.source == "arrays":
        aset = open_arrays(cfg)
        found = [(aset.longest(n), f"{n} sequences of {aset.parts[n][0].path}", "steps") for n in ("train", split)]
    elif cfg.source in FILE_SEQUENCES:
        mm = moving_mnist.open_moving_mnist(data_directory(cfg))
        found = [(mm.steps, f"{n} sequences of {mm.path}", "steps") for n in ("train", split)]
    else:
        return [(cfg.seq_len, "videos", "frames", "")]
    for longest, where, unit in found:
        cut = ""
        if 0 < cfg.max_len < longest:
            longest, cut = cfg.max_len, f" (cut to data.max_len = {cfg.max_len})"
        out.append((longest, where, unit, cut))
    return out


def check_scored(cfg: DataConfig, t_prime: int, split: str = "test") -> int:
    """ConfigError when model.t_prime (the first step scored and learned) is at or past the end of
    every sequence of the train or the held-out split: the run would train and evaluate on
    nothing. Else the most steps one batch can hold, train or held-out, which a run's memory
    grows with. Text splits come from the cache `open_streams` filled, so this reads no file again."""
    rule = "only steps t >= model.t_prime of a sequence are scored and learned"
    found = _longest(cfg, split)
    for longest, where, unit, cut in found:
        if t_prime < longest:
            continue
        if unit == "frames":
            raise ConfigError(f"model.t_prime = {t_prime} leaves no step to score: every video has data.seq_len = "
                              f"{cfg.seq_len} frames (steps 0..{cfg.seq_len - 1}) and {rule}; set model.t_prime "
                              f"below {cfg.seq_len} or data.seq_len above {t_prime}")
        label = "the longest " + where if unit == "tokens" else f"the longest of the {where}"
        raise ConfigError(f"model.t_prime = {t_prime} leaves no step to score: {label} "
                          f"has {longest} {unit}{cut} and {rule}; set model.t_prime below {longest}")
    return max(longest for longest, *_ in found)


OUTPUT_RANGES = {"sigmoid": (0.0, 1.0, "binary cross-entropy"), "tanh": (-1.0, 1.0, "squared error")}


def check_output(cfg: DataConfig, output: str) -> None:
    """ConfigError when the model's output function cannot forecast a user's data (sources arrays,
    text and moving_mnist): token ids need "softmax"; real values need another output, and the
    values must lie in its range ("sigmoid": [0, 1], "tanh": [-1, 1]; "identity": any)."""
    if cfg.source not in ("arrays", "text", "moving_mnist"):
        return
    if cfg.source == "arrays":
        aset = open_arrays(cfg)
        kind, files = aset.kind, aset.files
    else:
        kind, files = ("tokens" if cfg.source == "text" else "frames"), []
    if kind == "tokens":
        if output != "softmax":
            raise ConfigError(f"model.output = {output!r} cannot forecast token ids (source {cfg.source}); "
                              f"set model.output = \"softmax\"")
        return
    if output == "softmax":
        raise ConfigError(f"model.output = \"softmax\" forecasts token ids, but source {cfg.source} holds real "
                          f"values (N, T, D); set model.output = \"identity\" (squared error) or \"sigmoid\" "
                          f"(binary cross-entropy, values in [0, 1])")
    if output not in OUTPUT_RANGES:
        return
    low, high, loss = OUTPUT_RANGES[output]
    for f in files:
        if f.lo < low or f.hi > high:
            raise ConfigError(f"model.output = {output!r} forecasts values in [{low:g}, {high:g}] ({loss}), but "
                              f"{f.path} holds values in [{f.lo:.4g}, {f.hi:.4g}]; scale the data into "
                              f"[{low:g}, {high:g}] or set model.output = \"identity\" (squared error)")
