"""A real multi-node Ray cluster on one machine: a head and workers, each its own `ray start
--block` process on its own loopback address (127.0.0.2, .3, ...; Ray rewrites 127.0.0.1 to
the machine's outward address), each advertising a node resource `ptncn_node_<i>`.

Every process of the cluster, and every driver that joins it, shares one token file
(RAY_AUTH_MODE=token, RAY_AUTH_TOKEN_PATH): `env()` gives those variables. The flags and
environment every node shares come from engines/ray_session.py; each node's address is checked
to be this machine's first. Ray binds the servers of a node on any address but 127.0.0.1 to all
interfaces (docs/security.md): the token is what guards their gRPC ports. Stopping sends
SIGTERM to exactly the `ray start` processes this object started (each then stops its own
raylet and workers), and SIGKILL to their process groups only if they linger. Never `ray stop`.

    python -m ptncn_dist.studies.local_cluster up --nodes 3 --state /tmp/ptncn-cluster.json
    python -m ptncn_dist.studies.local_cluster down --state /tmp/ptncn-cluster.json
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time


# A lost node is declared dead after about 3 s instead of Ray's default (tens of seconds), so
# that recovery drills on this cluster spend their time recovering, not waiting.
HEALTH_CHECKS = {"health_check_period_ms": 1000, "health_check_timeout_ms": 1000,
                 "health_check_failure_threshold": 3}


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class LocalCluster:
    def __init__(self, nodes: int = 3, cpus_per_node: float = 1, first_ip: int = 2,
                 object_store_mb: int = 120, memory_mb: int = 2000, workdir: str | None = None):
        self.n, self.cpus, self.first_ip = nodes, cpus_per_node, first_ip
        self.object_store_mb, self.memory_mb = object_store_mb, memory_mb
        self.workdir = workdir or tempfile.mkdtemp(prefix="ptncn-cluster-")
        self.token_path = os.path.join(self.workdir, "auth_token")
        self.procs: dict[int, subprocess.Popen] = {}
        self.pids: dict[int, int] = {}
        self.port = None

    def ip(self, i: int) -> str:
        return f"127.0.0.{self.first_ip + i}"

    @property
    def address(self) -> str:
        return f"{self.ip(0)}:{self.port}"

    def env(self) -> dict:
        """Variables every process that joins this cluster needs (drivers included)."""
        return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": self.token_path}

    def _start_node(self, i: int) -> None:
        from ..engines.ray_session import ray_env, ray_start_args
        beside = os.path.join(os.path.dirname(sys.executable), "ray")
        ray = beside if os.path.exists(beside) else shutil.which("ray")
        head = i == 0
        args = [ray, "start", "--block", *ray_start_args(self.ip(i), self.cpus, head, f"node {i}'s IP"),
                f"--resources={json.dumps({f'ptncn_node_{i}': 1})}",
                f"--object-store-memory={self.object_store_mb * 1024 * 1024}",
                f"--memory={self.memory_mb * 1024 * 1024}"]
        if head:
            from ..engines.placement import SYSTEM_CONFIG
            config = {**SYSTEM_CONFIG, **HEALTH_CHECKS}
            args += ["--head", f"--port={self.port}", f"--system-config={json.dumps(config)}"]
        else:
            args += [f"--address={self.address}"]
        log = open(os.path.join(self.workdir, f"node{i}.log"), "w")
        env = {**os.environ, **ray_env(self.ip(i), head), **self.env()}
        proc = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        self.procs[i], self.pids[i] = proc, proc.pid

    def start(self, timeout: float = 60.0) -> "LocalCluster":
        """Start the head and the workers; returns once every node is registered and alive."""
        fd = os.open(self.token_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # never readable by others
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32))
        os.chmod(self.token_path, 0o600)
        self.port = free_port(self.ip(0))
        try:
            for i in range(self.n):
                self._start_node(i)
                self._wait_started(i, timeout)
            self.wait_nodes(self.n, timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_started(self, i: int, timeout: float) -> None:
        """Wait for node i's `ray start` to report its runtime up (one node at a time: starting
        several at once on a small machine can time a raylet out)."""
        log = os.path.join(self.workdir, f"node{i}.log")
        deadline = time.monotonic() + timeout
        while True:
            with open(log, errors="replace") as fh:
                if "Ray runtime started" in fh.read():
                    return
            proc = self.procs[i]
            if proc.poll() is not None:
                raise RuntimeError(f"ray node {i} ({self.ip(i)}) exited with {proc.returncode}; see {log}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"ray node {i} ({self.ip(i)}) did not start within {timeout:g} s; see {log}")
            time.sleep(0.2)

    def alive_nodes(self) -> list[dict]:
        """The live nodes as the cluster's GCS reports them (asked from a short-lived driver)."""
        probe = ("import json, ray; from ptncn_dist.engines.ray_session import join; join(%r, %r); "
                 "print(json.dumps([{'ip': n['NodeManagerAddress'], 'id': n['NodeID'], "
                 "'resources': n['Resources']} for n in ray.nodes() if n['Alive']]))") % (self.address, self.ip(0))
        out = subprocess.run([sys.executable, "-c", probe], env={**os.environ, **self.env()},
                             capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            return []
        return json.loads(out.stdout.strip().splitlines()[-1])

    def wait_nodes(self, count: int, timeout: float) -> list[dict]:
        deadline = time.monotonic() + timeout
        while True:
            for i, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"ray node {i} ({self.ip(i)}) exited with {proc.returncode}; see "
                                       f"{os.path.join(self.workdir, f'node{i}.log')}")
            nodes = self.alive_nodes()
            if len(nodes) >= count:
                return nodes
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {len(nodes)} of {count} ray nodes came up within {timeout:g} s")
            time.sleep(1.0)

    def stop_node(self, i: int, hard: bool = False, wait: float = 30.0) -> None:
        """Stop node i: SIGTERM to its `ray start` (it stops its raylet and workers), or with
        `hard` SIGKILL to its whole process group (a machine that vanishes)."""
        pid = self.pids.get(i)
        if pid is None:
            return
        proc = self.procs.get(i)
        try:
            if hard:
                os.killpg(pid, signal.SIGKILL)
            else:
                os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        if proc is not None:
            try:
                proc.wait(wait)
            except subprocess.TimeoutExpired:
                _killpg(pid)
                proc.wait(10)
        else:
            _wait_gone(pid, wait)
        self.pids.pop(i, None)
        self.procs.pop(i, None)

    def restart_node(self, i: int, timeout: float = 60.0) -> None:
        """Start node i again after `stop_node` (same address and resources, new processes);
        returns once the cluster has all its nodes alive again."""
        if i in self.pids:
            raise RuntimeError(f"ray node {i} ({self.ip(i)}) is still running")
        self._start_node(i)
        self._wait_started(i, timeout)
        self.wait_nodes(self.n, timeout)

    def stop(self) -> None:
        """Stop every node this object started, workers first."""
        for i in sorted(self.pids, reverse=True):
            self.stop_node(i)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def save_state(self, path: str) -> None:
        with open(path, "w") as fh:
            json.dump({"address": self.address, "pids": self.pids, "workdir": self.workdir,
                       "env": self.env(), "ips": [self.ip(i) for i in range(self.n)]}, fh, indent=2)


def _killpg(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _wait_gone(pid: int, wait: float) -> None:
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    _killpg(pid)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m ptncn_dist.studies.local_cluster", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="start a head and workers on 127.0.0.2, .3, ...")
    up.add_argument("--nodes", type=int, default=3)
    up.add_argument("--cpus-per-node", type=float, default=1)
    up.add_argument("--object-store-mb", type=int, default=200)
    up.add_argument("--memory-mb", type=int, default=2000)
    up.add_argument("--state", default=os.path.join(tempfile.gettempdir(), "ptncn-cluster.json"))
    down = sub.add_parser("down", help="stop exactly the nodes an `up` started (by pid)")
    down.add_argument("--state", default=os.path.join(tempfile.gettempdir(), "ptncn-cluster.json"))
    args = p.parse_args(argv)
    if args.cmd == "up":
        c = LocalCluster(args.nodes, args.cpus_per_node, object_store_mb=args.object_store_mb,
                         memory_mb=args.memory_mb).start()
        c.save_state(args.state)
        env = " ".join(f"{k}={v}" for k, v in c.env().items())
        print(f"cluster of {args.nodes} nodes at {c.address} (state: {args.state})\n"
              f"join it with:  {env} ptncn train --engine ray --address {c.address} --set engine.node_ip=\"{c.ip(0)}\"")
        return 0
    with open(args.state) as fh:
        state = json.load(fh)
    for i, pid in sorted(state["pids"].items(), key=lambda kv: -int(kv[0])):
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
        _wait_gone(pid, 30.0)
    os.remove(args.state)
    print(f"stopped {len(state['pids'])} nodes of {state['address']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
