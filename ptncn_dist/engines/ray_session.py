"""The one way this project starts or joins Ray: the node address checked, token authentication
requested, and Ray's servers kept off this machine's outward interfaces where Ray allows it.

What Ray (2.60) binds where, and so why a private Ray runs on 127.0.0.1:

- Ray has no bind-address option. Every server of a node (GCS, raylet, each core worker and the
  driver, dashboard agent, dashboard head and autoscaler metrics) binds to 127.0.0.1 when the
  node address is localhost (`ray._raylet.is_localhost`: 127.0.0.1, ::1, "localhost") and to the
  wildcard (0.0.0.0 / ::) for ANY other address, 127.0.0.2 included.
- `ray.init(_node_ip_address="127.0.0.1")` and `ray start --node-ip-address=127.0.0.1` replace
  127.0.0.1 by the machine's outward address, unless RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 ("this
  machine is not part of a multi-node cluster"): a private Ray is started with it, so its node
  address stays 127.0.0.1 and every listener of the session is on 127.0.0.1 only.
- A node on another address (each node of the multi-node local cluster, 127.0.0.2-4; a user's
  engine.node_ip = "127.0.0.2") has its servers on the wildcard: nothing in Ray avoids it. Token
  authentication (below) is then what guards the gRPC ports; the metrics ports answer anyone.
- Token authentication is requested explicitly (RAY_AUTH_MODE=token) for every Ray we start,
  instead of relying on Ray's default: the token is Ray's own (RAY_AUTH_TOKEN,
  RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token, created if missing), or the local cluster's own
  file (local_cluster.py).

See docs/security.md, "Network exposure".
"""
from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import socket

from ..errors import ConfigError

LOOPBACK = "127.0.0.1"
PROBE_S = 10.0  # how long joining waits for a TCP answer at the cluster's address
# Ray's switch that keeps 127.0.0.1 as the node address instead of the outward one (its only
# other effects: `ray start --address=...` refuses to add a worker node, and a process without
# a Ray node falls back to 127.0.0.1 as its address).
SINGLE_MACHINE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
AUTH_ENV = {"RAY_AUTH_MODE": "token"}

log = logging.getLogger(__name__)


def check_node_ip(ip: str, key: str = "engine.node_ip") -> str:
    """`ip` if it is an address of this machine (a loopback address, or one assigned to one of
    its interfaces: a socket binds to it); otherwise a one-line ConfigError naming `key`."""
    try:
        addr = ipaddress.ip_address(str(ip).strip())
    except ValueError:
        raise ConfigError(f"{key} = {ip!r} is not an IP address (it must be an address of this machine, "
                          f"e.g. {LOOPBACK!r})") from None
    if addr.is_unspecified or addr.is_multicast:
        raise ConfigError(f"{key} = {ip!r} is not a node address (it must be an address of this machine, "
                          f"e.g. {LOOPBACK!r})")
    if addr.is_loopback:
        return str(addr)
    family = socket.AF_INET6 if addr.version == 6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.bind((str(addr), 0))
    except OSError as exc:
        raise ConfigError(f"{key} = {ip!r} is not an address of this machine ({exc.strerror or exc}); use a "
                          f"loopback address such as {LOOPBACK!r}, or an address of one of its interfaces") from None
    return str(addr)


def binds_to_loopback(ip: str) -> bool:
    """Whether Ray binds a node on `ip` to loopback only (else to the wildcard)."""
    try:
        from ray._raylet import is_localhost
        return bool(is_localhost(ip))
    except ImportError:  # pragma: no cover - an older Ray: the same rule
        return ip in (LOOPBACK, "::1", "localhost")


def ray_env(ip: str | None, head: bool = True) -> dict:
    """Environment for a Ray process on node address `ip` (a `ray start`, or the processes a
    `ray.init` starts): token authentication, and 127.0.0.1 kept as 127.0.0.1 on a head."""
    env = dict(AUTH_ENV)
    if ip and binds_to_loopback(ip):
        if not head:
            raise ConfigError(f"a Ray worker node cannot use {ip!r}: Ray replaces it by the machine's outward "
                              f"address when nodes join a cluster; use 127.0.0.2 and up")
        env[SINGLE_MACHINE_ENV] = "0"
    elif not head:
        env[SINGLE_MACHINE_ENV] = "1"  # a worker node joins a cluster, whatever this process inherited
    return env


def ray_start_args(ip: str, num_cpus: float, head: bool, key: str = "node IP") -> list[str]:
    """The `ray start` flags every node we start shares (after `ray start`): its checked address,
    its CPUs, no usage report; a head also has no dashboard. Start it with `ray_env(ip, head)`."""
    ip = check_node_ip(ip, key)
    args = [f"--node-ip-address={ip}", f"--num-cpus={num_cpus:g}", "--disable-usage-stats"]
    if head:
        args.append("--include-dashboard=false")
    return args


@contextlib.contextmanager
def _environ(env: dict, keep: tuple = ()):
    """os.environ (read by ray.init and inherited by every process it starts) with `env` for the
    block, restored afterwards except for the keys in `keep`."""
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in old.items():
            if k in keep:
                continue
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def _loopback_kept(ip: str | None):
    """For the block, Ray keeps 127.0.0.1 as this node's address (SINGLE_MACHINE_ENV, and the
    constant Ray read from it when it was imported); nothing for any other address."""
    if not ip or not binds_to_loopback(ip):
        yield
        return
    from ray._private import ray_constants
    old = getattr(ray_constants, "ENABLE_RAY_CLUSTER", None)
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        with _environ({SINGLE_MACHINE_ENV: "0"}):
            yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = old


def private_init_kwargs(node_ip: str, num_cpus: int, **extra) -> dict:
    """ray.init arguments of a private single-node Ray on `node_ip`: `num_cpus` logical CPUs,
    no dashboard, no logs forwarded to the driver, the driver's logging left alone."""
    return {"address": "local", "num_cpus": num_cpus, "include_dashboard": False, "_node_ip_address": node_ip,
            "log_to_driver": False, "configure_logging": False, **extra}


def start_private(node_ip: str, num_cpus: int, key: str = "engine.node_ip", **extra) -> None:
    """Start a private single-node Ray on `node_ip` (checked first: a ConfigError naming `key`
    before anything starts). On 127.0.0.1 every listener of the session is on 127.0.0.1; on any
    other address Ray puts its servers on the wildcard (a warning says so)."""
    import ray
    node_ip = check_node_ip(node_ip, key)
    if not binds_to_loopback(node_ip):
        log.warning("Ray binds its servers to all interfaces for a node on %s (only a node on %s is kept to "
                    "loopback); see docs/security.md", node_ip, LOOPBACK)
    auth_changed = os.environ.get("RAY_AUTH_MODE") != "token"
    # token mode stays on afterwards, as Ray's own default leaves it
    with _environ(AUTH_ENV, keep=tuple(AUTH_ENV)), _loopback_kept(node_ip):
        if auth_changed:
            with contextlib.suppress(ImportError, AttributeError):
                from ray._raylet import Config
                Config.initialize("")  # this process's cached Ray config sees the token mode, as Ray does
        ray.init(**private_init_kwargs(node_ip, num_cpus, **extra))
    _check_started_on(node_ip)


def check_reachable(address: str, key: str = "engine.address", timeout_s: float = PROBE_S) -> None:
    """ConfigError when nothing accepts a connection at a HOST:PORT `address` (or ray://HOST:PORT)
    within `timeout_s`: `ray.init` would otherwise wait for that GCS without end. 'auto' and
    addresses without a port are left to Ray."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit() or not host:
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as exc:
        why = (f"no answer within {timeout_s:g} s" if isinstance(exc, TimeoutError)
               else (exc.strerror or str(exc)).lower())
        raise ConfigError(f"{key} = {address!r}: nothing answers there ({why}); start "
                          f"the cluster first (ray start --head --node-ip-address=HOST --port=PORT) or correct "
                          f"the address") from None


def join(address: str, node_ip: str | None = None, key: str = "engine.node_ip",
         address_key: str = "engine.address", **extra) -> None:
    """Join the running Ray at `address` ('auto', HOST:PORT) as a driver on `node_ip` (checked;
    None: Ray's choice). Authentication is the cluster's: its RAY_AUTH_* variables must be in the
    environment (local_cluster.LocalCluster.env() gives them). An address where nothing answers
    is a ConfigError (`check_reachable`), not a wait without end."""
    import ray
    check_reachable(address, address_key)
    kwargs = {"address": address, "log_to_driver": False, "configure_logging": False, **extra}
    if node_ip:
        kwargs["_node_ip_address"] = check_node_ip(node_ip, key)
    with _loopback_kept(kwargs.get("_node_ip_address")):  # the driver takes the cluster's auth mode
        ray.init(**kwargs)
    if node_ip:
        _check_started_on(kwargs["_node_ip_address"])


def _check_started_on(node_ip: str) -> None:
    """Ray must have kept the node address asked for (a Ray that rewrote it would listen on the
    outward address and interfaces): stop it and say so otherwise."""
    import ray
    got = ray.util.get_node_ip_address()
    if got != node_ip:
        from .placement import shutdown_ray
        shutdown_ray()
        raise ConfigError(f"Ray started on {got!r} instead of the node address {node_ip!r}; see docs/security.md")
