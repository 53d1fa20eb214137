"""The comparison's learners: which methods run, with their optimizer settings, and how wide each
is: P-TNCN at the scale's widths, the Elman-type baselines, the ESN and the LSTM at the hidden
size whose trained-parameter count is closest to P-TNCN's."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ptncn_dist.baselines import lstm
from ptncn_dist.baselines.config import BaselineSection
from ptncn_dist.baselines.elman import param_shapes
from ptncn_dist.core.spec import layer_specs

if TYPE_CHECKING:
    from .scales import Scale


@dataclass(frozen=True)
class Method:
    """A learner: model.type, how its width is chosen, and its own optimizer settings.

    sizing: 'ptncn' (the scale's widths), 'elman' / 'esn' / 'lstm' (hidden size whose
    trained-parameter count is closest to P-TNCN's), 'tiny' (RTRL: the scale's tiny width, not matched).
    """

    key: str
    label: str
    type: str
    sizing: str
    overrides: tuple = ()


BASELINE_OPTIM = ('baseline.clip_norm=5.0',)
METHODS = (
    Method("ptncn", "P-TNCN (tanh)", "ptncn", "ptncn", ('model.activation="tanh"',)),
    Method("ptncn_sign", "P-TNCN (sign)", "ptncn", "ptncn", ('model.activation="sign"',)),
    Method("bptt", "BPTT", "bptt", "elman", ('optim.name="adam"', "optim.lr=0.01") + BASELINE_OPTIM),
    Method("tbptt", "TBPTT", "tbptt", "elman", ('optim.name="adam"', "optim.lr=0.001") + BASELINE_OPTIM),
    Method("rtrl", "RTRL (tiny)", "rtrl", "tiny", ('optim.name="adam"', "optim.lr=0.01") + BASELINE_OPTIM),
    Method("uoro", "UORO", "uoro", "elman", ('optim.name="adam"', "optim.lr=0.001") + BASELINE_OPTIM),
    Method("esn", "ESN", "esn", "esn"),
    Method("lstm", "LSTM", "lstm", "lstm", ('optim.name="adam"', "optim.lr=0.002") + BASELINE_OPTIM),
)
METHOD_KEYS = tuple(m.key for m in METHODS)
PTNCN_OPTIM = ('optim.name="nag"', "optim.lr=0.075", "optim.momentum=0.95")


def ptncn_params(x_dim: int, hidden) -> int:
    """P-TNCN's trained weights: M, V, U, W, E of every layer (layer.LayerSpec.shapes)."""
    return sum(math.prod(s) for spec in layer_specs(x_dim, list(hidden)) for s in spec.shapes().values())


def elman_params(x_dim: int, hidden: int) -> int:
    """An Elman baseline's trained weights and biases (BPTT, TBPTT, RTRL and UORO share them)."""
    return sum(math.prod(s) for s in param_shapes(x_dim, hidden).values())


def lstm_params(x_dim: int, hidden: int, tokens: bool = False) -> int:
    """The LSTM's trained weights: gates, output layer and (for tokens) the default-width embedding."""
    shapes = lstm.param_shapes(x_dim, hidden, BaselineSection.embed, tokens)
    return sum(math.prod(s) for s in shapes.values())


def esn_params(x_dim: int, hidden: int) -> int:
    """An ESN's trained weights: the readout [h, 1] -> x only (the reservoir is fixed)."""
    return (hidden + 1) * x_dim


def matched_hidden(count, x_dim: int, target: int) -> int:
    """The hidden size h >= 1 whose count(x_dim, h) is closest to `target` (counts grow with h)."""
    lo, hi = 1, 1
    while count(x_dim, hi) < target:
        hi *= 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if count(x_dim, mid) < target else (lo, mid)
    return min((lo, hi), key=lambda h: abs(count(x_dim, h) - target))


def method_width(method: Method, scale: Scale, x_dim: int, text: bool = False, word: bool = False):
    """(config overrides setting the width, width as text) of `method` for inputs of x_dim.

    The ESN's reservoir is capped at scale.esn_max_hidden: with a small vocabulary a matched
    readout would need a reservoir far too large to build (the table then shows fewer params).
    """
    widths = list(scale.text_ptncn_hidden if text else scale.ptncn_hidden)
    if method.sizing == "ptncn":
        return [f"model.hidden={widths}"], "x".join(map(str, widths))
    target = ptncn_params(x_dim, widths)
    uoro_text = (scale.uoro_hidden_word if word else scale.uoro_hidden_char) if text else 0
    if method.sizing == "tiny":
        h = scale.rtrl_hidden_word if word else scale.rtrl_hidden
    elif method.key == "uoro" and uoro_text:
        h = uoro_text
    elif method.sizing == "esn":
        h = matched_hidden(esn_params, x_dim, target)
        if h > scale.esn_max_hidden:
            return [f"baseline.hidden={scale.esn_max_hidden}"], f"{scale.esn_max_hidden} (cap)"
    elif method.sizing == "lstm":
        h = matched_hidden(lambda x, n: lstm_params(x, n, text), x_dim, target)
    else:
        h = matched_hidden(elman_params, x_dim, target)
    return [f"baseline.hidden={h}"], str(h)

