"""Shared test fixtures: where ../shared lives, golden files, a local Ray session and a cluster."""
import contextlib
import os
from pathlib import Path

import pytest

from ptncn_dist.local_cluster import LocalCluster

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("PTNCN_SHARED_DIR", REPO.parent / "shared"))
DATA = Path(os.environ.get("PTNCN_DATA_DIR", SHARED / "data"))
GOLDEN = Path(os.environ.get("PTNCN_GOLDEN_DIR", SHARED / "golden"))


def golden_files():
    """The golden files, read at collection time from $PTNCN_GOLDEN_DIR (default ../shared/golden)."""
    if not GOLDEN.is_dir():
        return []
    return sorted(GOLDEN.glob("*.npz"))


def need_data(*parts):
    path = DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is not present")
    return path


@contextlib.contextmanager
def local_ray(num_cpus: int = 4, ip: str = "127.0.0.2", **kwargs):
    """A private single-node Ray session on a loopback address, dashboard off; stopped (after a
    garbage collection, see shutdown_ray) even when the body fails."""
    import ray
    from ptncn_dist.engines.placement import shutdown_ray
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, _node_ip_address=ip,
             log_to_driver=False, configure_logging=False, **kwargs)
    try:
        yield ray
    finally:
        shutdown_ray()


@pytest.fixture(scope="session")
def cluster():
    """A real 3-node Ray cluster on 127.0.0.2-4, shared by the test modules that need one (a test
    that stops a node starts it again), stopped by pid at the end even when a test fails."""
    c = LocalCluster(nodes=3, cpus_per_node=1)
    try:
        c.start()
        yield c
    finally:
        c.stop()
