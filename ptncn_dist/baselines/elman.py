"""The Elman network every gradient baseline trains: parameters, one step, the output and its loss.

    h_t = tanh(u_t @ Wx + h_{t-1} @ Wh + b),   z_t = h_t @ Wo + bo,   xhat_t = out(z_t)

with u_t = x[t-1] (zeros at t = 0, the start of every sequence), so step t forecasts x[t] as
P-TNCN does. Token inputs are ids and `u @ Wx` is the row gather `Wx[ids]`. Each output is
paired with its canonical loss (sigmoid: BCE, identity: 0.5 squared error, softmax: NLL,
tanh: the cross-entropy of targets in [-1, 1]), so dL/dz = (xhat - x) * weight for all of them.

A *weight* array (T, B) is the mask with steps t < t_prime zeroed: it says which rows count in
the loss. Gradients are of sum(loss * weight) / B, the batch mean. Math is written against `xp`.
"""
from __future__ import annotations

import math

import numpy as np

from .. import metrics

PARAMS = ("Wx", "Wh", "b", "Wo", "bo")
RECURRENT = ("Wx", "Wh", "b")
OUTPUTS = ("identity", "sigmoid", "softmax", "tanh")


def param_shapes(x_dim: int, hidden: int) -> dict:
    return {"Wx": (x_dim, hidden), "Wh": (hidden, hidden), "b": (hidden,),
            "Wo": (hidden, x_dim), "bo": (x_dim,)}


def init_params(rng, x_dim, hidden, xp, dtype, weight_sd) -> dict:
    """Weights ~ N(0, weight_sd^2), biases zero; drawn on the host from the NumPy `rng`."""
    params = {}
    for name, shape in param_shapes(x_dim, hidden).items():
        host = np.zeros(shape) if name in ("b", "bo") else rng.normal(0.0, weight_sd, shape)
        params[name] = xp.asarray(host.astype(dtype))
    return params


def is_tokens(x) -> bool:
    return x.dtype.kind in "iu"


def prev_input(x, t: int):
    """The input of step t: x[t-1], or None (zeros) at t = 0."""
    return None if t == 0 else x[t - 1]


def step(params, u, h_prev, xp):
    """One hidden update; `u` is None (zero input), ids (B,) or frames (B, D)."""
    a = h_prev @ params["Wh"] + params["b"]
    if u is not None:
        a = a + (params["Wx"][u] if is_tokens(u) else u @ params["Wx"])
    return xp.tanh(a)


def activate(z, output: str, xp):
    if output == "identity":
        return z
    if output == "sigmoid":
        return xp.exp(-xp.logaddexp(0.0, -z))
    if output == "tanh":
        return xp.tanh(z)
    e = xp.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def readout(params, h, output: str, xp):
    """(z, xhat) for hidden states h (..., H)."""
    z = h @ params["Wo"] + params["bo"]
    return z, activate(z, output, xp)


def objective(z, target, weight, output: str, xp):
    """sum(weight * loss) of the canonical loss, computed from the pre-output z (exact, no clip)."""
    if output == "softmax":
        zmax = z.max(axis=-1, keepdims=True)
        lse = (zmax + xp.log(xp.exp(z - zmax).sum(axis=-1, keepdims=True)))[..., 0]
        rows = xp.take_along_axis(z, target[..., None], axis=-1)[..., 0]
        per_row = lse - rows
    elif output == "sigmoid":
        per_row = (xp.logaddexp(0.0, z) - target * z).sum(axis=-1)
    elif output == "identity":
        per_row = 0.5 * ((z - target) ** 2).sum(axis=-1)
    else:
        per_row = (0.5 * (1.0 + target) * xp.logaddexp(0.0, -2.0 * z)
                   + 0.5 * (1.0 - target) * xp.logaddexp(0.0, 2.0 * z) - math.log(2.0)).sum(axis=-1)
    return (per_row * weight).sum()


def out_delta(xhat, target, weight, xp):
    """dL/dz = (xhat - target) * weight, target one-hot when it holds token ids."""
    if is_tokens(target):
        d = xhat.copy()
        flat = d.reshape(-1, d.shape[-1])
        flat[xp.arange(flat.shape[0]), target.reshape(-1)] -= 1.0
    else:
        d = xhat - target
    d *= weight[..., None]
    return d


def loss_weights(mask, t_prime: int):
    """The mask with steps t < t_prime zeroed (they do not count, as in P-TNCN)."""
    w = mask.copy()
    w[:t_prime] = 0.0
    return w


def loss_sums(xhat, x, weight, xp, by_t: bool = False) -> dict:
    """metrics.frame_loss_sums / token_loss_sums added over all (t, b) rows with weight > 0;
    with `by_t`, step by step through metrics.accumulate (the loss by position too)."""
    if by_t:
        sums: dict = {}
        for t in range(x.shape[0]):
            if float(weight[t].sum()) > 0:
                metrics.accumulate(sums, loss_sums(xhat[t:t + 1], x[t:t + 1], weight[t:t + 1], xp), t, by_t=True)
        return sums
    w = weight.reshape(-1)
    if is_tokens(x):
        return metrics.token_loss_sums(xhat.reshape(-1, xhat.shape[-1]), x.reshape(-1), w, xp)
    return metrics.frame_loss_sums(xhat.reshape(-1, xhat.shape[-1]),
                                   x.reshape(-1, x.shape[-1]), w, xp)


def sequence_objective(params, x, weight, output: str, xp, h0=None) -> float:
    """The training loss sum_t sum_b weight * loss / B of a forward pass with fixed weights."""
    h = xp.zeros((x.shape[1], params["Wh"].shape[0]), dtype=params["Wh"].dtype) if h0 is None else h0
    total = 0.0
    for t in range(x.shape[0]):
        h = step(params, prev_input(x, t), h, xp)
        z, _ = readout(params, h, output, xp)
        total += float(objective(z, x[t], weight[t], output, xp))
    return total / x.shape[1]


def add_input_grad(g_wx, u, da, xp) -> None:
    """g_wx += u^T da, a row scatter-add when u holds token ids (never a one-hot matmul)."""
    if is_tokens(u):
        xp.add.at(g_wx, u.reshape(-1), da.reshape(-1, da.shape[-1]))
    else:
        g_wx += u.reshape(-1, u.shape[-1]).T @ da.reshape(-1, da.shape[-1])


def readout_grads(h, dz) -> dict:
    """Gradients of Wo and bo from hidden states h (..., H) and output deltas dz (..., D)."""
    hf = h.reshape(-1, h.shape[-1])
    dzf = dz.reshape(-1, dz.shape[-1])
    return {"Wo": hf.T @ dzf, "bo": dzf.sum(axis=0)}


def route_grads(grads: dict, update, total):
    """Hand a step's or window's gradients to `update` (online learning), or, with no update,
    add them into the running `total` (the gradient of the whole sequence); returns the total."""
    if update is not None:
        update(grads)
        return total
    if total is None:
        return grads
    for n in total:
        total[n] += grads[n]
    return total


def zero_grads(params, xp) -> dict:
    return {name: xp.zeros_like(p) for name, p in params.items()}


def clip_global_norm(grads: dict, clip_norm: float, xp) -> None:
    """Scale all gradients in place so that their joint L2 norm is at most clip_norm (0: off)."""
    if clip_norm <= 0:
        return
    norm = math.sqrt(sum(float((g * g).sum()) for g in grads.values()))
    if norm > clip_norm:
        for g in grads.values():
            g *= clip_norm / norm
