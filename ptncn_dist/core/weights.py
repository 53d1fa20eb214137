"""One layer's weights in the layout its step runs on, with their optimizer slots (`LayerWeights`).

Inside: M, V and U (`layer_spec.stacked_names`) share their column count, so they live as row
blocks of one column-major array, the stack. h is then one GEMM over the carried rows, and their
updates one GEMM into the stack and its one set of slots. W, E (and M for token inputs) are
separate row-major arrays, each with its own slots. Momentum and nag slots keep the velocity as
`v_scale * v` (see `optim.init_slots`).

Outside, none of that shows: `state` gives plain weights by name and plain optimizer slots by
weight name (the true velocity, no scale, no scratch), and `load_state` takes the same back.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import optim
from .backend import to_numpy
from ..errors import CheckpointError, ConfigError
from .spec import LayerSpec, stacked_blocks


class StateError(ConfigError, CheckpointError):
    """A saved layer state (weights, optimizer slots, carried state) that does not fit the layer:
    a wrong name, shape, type or value. `layer` is the layer's index; a checkpoint holding one is
    damaged (an engine's `load_shards` names its shard file)."""

    def __init__(self, layer: int, message: str):
        super().__init__(f"layer {layer}: {message}")
        self.layer = layer


def _array(value, kinds: str) -> bool:
    """Whether `value` is an array (NumPy or device) whose dtype kind is one of `kinds`."""
    dtype = getattr(value, "dtype", None)
    return hasattr(value, "shape") and dtype is not None and getattr(dtype, "kind", None) in kinds


def _describe(value) -> str:
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return f"an array of dtype {value.dtype} and shape {tuple(value.shape)}"
    return f"{type(value).__name__} {repr(value)[:40]}"


def check_carry(spec: LayerSpec, carry):
    """The carried state of a saved layer state, checked against `spec`: None, or {"inp", "y",
    "y_up"} with y (B, d) floats, inp (B, d_in) floats or (B,) token ids in -1..d_in-1 for a
    token-input layer 1, and y_up (B, d_up) floats, or None for the top layer. StateError names
    the field and what is wrong."""
    if carry is None:
        return None
    l = spec.index
    if not isinstance(carry, dict) or set(carry) != {"inp", "y", "y_up"}:
        got = sorted(carry) if isinstance(carry, dict) else _describe(carry)
        raise StateError(l, f"saved carried state must be None or hold inp, y and y_up, not {got}")
    y = carry["y"]
    if not _array(y, "f") or len(y.shape) != 2 or y.shape[0] < 1:
        raise StateError(l, f"saved carried state y must be a (batch, {spec.d}) float array, not {_describe(y)}")
    b = int(y.shape[0])
    want = {"y": (b, spec.d), "y_up": (b, spec.d_up) if spec.d_up else None,
            "inp": (b,) if spec.sparse_input else (b, spec.d_in)}
    for key, shape in want.items():
        v = carry[key]
        if shape is None:
            if v is not None:
                raise StateError(l, f"saved carried state {key} must be None (the top layer), not {_describe(v)}")
            continue
        ids = key == "inp" and spec.sparse_input
        if not _array(v, "iu" if ids else "f") or tuple(v.shape) != shape:
            what = "token ids" if ids else "floats"
            raise StateError(l, f"saved carried state {key} must be {shape} {what} (batch {b}), not {_describe(v)}")
        if ids and v.size and (int(v.min()) < -1 or int(v.max()) >= spec.d_in):
            raise StateError(l, f"saved carried state inp holds token ids outside -1..{spec.d_in - 1}")
    return carry


@dataclass(frozen=True)
class _Checked:
    """A state that passed `LayerWeights.check`: weights and array slots by name, and the
    scalar slots (Adam's step count t) by weight name."""

    params: dict
    arrays: dict
    scalars: dict


class LayerWeights:
    """The weights of one layer and their optimizer slots.

    The layer math reads `stack` (M, V, U as row blocks), `p` (every weight by name; for the
    stacked ones a view into the stack), `slots` (the slots of the weights outside the stack)
    and `stack_slots`, and updates them in place through `optim`.
    """

    def __init__(self, spec: LayerSpec, params: dict, opt_cfg: optim.OptimConfig, xp, dtype):
        self.spec, self.opt_cfg, self.xp, self.dtype = spec, opt_cfg, xp, dtype
        shapes = spec.shapes()
        for name, shape in shapes.items():
            got = tuple(np.shape(params[name])) if name in params else None
            if got != shape:
                raise ConfigError(f"layer {spec.index}: weight {name} must have shape {shape}, got {got}")
        self.rows = dict(stacked_blocks(spec))
        height = sum(shapes[name][0] for name in self.rows)
        self.stack = xp.empty((height, spec.d), dtype, order="F")
        self.p = {}
        for name in shapes:
            given = xp.asarray(params[name], dtype=dtype)
            if name in self.rows:
                self.stack[self.rows[name]] = given
                self.p[name] = self.stack[self.rows[name]]
            else:
                self.p[name] = xp.array(given, order="C")
        self.slots = {k: optim.init_slots(opt_cfg, v, xp) for k, v in self.p.items() if k not in self.rows}
        self.stack_slots = optim.init_slots(opt_cfg, self.stack, xp)

    def slots_of(self, name: str) -> dict:
        """The slot dict an update of weight `name` goes through (the stack's for M, V, U)."""
        return self.stack_slots if name in self.rows else self.slots[name]

    def _slot_array(self, name: str, slot: str):
        """Slot `slot` of weight `name` as an array shaped like the weight (a view)."""
        arr = self.slots_of(name)[slot]
        return arr[self.rows[name]] if name in self.rows else arr

    def state(self) -> dict:
        """{"params": {name: weight}, "slots": {name: {slot: value}}} as host (NumPy) copies.

        The slots are plain: momentum and nag give {"v": the true velocity}, adam {"m", "v",
        "t"}, sgd {}. The velocity's scale is first multiplied into v in place (the pass
        `optim` itself makes every few hundred steps), so the copy is exactly the slot the next
        update reads, and `load_state(state())` continues bit for bit."""
        for sl in [self.stack_slots, *self.slots.values()]:
            optim.fold_scale(sl)
        host = lambda v: np.array(to_numpy(v), copy=True)
        keys = optim.slot_names(self.opt_cfg)
        return {"params": {k: host(v) for k, v in self.p.items()},
                "slots": {k: {n: host(self._slot_array(k, n)) if n in optim.ARRAY_SLOTS else self.slots_of(k)[n]
                              for n in keys} for k in self.p}}

    def load_state(self, state: dict) -> None:
        """Restore what `state` returned, in place; other keys of `state` are ignored. Every
        name, shape and type is checked before anything is written (StateError, a ConfigError
        and a CheckpointError, names the layer, the weight and the slot)."""
        checked = self.check(state)
        xp = self.xp
        for name, value in checked.params.items():
            self.p[name][...] = xp.asarray(value)
        for (name, slot), value in checked.arrays.items():
            self._slot_array(name, slot)[...] = xp.asarray(value)
        for name, scalars in checked.scalars.items():
            self.slots_of(name).update(scalars)
        for sl in [self.stack_slots, *self.slots.values()]:
            if "v_scale" in sl:
                sl["v_scale"] = 1.0

    def set_params(self, params: dict) -> None:
        """New weights (names and shapes checked), optimizer slots back to zero."""
        zero = {k: {n: 0 if n not in optim.ARRAY_SLOTS else np.zeros(v.shape, np.dtype(self.dtype))
                    for n in optim.slot_names(self.opt_cfg)} for k, v in self.p.items()}
        self.load_state({"params": params, "slots": zero})

    def check(self, state: dict) -> _Checked:
        """Validate a `state`-shaped dict against this layer without writing anything; StateError
        names the layer, the weight and the slot."""
        l = self.spec.index
        if not isinstance(state, dict):
            raise StateError(l, f"a state must be a dict of 'params' and 'slots', not {_describe(state)}")
        params, slots = state.get("params"), state.get("slots")
        if not isinstance(params, dict) or not isinstance(slots, dict):
            raise StateError(l, "a state needs 'params' and 'slots' dicts")
        for what, got in (("weights", params), ("optimizer slots", slots)):
            if set(got) != set(self.p):
                raise StateError(l, f"saved {what} for {sorted(map(str, got))}, the model has {sorted(self.p)}")
        for name, value in params.items():
            shape = tuple(self.p[name].shape)
            if tuple(np.shape(value)) != shape:
                raise StateError(l, f"saved weight {name} has shape {tuple(np.shape(value))}, the model needs {shape}")
            if not _array(value, "f"):
                raise StateError(l, f"saved weight {name} must be a float array, not {_describe(value)}")
        keys = set(optim.slot_names(self.opt_cfg))
        arrays, scalars = {}, {}
        for name, sl in slots.items():
            if not isinstance(sl, dict):
                raise StateError(l, f"saved optimizer slots of weight {name} must be a dict, not {_describe(sl)}")
            given = {n: v for n, v in sl.items() if not str(n).startswith("_")}
            if set(given) != keys:
                raise StateError(l, f"saved optimizer slots {sorted(map(str, given))} for weight {name}, "
                                    f"{self.opt_cfg.name} keeps {sorted(keys)}")
            for n, v in given.items():
                if n in optim.ARRAY_SLOTS:
                    if tuple(np.shape(v)) != tuple(self.p[name].shape):
                        raise StateError(l, f"saved slot {n} of weight {name} has shape {tuple(np.shape(v))}, "
                                            f"the weight has {tuple(self.p[name].shape)}")
                    if not _array(v, "f"):
                        raise StateError(l, f"saved slot {n} of weight {name} must be a float array, "
                                            f"not {_describe(v)}")
                    arrays[name, n] = v
                else:
                    scalars.setdefault(name, {})[n] = _step_count(l, name, n, v)
        shared = [scalars.get(name) for name in self.rows]
        if any(v != shared[0] for v in shared):
            raise StateError(l, f"the stacked weights {sorted(self.rows)} share one optimizer "
                                f"step count, the saved slots differ: {[scalars.get(n) for n in self.rows]}")
        return _Checked(params, arrays, scalars)


def _step_count(layer: int, name: str, slot: str, value) -> int:
    """A saved optimizer step count (Adam's t): an integer >= 0, else StateError."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 0:
        raise StateError(layer, f"saved optimizer step count {slot} of weight {name} must be an integer "
                                f">= 0, not {repr(value)[:40]}")
    return int(value)
