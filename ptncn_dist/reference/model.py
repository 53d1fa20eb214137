"""../shared/MODEL.md written plainly in NumPy float64, to check the fast path against the spec.

One step is MODEL.md's steps 1-6 in their order, for any number of layers: plain weight matrices
M, V, U, W, E per layer, each update formed as a whole array and clipped by its norm, optimizers
with their textbook state. Nothing here is tuned: no stacked weights, no in-place BLAS, no scaled
velocity, no row blocks, no row gathers. Every function returns new arrays and mutates nothing.

Inputs are dense frames (T, B, x_dim), or token ids (T, B) of integer dtype standing for one-hot
rows; a padded token (mask 0) is a zero row, as the project feeds it (`core.schedule.token_ids`).

Not covered (README "Variants beyond MODEL.md"; each is off by default, which is MODEL.md):
`inference_steps` K > 1, `lateral_l1`, `standardize`, `row_norm_bound`, and the pipelined schedule.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

ACTIVATIONS = {"tanh": np.tanh, "relu": lambda h: np.maximum(h, 0.0), "sign": np.sign,
               "step": lambda h: (h >= 0).astype(np.float64), "identity": lambda h: h,
               "sigmoid": lambda h: 1.0 / (1.0 + np.exp(-h)),
               "lrelu": lambda h: np.where(h > 0, h, 0.01 * h)}


def _softmax(h):
    e = np.exp(h - h.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


OUTPUTS = {"identity": lambda h: h, "sigmoid": ACTIVATIONS["sigmoid"], "tanh": np.tanh, "softmax": _softmax}


@dataclass(frozen=True)
class Hyper:
    """MODEL.md's hyper-parameters with its defaults, plus the optimizer's (optim.py's names)."""

    activation: str = "tanh"
    output: str = "sigmoid"
    alpha: float = 0.001
    beta: float = 0.1
    gamma: float = 1.0
    update_radius: float = 1.0
    t_prime: int = 1
    zeta: float = 1.0
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8

    @classmethod
    def from_config(cls, cfg: dict) -> "Hyper":
        """From a golden file's config_json (keys it does not name keep their defaults)."""
        return cls(**{f.name: cfg[f.name] for f in dataclasses.fields(cls) if cfg.get(f.name) is not None})


@dataclass(frozen=True)
class State:
    """What a step reads: weights[l-1] = {"M", "V", "U", "W", "E"} of layer l, each weight's
    optimizer slots under the same names, and the carried x[t-1] and y[l] of step t-1."""

    weights: list
    slots: list
    xprev: np.ndarray
    yprev: list


def start(weights, batch: int) -> State:
    """Copies of the weights in float64, zero optimizer slots, zero carried state (t = 0)."""
    weights = [{k: np.array(v, dtype=np.float64) for k, v in w.items()} for w in weights]
    slots = [{k: {"m": np.zeros_like(v), "v": np.zeros_like(v), "t": 0} for k, v in w.items()} for w in weights]
    return State(weights, slots, np.zeros((batch, weights[0]["M"].shape[0])),
                 [np.zeros((batch, w["M"].shape[1])) for w in weights])


def clip(delta, radius: float):
    """Scale `delta` down to Frobenius norm `radius` when it is longer (off for radius <= 0)."""
    norm = np.linalg.norm(delta)
    return delta * (radius / norm) if radius > 0 and norm > radius else delta


def optimize(hp: Hyper, p, g, s: dict):
    """One optimizer step on weight p with gradient g; returns (new p, new slots).
    nag is TensorFlow 1's; adam folds its bias correction into the step size, as optim.py does."""
    mu, lr = hp.momentum, hp.lr
    if hp.optimizer == "sgd":
        return p - lr * g, s
    if hp.optimizer in ("momentum", "nag"):
        v = mu * s["v"] + g
        return p - lr * (v if hp.optimizer == "momentum" else g + mu * v), {**s, "v": v}
    if hp.optimizer == "adam":
        t = s["t"] + 1
        m = hp.beta1 * s["m"] + (1.0 - hp.beta1) * g
        v = hp.beta2 * s["v"] + (1.0 - hp.beta2) * g * g
        size = lr * np.sqrt(1.0 - hp.beta2 ** t) / (1.0 - hp.beta1 ** t)
        return p - size * m / (np.sqrt(v) + hp.eps), {"m": m, "v": v, "t": t}
    raise ValueError(f"unknown optimizer {hp.optimizer!r}")


def gradients(hp: Hyper, inp, yprev, z, e, eps) -> list:
    """MODEL.md step 5: each layer's clipped deltas, divided by the batch size B (all 1-based)."""
    L, B, r = len(z), z[1].shape[0], hp.update_radius
    out = []
    for l in range(1, L + 1):
        dW = clip(z[l].T @ (e[0] if l == 1 else eps[l - 1]), r)
        d = {"W": dW, "E": clip(hp.gamma * dW.T, r),
             "M": clip(inp[l].T @ eps[l], r), "V": clip(yprev[l].T @ eps[l], r)}
        if l < L and hp.zeta > 0:
            d["U"] = clip(yprev[l + 1].T @ eps[l], r)
        out.append({k: v / B for k, v in d.items()})
    return out


def step(hp: Hyper, state: State, x, m, learn: bool):
    """One time step: x (B, x_dim) dense rows, m (B, 1). Returns (next State, record), the record
    holding what a golden file records (xhat, e0, z<l>, y<l>, eps<l>, e<l>) and `after`, the
    weights after the step's update."""
    phi, out = ACTIVATIONS[hp.activation], OUTPUTS[hp.output]
    P, L = [None] + state.weights, len(state.weights)
    yprev = [None] + state.yprev + [None]
    inp = [None, state.xprev] + state.yprev[:-1]
    h, z, y, eps = {}, {}, {}, {}
    for l in range(1, L + 1):
        h[l] = inp[l] @ P[l]["M"] + yprev[l] @ P[l]["V"]
        if l < L and hp.zeta > 0:
            h[l] = h[l] + yprev[l + 1] @ P[l]["U"]
        z[l] = phi(h[l])
    xhat = out(z[1] @ P[1]["W"])
    e = {0: (xhat - x) * m}
    for l in range(1, L):
        e[l] = (z[l + 1] @ P[l + 1]["W"] - z[l]) * m
    for l in range(1, L + 1):
        d = e[l - 1] @ P[l]["E"] - (hp.alpha * e[l] if l < L else 0.0)
        y[l] = phi(h[l] - hp.beta * d)
        eps[l] = (z[l] - y[l]) * m
    weights, slots = state.weights, state.slots
    if learn:
        new = [{k: optimize(hp, w[k], g[k], s[k]) for k in g}
               for w, s, g in zip(weights, slots, gradients(hp, inp, yprev, z, e, eps))]
        weights = [{k: ps[0] for k, ps in layer.items()} for layer in new]
        slots = [{k: ps[1] for k, ps in layer.items()} for layer in new]
    record = {"xhat": xhat, "e0": e[0], "after": weights}
    for l in range(1, L + 1):
        record.update({f"z{l}": z[l], f"y{l}": y[l], f"eps{l}": eps[l]})
        if l < L:
            record[f"e{l}"] = e[l]
    return State(weights, slots, x, [y[l] for l in range(1, L + 1)]), record


def frames(x, mask, x_dim: int):
    """Dense input rows (T, B, x_dim): token ids become one-hot rows, zero where mask is 0."""
    x = np.asarray(x)
    if x.dtype.kind not in "iu":
        return x.astype(np.float64)
    return np.eye(x_dim)[x] * (np.asarray(mask) > 0)[..., None]


def run(hp: Hyper, weights, x, mask, learn: bool = True):
    """A batch of sequences from a zero state: x (T, B, x_dim) or ids (T, B), mask (T, B).
    Learns at t >= t_prime when `learn`. Returns (records, final State); records[t]["xhat"] is
    step t's forecast of x[t] and records[t]["after"] the weights after step t."""
    x = frames(x, mask, np.shape(weights[0]["M"])[0])
    state = start(weights, x.shape[1])
    records = []
    for t in range(x.shape[0]):
        m = np.asarray(mask[t], dtype=np.float64)[:, None]
        state, rec = step(hp, state, x[t], m, learn and t >= hp.t_prime)
        records.append(rec)
    return records, state
