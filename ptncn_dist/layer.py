"""The P-TNCN layer: the arithmetic of ../shared/MODEL.md, the only place it lives.

A layer l (1-based) of L holds its weights M, V, U, W, E, its optimizer slots and what it carries
from step t-1 (its input `inp`, its own corrected state `yprev`, the corrected state of the layer
above `yprev_up`). A step is three phases, separated by the two rounds of neighbour exchange that
every engine performs (in one process, or between Ray actors):

1. `forward`   h = in @ M + yprev @ V (+ yprev_up @ U); z = phi(h); the prediction z @ W of the
               layer below (layer 1: xhat = out(z @ W) and e0 = (xhat - x) * m).
   -- exchange 1: z goes up, the prediction goes down --
2. `correct`   e_self = (pred_above - z) * m; e_below = (pred_self - z_below) * m (or e0);
               d = e_below @ E - alpha * e_self; y = phi(h - beta * d); eps = (z - y) * m.
   -- exchange 2: eps and y go up, y goes down --
3. `learn` / `carry`   the local LRA updates (outer products of signals the layer holds), then
               the carried state moves to step t.

Both neighbours of an error e[l] form it from the same two arrays, so it is never sent. Messages are
(B, d) arrays of activations or errors, never weights. No derivative of phi is ever taken.

Inputs to layer 1 are either dense rows (B, x_dim) or token ids (B,) of integer dtype (-1: no
token). Ids stand for one-hot rows: `x @ M` is a row gather and its update a scatter-add.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from . import optim
from .backend import gram, outer_norm, to_numpy
from .errors import ConfigError

PARAM_NAMES = ("M", "V", "U", "W", "E")


def _tanh(xp, h):
    return xp.tanh(h)


def _relu(xp, h):
    return xp.maximum(h, 0)


def _sign(xp, h):
    return xp.sign(h)


def _step(xp, h):
    return (h >= 0).astype(h.dtype)


def _identity(xp, h):
    return h.copy()


def _sigmoid(xp, h):
    """1 / (1 + exp(-h)), written with tanh so that it never overflows."""
    return 0.5 * (xp.tanh(0.5 * h) + 1.0)


def _lrelu(xp, h):
    return xp.where(h > 0, h, 0.01 * h)


def _softmax(xp, h):
    e = xp.exp(h - h.max(axis=1, keepdims=True))
    e /= e.sum(axis=1, keepdims=True)
    return e


ACTIVATIONS = {"tanh": _tanh, "relu": _relu, "sign": _sign, "step": _step,
               "identity": _identity, "sigmoid": _sigmoid, "lrelu": _lrelu}
OUTPUTS = {"identity": _identity, "sigmoid": _sigmoid, "softmax": _softmax, "tanh": _tanh}


@dataclass(frozen=True)
class LayerSpec:
    """What layer `index` of `n_layers` needs to know about the model and its neighbours."""

    index: int
    n_layers: int
    d_in: int
    d: int
    d_up: int
    activation: str = "tanh"
    output: str = "sigmoid"
    alpha: float = 0.001
    beta: float = 0.1
    gamma: float = 1.0
    update_radius: float = 1.0
    zeta: float = 1.0
    row_norm_bound: float = 0.0
    sparse_input: bool = False

    @property
    def is_bottom(self) -> bool:
        return self.index == 1

    @property
    def is_top(self) -> bool:
        return self.index == self.n_layers

    @property
    def has_U(self) -> bool:
        return not self.is_top and self.zeta > 0

    def shapes(self) -> dict:
        """Weight shapes, as MODEL.md's table gives them."""
        s = {"M": (self.d_in, self.d), "V": (self.d, self.d),
             "W": (self.d, self.d_in), "E": (self.d_in, self.d)}
        if self.has_U:
            s["U"] = (self.d_up, self.d)
        return s


def layer_specs(x_dim: int, hidden, sparse_input: bool = False, **hyper) -> list[LayerSpec]:
    """One LayerSpec per hidden layer, 1..L."""
    dims = [int(x_dim)] + [int(h) for h in hidden]
    L = len(dims) - 1
    return [LayerSpec(index=l, n_layers=L, d_in=dims[l - 1], d=dims[l],
                      d_up=dims[l + 1] if l < L else 0,
                      sparse_input=sparse_input and l == 1, **hyper)
            for l in range(1, L + 1)]


def check_names(activation: str, output: str) -> None:
    if activation not in ACTIVATIONS:
        raise ConfigError(f"model.activation must be one of {sorted(ACTIVATIONS)}, not {activation!r}")
    if output not in OUTPUTS:
        raise ConfigError(f"model.output must be one of {sorted(OUTPUTS)}, not {output!r}")


def init_params(spec: LayerSpec, seed: int, weight_sd: float, error_weight_sd: float,
                dtype) -> dict[str, np.ndarray]:
    """Gaussian initial weights for one layer, a pure function of (seed, layer index).

    A layer can therefore create its own weights on its own worker, and every engine starts from
    the same numbers.
    """
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), spec.index]))
    out = {}
    for name in PARAM_NAMES:
        shape = spec.shapes().get(name)
        if shape is None:
            continue
        sd = error_weight_sd if name == "E" else weight_sd
        out[name] = (rng.standard_normal(shape) * sd).astype(dtype)
    return out


def is_ids(inp) -> bool:
    return inp.dtype.kind in "iu"


def input_matmul(xp, inp, M):
    """in @ M: a row gather when `inp` holds token ids (-1 gives a zero row)."""
    if not is_ids(inp):
        return inp @ M
    valid = inp >= 0
    out = M[xp.where(valid, inp, 0)]
    if not bool(valid.all()):
        out *= valid[:, None].astype(M.dtype)
    return out


def stacked_names(spec: LayerSpec) -> tuple[str, ...]:
    """The weights that multiply carried rows into h, in stack order: M (dense input only), V, U.

    All have d columns, so a layer keeps them as row blocks of one array, the stack: h is one
    GEMM over the carried rows side by side, and their updates are one GEMM into the stack.
    """
    first = () if spec.sparse_input else ("M",)
    return first + ("V",) + (("U",) if spec.has_U else ())


@functools.lru_cache(maxsize=None)
def stacked_blocks(spec: LayerSpec) -> tuple:
    """(name, rows of the stack) for each stacked weight; the same slices index the columns of
    `stacked_rows`. Cached per spec: the step asks for them every time."""
    out, start = [], 0
    for name in stacked_names(spec):
        width = spec.shapes()[name][0]
        out.append((name, slice(start, start + width)))
        start += width
    return tuple(out)


def stacked_rows(spec: LayerSpec, xp, inp, yprev, yprev_up):
    """The carried rows the stack multiplies, side by side: (B, rows of the stack)."""
    parts = ([] if spec.sparse_input else [inp]) + [yprev] + ([yprev_up] if spec.has_U else [])
    return parts[0] if len(parts) == 1 else xp.concatenate(parts, axis=1)


def forward(spec: LayerSpec, xp, p, stack, rows, inp):
    """Phase 1: h = in @ M + yprev @ V (+ yprev_up @ U) and z = phi(h), from step t-1's
    carried values only: `rows` are they side by side (`stacked_rows`), `stack` the
    `stacked_names` weights as row blocks; a token-id `inp` adds its rows of M.

    The stack is column-major, and h is formed as (stack.T @ rows.T).T: with the weight as
    the left operand of a long inner dimension BLAS runs 5-15% faster here than rows @ stack."""
    h = xp.ascontiguousarray((stack.T @ rows.T).T)
    if spec.sparse_input:
        h += input_matmul(xp, inp, p["M"])
    return h, ACTIVATIONS[spec.activation](xp, h)


def predict_below(p, z):
    """The layer's prediction of the layer below (pre-output for layer 1): z @ W."""
    return z @ p["W"]


def output_error(spec: LayerSpec, xp, pred, x, m):
    """Layer 1: xhat = out(z1 @ W1) and e0 = (xhat - x) * m; `x` dense rows or token ids."""
    xhat = OUTPUTS[spec.output](xp, pred)
    e0 = xhat * m
    if is_ids(x):
        valid = x >= 0
        rows = xp.arange(x.shape[0])
        e0[rows, xp.where(valid, x, 0)] -= m[:, 0] * valid.astype(e0.dtype)
    else:
        e0 -= x * m
    return xhat, e0


def state_error(pred_above, z, m):
    """e[l] = (z[l+1] @ W[l+1] - z[l]) * m, formed by both layers l and l+1."""
    return (pred_above - z) * m


def correct(spec: LayerSpec, xp, p, h, z, e_below, e_self, m):
    """Phase 2: the corrected state y = phi(h - beta * d) and eps = (z - y) * m."""
    d = e_below @ p["E"]
    if not spec.is_top:
        d -= spec.alpha * e_self
    y = ACTIVATIONS[spec.activation](xp, h - spec.beta * d)
    return y, (z - y) * m


def clip_factor(norm: float, radius: float) -> float:
    """The factor that brings an array of Frobenius norm `norm` down to `radius` (1 if shorter)."""
    return radius / norm if radius > 0 and norm > radius else 1.0


def learn_generative(spec: LayerSpec, xp, p, slots, opt_cfg, z, err_below) -> None:
    """The updates of W and E: dW = clip(z.T @ err_below), dE = clip(gamma * dW.T), each / B.

    `err_below` is e0 for layer 1 and eps[l-1] (from the layer below) otherwise. The delta is an
    outer product of two (B, d) signals: its norm comes from the small Gram matrices and the
    clip and 1/B factors travel as a scale into `optim.apply_outer`, so nothing weight-sized is
    formed or allocated.
    """
    inv_b = 1.0 / z.shape[0]
    r = spec.update_radius
    nW = outer_norm(xp, z, err_below) if r > 0 else 0.0
    cW = clip_factor(nW, r)
    cE = clip_factor(abs(spec.gamma) * cW * nW, r)
    optim.apply_outer(opt_cfg, p["W"], z, err_below, cW * inv_b, slots["W"], xp)
    optim.apply_outer(opt_cfg, p["E"], err_below, z, spec.gamma * cW * cE * inv_b, slots["E"], xp)
    _bound(spec, xp, p, ("W", "E"))


def learn_recurrent(spec: LayerSpec, xp, p, slots, stack, stack_slots, opt_cfg, inp, rows, eps) -> None:
    """The updates of M, V, U: clip(in.T @ eps), clip(yprev.T @ eps), clip(yprev_up.T @ eps), / B.

    `rows` are the step's `stacked_rows` (scaled here in place when they are a copy). Each
    block of the stack is clipped on its own (its factor scales its columns of `rows`), then
    one GEMM lands all of them; a token-id input updates M by rows.
    """
    inv_b = 1.0 / eps.shape[0]
    r = spec.update_radius
    if spec.sparse_input:
        _sparse_update(xp, p, slots, opt_cfg, inp, eps, r, inv_b)
    if r > 0:
        gram_eps = gram(eps)
        blocks = [b for _, b in stacked_blocks(spec)]
        scales = [clip_factor(outer_norm(xp, rows[:, b], eps, gram_eps), r) for b in blocks]
        if any(c != 1.0 for c in scales):
            if len(blocks) == 1:
                rows = rows * scales[0]
            else:
                for b, c in zip(blocks, scales):
                    if c != 1.0:
                        rows[:, b] *= c
    optim.apply_outer(opt_cfg, stack, rows, eps, inv_b, stack_slots, xp)
    if spec.row_norm_bound > 0:
        bound_rows(xp, stack, spec.row_norm_bound)
        if spec.sparse_input:
            bound_rows(xp, p["M"], spec.row_norm_bound)


def _bound(spec, xp, p, names) -> None:
    if spec.row_norm_bound > 0:
        for name in names:
            bound_rows(xp, p[name], spec.row_norm_bound)


def _sparse_update(xp, p, slots, opt_cfg, ids, eps, radius, inv_b):
    """dM = onehot(ids).T @ eps without the one-hot: summed rows of eps per distinct token."""
    valid = ids >= 0
    if not bool(valid.any()):
        optim.apply_rows(opt_cfg, p["M"], ids[:0], eps[:0], slots["M"], xp)
        return
    rows, inverse = xp.unique(ids[valid], return_inverse=True)
    pick = (inverse[:, None] == xp.arange(rows.shape[0])[None, :]).astype(eps.dtype)
    g_rows = pick.T @ eps[valid]
    norm = math.sqrt(float(xp.vdot(g_rows.ravel(), g_rows.ravel())))
    g_rows *= clip_factor(norm, radius) * inv_b
    optim.apply_rows(opt_cfg, p["M"], rows, g_rows, slots["M"], xp)


def bound_rows(xp, w, bound: float) -> None:
    """Scale down, in place, every row of `w` whose Euclidean norm exceeds `bound`."""
    norms = xp.sqrt((w * w).sum(axis=1, keepdims=True))
    w *= xp.minimum(1.0, bound / xp.maximum(norms, 1e-30))


class LayerCore:
    """One layer's state and its step, phase by phase. Engines call these methods in order:

    `forward` -> (exchange 1) -> `correct` -> (exchange 2) -> `finish`.
    It holds no reference to any other layer: what it needs from a neighbour comes in as an
    argument, so the same object serves a single process and a Ray actor. The pipelined
    schedule replaces `finish` by `finish_pipelined` and `take_neighbours` (see ray_engine).
    """

    def __init__(self, spec: LayerSpec, params: dict, opt_cfg: optim.OptimConfig, xp, dtype):
        self.spec, self.opt_cfg, self.xp, self.dtype = spec, opt_cfg, xp, dtype
        given = {k: xp.asarray(v, dtype=dtype) for k, v in params.items()}
        expected = spec.shapes()
        for name, shape in expected.items():
            if name not in given or tuple(given[name].shape) != shape:
                got = None if name not in given else tuple(given[name].shape)
                raise ConfigError(f"layer {spec.index}: weight {name} must have shape {shape}, got {got}")
        self.rows = dict(stacked_blocks(spec))
        height = sum(expected[name][0] for name in self.rows)
        self.stack = xp.empty((height, spec.d), dtype, order="F")
        self.p = {}
        for name in expected:
            if name in self.rows:
                self.stack[self.rows[name]] = given[name]
                self.p[name] = self.stack[self.rows[name]]
            else:
                self.p[name] = xp.ascontiguousarray(given[name])
        self.slots = {k: optim.init_slots(opt_cfg, v, xp) for k, v in self.p.items() if k not in self.rows}
        self.stack_slots = optim.init_slots(opt_cfg, self.stack, xp)
        self.carry = None
        self._t, self._prev = {}, {}

    def reset(self, batch: int) -> None:
        """Zero carried state: the start of every sequence (step t = 0)."""
        xp, s = self.xp, self.spec
        inp = xp.full((batch,), -1, dtype=np.int64) if s.sparse_input else xp.zeros((batch, s.d_in), self.dtype)
        up = xp.zeros((batch, s.d_up), self.dtype) if s.d_up else None
        self.carry = {"inp": inp, "y": xp.zeros((batch, s.d), self.dtype), "y_up": up}
        self._t, self._prev = {}, {}

    def forward(self, x=None, m=None):
        """Phase 1. Returns (z, pred): z for the layer above, pred for the layer below (None for
        layer 1, which needs the step's target `x` and mask `m` to form xhat and e0 itself)."""
        z = self.forward_state()
        return z, self.predict(x, m)

    def forward_state(self):
        """Phase 1a: h and z from step t-1's carried values (uses M, V, U only)."""
        c = self.carry
        rows = stacked_rows(self.spec, self.xp, c["inp"], c["y"], c["y_up"])
        h, z = forward(self.spec, self.xp, self.p, self.stack, rows, c["inp"])
        self._t = {"h": h, "z": z, "rows": rows}
        return z

    def predict(self, x=None, m=None):
        """Phase 1b: the prediction of the layer below (uses W only); layer 1 forms xhat and e0."""
        t = self._t
        t["pred"] = pred = predict_below(self.p, t["z"])
        if self.spec.is_bottom:
            t["xhat"], t["e_below"] = output_error(self.spec, self.xp, pred, x, m)
            return None
        return pred

    def correct(self, m, z_below=None, pred_above=None):
        """Phase 2, given the layer below's z (l >= 2) and the layer above's prediction (l < L).
        Returns (y, eps): eps and y go up, y goes down."""
        s, t, xp = self.spec, self._t, self.xp
        if not s.is_bottom:
            t["e_below"] = state_error(t["pred"], z_below, m)
        e_self = None if s.is_top else state_error(pred_above, t["z"], m)
        t["e_self"] = e_self
        t["y"], t["eps"] = correct(s, xp, self.p, t["h"], t["z"], t["e_below"], e_self, m)
        return t["y"], t["eps"]

    def finish(self, do_learn: bool, x=None, y_below=None, eps_below=None, y_above=None) -> None:
        """Phase 3 of the exact schedule: the local updates (when `do_learn`), then carry step
        t's values forward."""
        if do_learn:
            self.learn_generative(self.generative_pair(eps_below))
            self.learn_recurrent()
        self.carry_forward(x, y_below, y_above)

    def generative_pair(self, eps_below=None):
        """The two signals of step t whose outer product updates W and E: (z, e0) for layer 1,
        (z, eps[l-1]) above it."""
        t = self._t
        return t["z"], t["e_below"] if self.spec.is_bottom else eps_below

    def learn_generative(self, pair) -> None:
        """W and E from a `generative_pair` (possibly kept from the previous step: W and E are
        not used between the end of step t and the prediction / correction of step t+1)."""
        learn_generative(self.spec, self.xp, self.p, self.slots, self.opt_cfg, *pair)

    def learn_recurrent(self) -> None:
        """M, V, U from the layer's own eps and what it carried into step t (as the forward
        phase laid it out side by side)."""
        t = self._t
        learn_recurrent(self.spec, self.xp, self.p, self.slots, self.stack, self.stack_slots, self.opt_cfg,
                        self.carry["inp"], t.pop("rows"), t["eps"])

    def carry_forward(self, x=None, y_below=None, y_above=None) -> None:
        c = self.carry
        c["inp"] = x if self.spec.is_bottom else y_below
        c["y"] = self._t["y"]
        c["y_up"] = y_above

    def finish_pipelined(self, do_learn: bool, x=None, eps_below_prev=None) -> None:
        """Phase 3 of the pipelined schedule. M, V, U learn as in the exact step. W and E of a
        layer above the first learn one step late, from the eps[l-1] its lower neighbour sent
        at step t-1 and this layer's own z of step t-1 (an outer product of one step's pair).
        The neighbours' new y arrive with the next step's messages (`take_neighbours`)."""
        s, t, c, xp = self.spec, self._t, self.carry, self.xp
        if s.is_bottom:
            if do_learn:
                learn_generative(s, xp, self.p, self.slots, self.opt_cfg, t["z"], t["e_below"])
        elif eps_below_prev is not None and self._prev.get("learn"):
            learn_generative(s, xp, self.p, self.slots, self.opt_cfg, self._prev["z"], eps_below_prev)
        if do_learn:
            self.learn_recurrent()
        if s.is_bottom:
            c["inp"] = x
        c["y"] = t["y"]
        self._prev = {"z": t["z"], "learn": do_learn}

    def take_neighbours(self, y_below=None, y_above=None) -> None:
        """Pipelined: the neighbours' corrected states of step t-1, carried into step t."""
        if not self.spec.is_bottom:
            self.carry["inp"] = y_below
        if not self.spec.is_top:
            self.carry["y_up"] = y_above

    def set_params(self, params: dict) -> None:
        """New weights (shapes checked), optimizer slots back to zero."""
        fresh = {k: optim.init_slots(self.opt_cfg, v, self.xp) for k, v in self.p.items()}
        self.load_state({"params": params, "slots": fresh, "carry": None})

    def slot_views(self) -> dict:
        """Each weight's optimizer slots by weight name (views into the stack's slots for the
        stacked weights; scalars such as a step count are shared by the stack)."""
        out = dict(self.slots)
        for name, rows in self.rows.items():
            out[name] = {n: v[rows] if hasattr(v, "shape") else v for n, v in self.stack_slots.items()}
        return out

    def state(self) -> dict:
        """Weights, optimizer slots and carried state as host (NumPy) copies, by weight name."""
        host = lambda v: np.array(to_numpy(v), copy=True) if hasattr(v, "shape") else v
        return {"params": {k: host(v) for k, v in self.p.items()},
                "slots": {k: {n: host(v) for n, v in sl.items() if not n.startswith("_")}
                          for k, sl in self.slot_views().items()},
                "carry": None if self.carry is None else {k: host(v) for k, v in self.carry.items()}}

    def load_state(self, state: dict) -> None:
        """Restore what `state` returned, in place (shapes are checked)."""
        xp = self.xp
        for k, v in state["params"].items():
            if k not in self.p or tuple(v.shape) != tuple(self.p[k].shape):
                raise ConfigError(f"layer {self.spec.index}: saved weight {k} has shape {tuple(v.shape)}, "
                                  f"the model needs {None if k not in self.p else tuple(self.p[k].shape)}")
            self.p[k][...] = xp.asarray(v)
        views = self.slot_views()
        for k, sl in state["slots"].items():
            if k not in views:
                raise ConfigError(f"layer {self.spec.index}: saved optimizer slots for unknown weight {k!r}")
            for n, v in sl.items():
                if n.startswith("_"):
                    continue
                if hasattr(v, "shape"):
                    views[k][n][...] = xp.asarray(v)
                else:
                    (self.stack_slots if k in self.rows else self.slots[k])[n] = v
        carry = state.get("carry")
        self.carry = None if carry is None else {
            k: None if v is None else xp.asarray(v) for k, v in carry.items()}
        self._t = {}

    @property
    def xhat(self):
        return self._t.get("xhat")

    def step_values(self) -> dict:
        """What the last step computed (h, z, y, eps, e_self, ...), for tests and inspection."""
        return dict(self._t)
