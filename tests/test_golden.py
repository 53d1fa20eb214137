"""Every golden run (../shared/golden or $PTNCN_GOLDEN_DIR) reproduced step by step in float64."""
import numpy as np
import pytest

from helpers import GOLDEN, golden_files
from ptncn_dist.engines.local import LocalEngine
from ptncn_dist.engines.factory import engine_config
from ptncn_dist.reference.golden import load_golden

TOL = 1e-9


def step_arrays(engine) -> dict:
    """The arrays a golden file records for one step, from the engine's layers."""
    first = engine.layers[0].step_values()
    out = {"xhat": first["xhat"], "e0": first["e_below"]}
    for l, layer in enumerate(engine.layers, start=1):
        v = layer.step_values()
        out.update({f"z{l}": v["z"], f"y{l}": v["y"], f"eps{l}": v["eps"]})
        if v["e_self"] is not None:
            out[f"e{l}"] = v["e_self"]
    return out


def test_golden_dir_is_not_empty():
    if not GOLDEN.is_dir():
        pytest.skip(f"golden directory {GOLDEN} is not present (set PTNCN_GOLDEN_DIR to the directory of *.npz files)")
    assert golden_files(), f"no *.npz golden files in {GOLDEN}"


NO_GOLDEN = pytest.param(None, id="none", marks=pytest.mark.skip(
    reason=f"no *.npz golden files in {GOLDEN} (set PTNCN_GOLDEN_DIR to the directory that holds them)"))


@pytest.mark.parametrize("path", golden_files() or [NO_GOLDEN], ids=lambda p: getattr(p, "stem", str(p)))
def test_golden_run(path):
    g = load_golden(path)
    engine = LocalEngine(engine_config(g.opt), g.specs, g.init)
    T, B = g.mask.shape
    for layer in engine.layers:
        layer.reset(B)
    for t in range(T):
        engine.step(g.x[t].astype(np.float64), g.mask[t][:, None].astype(np.float64), t >= g.config["t_prime"])
        got = step_arrays(engine)
        assert set(g.steps[t]) <= set(got), f"step {t}: golden has {sorted(set(g.steps[t]) - set(got))} we do not form"
        for name, want in g.steps[t].items():
            np.testing.assert_allclose(got[name], want, rtol=0, atol=TOL, err_msg=f"{path.name} step{t}/{name}")
        for l, layer in enumerate(engine.layers, start=1):
            assert set(layer.p) == set(g.after[t][l - 1]), f"layer {l} weights differ in names"
            for name, want in g.after[t][l - 1].items():
                np.testing.assert_allclose(layer.p[name], want, rtol=0, atol=TOL,
                                           err_msg=f"{path.name} after{t}/{name}{l}")
