"""Echo state network: a fixed random leaky-tanh reservoir with a trained linear readout.

    h_t = (1 - leak) h_{t-1} + leak tanh(u_t @ Win + h_{t-1} @ W + bias),  y_t = [h_t, 1] @ Wout

with u_t = x[t-1] (zeros at t = 0) as for the Elman baselines. W is sparse in structure (each
entry nonzero with probability `density`, values U(-1, 1)) but stored dense for fast matmuls, and
scaled so that its largest |eigenvalue| is exactly `spectral_radius`. Win and bias are
U(-input_scale, input_scale); token inputs select rows of Win.

For frames the readout fits the targets x[t] by ridge regression on all states seen while
learning, Wout = (S^T S + ridge I)^{-1} S^T Y over the augmented states S = [h, 1] (the bias
column is regularised too), solved from running sums S^T S and S^T Y after every learning
sequence. The online variant (esn_online) is recursive least squares (forgetting factor 1,
P0 = I / ridge), updated every step; it reaches the same ridge solution after the same samples.
For evaluation the linear readout is clipped to [0, 1] for sigmoid frames, to [-1, 1] for tanh,
left as is for identity.

For tokens the readout is trained for probabilities: softmax regression, xhat = softmax(S Wout),
fitted by one optimizer step (optim.*, as for the gradient baselines; global-norm clipping with
baseline.clip_norm) per learning sequence on the sequence's weighted cross-entropy
sum(weight * NLL) / B. A least-squares fit to one-hot targets put through a softmax, what the
readout was before, stays close to uniform over a large vocabulary. The reservoir never changes.
"""
from __future__ import annotations

import numpy as np

from ..core import optim
from ..core.backend import to_numpy
from ..errors import CheckpointError, ConfigError
from . import elman
from .learner import prepare_inputs


def has_cycle(nonzero: np.ndarray) -> bool:
    """Whether the directed graph of W's nonzero pattern has a cycle (else W is nilpotent).

    Peels off nodes without incoming edges until none is left (acyclic) or none can go (cycle).
    """
    alive = np.ones(nonzero.shape[0], dtype=bool)
    while alive.any():
        sources = alive & ~(nonzero[alive].any(axis=0))
        if not sources.any():
            return True
        alive &= ~sources
    return False


def scale_to_spectral_radius(W: np.ndarray, radius: float) -> np.ndarray:
    """W scaled so that max |eigenvalue| = radius (host NumPy, float64)."""
    if not has_cycle(W != 0):
        raise ConfigError("esn_density is too low for this hidden size: the reservoir matrix is "
                          "nilpotent (spectral radius 0); raise esn_density or hidden")
    return W * (radius / float(np.max(np.abs(np.linalg.eigvals(W)))))


def init_reservoir(rng, x_dim, hidden, density, spectral_radius, input_scale) -> dict:
    """Host float64 arrays Win (D, H), W (H, H), bias (H,)."""
    W = rng.uniform(-1.0, 1.0, (hidden, hidden)) * (rng.random((hidden, hidden)) < density)
    return {"Win": rng.uniform(-input_scale, input_scale, (x_dim, hidden)),
            "W": scale_to_spectral_radius(W, spectral_radius),
            "bias": rng.uniform(-input_scale, input_scale, hidden)}


def reservoir_states(res, x, leak, xp):
    """Hidden states (T, B, H) of a sequence from the zero state."""
    T, B = x.shape[0], x.shape[1]
    h = xp.zeros((B, res["W"].shape[0]), dtype=res["W"].dtype)
    out = xp.empty((T,) + h.shape, dtype=h.dtype)
    for t in range(T):
        a = h @ res["W"] + res["bias"]
        if t > 0:
            a = a + (res["Win"][x[t - 1]] if elman.is_tokens(x) else x[t - 1] @ res["Win"])
        h = (1.0 - leak) * h + leak * xp.tanh(a)
        out[t] = h
    return out


def augment(h, xp):
    """[h, 1]: states with a bias column."""
    return xp.concatenate([h, xp.ones(h.shape[:-1] + (1,), dtype=h.dtype)], axis=-1)


def targets(x, x_dim, dtype, xp):
    """Readout targets: the frames, or one-hot rows for token ids."""
    if not elman.is_tokens(x):
        return x
    y = xp.zeros(x.shape + (x_dim,), dtype=dtype)
    flat = y.reshape(-1, x_dim)
    flat[xp.arange(flat.shape[0]), x.reshape(-1)] = 1.0
    return y


def ridge_solve(A, C, ridge, xp):
    """(A + ridge I)^{-1} C by a linear solve, A = S^T S, C = S^T Y."""
    return xp.linalg.solve(A + ridge * xp.eye(A.shape[0], dtype=A.dtype), C)


def ridge_readout(S, Y, ridge, xp):
    """Wout = (S^T S + ridge I)^{-1} S^T Y for states S (N, F) and targets Y (N, D)."""
    return ridge_solve(S.T @ S, S.T @ Y, ridge, xp)


def rls_update(P, Wout, S, Y, xp) -> None:
    """Recursive least squares with a block of rows S (B, F), Y (B, D); P, Wout in place.

    K = P S^T (I + S P S^T)^{-1};  Wout += K (Y - S Wout);  P -= K S P  (then symmetrised).
    """
    PS = P @ S.T
    G = xp.eye(S.shape[0], dtype=P.dtype) + S @ PS
    K = xp.linalg.solve(G, PS.T).T
    Wout += K @ (Y - S @ Wout)
    P -= K @ PS.T
    P[...] = 0.5 * (P + P.T)


def finish(y, output, xp):
    """The prediction reported for evaluation from the linear readout y."""
    if output == "softmax":
        return elman.activate(y, "softmax", xp)
    if output == "sigmoid":
        return xp.clip(y, 0.0, 1.0)
    if output == "tanh":
        return xp.clip(y, -1.0, 1.0)
    return y


class ESN:
    """Echo state network baseline; only the readout (and its statistics) is learned."""

    kind = "esn"

    def __init__(self, cfg, x_dim, data_kind, xp, dtype, rng):
        self.cfg = cfg
        self.x_dim = x_dim
        self.data_kind = data_kind
        self.xp = xp
        self.dtype = np.dtype(dtype)
        host = init_reservoir(rng, x_dim, cfg.hidden, cfg.esn_density, cfg.esn_spectral_radius,
                              cfg.esn_input_scale)
        self.res = {k: xp.asarray(v.astype(self.dtype)) for k, v in host.items()}
        F = cfg.hidden + 1
        self.Wout = xp.zeros((F, x_dim), dtype=self.dtype)
        self.slots = optim.init_slots(cfg.optim, self.Wout, xp) if data_kind == "tokens" else {}
        if data_kind == "tokens":
            self.stats = {}
        elif cfg.esn_online:
            self.stats = {"P": xp.eye(F, dtype=self.dtype) / cfg.esn_ridge}
        else:
            self.stats = {"A": xp.zeros((F, F), dtype=self.dtype),
                          "C": xp.zeros((F, x_dim), dtype=self.dtype)}

    def run_sequence(self, x, mask, learn: bool, by_t: bool = False) -> dict:
        """Loss sums over steps t >= t_prime (per position too with `by_t`) with the readout
        before each update."""
        x, weight = prepare_inputs(x, mask, self.x_dim, self.data_kind, self.dtype,
                                   self.cfg.t_prime, self.xp)
        xp = self.xp
        S = augment(reservoir_states(self.res, x, self.cfg.esn_leak, xp), xp)
        if self.data_kind == "tokens":
            xhat = finish(S @ self.Wout, "softmax", xp)
            if learn:
                self._learn_softmax(S, x, weight, xhat)
        elif learn and self.cfg.esn_online:
            xhat = self._learn_online(S, x, weight)
        else:
            xhat = finish(S @ self.Wout, self.cfg.output, xp)
            if learn:
                self._learn_ridge(S, x, weight)
        return elman.loss_sums(xhat, x, weight, xp, by_t)

    def _learn_softmax(self, S, x, weight, xhat):
        """One optimizer step on sum(weight * NLL) / B; its gradient is S^T (xhat - onehot) w / B."""
        xp = self.xp
        dz = elman.out_delta(xhat, x, weight / x.shape[1], xp)
        grads = {"Wout": S.reshape(-1, S.shape[-1]).T @ dz.reshape(-1, self.x_dim)}
        elman.clip_global_norm(grads, self.cfg.clip_norm, xp)
        optim.apply(self.cfg.optim, self.Wout, grads["Wout"], self.slots, xp)

    def _learn_ridge(self, S, x, weight):
        xp = self.xp
        Sw = (S * weight[..., None]).reshape(-1, S.shape[-1])
        Yw = (targets(x, self.x_dim, self.dtype, xp) * weight[..., None]).reshape(-1, self.x_dim)
        self.stats["A"] += Sw.T @ Sw
        self.stats["C"] += Sw.T @ Yw
        self.Wout[...] = ridge_solve(self.stats["A"], self.stats["C"], self.cfg.esn_ridge, xp)

    def _learn_online(self, S, x, weight):
        xp = self.xp
        Y = targets(x, self.x_dim, self.dtype, xp)
        active = to_numpy((weight != 0).any(axis=1))
        xhats = []
        for t in range(S.shape[0]):
            xhats.append(finish(S[t] @ self.Wout, self.cfg.output, xp))
            if active[t]:
                w = weight[t][:, None]
                rls_update(self.stats["P"], self.Wout, S[t] * w, Y[t] * w, xp)
        return xp.stack(xhats)

    def num_params(self) -> int:
        """Trained parameters only: the readout (the reservoir is fixed)."""
        return int(self.Wout.size)

    def state_dict(self) -> dict:
        d = {f"param.{k}": to_numpy(v).copy() for k, v in self.res.items()}
        d["param.Wout"] = to_numpy(self.Wout).copy()
        d.update({f"stat.{k}": to_numpy(v).copy() for k, v in self.stats.items()})
        d.update({f"slot.Wout.{k}": v if isinstance(v, (int, float)) else to_numpy(v).copy()
                  for k, v in self.slots.items() if not k.startswith("_")})
        return d

    def load_state_dict(self, d) -> None:
        mine = self.state_dict()
        if set(d) != set(mine):
            raise CheckpointError(f"esn state keys differ: missing {sorted(set(mine) - set(d))}, "
                                  f"unexpected {sorted(set(d) - set(mine))}")
        for key, ref in mine.items():
            if isinstance(ref, np.ndarray) and np.shape(d[key]) != ref.shape:
                raise CheckpointError(f"esn state {key!r} has shape {np.shape(d[key])}, expected {ref.shape}")
        for k, v in self.res.items():
            v[...] = self.xp.asarray(d[f"param.{k}"])
        self.Wout[...] = self.xp.asarray(d["param.Wout"])
        for k, v in self.stats.items():
            v[...] = self.xp.asarray(d[f"stat.{k}"])
        for k, v in list(self.slots.items()):
            if k.startswith("_"):
                continue
            if isinstance(v, (int, float)):
                self.slots[k] = type(v)(d[f"slot.Wout.{k}"])
            else:
                v[...] = self.xp.asarray(d[f"slot.Wout.{k}"])
