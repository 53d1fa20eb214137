"""Optimizers: sgd, momentum, nag (TensorFlow 1 convention) and adam. Arrays in, arrays out.

Each parameter `p` has a state dict (its slots; names starting with "_" are scratch, not state).
`apply` takes a dense gradient `g` and a scale folded into it; `apply_rows`
takes a gradient that is zero except on the (unique) rows `rows`, as a one-hot input produces, and
gives the same result as `apply` on the dense gradient without ever forming it. Both update `p`
and the slots in place with BLAS axpy passes, so a step allocates no weight-sized arrays.
Adam runs in row blocks (see `_adam`): each block's gradient lands in a block-sized scratch
and its m, v and p are updated while the block is in cache. `slot_names` and `fold_scale` give
the slots as a checkpoint keeps them, with the true velocity.
"""
from __future__ import annotations

from dataclasses import dataclass
import functools
import math

import numpy as np

from .adam_kernel import adam_block, adam_outer_tiny
from .backend import axpy, blas_threads, gemm_tn, scal
from ..errors import ConfigError

OPTIMIZERS = ("sgd", "momentum", "nag", "adam")


@dataclass
class OptimConfig:
    """The `[optim]` section: the optimizer every weight uses (P-TNCN's and the baselines')."""

    name: str = "adam"
    """The optimizer: sgd, momentum, nag (Nesterov, TensorFlow 1 convention) or adam."""
    lr: float = 0.0003
    """The learning rate (> 0)."""
    momentum: float = 0.95
    """mu, the velocity decay of momentum and nag."""
    beta1: float = 0.9
    """Adam's decay of the first moment m."""
    beta2: float = 0.999
    """Adam's decay of the second moment v."""
    eps: float = 1e-8
    """Adam's epsilon, added to sqrt(v) in the denominator."""

    def __post_init__(self):
        if self.name not in OPTIMIZERS:
            raise ConfigError(f"optim.name must be one of {list(OPTIMIZERS)}, not {self.name!r}")
        if not self.lr > 0:
            raise ConfigError(f"optim.lr must be > 0, not {self.lr!r}")


_MIN_SCALE = 1e-4
_BLOCK_BYTES = 1 << 20


def init_slots(cfg: OptimConfig, p, xp) -> dict:
    """The optimizer slots for one parameter, zeros shaped (and laid out) like it.

    momentum and nag keep the velocity as `v_scale * v`: the decay `v <- mu * v` then only
    changes the scalar, and the low-rank gradient lands in `v` in a GEMM with beta = 1, which
    skips the extra pass over a weight-sized array that any other beta costs. adam keeps m, v
    and the step count t (its block-sized scratch `_g` is added on first use).
    """
    if cfg.name == "sgd":
        return {}
    if cfg.name in ("momentum", "nag"):
        return {"v": xp.zeros_like(p), "v_scale": 1.0}
    return {"m": xp.zeros_like(p), "v": xp.zeros_like(p), "t": 0}


ARRAY_SLOTS = ("m", "v")


def slot_names(cfg: OptimConfig) -> tuple[str, ...]:
    """The slots of one weight as a checkpoint holds them: the true velocity v (momentum, nag),
    m, v and the step count t (adam), none (sgd). Arrays are those in `ARRAY_SLOTS`."""
    return {"sgd": (), "momentum": ("v",), "nag": ("v",), "adam": ("m", "v", "t")}[cfg.name]


def velocity(slots: dict):
    """The true momentum / nag velocity (a new array)."""
    return slots["v"] * slots["v_scale"]


def fold_scale(slots: dict) -> None:
    """Multiply a momentum / nag velocity's scale into v, in place, so that v is the true
    velocity and v_scale is 1 (the pass `_decay` makes when the scale gets small). The true
    velocity is unchanged up to one rounding; other optimizers' slots are left alone."""
    s = slots.get("v_scale")
    if s is not None and s != 1.0:
        scal(float(s), slots["v"])
        slots["v_scale"] = 1.0


def _decay(slots: dict, mu: float):
    """Fold v <- mu * v into the scale; returns (v, s_old, s_new) where the velocity before is
    s_old * v and after the decay s_new * v. When the scale gets small it is multiplied back
    into v (one pass every few hundred steps), so v stays in range."""
    v, s = slots["v"], float(slots["v_scale"])
    if s < _MIN_SCALE:
        scal(s, v)
        s = 1.0
    s_new = mu * s
    if s_new == 0.0:
        v.fill(0)
        s, s_new = 0.0, 1.0
    slots["v_scale"] = s_new
    return v, s, s_new


def apply(cfg: OptimConfig, p, g, slots: dict, xp, scale: float = 1.0) -> None:
    """p <- p - step(scale * g), in place. `g` is read, never written."""
    lr, mu = cfg.lr, cfg.momentum
    if cfg.name == "sgd":
        axpy(-lr * scale, g, p)
    elif cfg.name == "momentum":
        v, _, s = _decay(slots, mu)
        axpy(scale / s, g, v)
        axpy(-lr * s, v, p)
    elif cfg.name == "nag":
        v, _, s = _decay(slots, mu)
        axpy(scale / s, g, v)
        axpy(-lr * scale, g, p)
        axpy(-lr * mu * s, v, p)
    else:
        _adam(cfg, p, slots, xp, lambda out, r: xp.multiply(g[r], scale, out=out))


def apply_outer(cfg: OptimConfig, p, a, b, scale: float, slots: dict, xp) -> None:
    """As `apply` for the gradient scale * a.T @ b (a (B, m), b (B, n)), never formed alone:
    the GEMM accumulates it straight into the slot (or the weight, for sgd).

    nag: p += lr*mu*v_old; v = mu*v_old + g; p -= lr*(1+mu)*v, which is TensorFlow's
    p - lr*(g + mu*v) rearranged so that each weight-sized array is touched once per pass.
    `p` (and its slots) may be the transpose of a row-major array: the product is then b.T @ a.
    """
    if p.flags.c_contiguous or not p.flags.f_contiguous:
        target, x, y = (lambda arr: arr), a, b
    else:
        target, x, y = (lambda arr: arr.T), b, a
    lr, mu = cfg.lr, cfg.momentum
    if cfg.name == "sgd":
        gemm_tn(-lr * scale, x, y, 1.0, target(p))
    elif cfg.name in ("momentum", "nag"):
        v, s_old, s = _decay(slots, mu)
        c_before = lr * mu * s_old if cfg.name == "nag" else 0.0
        c_after = -lr * (1.0 + mu) * s if cfg.name == "nag" else -lr * s
        for rows in _row_blocks(target(p), xp):
            tp, tv, xr = target(p)[rows], target(v)[rows], x[:, rows]
            if c_before:
                axpy(c_before, tv, tp)
            gemm_tn(scale / s, xr, y, 1.0, tv)
            axpy(c_after, tv, tp)
    elif xp is np and adam_outer_tiny_step(cfg, target(p), target(slots["m"]), target(slots["v"]), x, y,
                                           scale, slots):
        return
    else:
        _adam(cfg, target(p), slots, xp, lambda out, r: gemm_tn(scale, x[:, r], y, 0.0, out), target)


def adam_outer_tiny_step(cfg: OptimConfig, c, m, v, x, y, scale: float, slots: dict) -> bool:
    """One Adam step of a tiny weight in a single compiled loop (`adam_outer_tiny`), counting the
    step only when it ran; False leaves everything to `_adam`."""
    t = slots["t"] + 1
    step = cfg.lr * math.sqrt(1.0 - cfg.beta2 ** t) / (1.0 - cfg.beta1 ** t)
    if not adam_outer_tiny(c, m, v, x, y, scale, cfg.beta1, cfg.beta2, cfg.eps, step):
        return False
    slots["t"] = t
    return True


def _row_blocks(c, xp) -> list:
    """Row ranges over which a momentum update runs its three passes (axpy, GEMM, axpy) one
    block at a time. With one BLAS thread a block of the weight and its velocity stays in the
    core's cache across the passes, which spares memory traffic when another worker shares the
    machine; with more threads the whole array goes at once (the GEMM splits it)."""
    return _blocks(c, xp) if blas_threads() == 1 else [slice(0, c.shape[0])]


def _blocks(c, xp) -> list:
    """Row ranges of about `_BLOCK_BYTES` each of a row-major NumPy matrix; else all rows."""
    n = c.shape[0]
    if xp is not np or c.ndim != 2 or not c.flags.c_contiguous:
        return [slice(0, n)]
    step = max(16, _BLOCK_BYTES // max(1, c.shape[1] * c.itemsize))
    return [slice(i, min(n, i + step)) for i in range(0, max(n, 1), step)]


def apply_rows(cfg: OptimConfig, p, rows, g_rows, slots: dict, xp) -> None:
    """As `apply` for a gradient that is `g_rows` on the unique `rows` and zero elsewhere."""
    lr, mu = cfg.lr, cfg.momentum
    if cfg.name == "sgd":
        p[rows] -= lr * g_rows
    elif cfg.name == "momentum":
        v, _, s = _decay(slots, mu)
        v[rows] += g_rows / s
        axpy(-lr * s, v, p)
    elif cfg.name == "nag":
        v, _, s = _decay(slots, mu)
        v[rows] += g_rows / s
        axpy(-lr * mu * s, v, p)
        p[rows] -= lr * g_rows
    else:
        _adam(cfg, p, slots, xp, functools.partial(_scatter_rows, rows, g_rows))


def _scatter_rows(rows, g_rows, out, r) -> None:
    """out = rows r.start:r.stop of the dense gradient that is `g_rows` on `rows`, 0 elsewhere."""
    out.fill(0)
    sel = (rows >= r.start) & (rows < r.stop)
    out[rows[sel] - r.start] = g_rows[sel]


def _adam(cfg, c, slots, xp, fill, target=lambda arr: arr) -> None:
    """One Adam step (Kingma & Ba, bias correction folded into the step size) on `c`, the
    weight or its row-major transpose view `target(p)`. For each row block r, `fill(out, r)`
    writes the gradient's rows r into a block-sized scratch slot `_g`, then `adam_block` updates
    m, v and the weight there while the block is in cache. Unlike momentum it runs in blocks
    whatever the BLAS threads: its element-wise pass is single-threaded anyway, and a whole-array
    gradient would cost a weight-sized write and read from memory."""
    slots["t"] = t = slots["t"] + 1
    step = cfg.lr * math.sqrt(1.0 - cfg.beta2 ** t) / (1.0 - cfg.beta1 ** t)
    m, v = target(slots["m"]), target(slots["v"])
    blocks = _blocks(c, xp)
    shape = (blocks[0].stop - blocks[0].start,) + c.shape[1:]
    g = slots.get("_g")
    if g is None or g.shape != shape or g.dtype != c.dtype:
        g = slots["_g"] = xp.empty(shape, c.dtype)
    for r in blocks:
        out = g[: r.stop - r.start]
        fill(out, r)
        adam_block(c[r], m[r], v[r], out, cfg.beta1, cfg.beta2, cfg.eps, step, xp)
