"""Bouncing MNIST / notMNIST videos (Srivastava et al. 2015 style), generated on demand.

Each batch is a pure function of (seed, position), so a run resumes exactly and any worker can
produce any batch without shared state.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError
from .batch import Batch, check_position


@dataclass
class BouncingSpec:
    """Video geometry: square frame side, sprites per video, frames per video, speed in pixels/frame."""

    frame: int = 64
    sprites: int = 2
    seq_len: int = 20
    speed_min: float = 2.0
    speed_max: float = 4.0

    def __post_init__(self):
        for key in ("frame", "sprites", "seq_len"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"BouncingSpec.{key} must be an integer >= 1, got {value!r}")
        if not 0 <= self.speed_min <= self.speed_max:
            raise ConfigError(
                f"BouncingSpec needs 0 <= speed_min <= speed_max, got {self.speed_min}, {self.speed_max}"
            )


def bounce(start: np.ndarray, velocity: np.ndarray, steps: int, limit: float) -> np.ndarray:
    """Positions in [0, limit] over `steps` frames of a point reflecting off 0 and `limit`.

    Elastic reflection is a triangle wave of the free path, so this needs no loop:
    returns an array of shape (steps, *start.shape).
    """
    t = np.arange(steps, dtype=np.float64).reshape((steps,) + (1,) * np.ndim(start))
    free = start + velocity * t
    if limit <= 0:
        return np.zeros_like(free)
    u = np.mod(free, 2.0 * limit)
    return limit - np.abs(limit - u)


class BouncingStream:
    """An infinite stream of bouncing-sprite videos drawn from a (N, h, w) uint8 sprite pool.

    batch(position) -> Batch with x (seq_len, batch, frame*frame) float32 in [0, 1].
    """

    kind = "frames"
    num_batches = None

    def __init__(self, pool: np.ndarray, spec: BouncingSpec, batch_size: int, seed: int, name: str):
        pool = np.asarray(pool)
        if pool.ndim != 3 or pool.dtype != np.uint8 or len(pool) == 0:
            raise ConfigError(
                f"{name}: sprite pool must be a non-empty (N, h, w) uint8 array, "
                f"got shape {pool.shape} {pool.dtype}"
            )
        if pool.shape[1] > spec.frame or pool.shape[2] > spec.frame:
            raise ConfigError(
                f"{name}: frame {spec.frame} is smaller than the {pool.shape[1]}x{pool.shape[2]} sprites"
            )
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"{name}: batch size must be an integer >= 1, got {batch_size!r}")
        self.pool = pool
        self.spec = spec
        self.batch_size = batch_size
        self.seed = int(seed)
        self.name = name
        self.dim = spec.frame * spec.frame
        h, w = pool.shape[1:]
        self._rows = np.arange(h).reshape(1, 1, 1, h, 1)
        self._cols = np.arange(w).reshape(1, 1, 1, 1, w)

    def trajectories(self, position: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Sprite ids (B, S) and integer top-left rows, cols (T, B, S) of batch `position`."""
        spec, b = self.spec, self.batch_size
        rng = np.random.default_rng([self.seed, int(position)])
        ids = rng.integers(0, len(self.pool), size=(b, spec.sprites))
        h, w = self.pool.shape[1:]
        limits = np.array([spec.frame - h, spec.frame - w], dtype=np.float64)
        start = rng.uniform(0.0, 1.0, size=(2, b, spec.sprites)) * limits[:, None, None]
        theta = rng.uniform(0.0, 2.0 * np.pi, size=(b, spec.sprites))
        speed = rng.uniform(spec.speed_min, spec.speed_max, size=(b, spec.sprites))
        vel = np.stack([speed * np.sin(theta), speed * np.cos(theta)])
        rows = bounce(start[0], vel[0], spec.seq_len, limits[0])
        cols = bounce(start[1], vel[1], spec.seq_len, limits[1])
        return ids, np.rint(rows).astype(np.intp), np.rint(cols).astype(np.intp)

    def batch(self, position: int) -> Batch:
        """The batch at `position`: a pure function of (seed, position)."""
        position = check_position(self.name, position, None)
        spec, b = self.spec, self.batch_size
        ids, rows, cols = self.trajectories(position)
        t, s, f = spec.seq_len, spec.sprites, spec.frame
        canvas = np.zeros((s, t, b, f, f), dtype=np.uint8)
        si = np.arange(s).reshape(s, 1, 1, 1, 1)
        ti = np.arange(t).reshape(1, t, 1, 1, 1)
        bi = np.arange(b).reshape(1, 1, b, 1, 1)
        r = rows.transpose(2, 0, 1)[..., None, None] + self._rows
        c = cols.transpose(2, 0, 1)[..., None, None] + self._cols
        canvas[si, ti, bi, r, c] = self.pool[ids.T][:, None]
        frames = canvas.max(axis=0).reshape(t, b, f * f)
        x = frames.astype(np.float32) / np.float32(255.0)
        return Batch(x=x, mask=np.ones((t, b), dtype=np.float32), position=int(position))
