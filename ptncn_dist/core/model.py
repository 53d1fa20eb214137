"""A P-TNCN stack from a config: layer specs and initial weights, named as MODEL.md names them."""
from __future__ import annotations

import re

from .backend import get_dtype
from ..errors import ConfigError
from .spec import LayerSpec, init_params, layer_hyper, layer_specs

_NAME = re.compile(r"^([MVUWE])(\d+)$")


def specs_from_config(model_cfg, x_dim: int, sparse_input: bool) -> list[LayerSpec]:
    """One LayerSpec per hidden layer, carrying every LayerHyper field of the model config."""
    return layer_specs(x_dim, model_cfg.hidden, sparse_input=sparse_input, **layer_hyper(model_cfg))


def initial_params(specs, model_cfg, seed: int) -> list[dict]:
    dtype = get_dtype(model_cfg.dtype)
    return [init_params(s, seed, model_cfg.weight_sd, model_cfg.error_weight_sd, dtype) for s in specs]


def split_weights(flat: dict, n_layers: int) -> list[dict]:
    """{'M1': .., 'W2': ..} -> one dict per layer; unknown names are an error."""
    out = [{} for _ in range(n_layers)]
    for key, value in flat.items():
        match = _NAME.match(key)
        if not match or not 1 <= int(match.group(2)) <= n_layers:
            raise ConfigError(f"weight name {key!r} is not one of M,V,U,W,E followed by a layer 1..{n_layers}")
        out[int(match.group(2)) - 1][match.group(1)] = value
    return out
