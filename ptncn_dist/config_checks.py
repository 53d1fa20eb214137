"""Checks on the numbers of a config, beyond the types config.py already enforces.

- `check_numbers(section, obj)`: every float is finite and every size or float lies in the range
  where it makes sense; a ConfigError names the key. Run when a section (or the whole Config) is
  built, so before anything is allocated.
- `check_memory(cfg, x_dim, kind)`: an estimate of the memory a run needs (weights and optimizer
  slots per layer from the layer shapes, the data batch arrays of the longest sequence, and what a
  baseline holds while it learns one: BPTT's activations, RTRL's sensitivities, ...) against the
  machine's memory.
  Run when a run starts (the Trainer, before the engine allocates), because it needs x_dim from
  the data: frame * frame for videos, the vocabulary for text. It first runs `check_sequences`.
- `check_sequences(cfg)`: model.t_prime leaves some step of the data's sequences to score (the
  sequence lengths are known only once the data is open).
"""
from __future__ import annotations

import dataclasses
import math
import os

from .errors import ConfigError

GIB = 1 << 30
# what a baseline holds while it learns a batch, as `work_bytes` counts it (for the error message)
WORK = {"bptt": "the predictions of the sequence and its activations",
        "tbptt": "the predictions of the sequence and a window's activations",
        "lstm": "the predictions of the sequence and a window's saved gates",
        "esn": "the predictions and reservoir states of the sequence",
        "rtrl": "its sensitivities, batch x hidden x recurrent weights",
        "uoro": "the predictions of the sequence and a rank-one estimate per batch row"}

# (section, key) -> (lower bound, strict, upper bound or None, strict): what the value must satisfy.
# A float key not listed here must only be finite.
_RANGES = {
    "model": {"alpha": (0, False), "beta": (0, False), "gamma": (0, False), "update_radius": (0, False),
              "zeta": (0, False), "weight_sd": (0, False), "error_weight_sd": (0, False),
              "lateral_l1": (0, False)},
    "optim": {"lr": (0, True), "momentum": (0, False, 1, True), "beta1": (0, False, 1, True),
              "beta2": (0, False, 1, True), "eps": (0, True)},
    "train": {"seed": (0, False), "checkpoint_minutes": (0, False), "max_minutes": (0, False),
              "eval_every_minutes": (0, False)},
    "engine": {"cpus_per_layer": (0, False), "gpus_per_layer": (0, False), "blas_threads": (0, False),
               "placement_timeout_s": (0, True), "segment_timeout_s": (0, True), "trace_steps": (0, False)},
}


def _describe(rule) -> str:
    low, strict = rule[0], rule[1]
    text = f"{'>' if strict else '>='} {low}"
    if len(rule) > 2:
        text += f" and {'<' if rule[3] else '<='} {rule[2]}"
    return text


def _in_range(value, rule) -> bool:
    low, strict = rule[0], rule[1]
    if value < low or (strict and value == low):
        return False
    if len(rule) > 2:
        high, hstrict = rule[2], rule[3]
        if value > high or (hstrict and value == high):
            return False
    return True


def check_numbers(section: str, obj) -> None:
    """ConfigError naming `section.key` for a non-finite float or a value out of its range."""
    ranges = _RANGES.get(section, {})
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        key = f"{section}.{f.name}"
        rule = ranges.get(f.name)
        if isinstance(value, float) and not math.isfinite(value):
            need = f"a finite number {_describe(rule)}" if rule else "a finite number"
            raise ConfigError(f"{key} must be {need}, not {value!r}")
        if rule and not _in_range(value, rule):
            raise ConfigError(f"{key} must be {_describe(rule)}, not {value!r}")


# -- memory -----------------------------------------------------------------------------------------
def machine_memory() -> int:
    """Physical memory of this machine in bytes (psutil when installed, else sysconf); 0 if unknown."""
    try:
        import psutil
        return int(psutil.virtual_memory().total)
    except ImportError:
        pass
    try:
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 0


def _slots(optim_name: str) -> int:
    """Weight-sized optimizer arrays per weight (see optim.init_slots)."""
    return {"sgd": 0, "momentum": 1, "nag": 1}.get(optim_name, 2)


def _item(cfg) -> int:
    return 8 if cfg.model.dtype == "float64" else 4


def _baseline_shapes(cfg, x_dim: int, kind: str) -> dict:
    """The trained arrays of a baseline (model.type other than 'ptncn'), from its own module."""
    from .baselines import elman, lstm
    b = cfg.baseline
    if cfg.model.type == "lstm":
        return lstm.param_shapes(int(x_dim), int(b.hidden), int(b.embed), kind == "tokens")
    return elman.param_shapes(int(x_dim), int(b.hidden))


def layer_bytes(cfg, x_dim: int, kind: str = "frames") -> list[int]:
    """Bytes of weights plus optimizer slots, per layer, from the layer shapes (layer_spec.shapes);
    a baseline is one layer, its shapes from its own module (the ESN has no optimizer slots but
    for a token readout)."""
    item = _item(cfg)
    per_weight = 1 + _slots(cfg.optim.name)
    if cfg.model.type != "ptncn":
        n = sum(math.prod(shape) for shape in _baseline_shapes(cfg, x_dim, kind).values())
        if cfg.model.type == "esn" and kind != "tokens":
            per_weight = 1
        return [n * per_weight * item]
    dims = [int(x_dim)] + [int(h) for h in cfg.model.hidden]
    out = []
    for l in range(1, len(dims)):
        d_in, d = dims[l - 1], dims[l]
        d_up = dims[l + 1] if l + 1 < len(dims) else 0
        n = 3 * d_in * d + d * d  # M, W, E and V
        if d_up and cfg.model.zeta > 0:
            n += d_up * d  # U
        out.append(n * per_weight * item)
    return out


def data_bytes(cfg, x_dim: int, kind: str, steps: int | None = None) -> int:
    """Bytes of one train and one test batch of `steps` steps (data.seq_len when None):
    (steps, batch, frame*frame) float32 frames, or (steps, batch) int64 token ids."""
    batches = cfg.data.batch + cfg.data.eval_batch
    steps = int(cfg.data.seq_len if steps is None else steps)
    if kind == "tokens":
        return steps * batches * 8
    return steps * batches * int(x_dim) * 4


def work_bytes(cfg, x_dim: int, kind: str, steps: int) -> int:
    """Bytes a baseline holds while it learns one batch of `steps` steps, beyond its weights; 0 for
    P-TNCN, which unrolls nothing and keeps one step's states. Every baseline returns its
    predictions for the whole sequence and scores them (two (T, B, D) arrays); on top of that
    BPTT keeps a window's states and deltas, the LSTM autograd's saved gates, the ESN the states
    and (tokens) one-hot targets of the sequence, RTRL its sensitivities dh/dtheta per batch row
    (B * H * P, old and new) and UORO its per-row theta~ and one step's increment (2 * B * P),
    where P counts the recurrent parameters."""
    if cfg.model.type == "ptncn":
        return 0
    b, m = cfg.baseline, cfg.model.type
    batch, h, d, t = int(max(cfg.data.batch, cfg.data.eval_batch)), int(b.hidden), int(x_dim), int(steps)
    floats = 2 * t * batch * d
    window = t if m == "bptt" or int(b.truncation) <= 0 else min(t, int(b.truncation))
    recurrent = d * h + h * h + h
    if m in ("bptt", "tbptt"):
        floats += 3 * window * batch * h
    elif m == "lstm":
        floats += 12 * window * batch * h
    elif m == "esn":
        floats += t * batch * (h + 1) + (t * batch * d if kind == "tokens" else 0)
    elif m == "rtrl":
        floats += 2 * batch * h * recurrent
    elif m == "uoro":
        floats += 2 * batch * recurrent
    return floats * _item(cfg)


def _input_share(cfg, x_dim: int, weights: int) -> float:
    """The fraction of `weights` bytes in the bottom layer's input-side weights (M, W, E)."""
    if cfg.model.type != "ptncn" or weights <= 0:
        return 0.0
    item = _item(cfg)
    return 3 * int(x_dim) * int(cfg.model.hidden[0]) * (1 + _slots(cfg.optim.name)) * item / weights


def _gib(n: float) -> str:
    return f"{n / GIB:,.1f} GiB" if n >= GIB / 10 else f"{n / GIB:.3f} GiB"


def check_sequences(cfg) -> int:
    """ConfigError when model.t_prime is at or past the end of every sequence of the data (the
    run would train and evaluate on nothing), see `data.checks.check_scored`; or when the model's
    output cannot forecast a user's data (`data.checks.check_output`: softmax for token ids, values
    within the range of sigmoid or tanh). Else the longest sequence a batch can hold."""
    from .data.checks import check_output, check_scored
    longest = check_scored(cfg.data, cfg.model.t_prime)
    check_output(cfg.data, cfg.model.output)
    return longest


def check_memory(cfg, x_dim: int, kind: str, available: int | None = None,
                 steps: int | None = None) -> dict:
    """ConfigError when the run cannot fit in this machine's memory; else the estimate (bytes).
    Runs `check_sequences` first: both are the checks a run makes once its data is open.

    `steps` is the longest sequence a batch can hold (None: the one `check_sequences` found in
    the open data): the data batches and a baseline's working arrays
    (`work_bytes`) grow with it. With a Ray engine on a cluster (engine.address set) only the
    largest layer must fit, since each layer may have a node of its own; everything else runs
    here and must fit as a whole."""
    from .data.sources import FILE_SEQUENCES
    longest = check_sequences(cfg)
    steps = longest if steps is None else steps
    available = machine_memory() if available is None else available
    layers = layer_bytes(cfg, x_dim, kind)
    weights, data = sum(layers), data_bytes(cfg, x_dim, kind, steps)
    work = work_bytes(cfg, x_dim, kind, steps)
    estimate = {"weights": weights, "data": data, "work": work, "layers": layers, "steps": int(steps),
                "available": available}
    if available <= 0:
        return estimate
    remote = cfg.engine.name == "ray" and bool(cfg.engine.address)
    model_need = max(layers) if remote else weights
    what = "its largest layer's weights and optimizer slots" if remote else "weights and optimizer slots"
    have = f"this machine has {_gib(available)}"
    model_key = (f"model.hidden={list(cfg.model.hidden)}" if cfg.model.type == "ptncn"
                 else f"baseline.hidden={cfg.baseline.hidden}")
    if kind != "tokens" and _input_share(cfg, x_dim, weights) > 0.5:
        f = cfg.data.frame  # the frame's pixels drive the bottom layer's size
        model_key = f"data.frame={f} ({f}x{f} = {f * f:,} inputs) with {model_key}"
    long = f"sequences of up to {int(steps):,} steps"
    if kind == "tokens":
        data_key = f"data.batch={cfg.data.batch} (data.max_len={cfg.data.max_len}, {long})"
    elif cfg.data.source in FILE_SEQUENCES:
        data_key = (f"data.batch={cfg.data.batch}, data.eval_batch={cfg.data.eval_batch} "
                    f"(data.max_len={cfg.data.max_len}, {long} of {x_dim:,} values)")
    else:
        data_key = (f"data.seq_len={cfg.data.seq_len}, data.batch={cfg.data.batch}, "
                    f"data.eval_batch={cfg.data.eval_batch} and data.frame={cfg.data.frame}")
    if model_need > available:
        raise ConfigError(f"{model_key} needs about {_gib(model_need)} for {what}; {have} "
                          f"(input width {x_dim:,}, optim.name={cfg.optim.name!r})")
    if data > available:
        raise ConfigError(f"{data_key} needs about {_gib(data)} for the data batch arrays; {have}")
    if model_need + data > available:
        raise ConfigError(f"{model_key} with {data_key} needs about {_gib(model_need + data)} "
                          f"({_gib(model_need)} for {what}, {_gib(data)} for the data batches); {have}")
    if model_need + data + work > available:
        raise ConfigError(f"model.type={cfg.model.type!r} with {model_key} and {data_key} needs about "
                          f"{_gib(model_need + data + work)}: {_gib(work)} for {WORK[cfg.model.type]} "
                          f"while it learns a batch, {_gib(model_need + data)} for weights and data; {have}")
    return estimate
