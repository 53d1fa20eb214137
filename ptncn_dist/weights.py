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
from .errors import ConfigError
from .layer_spec import LayerSpec, stacked_blocks


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
        name and shape is checked before anything is written (ConfigError names the layer, the
        weight and the slot)."""
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
        """Validate a `state`-shaped dict against this layer without writing anything."""
        where = f"layer {self.spec.index}"
        params, slots = state.get("params"), state.get("slots")
        if not isinstance(params, dict) or not isinstance(slots, dict):
            raise ConfigError(f"{where}: a state needs 'params' and 'slots' dicts")
        for what, got in (("weights", params), ("optimizer slots", slots)):
            if set(got) != set(self.p):
                raise ConfigError(f"{where}: saved {what} for {sorted(got)}, the model has {sorted(self.p)}")
        for name, value in params.items():
            shape = tuple(self.p[name].shape)
            if tuple(np.shape(value)) != shape:
                raise ConfigError(f"{where}: saved weight {name} has shape {tuple(np.shape(value))}, "
                                  f"the model needs {shape}")
        keys = set(optim.slot_names(self.opt_cfg))
        arrays, scalars = {}, {}
        for name, sl in slots.items():
            given = {n: v for n, v in sl.items() if not n.startswith("_")}
            if set(given) != keys:
                raise ConfigError(f"{where}: saved optimizer slots {sorted(given)} for weight {name}, "
                                  f"{self.opt_cfg.name} keeps {sorted(keys)}")
            for n, v in given.items():
                if n in optim.ARRAY_SLOTS:
                    if tuple(np.shape(v)) != tuple(self.p[name].shape):
                        raise ConfigError(f"{where}: saved slot {n} of weight {name} has shape "
                                          f"{tuple(np.shape(v))}, the weight has {tuple(self.p[name].shape)}")
                    arrays[name, n] = v
                else:
                    scalars.setdefault(name, {})[n] = int(v)
        shared = [scalars.get(name) for name in self.rows]
        if any(v != shared[0] for v in shared):
            raise ConfigError(f"{where}: the stacked weights {sorted(self.rows)} share one optimizer "
                              f"step count, the saved slots differ: {[scalars.get(n) for n in self.rows]}")
        return _Checked(params, arrays, scalars)
