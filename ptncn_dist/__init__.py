"""ptncn_dist: the Parallel Temporal Neural Coding Network (P-TNCN), one Ray actor per layer."""
from .config import Config, load as load_config
from .errors import CheckpointError, ConfigError, DataError, DivergenceError, PtncnError

__version__ = "0.1.0"


def train(cfg, run_dir=None, **kwargs):
    """Train as `cfg` says (see ptncn_dist.train.train)."""
    from .train import train as _train
    return _train(cfg, run_dir, **kwargs)


__all__ = ["Config", "load_config", "train", "CheckpointError", "ConfigError", "DataError",
           "DivergenceError", "PtncnError", "__version__"]
