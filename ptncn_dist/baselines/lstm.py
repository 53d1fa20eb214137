"""A one-layer PyTorch LSTM trained by truncated BPTT (model.type 'lstm', the `torch` extra).

    u_t = x[t-1] (zeros at t = 0),  (h_t, c_t) = LSTM(in(u_t), h_{t-1}, c_{t-1}),
    xhat_t = out(h_t @ Wo.T + bo)

as for the Elman baselines, so step t forecasts x[t]. Tokens enter through an embedding of
`baseline.embed` dimensions, frames go straight into the LSTM's input weights (a linear input
layer). Each sequence is cut into windows of `baseline.truncation` steps (0: the whole sequence);
each window runs from the (h, c) the previous one ended in, detached, and the weights are
updated after it, the k1 = k2 = k scheme of bptt.py. The training loss of a window is the
canonical loss of the output (softmax: NLL, sigmoid: BCE, ...) weighted by the mask with steps
t < t_prime zeroed, summed and divided by the batch size, as every gradient baseline has it.

Autograd gives the gradients; the update is the project's optimizer (`optim.apply` on NumPy
views of the torch parameters) with global-norm clipping, so optim.* and baseline.clip_norm mean
what they mean for the other baselines and the checkpoint holds the same param./slot. arrays.
Reported losses are elman.loss_sums of the predictions made before each window's update.
Weights start as PyTorch's defaults (LSTM and output U(-1/sqrt(H), 1/sqrt(H)), embedding
N(0, 1)) drawn from the run's NumPy seed; baseline.weight_sd is not used. CPU only.
"""
from __future__ import annotations

import math

import numpy as np

from ..core import optim
from ..errors import ConfigError
from .learner import GradientLearner

TORCH_HINT = "model.type = 'lstm' needs the torch extra: pip install 'ptncn_dist[torch]'"


def import_torch():
    """torch, or the one-line ConfigError saying how to install it."""
    try:
        import torch
    except ImportError:
        raise ConfigError(TORCH_HINT) from None
    return torch


def param_shapes(x_dim: int, hidden: int, embed: int, tokens: bool) -> dict:
    """Parameter shapes in nn.LSTM's layout (gates i, f, g, o stacked along the rows)."""
    width = embed if tokens else x_dim
    shapes = {"E": (x_dim, embed)} if tokens else {}
    shapes.update({"Wih": (4 * hidden, width), "Whh": (4 * hidden, hidden), "bih": (4 * hidden,),
                   "bhh": (4 * hidden,), "Wo": (x_dim, hidden), "bo": (x_dim,)})
    return shapes


def init_params(rng, shapes: dict, hidden: int, dtype) -> dict:
    """Host arrays drawn like PyTorch's defaults: U(-1/sqrt(H), 1/sqrt(H)), embedding N(0, 1)."""
    k = 1.0 / math.sqrt(hidden)
    return {n: (rng.normal(0.0, 1.0, s) if n == "E" else rng.uniform(-k, k, s)).astype(dtype)
            for n, s in shapes.items()}


def window_inputs(torch, params, prev, first: bool, tokens: bool):
    """The inputs u_t = x[t-1] of a window from `prev` (its x[t-1] rows), a zero row ahead at t = 0."""
    u = params["E"][prev] if tokens else prev
    if first:
        u = torch.cat([u.new_zeros((1,) + u.shape[1:]), u])
    return u


LSTM_NAMES = {"Wih": "weight_ih_l0", "Whh": "weight_hh_l0", "bih": "bias_ih_l0", "bhh": "bias_hh_l0"}


def build_modules(torch, host: dict):
    """An nn.LSTM and the named parameters (E, Wih, Whh, bih, bhh, Wo, bo) holding the host
    arrays' values; E, Wo and bo are free tensors, the others the module's own parameters."""
    lstm = torch.nn.LSTM(host["Wih"].shape[1], host["Whh"].shape[1])
    lstm = lstm.to(torch.float64 if host["Whh"].dtype == np.float64 else torch.float32)
    tensors = {}
    with torch.no_grad():
        for n, a in host.items():
            if n in LSTM_NAMES:
                tensors[n] = getattr(lstm, LSTM_NAMES[n])
                tensors[n].copy_(torch.from_numpy(a))
            else:
                tensors[n] = torch.from_numpy(a.copy()).requires_grad_(True)
    return lstm, tensors


def objective(torch, z, target, weight, output: str):
    """sum(weight * loss) of the output's canonical loss from the pre-output z (as elman.objective)."""
    F = torch.nn.functional
    if output == "softmax":
        per_row = F.cross_entropy(z.reshape(-1, z.shape[-1]), target.reshape(-1),
                                  reduction="none").reshape(target.shape)
    elif output == "sigmoid":
        per_row = F.binary_cross_entropy_with_logits(z, target, reduction="none").sum(-1)
    elif output == "identity":
        per_row = 0.5 * ((z - target) ** 2).sum(-1)
    else:
        per_row = (0.5 * (1.0 + target) * F.softplus(-2.0 * z) + 0.5 * (1.0 - target) * F.softplus(2.0 * z)
                   - math.log(2.0)).sum(-1)
    return (per_row * weight).sum()


def activate(torch, z, output: str):
    if output == "softmax":
        return torch.softmax(z, dim=-1)
    if output == "sigmoid":
        return torch.sigmoid(z)
    return torch.tanh(z) if output == "tanh" else z


class LSTM(GradientLearner):
    """The LSTM learner: torch tensors whose memory the NumPy `params` views share."""

    kind = "lstm"

    def __init__(self, cfg, x_dim, data_kind, xp, dtype, rng):
        if xp is not np:
            raise ConfigError("model.type = 'lstm' runs on model.device = 'cpu' only")
        self.torch = torch = import_torch()
        self.cfg = cfg
        self.x_dim = x_dim
        self.data_kind = data_kind
        self.xp = np
        self.dtype = np.dtype(dtype)
        self.tokens = data_kind == "tokens"
        shapes = param_shapes(x_dim, cfg.hidden, cfg.embed, self.tokens)
        host = init_params(rng, shapes, cfg.hidden, self.dtype)
        self.lstm, self.tensors = build_modules(torch, host)
        self.params = {n: t.detach().numpy() for n, t in self.tensors.items()}
        self.slots = {n: optim.init_slots(cfg.optim, p, np) for n, p in self.params.items()}
        self.carried = None

    def run_stream(self, x, mask, learn: bool, fresh: bool = False) -> dict:
        """run_sequence for a window of contiguous streams (data.contiguous): it starts from the
        (h, c) and last input the previous window ended with, or from zero when `fresh`, so the
        columns train and test as one long sequence each, cut every `baseline.truncation` steps."""
        if fresh:
            self.carried = None
        return self.run_sequence(x, mask, learn, carry=True)

    def _run(self, x, weight, learn: bool, carry: bool = False):
        """Predictions (T, B, D) of the sequence, window by window, updating after each if learn.

        A window runs only the columns still scored in it (a column ends at its last step with
        weight > 0), so short sentences cost no windows after they end; predictions that are
        never scored stay at softmax(0), sigmoid(0), ...
        """
        torch = self.torch
        T, B = x.shape[0], x.shape[1]
        k = T if self.cfg.truncation <= 0 else self.cfg.truncation
        xt = torch.from_numpy(x.astype(np.int64) if self.tokens else x)
        wt = torch.from_numpy(weight)
        lengths = np.where((weight != 0).any(axis=0), T - np.argmax(weight[::-1] != 0, axis=0), 0)
        h = self.tensors["Whh"].new_zeros((1, B, self.cfg.hidden))
        state, last = (h, h.clone()), None
        if carry and self.carried is not None:
            state, last = self.carried
        z = self.tensors["bo"].new_zeros((T, B, self.x_dim))
        for start in range(0, T, k):
            stop = min(start + k, T)
            cols = np.flatnonzero(lengths > start)
            if cols.size == 0:
                break
            with torch.set_grad_enabled(learn):
                zw, state = self._window(xt, start, stop, cols, state, last if start == 0 else None)
                if learn:
                    sel = (slice(start, stop), torch.from_numpy(cols))
                    loss = objective(torch, zw, xt[sel], wt[sel], self.cfg.output) / B
                    grads = torch.autograd.grad(loss, list(self.tensors.values()))
                    self.update({n: g.numpy() for n, g in zip(self.tensors, grads)})
            z[start:stop, cols] = zw.detach()
        if carry:
            self.carried = (state, xt[T - 1])
        return activate(torch, z, self.cfg.output).numpy()

    def _window(self, xt, start, stop, cols, state, last=None):
        """Pre-outputs (stop - start, len(cols), D) of the columns `cols` and the whole batch's
        (h, c) with those columns advanced to `stop` (detached). `last` is the input before
        step 0 (a carried stream's previous token), else a zero input there."""
        torch = self.torch
        idx = torch.from_numpy(cols)
        prev = xt[max(start - 1, 0):stop - 1]
        if last is not None:
            prev = torch.cat([last[None], xt[:stop - 1]])
        u = window_inputs(torch, self.tensors, prev[:, idx], start == 0 and last is None, self.tokens)
        h, (hn, cn) = self.lstm(u, tuple(s[:, idx] for s in state))
        new = tuple(s.index_copy(1, idx, n.detach()) for s, n in zip(state, (hn, cn)))
        return h @ self.tensors["Wo"].T + self.tensors["bo"], new
