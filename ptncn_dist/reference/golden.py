"""Reader for the golden-run format of ../shared/MODEL.md: a small run's config, initial
weights, inputs, and what every step computed. Used to check any engine against the spec."""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from ..errors import DataError
from ..core.spec import layer_specs
from ..core.model import split_weights
from ..core.optim import OptimConfig


@dataclass
class GoldenRun:
    name: str
    config: dict
    specs: list
    opt: OptimConfig
    init: list[dict]
    x: np.ndarray
    mask: np.ndarray
    steps: list[dict]
    after: list[dict]


def load_golden(path) -> GoldenRun:
    try:
        z = np.load(path, allow_pickle=False)
        cfg = json.loads(str(z["config_json"]))
    except (OSError, KeyError, ValueError) as exc:
        raise DataError(f"{path}: not a golden run (.npz with config_json, init/*, x, mask): {exc}") from None
    n = len(cfg["hidden"])
    specs = layer_specs(cfg["x_dim"], cfg["hidden"], activation=cfg["activation"], output=cfg["output"],
                        alpha=cfg["alpha"], beta=cfg["beta"], gamma=cfg["gamma"],
                        update_radius=cfg["update_radius"], zeta=cfg.get("zeta", 1.0))
    opt = OptimConfig(name=cfg["optimizer"], lr=cfg["lr"], momentum=cfg.get("momentum", 0.0) or 0.0)

    def group(prefix):
        return {k[len(prefix):]: z[k] for k in z.files if k.startswith(prefix)}

    T = z["x"].shape[0]
    steps = [group(f"step{t}/") for t in range(T)]
    after = [split_weights(group(f"after{t}/"), n) for t in range(T)]
    return GoldenRun(name=str(path), config=cfg, specs=specs, opt=opt,
                     init=split_weights(group("init/"), n), x=z["x"], mask=z["mask"],
                     steps=steps, after=after)
