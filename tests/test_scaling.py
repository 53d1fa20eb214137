"""The scaling study's sweep on a tiny configuration: the single-process rows come first (measured
before Ray starts), every ray row is set against them, and the CSV holds what was printed."""
import csv

import pytest

from ptncn_dist.studies.cost_model import fit_cost_model, validate
from ptncn_dist.studies.scaling import sweep


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
    model = fit_cost_model(rows)
    checks = validate(model, rows)
    assert len(checks) == 2 and all(c["predicted_steps_per_s"] > 0 for c in checks)
