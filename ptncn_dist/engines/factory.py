"""Build the engine a config asks for. Every P-TNCN engine takes the same arguments:
`Engine(cfg, specs, params=None)`."""
from __future__ import annotations

import numpy as np

from ..config import Config, EngineConfig, ModelConfig
from ..core.model import specs_from_config


def build_engine(cfg, x_dim: int, data_kind: str):
    """The engine for `cfg` (local or ray; a baseline learner when model.type is not 'ptncn')."""
    if cfg.model.type != "ptncn":
        from .baseline import BaselineEngine
        return BaselineEngine(cfg, x_dim, data_kind)
    specs = specs_from_config(cfg.model, x_dim, data_kind == "tokens")
    if cfg.engine.name == "ray":
        from .ray_engine import RayEngine
        return RayEngine(cfg, specs)
    from .local import LocalEngine
    return LocalEngine(cfg, specs)


def engine_config(optim, dtype="float64", device: str = "cpu", mode: str = "exact", **engine) -> Config:
    """A Config for an engine over layer specs built elsewhere (a golden run, a test, a study):
    the specs carry the layers' hyper-parameters, so only the optimizer (an OptimConfig), dtype,
    device and the [engine] keys matter."""
    return Config(model=ModelConfig(dtype=np.dtype(dtype).name, device=device), optim=optim,
                  engine=EngineConfig(mode=mode, **engine))
