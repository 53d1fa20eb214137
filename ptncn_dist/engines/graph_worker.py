"""The exact step of one layer as nodes of a Ray compiled graph (`engine.compiled = true`):
the same LayerCore phases as `layer_actor.MailboxWorker`, with the messages in the graph's
channels instead of a mailbox."""
from __future__ import annotations

import numpy as np

from ..backend import to_numpy, to_xp
from .layer_actor import LayerHost


class GraphWorker(LayerHost):
    """The exact step as nodes of a Ray compiled graph: forward, K - 1 iterate nodes (K =
    model.inference_steps), correct and finish. Each node returns the encoded
    messages for the neighbours ((for the layer above, for the layer below)); each neighbour
    decodes only the one meant for it. A node also takes the layer's own previous node (`own`,
    unused: it orders the phases). The graph's input is (x_t, m_t, do_learn, reset, t, t_prime)."""

    def g_forward(self, inp):
        x, m, do_learn, reset, t, t_prime = inp
        if reset:
            self.core.reset(m.shape[0])
        self._m = to_xp(self.xp, np.asarray(m)[:, None], self.dtype)
        self._x = None
        if self.l == 1:
            self._x = to_xp(self.xp, x) if x.dtype.kind in "iu" else to_xp(self.xp, x, self.dtype)
        z, pred = self.core.forward(self._x, self._m) if self.l == 1 else self.core.forward()
        top = self.spec.is_top
        return (None if top else self._encode("z", z), None if self.l == 1 else self._encode("pred", pred))

    def _from(self, outs):
        """The message meant for this layer out of its neighbours' node outputs `outs`: from the
        layer below its up-slot (0), from the layer above its down-slot (1)."""
        below = above = None
        k = 0
        if self.l > 1:
            below = self._device(self._decode(outs[k][0]).array) if outs[k][0] is not None else None
            k += 1
        if not self.spec.is_top:
            above = self._device(self._decode(outs[k][1]).array) if outs[k][1] is not None else None
        return below, above

    def g_iterate(self, inp, own, *neighbours):
        """A correction iteration k < K (one node per k, only when K > 1): the neighbours'
        states of iteration k-1 in, this layer's new state up and its prediction down."""
        z_below, pred_above = self._from(neighbours)
        s, pred = self.core.iterate(self._m, z_below=z_below, pred_above=pred_above)
        k = self.core.iteration
        return (None if self.spec.is_top else self._encode("z", s, k),
                None if self.l == 1 else self._encode("pred", pred, k))

    def g_correct(self, inp, own, *neighbours):
        z_below, pred_above = self._from(neighbours)
        y, eps = self.core.correct(self._m, z_below=z_below, pred_above=pred_above)
        up = None if self.spec.is_top else [self._encode("eps", eps), self._encode("y", y)]
        down = None if self.l == 1 else [self._encode("y", y)]
        return (up, down)

    def g_finish(self, inp, own, *neighbours):
        x, m, do_learn, reset, t, t_prime = inp
        y_below = eps_below = y_above = None
        k = 0
        if self.l > 1:
            eps_b, y_b = neighbours[k][0]
            eps_below, y_below = (self._device(self._decode(d).array) for d in (eps_b, y_b))
            k += 1
        if not self.spec.is_top:
            y_above = self._device(self._decode(neighbours[k][1][0]).array)
        self.core.finish(do_learn, x=self._x, y_below=y_below, eps_below=eps_below, y_above=y_above)
        self.clock += 1
        self.clock_t.step += 1
        self.counters["steps"] += 1
        if self.l != 1:
            return None
        out = {"sums": {}, "xhats": [], "diverged": None, "keep": False}
        self._bottom_loss(self._x, self._m, t, t_prime, out)
        return {"sums": out["sums"], "diverged": out["diverged"],
                "xhat": np.array(to_numpy(self.core.xhat), copy=True)}
