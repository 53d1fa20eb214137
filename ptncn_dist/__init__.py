"""ptncn_dist: the Parallel Temporal Neural Coding Network (P-TNCN), one Ray actor per layer.

The public API: `load_config(path, overrides)` reads a TOML config (or the defaults) and applies
`section.key=value` overrides as `ptncn train --set` does, giving a validated `Config`;
`train(cfg, run_dir)` trains as `ptncn train` does and returns a `RunResult` (`data=` takes a
user's arrays directly); `load_run(run_dir)` gives a trained run to forecast and evaluate with. Every error a user
should see is a `PtncnError` (`ConfigError`, `DataError`, `CheckpointError`, `DivergenceError`).

    from ptncn_dist import load_config, train
    result = train(load_config(None, ["train.steps=300"]), "runs/example")
"""
from .config import Config, load as load_config
from .errors import CheckpointError, ConfigError, DataError, DivergenceError, PtncnError

__version__ = "0.1.0"


def train(cfg, run_dir=None, *, data=None, data_dir=None, **kwargs):
    """Train as `cfg` says (see ptncn_dist.trainer.train). `data`: a user's arrays instead of
    `cfg.data`'s files, for notebooks: one (N, T, D) / (N, T) array or a dict of "train", "valid",
    "test" (and "<split>_mask") arrays. They are saved as .npy files in `data_dir` (default: a new
    directory beside `run_dir`, `<run_dir>-data`, or a temporary one) and the run reads them as
    `data.source = "arrays"`, so `load_run(run_dir)` and `ptncn eval` find them again."""
    from .trainer import train as _train
    if data is not None:
        import dataclasses
        import tempfile

        from .data.npy import write_splits
        where = data_dir or (f"{str(run_dir).rstrip('/')}-data" if run_dir else tempfile.mkdtemp(prefix="ptncn-data-"))
        path = write_splits(data, where)
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, source="arrays", path=str(path),
                                                                format="auto"))
    return _train(cfg, run_dir, **kwargs)


def load_run(run_dir, *, allow_older=False):
    """A trained run, to forecast and evaluate with (see ptncn_dist.run.load_run)."""
    from .run import load_run as _load_run
    return _load_run(run_dir, allow_older=allow_older)


__all__ = ["Config", "load_config", "train", "load_run", "CheckpointError", "ConfigError", "DataError",
           "DivergenceError", "PtncnError", "__version__"]
