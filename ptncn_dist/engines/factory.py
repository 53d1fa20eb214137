"""Build the engine a config asks for."""
from __future__ import annotations

from ..core.backend import get_dtype, get_xp, limit_blas_threads
from ..core.model import initial_params, specs_from_config


def build_engine(cfg, x_dim: int, data_kind: str):
    """The engine for `cfg` (local or ray; a baseline learner when model.type is not 'ptncn')."""
    sparse = data_kind == "tokens"
    if cfg.model.type != "ptncn":
        from .baseline import BaselineEngine
        return BaselineEngine(cfg, x_dim, data_kind)
    specs = specs_from_config(cfg.model, x_dim, sparse)
    dtype = get_dtype(cfg.model.dtype)
    if cfg.engine.name == "ray":
        from .ray_engine import RayEngine
        return RayEngine(cfg, specs)
    from .local import LocalEngine
    limit_blas_threads(cfg.engine.blas_threads if cfg.engine.blas_threads > 0 else None)
    params = initial_params(specs, cfg.model, cfg.train.seed)
    return LocalEngine(specs, params, cfg.optim, get_xp(cfg.model.device), dtype, mode=cfg.engine.mode)
