"""Shared test fixtures: where ../shared lives, golden files, a local Ray session and a cluster."""
import contextlib
import os
from pathlib import Path

import pytest

from ptncn_dist.studies.local_cluster import LocalCluster

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


# The node address of the tests' private Ray sessions: on 127.0.0.1 Ray keeps every listener of
# the session on 127.0.0.1 (on 127.0.0.2 and up it binds them to all interfaces; see
# ptncn_dist/engines/ray_session.py and docs/security.md).
NODE_IP = "127.0.0.1"


@contextlib.contextmanager
def local_ray(num_cpus: int = 4, ip: str = NODE_IP, **kwargs):
    """A private single-node Ray session on a loopback address (ray_session.start_private: token
    auth, dashboard off); stopped (after a garbage collection, see shutdown_ray) even when the
    body fails."""
    import ray
    from ptncn_dist.engines.placement import shutdown_ray
    from ptncn_dist.engines.ray_session import start_private
    start_private(ip, num_cpus, "local_ray ip", **kwargs)
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
