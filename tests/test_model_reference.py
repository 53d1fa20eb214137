"""The plain reading of MODEL.md (`model_reference`) against the golden runs, and the fast path
(`LocalEngine`) against it on random configurations: every forecast and the final weights."""
import dataclasses

import numpy as np
import pytest

from helpers import golden_files
from ptncn_dist.engines.local import LocalEngine
from ptncn_dist.engines.factory import engine_config
from ptncn_dist.reference.golden import load_golden
from ptncn_dist.core.spec import layer_specs
from ptncn_dist.reference.model import Hyper, run
from ptncn_dist.core.optim import OPTIMIZERS, OptimConfig

GOLDEN_TOL = 1e-9  # as tests/test_golden.py
REL = 1e-10
N_CASES = 40


@pytest.mark.parametrize("path", golden_files(), ids=lambda p: p.stem)
def test_reference_reproduces_golden_run(path):
    g = load_golden(path)
    records, _ = run(Hyper.from_config(g.config), g.init, g.x, g.mask)
    for t, rec in enumerate(records):
        assert set(g.steps[t]) <= set(rec), f"step {t}: golden has {sorted(set(g.steps[t]) - set(rec))}"
        for name, want in g.steps[t].items():
            np.testing.assert_allclose(rec[name], want, rtol=0, atol=GOLDEN_TOL, err_msg=f"step{t}/{name}")
        for l, (got, want) in enumerate(zip(rec["after"], g.after[t]), start=1):
            assert set(got) == set(want), f"layer {l} weights differ in names"
            for name in want:
                np.testing.assert_allclose(got[name], want[name], rtol=0, atol=GOLDEN_TOL,
                                           err_msg=f"after{t}/{name}{l}")


def random_case(i: int) -> dict:
    """Configuration i: its optimizer, clipping and input kind cycle so that every combination
    occurs; widths, batch, length, mask and the other hyper-parameters are drawn."""
    rng = np.random.default_rng([2024, i])
    opt = OPTIMIZERS[i % len(OPTIMIZERS)]
    tokens = (i // len(OPTIMIZERS)) % 2 == 1
    clipping = (i // (2 * len(OPTIMIZERS))) % 2 == 0
    L, x_dim = int(rng.integers(1, 5)), int(rng.integers(1, 13))
    hidden = [int(d) for d in rng.integers(1, 13, L)]
    t_prime, B = int(rng.integers(0, 3)), int(rng.integers(1, 6))
    T = int(rng.integers(t_prime + 2, 10))
    hp = Hyper(activation=str(rng.choice(["tanh", "sign", "step", "relu", "sigmoid", "lrelu", "identity"])),
               output="softmax" if tokens else str(rng.choice(["sigmoid", "identity", "tanh", "softmax"])),
               alpha=float(rng.uniform(0, 0.2)), beta=float(rng.uniform(0.01, 0.5)),
               gamma=float(rng.uniform(0.2, 2.0)),
               update_radius=float(rng.uniform(0.02, 0.5)) if clipping else float(rng.choice([0.0, -1.0])),
               t_prime=t_prime, zeta=float(rng.choice([0.0, 1.0])), optimizer=opt,
               lr=float(rng.uniform(0.001, 0.03) if opt == "adam" else rng.uniform(0.01, 0.3)),
               momentum=float(rng.uniform(0.0, 0.99)))
    shapes = layer_specs(x_dim, hidden, zeta=hp.zeta)
    weights = [{k: rng.normal(0, 0.4, s) for k, s in spec.shapes().items()} for spec in shapes]
    x = rng.integers(0, x_dim, (T, B)) if tokens else rng.random((T, B, x_dim))
    mask = (rng.random((T, B)) > 0.3).astype(np.float64)
    return {"x_dim": x_dim, "hidden": hidden, "tokens": tokens, "hp": hp, "weights": weights, "x": x, "mask": mask}


def fast_run(case: dict):
    """The fast path: a LocalEngine over the same weights, one run_segment. (forecasts, weights)."""
    hp = case["hp"]
    specs = layer_specs(case["x_dim"], case["hidden"], sparse_input=case["tokens"], activation=hp.activation,
                        output=hp.output, alpha=hp.alpha, beta=hp.beta, gamma=hp.gamma,
                        update_radius=hp.update_radius, zeta=hp.zeta)
    opt = OptimConfig(hp.optimizer, hp.lr, hp.momentum, hp.beta1, hp.beta2, hp.eps)
    weights = [{k: v.copy() for k, v in w.items()} for w in case["weights"]]  # the engine updates its arrays in place
    engine = LocalEngine(engine_config(opt), specs, weights)
    T = case["mask"].shape[0]
    _, xhats = engine.run_segment(case["x"], case["mask"], 0, T, learn=True, t_prime=hp.t_prime, keep_xhat=True)
    return xhats, [st["params"] for st in engine.layer_states()]


def mismatches(case: dict, hp: Hyper) -> list[str]:
    """Where the reference under `hp` and the fast path differ by more than REL relative to the
    array's scale (each forecast, each final weight)."""
    records, final = run(hp, case["weights"], case["x"], case["mask"])
    xhats, weights = fast_run(case)
    pairs = [(f"xhat[{t}]", a, r["xhat"]) for t, (a, r) in enumerate(zip(xhats, records))]
    pairs += [(f"{k}{l}", w[k], ref[k]) for l, (w, ref) in enumerate(zip(weights, final.weights), start=1)
              for k in ref]
    assert len(xhats) == len(records) and all(set(w) == set(r) for w, r in zip(weights, final.weights))
    return [f"{name}: max diff {np.abs(a - b).max():.3g}" for name, a, b in pairs
            if not np.abs(a - b).max() <= REL * max(1.0, np.abs(b).max())]


@pytest.mark.parametrize("i", range(N_CASES))
def test_fast_path_equals_reference(i):
    case = random_case(i)
    bad = mismatches(case, case["hp"])
    assert not bad, f"{case['hp']} hidden={case['hidden']} tokens={case['tokens']}: {bad}"


def test_cases_cover_every_optimizer_input_and_clipping():
    cases = [random_case(i) for i in range(N_CASES)]
    seen = {(c["hp"].optimizer, c["tokens"], c["hp"].update_radius > 0) for c in cases}
    assert len(seen) == 4 * 2 * 2
    assert {len(c["hidden"]) for c in cases} == {1, 2, 3, 4}
    assert all(any(c["hp"].zeta == z for c in cases) for z in (0.0, 1.0))
    assert any((c["mask"] == 0).any() for c in cases)


@pytest.mark.parametrize("field, value", [("beta", 0.101), ("alpha", 0.012), ("gamma", 1.01), ("lr", 0.0505),
                                          ("momentum", 0.91), ("update_radius", 0.051), ("t_prime", 2)])
def test_a_perturbed_reference_disagrees(field, value):
    """The comparison can fail: one hyper-parameter of the reference moved a little is seen."""
    rng = np.random.default_rng(7)
    hp = Hyper(activation="tanh", output="sigmoid", alpha=0.01, beta=0.1, gamma=1.0, update_radius=0.05,
               t_prime=1, optimizer="nag", lr=0.05, momentum=0.9)
    specs = layer_specs(6, [5, 4], zeta=hp.zeta)
    case = {"x_dim": 6, "hidden": [5, 4], "tokens": False, "hp": hp,
            "weights": [{k: rng.normal(0, 0.4, s) for k, s in spec.shapes().items()} for spec in specs],
            "x": rng.random((5, 3, 6)), "mask": np.ones((5, 3))}
    assert not mismatches(case, hp)
    assert mismatches(case, dataclasses.replace(hp, **{field: value}))
