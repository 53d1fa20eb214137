"""What a Ray run listens on: every TCP listener of the Ray session that `ptncn train --engine ray`
starts (GCS, raylet, dashboard agent, runtime-env agent, dashboard head, autoscaler monitor, the
layer workers and the driver) is bound to the node address, none to a wildcard (0.0.0.0, ::) that
would expose it on this machine's outward interfaces; a node address that is not this machine's
is refused before Ray starts. See docs/security.md, "Network exposure".

Only the processes of the session a test starts are inspected (the driver it launched and that
driver's descendants, or this test process's own children): other Ray instances on the machine
are neither listed nor stopped, and what a test started is stopped by pid even when it fails."""
import os
import signal
import subprocess
import sys
import time

import pytest
import ray  # noqa: F401  (puts Ray's vendored psutil on the path)
import psutil

from helpers import REPO
from ptncn_dist.errors import ConfigError


WILDCARDS = {"0.0.0.0", "::", "", "::ffff:0.0.0.0"}

# Listeners that Ray 2.60 binds to a wildcard whatever we ask, by process role, with the reason.
# Empty for a node on 127.0.0.1: Ray binds every server of such a node to 127.0.0.1 (its
# `is_localhost(node_ip)` switch), which is how the project starts a private Ray. The named list
# for nodes on other addresses (the multi-node local cluster on 127.0.0.2-4) is
# WILDCARD_OFF_LOCALHOST below.
UNAVOIDABLE_WILDCARD_ON_LOCALHOST: dict[str, str] = {}

# A node on any address other than 127.0.0.1 (e.g. 127.0.0.3, a worker of the local cluster):
# Ray has no bind-address option for these servers; each binds to the wildcard when
# `is_localhost(node_ip)` is false (the C++ gRPC servers, as observed: `::` for a node on
# 127.0.0.2, 127.0.0.1 for a node on 127.0.0.1; in Ray's Python: dashboard/agent.py,
# dashboard/head.py, autoscaler/_private/monitor.py, dashboard/modules/reporter/reporter_agent.py).
WILDCARD_OFF_LOCALHOST = {
    "gcs": "GCS gRPC server (Ray's C++ gRPC servers bind :: unless the node IP is localhost)",
    "raylet": "node manager and object manager gRPC servers (same rule)",
    "worker": "each core worker's gRPC server, layer actors and idle workers (same rule)",
    "driver": "the driver's core worker gRPC server (same rule)",
    "dashboard_agent": "agent gRPC server and metrics export (Prometheus) port",
    "dashboard_head": "dashboard metrics port 44227 (prometheus_client.start_http_server)",
    "autoscaler_monitor": "autoscaler metrics port 44217 (prometheus_client.start_http_server)",
}


def role(proc: psutil.Process, driver: int) -> str:
    """A Ray process's role, from its command line."""
    if proc.pid == driver:
        return "driver"
    try:
        cmd = proc.cmdline()
    except psutil.Error:
        return "gone"
    line = " ".join(cmd)
    first = os.path.basename(cmd[0]) if cmd else ""
    for name, key in (("gcs", "gcs_server"), ("raylet", "raylet")):
        if first == key:
            return name
    for name, key in (("dashboard_agent", "DashboardAgent"), ("dashboard_agent", "dashboard/agent.py"),
                      ("runtime_env_agent", "RuntimeEnvAgent"), ("runtime_env_agent", "runtime_env/agent/main.py"),
                      ("dashboard_head", "dashboard/dashboard.py"), ("autoscaler_monitor", "monitor.py"),
                      ("log_monitor", "log_monitor.py")):
        if key in line:
            return name
    return "worker" if line.startswith("ray::") or "default_worker.py" in line else "other:" + first


def session_pids(root: psutil.Process) -> dict[int, psutil.Process]:
    """`root` and every process below it (GCS, raylet and agents are the driver's children,
    workers the raylet's)."""
    procs = {root.pid: root}
    try:
        for p in root.children(recursive=True):
            procs[p.pid] = p
    except psutil.Error:
        pass
    return procs


def listeners(procs: dict[int, psutil.Process], driver: int) -> set[tuple[str, str, int]]:
    """(role, ip, port) of every listening TCP socket of `procs`."""
    out = set()
    for c in psutil.net_connections(kind="tcp"):
        if c.status == psutil.CONN_LISTEN and c.pid in procs:
            out.add((role(procs[c.pid], driver), c.laddr.ip, c.laddr.port))
    return out


def stop(procs: dict[int, psutil.Process]) -> None:
    """SIGKILL what is left of the processes we saw (identity checked by psutil: a reused pid
    is not touched)."""
    for p in procs.values():
        try:
            if p.is_running():
                p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(list(procs.values()), timeout=10)


def on_node(ip: str, node_ip: str) -> bool:
    return ip in (node_ip, f"::ffff:{node_ip}")


@pytest.mark.ray
@pytest.mark.slow
def test_ray_train_listens_on_the_node_address_only(tmp_path):
    """A whole `ptncn train --engine ray` run with the default engine.node_ip (127.0.0.1, the
    address a private Ray uses): every listener of the session, on the node address; none on a
    wildcard."""
    node_ip = "127.0.0.1"
    cmd = [sys.executable, "-m", "ptncn_dist.cli", "train", "--engine", "ray", "--steps", "300",
           "--set", "model.hidden=[16,16]", "--set", "train.progress=false", "--set", "train.plots=false",
           "--set", "engine.cpus_per_layer=0.5",
           "--run-dir", str(tmp_path / "run")]
    log = open(tmp_path / "train.log", "w")
    # token authentication must be asked for by the project, not inherited: the caller's "disabled"
    # is overridden for the Ray the run starts
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True, env=env)
    root = psutil.Process(proc.pid)
    seen, procs, auth = set(), {proc.pid: root}, {}
    try:
        deadline = time.monotonic() + 300
        while proc.poll() is None and time.monotonic() < deadline:
            now = session_pids(root)
            procs.update(now)
            seen |= listeners(now, proc.pid)
            for p in now.values():
                r = role(p, proc.pid)
                if r in ("gcs", "raylet") and r not in auth:
                    try:
                        auth[r] = p.environ().get("RAY_AUTH_MODE")
                    except psutil.Error:
                        pass
            time.sleep(0.5)
        assert proc.poll() is not None, "the run did not finish within 300 s"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                pass
        stop(procs)
        log.close()
    text = (tmp_path / "train.log").read_text(errors="replace")
    assert proc.returncode == 0, text[-3000:]
    roles = {r for r, _, _ in seen}
    # the run was watched while it ran: the GCS, the raylet, the driver and layer workers listened
    assert {"gcs", "raylet", "driver", "worker"} <= roles, sorted(seen)
    wild = sorted(s for s in seen if s[1] in WILDCARDS and s[0] not in UNAVOIDABLE_WILDCARD_ON_LOCALHOST)
    assert not wild, f"listeners on a wildcard address: {wild}"
    elsewhere = sorted(s for s in seen if not on_node(s[1], node_ip))
    assert not elsewhere, f"listeners off the node address {node_ip}: {elsewhere}"
    assert auth == {"gcs": "token", "raylet": "token"}, auth


@pytest.mark.ray
@pytest.mark.slow
def test_off_localhost_wildcards_are_only_the_named_ones():
    """A private Ray on another loopback address (as each node of the local cluster is): what Ray
    still binds to a wildcard is exactly the documented list, everything else is on loopback."""
    from ptncn_dist.engines.ray_session import start_private
    from ptncn_dist.engines.placement import shutdown_ray
    node_ip = "127.0.0.6"
    me = psutil.Process()
    before = set(session_pids(me)) - {me.pid}
    start_private(node_ip, 1)
    procs = {}
    try:
        import ray as _ray

        @_ray.remote(num_cpus=0)
        def pid():
            return os.getpid()
        _ray.get(pid.remote())
        time.sleep(2)
        procs = {p: q for p, q in session_pids(me).items() if p not in before}
        seen = listeners(procs, me.pid)
    finally:
        shutdown_ray()
        stop({p: q for p, q in procs.items() if p != me.pid})
    assert {"gcs", "raylet", "driver", "worker"} <= {r for r, _, _ in seen}, sorted(seen)
    wild = sorted(s for s in seen if s[1] in WILDCARDS and s[0] not in WILDCARD_OFF_LOCALHOST)
    assert not wild, f"wildcard listeners outside the named list: {wild}"
    # off the wildcard, only loopback: the node address, and 127.0.0.1 (the agent's HTTP port)
    other = sorted(s for s in seen if s[1] not in WILDCARDS
                   and not (on_node(s[1], node_ip) or on_node(s[1], "127.0.0.1")))
    assert not other, other


@pytest.mark.parametrize("ip", ["198.51.100.7", "0.0.0.0", "localhost-ish"])
def test_a_node_ip_not_of_this_machine_is_refused_before_ray_starts(tmp_path, ip):
    """engine.node_ip must be an address of this machine (loopback, or one of its interfaces'):
    TEST-NET-2 is never assigned, the wildcard is no node address."""
    cmd = [sys.executable, "-m", "ptncn_dist.cli", "train", "--engine", "ray", "--steps", "2",
           "--set", "model.hidden=[16,16]", "--set", "train.progress=false", "--set", "train.plots=false",
           "--set", f'engine.node_ip="{ip}"', "--run-dir", str(tmp_path / "run")]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    root, procs = psutil.Process(proc.pid), {}
    try:
        procs.update(session_pids(root))
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            procs.update(session_pids(root))
        stop(procs)  # a Ray it should not have started, if any
        proc.wait(10)
    assert proc.returncode != 0
    err = stderr.strip().splitlines()
    assert err and "engine.node_ip" in err[-1] and ip in err[-1], stderr[-2000:]
    assert "Traceback" not in stderr and "Started a local Ray instance" not in stderr + stdout


def test_check_node_ip_accepts_loopback_and_refuses_foreign_addresses():
    from ptncn_dist.engines.ray_session import check_node_ip
    assert check_node_ip("127.0.0.1") == "127.0.0.1"
    assert check_node_ip("127.0.0.9", "tune --node-ip") == "127.0.0.9"
    for bad in ("198.51.100.7", "203.0.113.9", "0.0.0.0", "::", "not-an-ip", "224.0.0.1"):
        with pytest.raises(ConfigError) as exc:
            check_node_ip(bad, "tune --node-ip")
        msg = str(exc.value)
        assert "\n" not in msg and "tune --node-ip" in msg and bad in msg
