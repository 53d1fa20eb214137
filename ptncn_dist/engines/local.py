"""All layers in one process: the reference every engine must match, and the fastest choice on
a single device. The layers run in order within each phase; nothing is sent anywhere."""
from __future__ import annotations

import numpy as np

from ..backend import to_numpy, to_xp
from ..layer import LayerCore
from ..layer_spec import check_schedule
from .base import Engine, check_finite, step_loss_sums, token_ids
from .. import metrics


class LocalEngine(Engine):
    name = "local"

    def __init__(self, specs, params: list[dict], opt_cfg, xp, dtype, mode: str = "exact"):
        check_schedule(specs, mode)
        self.xp, self.dtype, self.mode = xp, dtype, mode
        self.layers = [LayerCore(s, p, opt_cfg, xp, dtype) for s, p in zip(specs, params)]
        self._sent = None

    def step(self, x, m, do_learn: bool):
        return self.step_exact(x, m, do_learn) if self.mode == "exact" else self.step_pipelined(x, m, do_learn)

    def step_pipelined(self, x, m, do_learn: bool):
        """One pipelined step: each layer reads only what its neighbours sent at step t-1
        (`self._sent`; nothing at a sequence's first step), then sends its own messages."""
        layers, n, prev = self.layers, len(self.layers), self._sent
        for i, layer in enumerate(layers):
            if prev is not None:
                layer.take_neighbours(y_below=prev[i - 1]["y"] if i else None,
                                      y_above=prev[i + 1]["y"] if i + 1 < n else None)
        sent = []
        for i, layer in enumerate(layers):
            z, pred = layer.forward(x, m) if i == 0 else layer.forward()
            z_below = prev[i - 1]["z"] if prev is not None and i else None
            pred_above = prev[i + 1]["pred"] if prev is not None and i + 1 < n else None
            if i and z_below is None:
                z_below = self.xp.zeros_like(layers[i - 1].carry["y"])
            if i + 1 < n and pred_above is None:
                pred_above = self.xp.zeros_like(z)
            y, eps = layer.correct(m, z_below=z_below, pred_above=pred_above)
            layer.finish_pipelined(do_learn, x=x, eps_below_prev=prev[i - 1]["eps"] if prev is not None and i else None)
            sent.append({"z": z, "pred": pred, "y": y, "eps": eps})
        self._sent = sent
        return layers[0].xhat

    def step_exact(self, x, m, do_learn: bool):
        """One MODEL.md step on device arrays x (B, D) or ids (B,), m (B, 1); returns xhat.
        With K = inference_steps > 1, K - 1 correction iterations run between the forward
        phase and the last one (`correct`), each on every layer's state of the iteration before."""
        layers, n = self.layers, len(self.layers)
        zs, preds = [None] * n, [None] * n
        for i, layer in enumerate(layers):
            zs[i], preds[i] = layer.forward(x, m) if i == 0 else layer.forward()
        for _ in range(layers[0].spec.inference_steps - 1):
            new = [layer.iterate(m, z_below=zs[i - 1] if i else None, pred_above=preds[i + 1] if i + 1 < n else None)
                   for i, layer in enumerate(layers)]
            zs, preds = [s for s, _ in new], [p for _, p in new]
        ys, epss = [None] * n, [None] * n
        for i, layer in enumerate(layers):
            ys[i], epss[i] = layer.correct(m, z_below=zs[i - 1] if i else None,
                                           pred_above=preds[i + 1] if i + 1 < n else None)
        for i, layer in enumerate(layers):
            layer.finish(do_learn, x=x, y_below=ys[i - 1] if i else None,
                         eps_below=epss[i - 1] if i else None,
                         y_above=ys[i + 1] if i + 1 < n else None)
        return layers[0].xhat

    def run_segment(self, x, mask, t0, t1, *, learn, t_prime, keep_xhat=False, by_t=False):
        xp = self.xp
        if x.dtype.kind in "iu":
            xs = to_xp(xp, token_ids(x, mask))
        else:
            xs = to_xp(xp, x, self.dtype)
        ms = to_xp(xp, mask[..., None], self.dtype)
        if t0 == 0:
            for layer in self.layers:
                layer.reset(x.shape[1])
            self._sent = None
        sums, xhats = {}, []
        for t in range(t0, t1):
            xhat = self.step(xs[t], ms[t], learn and t >= t_prime)
            part = step_loss_sums(xp, xhat, xs[t], ms[t])
            check_finite(part, t)
            if t >= t_prime:
                metrics.accumulate(sums, part, t, by_t=by_t)
            if keep_xhat:
                xhats.append(np.array(to_numpy(xhat), copy=True))
        return sums, xhats

    def set_params(self, per_layer):
        for layer, p in zip(self.layers, per_layer):
            layer.set_params(p)

    def layer_states(self):
        return [layer.state() for layer in self.layers]

    def load_layer_states(self, states):
        for layer, st in zip(self.layers, states):
            layer.load_state(st)
