"""Real-time recurrent learning: exact sensitivities dh_t/dtheta carried forward in time.

For each recurrent parameter (Wx, Wh, b) a tensor J of shape (B, H) + theta.shape holds
dh_t[b, j] / dtheta for every batch row, updated by

    J_t = (1 - h_t^2) * (Wh^T J_{t-1} + da_t/dtheta |direct)

so the gradient of the loss at step t is dh_t . J_t (the readout Wo, bo gets its direct
gradient). Memory is B*H*(D*H + H*H + H) and each step costs ~B*H^2 times that, O(H^4): RTRL is
only for small nets, so hidden > RTRL_MAX_HIDDEN is refused unless forced.
"""
from __future__ import annotations

from ..core.backend import to_numpy
from ..errors import ConfigError
from . import elman
from .learner import GradientLearner

RTRL_MAX_HIDDEN = 64


def check_size(hidden: int, force: bool) -> None:
    if hidden > RTRL_MAX_HIDDEN and not force:
        raise ConfigError(f"hidden = {hidden} is too large for exact RTRL (O(hidden^4) per step); "
                          f"use hidden <= {RTRL_MAX_HIDDEN} or set rtrl_force = true")


def init_sensitivity(params, batch: int, xp) -> dict:
    hidden = params["Wh"].shape[0]
    return {n: xp.zeros((batch, hidden) + params[n].shape, dtype=params[n].dtype)
            for n in elman.RECURRENT}


def propagate(J, params, u, h_prev, h, xp) -> dict:
    """J_{t-1} -> J_t for the step h_prev -> h with input u (None, ids or frames)."""
    B, H = h.shape
    idx = xp.arange(H)
    new = {n: xp.matmul(params["Wh"].T, Jn.reshape(B, H, -1)).reshape(Jn.shape) for n, Jn in J.items()}
    new["Wh"][:, idx, :, idx] += h_prev
    new["b"][:, idx, idx] += 1.0
    if u is not None:
        if elman.is_tokens(u):
            new["Wx"][xp.arange(B)[:, None], idx[None, :], u[:, None], idx[None, :]] += 1.0
        else:
            new["Wx"][:, idx, :, idx] += u
    d = 1.0 - h * h
    for n, Jn in new.items():
        Jn *= d.reshape((B, H) + (1,) * (Jn.ndim - 2))
    return new


def rtrl_sequence(params, x, weight, output, xp, update=None, need_grad=True):
    """Run a sequence with RTRL; returns (accumulated grads or None, xhat (T, B, D)).

    With `update`, the weights are updated online after every step t >= t_prime (weight > 0
    somewhere); without it they stay fixed and the per-step gradients are summed, which equals
    the full BPTT gradient exactly.
    """
    T, B = x.shape[0], x.shape[1]
    h = xp.zeros((B, params["Wh"].shape[0]), dtype=params["Wh"].dtype)
    J = init_sensitivity(params, B, xp) if need_grad else None
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
        J = propagate(J, params, u, h_prev, h, xp)
        if not active[t]:
            continue
        dz = elman.out_delta(xhat, x[t], weight[t] / B, xp)
        grads = elman.readout_grads(h, dz)
        dh = dz @ params["Wo"].T
        for n, Jn in J.items():
            grads[n] = xp.tensordot(dh, Jn, axes=([0, 1], [0, 1]))
        total = elman.route_grads(grads, update, total)
    if need_grad and total is None and update is None:
        total = elman.zero_grads(params, xp)
    return total, xp.stack(xhats)


def rtrl_gradients(params, x, weight, output, xp) -> dict:
    """The RTRL gradient of a sequence with fixed weights (equal to BPTT's)."""
    return rtrl_sequence(params, x, weight, output, xp)[0]


class RTRL(GradientLearner):
    """Elman network trained by exact RTRL, online (update every step) or once per sequence."""

    kind = "rtrl"

    def __init__(self, cfg, x_dim, data_kind, xp, dtype, rng):
        check_size(cfg.hidden, cfg.rtrl_force)
        super().__init__(cfg, x_dim, data_kind, xp, dtype, rng)

    def _run(self, x, weight, learn):
        if learn and not self.cfg.rtrl_online:
            grads, xhat = rtrl_sequence(self.params, x, weight, self.cfg.output, self.xp)
            self.update(grads)
            return xhat
        _, xhat = rtrl_sequence(self.params, x, weight, self.cfg.output, self.xp,
                                self.update if learn else None, need_grad=learn)
        return xhat
