"""The scaling study: the sweep on a tiny configuration (the single-process rows come first,
measured before Ray starts; every ray row is set against them; the CSV holds what was printed),
and the cost model, fitted on rows that follow a known cost law, recovering that law."""
import csv
import os

import numpy as np
import pytest

from ptncn_dist.studies.cost_model import fit_cost_model, predict, validate
from ptncn_dist.studies.scaling import sweep

# the law the synthetic rows follow (the terms fit_cost_model's docstring names)
LAW = {"compute": 0.6, "per_layer": 2e-4, "per_link": 1e-4, "per_exact_link": 3e-4, "crowding": 5e-5, "spread": 1e-4}
CORES = 2


def law_rows(hidden: str, layers: int, t1: float, placement: str = "pack") -> list[dict]:
    """The sweep rows of one model as the sweep writes them: its single-process one-thread row
    (step time t1) and its ray rows with TCP links, their times given by LAW on CORES cores."""
    links = layers - 1
    rows = [{"hidden": hidden, "layers": layers, "batch": 16, "engine": "local_1thread", "placement": "-",
             "steps_per_s": 1 / t1}]
    for engine in ("ray_exact_tcp", "ray_pipelined_tcp"):
        step = (LAW["compute"] * t1 + LAW["per_layer"] * layers + LAW["per_link"] * links
                + LAW["per_exact_link"] * links * ("exact" in engine) + LAW["crowding"] * links ** 2 / min(layers, CORES)
                + LAW["spread"] * (placement == "spread"))
        rows.append({"hidden": hidden, "layers": layers, "batch": 16, "engine": engine, "placement": placement,
                     "steps_per_s": 1.0 / step})
    return rows


def test_cost_model_recovers_a_known_cost_law(monkeypatch):
    """Fitted on rows made by LAW (other engines' rows hold nonsense and are left out), the model
    finds LAW's six terms and predicts held-out models (more layers, other sizes) to 1e-6, also
    with each model size held out of the fit; with 3% noise on the measured rates, its
    predictions of held-out rows stay within 5%."""
    monkeypatch.setattr(os, "cpu_count", lambda: CORES)
    fit_rows = [r for h, L, t1 in (("8", 1, 2e-4), ("8x8", 2, 4e-4), ("64x64x64x64", 4, 1e-3), ("512x512", 2, 1e-2),
                                   ("1024x1024x1024", 3, 6e-2), ("64x64x64x64x64x64x64x64", 8, 2e-3))
                for r in law_rows(h, L, t1)]
    fit_rows += [r for h, L, t1 in (("512x512", 2, 1e-2), ("8x8", 2, 4e-4))
                 for r in law_rows(h, L, t1, "spread") if r["engine"] != "local_1thread"]
    ignored = [{"hidden": "8x8", "layers": 2, "batch": 16, "engine": "ray_exact", "placement": "pack", "steps_per_s": 1e-3}]
    model = fit_cost_model(fit_rows + ignored)
    for k, want in LAW.items():
        assert model["terms"][k] == pytest.approx(want, rel=1e-6), k
    held_out = law_rows("256x256x256", 3, 5e-3) + law_rows("32x32x32x32x32x32", 6, 1e-3)
    model["t1_s"].update({r["hidden"]: 1 / r["steps_per_s"] for r in held_out if r["engine"] == "local_1thread"})
    for r in held_out:
        if r["engine"] != "local_1thread":
            assert predict(model, r) == pytest.approx(r["steps_per_s"], rel=1e-6), r["hidden"]
    checks = validate(model, fit_rows + ignored)
    assert len(checks) == len([r for r in fit_rows if r["engine"] != "local_1thread"])
    assert all(abs(c["error_pct"]) <= 0.1 and abs(c["held_out_error_pct"]) <= 0.1 for c in checks)

    rng = np.random.default_rng(0)
    noisy = [dict(r, steps_per_s=r["steps_per_s"] * (1 + 0.03 * rng.standard_normal())) if r["engine"] != "local_1thread"
             else r for r in fit_rows]
    rough = fit_cost_model(noisy)
    rough["t1_s"].update(model["t1_s"])
    for r in held_out:
        if r["engine"] != "local_1thread":
            assert predict(rough, r) == pytest.approx(r["steps_per_s"], rel=0.05), r["hidden"]


@pytest.mark.ray
@pytest.mark.slow
def test_sweep_rows_and_cost_model(tmp_path):
    engines = ("local_1thread", "ray_exact_tcp")
    rows = sweep([((8, 8), 4, 16), ((8,), 4, 16)], engines, 0.2, 0, str(tmp_path), log=lambda *_: None)
    assert [(r["hidden"], r["engine"]) for r in rows] == [(h, e) for h in ("8x8", "8") for e in engines]
    for r in rows:
        base = next(b for b in rows if b["hidden"] == r["hidden"] and b["engine"] == "local_1thread")
        assert r["speedup_vs_1thread"] == round(r["steps_per_s"] / base["steps_per_s"], 3)
    two_layer_ray = [r for r in rows if r["hidden"] == "8x8" and r["engine"].startswith("ray")]
    assert all(r["bytes_per_step"] > 0 and r["workers"] == 2 for r in two_layer_ray)
    with open(tmp_path / "sweep.csv") as fh:
        assert len(list(csv.DictReader(fh))) == len(rows)
    # the model fitted on the measured rows reads every ray row back (its accuracy on a known law
    # is the test above)
    model = fit_cost_model(rows)
    assert all(np.isfinite(v) and v >= 0 for v in model["terms"].values())
    checks = validate(model, rows)
    assert [c["hidden"] for c in checks] == ["8x8", "8"]
