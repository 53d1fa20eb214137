"""On a real local cluster of 3 nodes (three `ray start` processes on 127.0.0.2-4): spread
placement puts every layer on its own node, explicit placement where it is told, and the
result equals the single-process engine. The cluster is stopped by pid even when a test fails."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from helpers import REPO

pytestmark = [pytest.mark.cluster, pytest.mark.ray, pytest.mark.slow]

SETS = ["model.hidden=[24,16,12]", "data.frame=32", "data.batch=4", "data.seq_len=10", 'model.dtype="float64"',
        "train.progress=false", "train.plots=false", "train.eval_batches=1", "train.log_every=10",
        "engine.cpus_per_layer=1"]


def ptncn(*args, env=None):
    out = subprocess.run([sys.executable, "-m", "ptncn_dist.cli", *args], cwd=REPO, capture_output=True, text=True,
                         timeout=600, env={**os.environ, **(env or {})})
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def train_export(tmp_path, name, extra=(), env=None):
    run = tmp_path / name
    sets = [a for s in [*SETS, *extra] for a in ("--set", s)]
    ptncn("train", "--steps", "40", "--run-dir", str(run), *sets, env=env)
    ptncn("export", str(run), "--npz", str(tmp_path / f"{name}.npz"))
    recs = [json.loads(line) for line in open(run / "metrics.jsonl")]
    return dict(np.load(tmp_path / f"{name}.npz")), next((r["placement"] for r in recs if "placement" in r), None)


def test_nodes_are_loopback(cluster):
    nodes = cluster.alive_nodes()
    assert sorted(n["ip"] for n in nodes) == ["127.0.0.2", "127.0.0.3", "127.0.0.4"]


def test_spread_and_explicit_equal_local(cluster, tmp_path):
    # engine.node_ip left at its default (127.0.0.1): a driver joining a local cluster sits on
    # the node it joins at (127.0.0.2), as no node of a cluster can be on 127.0.0.1
    join = [f'engine.address="{cluster.address}"', 'engine.name="ray"']
    local, _ = train_export(tmp_path, "local")
    spread, where = train_export(tmp_path, "spread", [*join, 'engine.placement="spread"'], env=cluster.env())
    assert len({p["node_id"] for p in where}) == 3
    assert {p["ip"] for p in where} == {"127.0.0.2", "127.0.0.3", "127.0.0.4"}
    for k in local:
        np.testing.assert_allclose(spread[k], local[k], atol=1e-9, rtol=0, err_msg=k)
    pinned, where = train_export(tmp_path, "explicit", [*join, 'engine.placement="explicit"',
                                                         'engine.nodes=["ptncn_node_2", "ptncn_node_0", "127.0.0.3"]'],
                                 env=cluster.env())
    assert [p["ip"] for p in sorted(where, key=lambda p: p["layer"])] == ["127.0.0.4", "127.0.0.2", "127.0.0.3"]
    for k in local:
        np.testing.assert_allclose(pinned[k], local[k], atol=1e-9, rtol=0, err_msg=k)


def test_tune_study_runs_its_trials_on_the_cluster(cluster, tmp_path):
    """`ptncn tune --address` joins the cluster: with one CPU per node, three one-CPU trials
    started together land on different nodes, all on loopback."""
    import csv
    from test_tune import TINY
    space = tmp_path / "space.toml"
    space.write_text(TINY.replace("max_concurrent = 2", "max_concurrent = 3")
                     + '\n[[variant]]\nname = "lr_0.03"\nset = { "optim.lr" = 0.03 }\n')
    out = tmp_path / "out"
    ptncn("tune", "--space", str(space), "--out", str(out), "--storage", str(tmp_path / "storage"),
          "--address", cluster.address, "--node-ip", cluster.ip(0), env=cluster.env())
    with open(out / "trials.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    ips = {r["node_ip"] for r in rows}
    assert len(rows) == 3 and all(r["status"] == "ok" for r in rows)
    assert ips <= {"127.0.0.2", "127.0.0.3", "127.0.0.4"} and len(ips) >= 2


def test_stop_leaves_nothing(cluster):
    """Last of the tests on the shared cluster (this module runs after tests/test_chaos.py):
    stopping it leaves none of its processes."""
    pids = dict(cluster.pids)
    assert len(pids) == 3
    cluster.stop()
    for pid in pids.values():
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
