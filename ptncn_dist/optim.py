"""Optimizers: sgd, momentum, nag (TensorFlow 1 convention) and adam. Arrays in, arrays out.

Each parameter `p` has a state dict (its slots). `apply` takes a dense gradient `g`; `apply_rows`
takes a gradient that is zero except on the (unique) rows `rows`, as a one-hot input produces, and
gives the same result as `apply` on the dense gradient without ever forming it. Both update `p`
and the slots in place, so a training step allocates no weight-sized arrays.
"""
from __future__ import annotations

from dataclasses import dataclass
import math

from .errors import ConfigError

OPTIMIZERS = ("sgd", "momentum", "nag", "adam")


@dataclass
class OptimConfig:
    name: str = "nag"
    lr: float = 0.075
    momentum: float = 0.95
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8

    def __post_init__(self):
        if self.name not in OPTIMIZERS:
            raise ConfigError(f"optim.name must be one of {list(OPTIMIZERS)}, not {self.name!r}")
        if not self.lr > 0:
            raise ConfigError(f"optim.lr must be > 0, not {self.lr!r}")


def init_slots(cfg: OptimConfig, p, xp) -> dict:
    """The optimizer slots for one parameter, zeros shaped like it."""
    if cfg.name == "sgd":
        return {}
    if cfg.name in ("momentum", "nag"):
        return {"v": xp.zeros_like(p)}
    return {"m": xp.zeros_like(p), "v": xp.zeros_like(p), "t": 0}


def apply(cfg: OptimConfig, p, g, slots: dict, xp) -> None:
    """p <- p - step(g), in place. `g` may be overwritten (it is a scratch buffer)."""
    if cfg.name == "sgd":
        g *= cfg.lr
        p -= g
    elif cfg.name == "momentum":
        v = slots["v"]
        v *= cfg.momentum
        v += g
        g[...] = v
        g *= cfg.lr
        p -= g
    elif cfg.name == "nag":
        v = slots["v"]
        v *= cfg.momentum
        v += g
        g *= cfg.lr
        p -= g
        g[...] = v
        g *= cfg.lr * cfg.momentum
        p -= g
    else:
        _adam(cfg, p, g, slots, xp, rows=None)


def apply_rows(cfg: OptimConfig, p, rows, g_rows, slots: dict, xp) -> None:
    """As `apply` for a gradient that is `g_rows` on the unique `rows` and zero elsewhere."""
    if cfg.name == "sgd":
        p[rows] -= cfg.lr * g_rows
    elif cfg.name == "momentum":
        v = slots["v"]
        v *= cfg.momentum
        v[rows] += g_rows
        p -= cfg.lr * v
    elif cfg.name == "nag":
        v = slots["v"]
        v *= cfg.momentum
        v[rows] += g_rows
        p -= (cfg.lr * cfg.momentum) * v
        p[rows] -= cfg.lr * g_rows
    else:
        _adam(cfg, p, g_rows, slots, xp, rows=rows)


def _adam(cfg, p, g, slots, xp, rows):
    slots["t"] = t = slots["t"] + 1
    m, v = slots["m"], slots["v"]
    m *= cfg.beta1
    v *= cfg.beta2
    if rows is None:
        m += (1.0 - cfg.beta1) * g
        v += (1.0 - cfg.beta2) * (g * g)
    else:
        m[rows] += (1.0 - cfg.beta1) * g
        v[rows] += (1.0 - cfg.beta2) * (g * g)
    step = cfg.lr * math.sqrt(1.0 - cfg.beta2 ** t) / (1.0 - cfg.beta1 ** t)
    p -= step * m / (xp.sqrt(v) + cfg.eps)
