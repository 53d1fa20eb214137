"""Unit functions: the activations phi, the output functions `out`, and the optional
standardization of pre-activations (`model.standardize`). Each takes the array module `xp`
first and returns a new array; none is ever differentiated."""
from __future__ import annotations

from ..errors import ConfigError

STANDARDIZE_EPS = 1e-12


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


def standardize(xp, h):
    """The authors' `standardize` (ContPTNCN utils.py), formula for formula: the mean u is taken
    over the whole (B, d) array (every row and unit of the batch), the variance of each row
    about that u, and (h - u) / sqrt(var + 1e-12). Note the mean couples the rows of a batch."""
    u = h.mean()
    c = h - u
    var = (c * c).mean(axis=1, keepdims=True)
    return c / xp.sqrt(var + STANDARDIZE_EPS)


def check_names(activation: str, output: str) -> None:
    if activation not in ACTIVATIONS:
        raise ConfigError(f"model.activation must be one of {sorted(ACTIVATIONS)}, not {activation!r}")
    if output not in OUTPUTS:
        raise ConfigError(f"model.output must be one of {sorted(OUTPUTS)}, not {output!r}")
