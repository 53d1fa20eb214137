"""Backpropagation through time, full or truncated (window k), for the Elman network.

Truncated BPTT here is the common k1 = k2 = k scheme: the sequence is cut into consecutive
windows of k steps; each window is run forward from the hidden state the previous one ended in
(carried, but treated as a constant), its losses are backpropagated over its own k steps and the
weights are updated before the next window. truncation = 0 (or k >= T) is full BPTT: one window.
"""
from __future__ import annotations

from . import elman
from .learner import GradientLearner


def bptt_window(params, x, weight, output, start, stop, h0, xp, need_grad=True):
    """Forward steps [start, stop) from h0; returns (grads or None, h at stop - 1, xhat window).

    `weight` is the (T, B) loss weight of the whole sequence; grads are of the window's
    sum(loss * weight) / B with respect to all parameters, h0 held constant.
    """
    B = x.shape[1]
    hs = [h0]
    for t in range(start, stop):
        hs.append(elman.step(params, elman.prev_input(x, t), hs[-1], xp))
    h_win = xp.stack(hs[1:])
    _, xhat = elman.readout(params, h_win, output, xp)
    if not need_grad:
        return None, hs[-1], xhat
    dz = elman.out_delta(xhat, x[start:stop], weight[start:stop] / B, xp)
    grads = elman.zero_grads(params, xp)
    grads.update(elman.readout_grads(h_win, dz))
    dh_out = dz @ params["Wo"].T
    das = xp.empty_like(h_win)
    carry = None
    for i in range(stop - start - 1, -1, -1):
        dh = dh_out[i] if carry is None else dh_out[i] + carry
        da = dh * (1.0 - hs[i + 1] * hs[i + 1])
        grads["Wh"] += hs[i].T @ da
        das[i] = da
        carry = da @ params["Wh"].T
    grads["b"] += das.sum(axis=(0, 1))
    first = 1 if start == 0 else 0
    if stop - start > first:
        elman.add_input_grad(grads["Wx"], x[start + first - 1:stop - 1], das[first:], xp)
    return grads, hs[-1], xhat


def bptt_sequence(params, x, weight, output, xp, truncation=0, update=None, need_grad=True):
    """Run a whole sequence window by window; returns (summed grads or None, xhat (T, B, D)).

    With `update` (a callable taking a grads dict) the weights are updated after each window and
    no grads are returned; without it the weights stay fixed and the window grads are summed,
    which for truncation = 0 is the exact gradient of elman.sequence_objective.
    """
    T, B = x.shape[0], x.shape[1]
    k = T if truncation <= 0 else truncation
    h = xp.zeros((B, params["Wh"].shape[0]), dtype=params["Wh"].dtype)
    total = None
    xhats = []
    for start in range(0, T, k):
        stop = min(start + k, T)
        grads, h, xhat = bptt_window(params, x, weight, output, start, stop, h, xp, need_grad)
        xhats.append(xhat)
        if grads is None:
            continue
        total = elman.route_grads(grads, update, total)
    return total, xp.concatenate(xhats)


def bptt_gradients(params, x, weight, output, xp, truncation=0) -> dict:
    """The (truncated) BPTT gradient of a sequence with fixed weights."""
    return bptt_sequence(params, x, weight, output, xp, truncation)[0]


class BPTT(GradientLearner):
    """Elman network trained by full (truncation = 0) or truncated BPTT, one update per window."""

    def __init__(self, cfg, x_dim, data_kind, xp, dtype, rng):
        super().__init__(cfg, x_dim, data_kind, xp, dtype, rng)
        self.kind = "tbptt" if cfg.truncation > 0 else "bptt"

    def _run(self, x, weight, learn):
        _, xhat = bptt_sequence(self.params, x, weight, self.cfg.output, self.xp,
                                self.cfg.truncation, self.update if learn else None, need_grad=learn)
        return xhat
