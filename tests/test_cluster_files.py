"""Every `ray up` launch file in cluster/ validates against the autoscaler schema that ships inside
the installed ray package (ray/autoscaler/ray-schema.json), so `ray up` accepts it, and holds the
commands a P-TNCN cluster needs; cluster/local_cluster.sh runs its subcommands."""
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

jsonschema = pytest.importorskip("jsonschema")
yaml = pytest.importorskip("yaml")

CLUSTER = Path(__file__).resolve().parent.parent / "cluster"
LAUNCH_FILES = sorted(CLUSTER.glob("*.yaml"))


def ray_schema() -> dict:
    spec = importlib.util.find_spec("ray")  # found without importing ray (slow)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("ray is not installed: its autoscaler schema ships inside the ray package")
    for root in spec.submodule_search_locations:
        path = Path(root) / "autoscaler" / "ray-schema.json"
        if path.is_file():
            return json.loads(path.read_text())
    pytest.skip(f"no autoscaler/ray-schema.json under {list(spec.submodule_search_locations)}")


def start_commands(config: dict, key: str) -> list[str]:
    return [" ".join(c.split()) for c in config[key]]


@pytest.mark.parametrize("name", ["gpu_cluster.yaml", "onprem.yaml"])
def test_launch_file_starts_a_token_cluster_with_this_package(name):
    """What `ray up` must do with a launch file for a P-TNCN run: mount this project and install
    it with the gpu and cluster extras on every node, start the head on a port the workers then
    join, every `ray start` with token authentication, and as many workers as max_workers says
    (one per layer after the head's)."""
    config = yaml.safe_load((CLUSTER / name).read_text())
    assert config["file_mounts"] == {"~/ptncn_dist": "."}
    assert any("pip install -e" in c and "~/ptncn_dist[gpu,cluster]" in c for c in config["setup_commands"])
    head = [c for c in start_commands(config, "head_start_ray_commands") if "ray start" in c]
    workers = [c for c in start_commands(config, "worker_start_ray_commands") if "ray start" in c]
    assert len(head) == 1 and len(workers) == 1
    port = re.search(r"ray start --head --port=(\d+)", head[0])
    assert port and f"--address=$RAY_HEAD_IP:{port.group(1)}" in workers[0], (head, workers)
    assert all(c.startswith("RAY_AUTH_MODE=token ") for c in head + workers)
    system = re.search(r"--system-config='([^']*)'", head[0])
    assert system and json.loads(system.group(1)).get("max_direct_call_object_size", 0) > 0
    if config["provider"]["type"] == "local":
        assert config["max_workers"] == len(config["provider"]["worker_ips"])
    else:
        nodes = config["available_node_types"]
        assert config["head_node_type"] in nodes
        assert config["max_workers"] == sum(t.get("min_workers", 0) for n, t in nodes.items()
                                            if n != config["head_node_type"])


def test_local_cluster_script_runs_its_subcommands(tmp_path):
    """cluster/local_cluster.sh: an unknown subcommand is a usage line and rc 2; `down` stops
    exactly the pids of the state file `up` wrote (here one stand-in process), removes the file and
    says so. (`up` itself starts Ray: tests/test_cluster.py starts the same LocalCluster.)"""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PTNCN_CLUSTER_STATE": str(tmp_path / "state.json")}
    script = str(CLUSTER / "local_cluster.sh")
    bad = subprocess.run(["bash", script, "sideways"], env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and bad.stderr.strip().endswith("up [NODES] | down") and bad.stdout == ""
    # a stand-in node: not this process's child (a node's `ray start` is not the tests' either), in
    # a process group of its own, as `up` starts each node
    spawn = [sys.executable, "-c", "import subprocess, sys; print(subprocess.Popen([sys.executable, '-c', "
             "'import time; time.sleep(120)'], start_new_session=True, stdin=subprocess.DEVNULL, "
             "stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).pid)"]
    pid = int(subprocess.run(spawn, capture_output=True, text=True, timeout=60, check=True).stdout)
    try:
        (tmp_path / "state.json").write_text(json.dumps({"pids": {"0": pid}, "address": "127.0.0.2:1"}))
        down = subprocess.run(["bash", script, "down"], env=env, capture_output=True, text=True, timeout=60)
        assert down.returncode == 0, down.stderr
        assert down.stdout.strip() == "stopped 1 nodes of 127.0.0.2:1"
        assert process_state(pid) in ("", "Z")
        assert not (tmp_path / "state.json").exists()
    finally:
        if process_state(pid) not in ("", "Z"):
            os.kill(pid, signal.SIGKILL)


def process_state(pid: int) -> str:
    """The process's state letter (Z: zombie), or "" when there is none."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return ""


@pytest.mark.parametrize("path", LAUNCH_FILES, ids=lambda p: p.name)
def test_launch_file_matches_ray_schema(path):
    config = yaml.safe_load(path.read_text())
    validator = jsonschema.Draft7Validator(ray_schema())
    errors = [f"{'/'.join(map(str, e.absolute_path)) or '(top level)'}: {e.message[:200]}"
              for e in validator.iter_errors(config)]
    assert not errors, f"{path.name} fails Ray's autoscaler schema:\n" + "\n".join(errors)


@pytest.mark.parametrize("path", LAUNCH_FILES, ids=lambda p: p.name)
def test_every_command_is_one_string(path):
    """A command holding ': ' unquoted parses as a YAML mapping, which no shell can run."""
    config = yaml.safe_load(path.read_text())
    for key, value in config.items():
        if key.endswith("_commands"):
            bad = [c for c in value if not isinstance(c, str)]
            assert not bad, f"{path.name}: {key} has entries that are not strings: {bad}"
