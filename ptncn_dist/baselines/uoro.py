"""UORO, unbiased online recurrent optimization (Tallec & Ollivier 2017).

The RTRL sensitivity dh_t/dtheta of each batch row is replaced by a rank-one estimate
s~ (B, H) x theta~ (B,) + theta.shape with E[s~ theta~^T] = dh_t/dtheta. Per step, with
random signs nu in {-1, +1}^H,

    ds = (1 - h_t^2) * (s~ @ Wh)             tangent of the previous estimate
    dtheta = nu^T dh_t/dtheta|direct          one backward step of nu
    rho0 = sqrt(|theta~| / (|s~| + eps)) + eps,  rho1 = sqrt(|dtheta| / (|nu| + eps)) + eps
    s~ <- rho0 ds + rho1 nu,   theta~ <- theta~ / rho0 + dtheta / rho1

and the gradient of the loss at t is (dh_t . s~) theta~ (readout Wo, bo: its exact gradient).
The rho factors balance the two factors' norms to minimise variance without adding bias (they
are even in nu). The signs come from a host NumPy generator, so runs are reproducible.
"""
from __future__ import annotations

import numpy as np

from ..core.backend import to_numpy
from . import elman
from .learner import GradientLearner

EPS = 1e-7


def init_tilde(params, batch: int, xp):
    hidden = params["Wh"].shape[0]
    s = xp.zeros((batch, hidden), dtype=params["Wh"].dtype)
    theta = {n: xp.zeros((batch,) + params[n].shape, dtype=params[n].dtype) for n in elman.RECURRENT}
    return s, theta


def add_direct_vjp(theta, da, u, h_prev, xp) -> None:
    """theta += da^T da_t/dtheta|direct per row: outer products u (x) da, h_prev (x) da and da."""
    if u is not None:
        if elman.is_tokens(u):
            theta["Wx"][xp.arange(da.shape[0]), u] += da
        else:
            theta["Wx"] += u[:, :, None] * da[:, None, :]
    theta["Wh"] += h_prev[:, :, None] * da[:, None, :]
    theta["b"] += da


def direct_vjp_norm(da, u, h_prev, xp):
    """Per-row norm of the direct vjp without forming it: |a (x) da| = |a| |da|."""
    sq = 1.0 + (h_prev * h_prev).sum(axis=1)
    if u is not None:
        sq = sq + (1.0 if elman.is_tokens(u) else (u * u).sum(axis=1))
    return xp.sqrt((da * da).sum(axis=1) * sq)


def _row_norm(parts, xp):
    """Per-row L2 norm over several (B, ...) arrays taken together."""
    total = 0.0
    for p in parts:
        f = p.reshape(p.shape[0], -1)
        total = total + xp.einsum("ij,ij->i", f, f)
    return xp.sqrt(total)


def uoro_step(s, theta, params, u, h_prev, h, nu, xp):
    """(s~, theta~) at t-1 -> at t for the step h_prev -> h with input u and signs nu.

    Returns the new s~; theta~ (one (B,) + shape array per parameter, B*P numbers in all) is
    updated in place to avoid copying it every step.
    """
    d = 1.0 - h * h
    da = nu * d
    ds = d * (s @ params["Wh"])
    rho0 = xp.sqrt(_row_norm(list(theta.values()), xp) / (_row_norm([s], xp) + EPS)) + EPS
    rho1 = xp.sqrt(direct_vjp_norm(da, u, h_prev, xp) / (_row_norm([nu], xp) + EPS)) + EPS
    for th in theta.values():
        th *= (1.0 / rho0).reshape((-1,) + (1,) * (th.ndim - 1))
    add_direct_vjp(theta, da / rho1[:, None], u, h_prev, xp)
    return rho0[:, None] * ds + rho1[:, None] * nu


def random_signs(rng, shape, xp, dtype):
    return xp.asarray((rng.integers(0, 2, size=shape) * 2 - 1).astype(dtype))


def uoro_sequence(params, x, weight, output, rng, xp, update=None, need_grad=True):
    """Run a sequence with UORO; returns (summed gradient estimates or None, xhat (T, B, D)).

    With `update` the weights are updated online after every step that has loss weight; without
    it they stay fixed and the per-step estimates are summed: an unbiased estimate of the
    full BPTT gradient, random through the signs drawn from `rng`.
    """
    T, B = x.shape[0], x.shape[1]
    dtype = params["Wh"].dtype
    h = xp.zeros((B, params["Wh"].shape[0]), dtype=dtype)
    s, theta = init_tilde(params, B, xp) if need_grad else (None, None)
    active = to_numpy((weight != 0).any(axis=1)) if need_grad else None
    total = None
    xhats = []
    for t in range(T):
        u = elman.prev_input(x, t)
        h_prev, h = h, elman.step(params, u, h, xp)
        _, xhat = elman.readout(params, h, output, xp)
        xhats.append(xhat)
        if not need_grad:
            continue
        nu = random_signs(rng, h.shape, xp, dtype)
        s = uoro_step(s, theta, params, u, h_prev, h, nu, xp)
        if not active[t]:
            continue
        dz = elman.out_delta(xhat, x[t], weight[t] / B, xp)
        grads = elman.readout_grads(h, dz)
        c = ((dz @ params["Wo"].T) * s).sum(axis=1)
        for n, th in theta.items():
            grads[n] = xp.tensordot(c, th, axes=(0, 0))
        total = elman.route_grads(grads, update, total)
    if need_grad and total is None and update is None:
        total = elman.zero_grads(params, xp)
    return total, xp.stack(xhats)


def uoro_gradients(params, x, weight, output, rng, xp) -> dict:
    """One UORO estimate of the sequence gradient with fixed weights (mean over the batch)."""
    return uoro_sequence(params, x, weight, output, rng, xp)[0]


def rng_state(rng) -> np.ndarray:
    """A PCG64 generator's full state as uint64 words (msgpack has no 128-bit ints)."""
    st = rng.bit_generator.state
    words = []
    for v in (st["state"]["state"], st["state"]["inc"]):
        words += [v & 0xFFFFFFFFFFFFFFFF, v >> 64]
    words += [st["has_uint32"], st["uinteger"]]
    return np.array(words, dtype=np.uint64)


def set_rng_state(rng, words) -> None:
    w = [int(v) for v in np.asarray(words, dtype=np.uint64)]
    rng.bit_generator.state = {"bit_generator": "PCG64",
                               "state": {"state": w[0] | (w[1] << 64), "inc": w[2] | (w[3] << 64)},
                               "has_uint32": w[4], "uinteger": w[5]}


class UORO(GradientLearner):
    """Elman network trained online by UORO; the sign generator is part of the state."""

    kind = "uoro"

    def __init__(self, cfg, x_dim, data_kind, xp, dtype, rng, noise_rng):
        super().__init__(cfg, x_dim, data_kind, xp, dtype, rng)
        self.noise_rng = noise_rng

    def _run(self, x, weight, learn):
        _, xhat = uoro_sequence(self.params, x, weight, self.cfg.output, self.noise_rng, self.xp,
                                self.update if learn else None, need_grad=learn)
        return xhat

    def _extra_state(self) -> dict:
        return {"noise_rng": rng_state(self.noise_rng)}

    def _load_extra_state(self, d) -> None:
        set_rng_state(self.noise_rng, d["noise_rng"])
