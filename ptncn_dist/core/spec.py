"""What a layer is, before it holds any number: its `LayerSpec` (place in the stack, widths, and
the hyper-parameters it shares with the model config, `LayerHyper`), its weight shapes, how M, V
and U share one stacked array, and its initial weights."""
from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass

import numpy as np

from .activations import check_names
from ..errors import ConfigError

PARAM_NAMES = ("M", "V", "U", "W", "E")
# The most state-correction iterations per step (model.inference_steps): far above the tens that
# iterative inference takes in predictive-coding work. Each iteration costs about a tenth of a K = 1
# step (measured on the default model), so a step at the limit costs about 100 K = 1 steps; the
# exchanges of the Ray engine and its compiled graph grow with K as well.
MAX_INFERENCE_STEPS = 1000


@dataclass(frozen=True)
class LayerHyper:
    """The hyper-parameters every layer takes from the `[model]` keys of the same names.

    Defined once here: ModelConfig and LayerSpec both extend it, so a field added here is a config
    key and reaches every layer. Beyond MODEL.md (defaults keep it exact): `inference_steps` K
    rounds of state correction per step (1 <= K <= MAX_INFERENCE_STEPS = 1000), `lateral_l1`
    the sparsity term added to d, `standardize` the pre-activations, and `row_norm_bound` the
    per-row max-norm of every weight after its update (see docs/variants.md)."""

    activation: str = "tanh"
    """phi, the units of every hidden layer: tanh, relu, lrelu, sign, step, identity or sigmoid.
    sign and step have no useful derivative; the learning rule never needs one."""
    output: str = "sigmoid"
    """out, the output function of layer 1's forecast: sigmoid (frames, BCE), softmax (tokens),
    identity or tanh."""
    alpha: float = 0.001
    """Weight of a layer's own error in its state correction (no alpha term for the top layer)."""
    beta: float = 0.1
    """The state-correction step: `y = phi(h - beta * d)`; 0 turns the correction off."""
    gamma: float = 1.0
    """Error-weight coupling: E's update is `gamma` times W's clipped update, transposed."""
    update_radius: float = 1.0
    """Frobenius-norm clip of every weight update; <= 0 turns the clip off."""
    zeta: float = 1.0
    """Above 0, each layer below the top has the top-down weight U from the layer above; 0 drops U."""
    row_norm_bound: float = 0.0
    """Variant: after each update, rows of M, V, U, W and E longer than this are scaled back to
    it (the authors' `param_radius`); <= 0 is off."""
    inference_steps: int = 1
    """Variant: K, the iterations of the state correction per step (1 to 1000); 1 is MODEL.md.
    K > 1 needs `engine.mode = "exact"`."""
    lateral_l1: float = 0.0
    """Variant: adds `lateral_l1 * sign(h)` to every layer's correction d (the authors' lateral
    neuron penalty); 0 is off."""
    standardize: bool = False
    """Variant: standardize the pre-activations before phi, `h = (h - u) / sqrt(var + 1e-12)` with
    u the mean of the whole (B, d) array and var each row's mean square about u (the authors'
    `utils.standardize`)."""

    def __post_init__(self):
        check_names(self.activation, self.output)
        k = self.inference_steps
        number = isinstance(k, (int, float)) and not isinstance(k, bool)
        if not number or not 1 <= k <= MAX_INFERENCE_STEPS or k != int(k):
            why = (f" (each iteration costs about a tenth of a step: K = {MAX_INFERENCE_STEPS} already makes "
                   f"a step about 100 times slower)" if number and k > MAX_INFERENCE_STEPS else "")
            raise ConfigError(f"model.inference_steps (K, state-correction iterations per step) must be "
                              f"an integer from 1 to {MAX_INFERENCE_STEPS}, not {k!r}{why}")
        if not (math.isfinite(self.lateral_l1) and self.lateral_l1 >= 0):
            raise ConfigError(f"model.lateral_l1 (the lateral sparsity term) must be a finite number >= 0, "
                              f"not {self.lateral_l1!r}")
        if not math.isfinite(self.row_norm_bound):
            raise ConfigError(f"model.row_norm_bound must be finite (<= 0: off), not {self.row_norm_bound!r}")


def layer_hyper(source) -> dict:
    """The LayerHyper fields of `source` (a ModelConfig, a LayerSpec), by name."""
    return {f.name: getattr(source, f.name) for f in dataclasses.fields(LayerHyper)}


@dataclass(frozen=True, kw_only=True)
class LayerSpec(LayerHyper):
    """What layer `index` of `n_layers` needs to know: its place in the stack, its widths, whether
    its input is token ids, and the model's hyper-parameters (LayerHyper)."""

    index: int
    n_layers: int
    d_in: int
    d: int
    d_up: int
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


def check_schedule(specs, mode: str) -> None:
    """The pipelined schedule has one exchange per step, so it runs K = 1 only: a clear error
    for any other K (the exact schedule takes any K >= 1)."""
    k = max((s.inference_steps for s in specs), default=1)
    if mode != "exact" and k > 1:
        raise ConfigError(f"model.inference_steps = {k} needs engine.mode = 'exact': the {mode} schedule "
                          "has one exchange per step and runs K = 1 only")
