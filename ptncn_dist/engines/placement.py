"""Where layer actors go: pack (one node), spread (one layer per node), or explicit (per layer a
node IP, a node id, or a custom resource). Also connecting to Ray (through ray_session)."""
from __future__ import annotations

import math
import os
import re

from ..errors import ConfigError

_NODE_ID = re.compile(r"^[0-9a-f]{40,64}$")
_IP = re.compile(r"^\d+\.\d+\.\d+\.\d+$")


# Messages are (B, d) arrays, often above Ray's 100 KB inline limit; inlined, they go from actor
# to actor in the call itself instead of through the object store (1.36x against 1.10x of the
# single-threaded engine for 2 x 1024 units, batch 64, in `ptncn bench engines` here).
SYSTEM_CONFIG = {"max_direct_call_object_size": 8 * 1024 * 1024}


def connect(engine_cfg, n_layers: int) -> bool:
    """Join the cluster at engine.address, or start a private local Ray on engine.node_ip (see
    ray_session: the address is checked first, token authentication is requested, and on
    127.0.0.1 every Ray listener stays on 127.0.0.1). Returns whether this call started Ray (and
    so must shut it down)."""
    import ray

    from . import ray_session
    if ray.is_initialized():
        return False
    node_ip = engine_cfg.node_ip
    if node_ip:
        ray_session.check_node_ip(node_ip, "engine.node_ip")
    address = engine_cfg.address
    if address:
        use_ip = None
        if address == "auto":
            use_ip = node_ip
        elif address.startswith("127."):  # a local cluster: the driver sits on a node of it, by
            # default the one it joins at (a node in a cluster cannot be on 127.0.0.1)
            use_ip = node_ip if node_ip and node_ip != ray_session.LOOPBACK else address.rsplit(":", 1)[0]
        ray_session.join(address, use_ip, "engine.node_ip", configure_logging=True)
        return True
    cpus = max(os.cpu_count() or 1, math.ceil(n_layers * max(engine_cfg.cpus_per_layer, 0)))
    ray_session.start_private(node_ip, cpus, "engine.node_ip", _system_config=SYSTEM_CONFIG)
    return True


def shutdown_ray() -> None:
    """Stop this process's Ray session after collecting garbage: an ObjectRef or actor handle
    left in a reference cycle (a caught actor error's traceback holds several) must be freed
    while the session that owns it is alive, not by a later collection once it is gone, which
    can crash the process (ray-project/ray#31145 describes the same hazard with threads)."""
    import gc

    import ray
    gc.collect()
    ray.shutdown()


def layer_options(engine_cfg, n_layers: int, degrade: bool = False):
    """Per layer the actor options (resources, scheduling strategy), and the placement group
    made for them (None for explicit placement). Waits for the group with a clear timeout.

    With `degrade` (re-placing layers after a node was lost) a layer pinned to a node that is
    gone runs wherever it fits, and a spread over more layers than live nodes becomes a
    best-effort spread."""
    import ray
    from ray.util.placement_group import placement_group
    from ray.util.scheduling_strategies import (NodeAffinitySchedulingStrategy,
                                                PlacementGroupSchedulingStrategy)
    base = {"num_cpus": engine_cfg.cpus_per_layer, "num_gpus": engine_cfg.gpus_per_layer}
    if engine_cfg.placement == "explicit":
        if len(engine_cfg.nodes) != n_layers:
            raise ConfigError(f"engine.placement = 'explicit' needs engine.nodes with one entry per layer "
                              f"({n_layers}), got {engine_cfg.nodes!r}")
        opts = []
        live = _live_targets() if degrade else None
        for node in engine_cfg.nodes:
            if live is not None and node not in live:
                opts.append(dict(base))
            elif _IP.match(node):
                opts.append({**base, "resources": {f"node:{node}": 0.001}})
            elif _NODE_ID.match(node):
                opts.append({**base, "scheduling_strategy": NodeAffinitySchedulingStrategy(node, soft=False)})
            else:
                opts.append({**base, "resources": {node: 0.001}})
        if not degrade:
            _check_exists(engine_cfg.nodes)
        return opts, None
    bundle = {"CPU": engine_cfg.cpus_per_layer}
    if engine_cfg.gpus_per_layer:
        bundle["GPU"] = engine_cfg.gpus_per_layer
    strategy = "STRICT_PACK" if engine_cfg.placement == "pack" else "STRICT_SPREAD"
    if degrade and strategy == "STRICT_SPREAD" and len([n for n in ray.nodes() if n["Alive"]]) < n_layers:
        strategy = "SPREAD"
    pg = placement_group([dict(bundle) for _ in range(n_layers)], strategy=strategy)
    ready, _ = ray.wait([pg.ready()], timeout=engine_cfg.placement_timeout_s)
    if not ready:
        ray.util.remove_placement_group(pg)
        nodes = [n for n in ray.nodes() if n["Alive"]]
        free = {k: v for k, v in ray.available_resources().items() if k in ("CPU", "GPU")}
        raise ConfigError(
            f"{n_layers} layers with {bundle} each could not be placed ({strategy}) within "
            f"{engine_cfg.placement_timeout_s:g} s: the cluster has {len(nodes)} live node(s) with "
            f"{[{k: v for k, v in n['Resources'].items() if k in ('CPU', 'GPU')} for n in nodes]}; free now, "
            f"beside what other work holds: {free or 'nothing'}")
    return [{**base, "scheduling_strategy": PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=i)}
            for i in range(n_layers)], pg


def _live_targets() -> set:
    """Every IP, node id and custom resource that a live node offers."""
    import ray
    out = set()
    for n in ray.nodes():
        if n["Alive"]:
            out |= {n["NodeManagerAddress"], n["NodeID"], *n["Resources"]}
    return out


def _check_exists(nodes) -> None:
    """Explicit targets must name live nodes or resources: a missing one would hang for ever."""
    import ray
    alive = [n for n in ray.nodes() if n["Alive"]]
    resources = set().union(*(n["Resources"] for n in alive)) if alive else set()
    ids = {n["NodeID"] for n in alive}
    for node in nodes:
        if _IP.match(node):
            ok = f"node:{node}" in resources
        elif _NODE_ID.match(node):
            ok = node in ids
        else:
            ok = node in resources
        if not ok:
            raise ConfigError(f"engine.nodes names {node!r}, which no live node of the cluster offers")
