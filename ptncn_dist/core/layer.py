"""One P-TNCN layer's state and its step, phase by phase (`LayerCore`). The arithmetic lives in
pure functions: `spec` (what a layer is), `activations` (phi, out, standardize), `step` (h, z,
predictions, errors, the state correction), `learn` (the local updates); `weights` holds the
weights in the layout the step runs on, with their optimizer slots. ../shared/MODEL.md is the
specification; README "Variants beyond MODEL.md" lists the options it does not name.

A step is three phases, separated by the rounds of neighbour exchange that every engine
performs (in one process, or between Ray actors):

1. `forward`   h = in @ M + yprev @ V (+ yprev_up @ U); z = phi(h); the prediction z @ W of the
               layer below (layer 1: xhat = out(z @ W) and e0 = (xhat - x) * m).
   -- exchange 1: z goes up, the prediction goes down --
   `iterate`   (only when K = inference_steps > 1, K - 1 times) one correction iteration from
               the neighbours' current states; its new state s goes up, s @ W goes down.
   -- one more exchange per iteration --
2. `correct`   the last iteration: e_self = (pred_above - s) * m; e_below = (pred_self - s_below)
               * m (or e0); d = e_below @ E - alpha * e_self; y = phi(v - beta * d); eps = (z - y) * m.
   -- exchange 2: eps and y go up, y goes down --
3. learning    the local LRA updates (outer products of signals the layer holds:
               `learn_recurrent`, `learn_generative`), then the carried state moves to step t
               (`carry_forward`). The exact order, and which waits overlap which work, is
               ptncn_dist/core/schedule.py's.

Both neighbours of an error e[l] form it from the same two arrays, so it is never sent. Messages
are (B, d) arrays of activations or errors, never weights. No derivative of phi is ever taken.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from . import optim
from .backend import to_numpy
from .learn import learn_generative, learn_recurrent
from .spec import LayerSpec
from .step import correction, forward, output_error, predict_below, stacked_rows, state_error, temporal_error
from .weights import LayerWeights, check_carry


@dataclass
class StepState:
    """What one layer has computed in the current step, phase by phase (None until then).

    h, z: the uncorrected pre-activation and state; rows: the step's stacked inputs (the
    recurrent update's left factor, consumed by it); v, s: the correction's current values after
    k iterations; pred: s @ W; layer 1 only: x, xhat, e0_k (its output error at iteration k);
    e_below, e_self: MODEL.md's e[l-1] and e[l] (first iteration); y, eps: the corrected state
    and the temporal error."""

    h: Any
    z: Any
    rows: Any
    v: Any
    s: Any
    k: int = 0
    pred: Any = None
    x: Any = None
    xhat: Any = None
    e0_k: Any = None
    e_below: Any = None
    e_self: Any = None
    y: Any = None
    eps: Any = None


@dataclass
class PreviousStep:
    """Pipelined schedule: what a layer's late W and E update needs from step t-1."""

    z: Any
    learn: bool


class LayerCore:
    """One layer's state and its step, phase by phase, called in the order ptncn_dist/core/schedule.py
    states: `forward_state`, `predict` -> (exchange 1) -> [`iterate` -> (exchange), K - 1 times]
    -> `correct` -> `learn_recurrent` -> (exchange 2) -> `generative_pair` (learned by
    `learn_generative` before the next prediction) and `carry_forward`. It holds no reference to
    any other layer: what it needs from a neighbour comes in as an argument, so the same object
    serves a single process and a Ray actor. The pipelined schedule (K = 1 only) uses `forward`,
    `correct`, `finish_pipelined` and `take_neighbours`.
    """

    def __init__(self, spec: LayerSpec, params: dict, opt_cfg: optim.OptimConfig, xp, dtype):
        self.spec, self.opt_cfg, self.xp, self.dtype = spec, opt_cfg, xp, dtype
        self.weights = LayerWeights(spec, params, opt_cfg, xp, dtype)
        self.carry = None
        self._t: StepState | None = None
        self._prev: PreviousStep | None = None

    @property
    def p(self) -> dict:
        """Every weight by name (the stacked ones are views into `stack`)."""
        return self.weights.p

    @property
    def stack(self):
        """M, V, U as row blocks of one column-major array (`spec.stacked_blocks`)."""
        return self.weights.stack

    @property
    def slots(self) -> dict:
        """The optimizer slots of the weights outside the stack, by name."""
        return self.weights.slots

    @property
    def stack_slots(self) -> dict:
        return self.weights.stack_slots

    def reset(self, batch: int) -> None:
        """Zero carried state: the start of every sequence (step t = 0)."""
        xp, s = self.xp, self.spec
        inp = xp.full((batch,), -1, dtype=np.int64) if s.sparse_input else xp.zeros((batch, s.d_in), self.dtype)
        up = xp.zeros((batch, s.d_up), self.dtype) if s.d_up else None
        self.carry = {"inp": inp, "y": xp.zeros((batch, s.d), self.dtype), "y_up": up}
        self._t, self._prev = None, None

    def forward(self, x=None, m=None):
        """Phase 1. Returns (z, pred): z for the layer above, pred for the layer below (None for
        layer 1, which needs the step's target `x` and mask `m` to form xhat and e0 itself)."""
        z = self.forward_state()
        return z, self.predict(x, m)

    def forward_state(self):
        """Phase 1a: h and z from step t-1's carried values (uses M, V, U only). The correction
        starts from them: v = h, s = z."""
        c = self.carry
        rows = stacked_rows(self.spec, self.xp, c["inp"], c["y"], c["y_up"])
        h, z = forward(self.spec, self.xp, self.p, self.stack, rows, c["inp"])
        self._t = StepState(h=h, z=z, rows=rows, v=h, s=z)
        return z

    def predict(self, x=None, m=None):
        """Phase 1b: the prediction of the layer below (uses W only); layer 1 forms the forecast
        xhat and e0 from z, i.e. from step t-1's state only, and keeps x for later iterations."""
        t = self._t
        t.pred = pred = predict_below(self.p, t.s)
        if self.spec.is_bottom:
            t.x = x
            t.xhat, t.e_below = output_error(self.spec, self.xp, pred, x, m)
            t.e0_k = t.e_below
            return None
        return pred

    def _correct_once(self, m, z_below, pred_above) -> None:
        """One correction iteration from the current states: the layer's own s and pred, the
        state s of the layer below (`z_below`, l >= 2) and the prediction of the layer above
        (l < L). The errors of the first iteration are MODEL.md's e[l-1], e[l] and are kept."""
        s, t, xp = self.spec, self._t, self.xp
        e_below = t.e0_k if s.is_bottom else state_error(t.pred, z_below, m)
        e_self = None if s.is_top else state_error(pred_above, t.s, m)
        if t.k == 0:
            t.e_self = e_self
            if not s.is_bottom:
                t.e_below = e_below
        t.v, t.s = correction(s, xp, self.p, t.h, t.v, e_below, e_self)
        t.k += 1

    def iterate(self, m, z_below=None, pred_above=None):
        """An inference iteration k < K (only when inference_steps > 1), given the neighbours'
        states of iteration k-1 as `correct` takes them. Returns (s, pred): the new state goes
        up, its prediction s @ W down (None for layer 1, which forms its e0 from it itself)."""
        self._correct_once(m, z_below, pred_above)
        t = self._t
        t.pred = pred = predict_below(self.p, t.s)
        if self.spec.is_bottom:
            t.e0_k = output_error(self.spec, self.xp, pred, t.x, m)[1]
            return t.s, None
        return t.s, pred

    def correct(self, m, z_below=None, pred_above=None):
        """Phase 2, the last correction iteration, given the layer below's current state
        (l >= 2) and the layer above's current prediction (l < L). Returns (y, eps): eps and y
        go up, y goes down."""
        self._correct_once(m, z_below, pred_above)
        t = self._t
        t.y = t.s
        t.eps = temporal_error(t.z, t.y, m)
        return t.y, t.eps

    def generative_pair(self, eps_below=None):
        """The two signals of step t whose outer product updates W and E: (z, e0) for layer 1,
        (z, eps[l-1]) above it."""
        t = self._t
        return t.z, t.e_below if self.spec.is_bottom else eps_below

    def learn_generative(self, pair) -> None:
        """W and E from a `generative_pair` (possibly kept from the previous step: W and E are
        not used between the end of step t and the prediction / correction of step t+1)."""
        learn_generative(self.spec, self.xp, self.p, self.slots, self.opt_cfg, *pair)

    def learn_recurrent(self) -> None:
        """M, V, U from the layer's own eps and what it carried into step t (as the forward
        phase laid it out side by side). Once per step: the update may scale the step's stacked
        inputs in place, so a second call is refused rather than applied to scaled inputs."""
        t = self._t
        if t.rows is None:
            raise RuntimeError(f"layer {self.spec.index}: M, V, U already learned from this step")
        rows, t.rows = t.rows, None
        learn_recurrent(self.spec, self.xp, self.p, self.slots, self.stack, self.stack_slots, self.opt_cfg,
                        self.carry["inp"], rows, t.eps)

    def carry_forward(self, x=None, y_below=None, y_above=None) -> None:
        c = self.carry
        c["inp"] = x if self.spec.is_bottom else y_below
        c["y"] = self._t.y
        c["y_up"] = y_above

    def finish_pipelined(self, do_learn: bool, x=None, eps_below_prev=None) -> None:
        """Phase 3 of the pipelined schedule. M, V, U learn as in the exact step. W and E of a
        layer above the first learn one step late, from the eps[l-1] its lower neighbour sent
        at step t-1 and this layer's own z of step t-1 (an outer product of one step's pair).
        The neighbours' new y arrive with the next step's messages (`take_neighbours`)."""
        s, t, c, xp = self.spec, self._t, self.carry, self.xp
        if s.is_bottom:
            if do_learn:
                learn_generative(s, xp, self.p, self.slots, self.opt_cfg, t.z, t.e_below)
        elif eps_below_prev is not None and self._prev is not None and self._prev.learn:
            learn_generative(s, xp, self.p, self.slots, self.opt_cfg, self._prev.z, eps_below_prev)
        if do_learn:
            self.learn_recurrent()
        if s.is_bottom:
            c["inp"] = x
        c["y"] = t.y
        self._prev = PreviousStep(z=t.z, learn=do_learn)

    def take_neighbours(self, y_below=None, y_above=None) -> None:
        """Pipelined: the neighbours' corrected states of step t-1, carried into step t."""
        if not self.spec.is_bottom:
            self.carry["inp"] = y_below
        if not self.spec.is_top:
            self.carry["y_up"] = y_above

    def set_params(self, params: dict) -> None:
        """New weights (names and shapes checked), optimizer slots back to zero."""
        self.weights.set_params(params)
        self.carry, self._t = None, None

    def state(self) -> dict:
        """Plain weights, plain optimizer slots by weight name (`LayerWeights.state`) and the
        carried state, as host (NumPy) copies."""
        host = lambda v: np.array(to_numpy(v), copy=True) if hasattr(v, "shape") else v
        return {**self.weights.state(),
                "carry": None if self.carry is None else {k: host(v) for k, v in self.carry.items()}}

    def named_arrays(self):
        """(name, array) of every weight, optimizer slot (raw, scratch left out) and carried
        state, on the device, for finiteness checks without copies."""
        yield from self.p.items()
        slots = [("stack", self.stack_slots)] + list(self.slots.items())
        for name, sl in slots:
            yield from ((f"{name}.{k}", v) for k, v in sl.items() if not k.startswith("_"))
        yield from ((f"carry.{k}", v) for k, v in (self.carry or {}).items() if v is not None)

    def load_state(self, state: dict) -> None:
        """Restore what `state` returned, in place. Every name, shape, dtype kind and type of the
        weights, slots and carried state is checked before anything is written (StateError,
        `weights.check_carry`); the carried floats take the layer's dtype."""
        carry = check_carry(self.spec, state.get("carry") if isinstance(state, dict) else None)
        self.weights.load_state(state)
        xp = self.xp
        self.carry = None if carry is None else {
            k: None if v is None else xp.asarray(v, dtype=np.int64 if k == "inp" and self.spec.sparse_input
                                                 else self.dtype) for k, v in carry.items()}
        self._t = None

    @property
    def iteration(self) -> int:
        """How many correction iterations of the current step have run."""
        return 0 if self._t is None else self._t.k

    @property
    def xhat(self):
        return None if self._t is None else self._t.xhat

    def step_values(self) -> dict:
        """What the last step computed (h, z, y, eps, e_self, ...), for tests and inspection."""
        return {} if self._t is None else {f.name: getattr(self._t, f.name) for f in fields(self._t)}
