"""Fixtures (a 3-node Ray cluster, a module's Ray session) and the guard that keeps the fast tier
honest.

Shared helpers (paths, golden files, `local_ray`, NODE_IP) live in tests/helpers.py: import them
from `helpers`, never from conftest.

Tiers: `python -m pytest -m "not ray and not slow"` is the fast tier (no Ray at all); the full
suite, `python -m pytest -q`, is the CI command. A test that starts Ray (in-process through
`local_ray` or an engine, a `ptncn ... --engine ray` subprocess, a cluster, Ray Tune) must be
marked `ray`: the guard below fails one that is not, whether it started Ray in this process or in
a child (each unmarked test runs with RAY_TMPDIR pointing at an empty directory of its own, where
any Ray it starts leaves a session)."""
import os
import shutil
import sys
import tempfile

import pytest

from ptncn_dist.studies.local_cluster import LocalCluster

_RAY_MARK_HINT = ('mark it @pytest.mark.ray (or `pytestmark = pytest.mark.ray` for a whole module): '
                  'the fast tier, -m "not ray and not slow", must not start Ray')


def _ray_running() -> bool:
    ray = sys.modules.get("ray")
    return bool(ray is not None and getattr(ray, "is_initialized", lambda: False)())


def _stop_leftover_ray() -> None:
    from ptncn_dist.engines.placement import shutdown_ray
    shutdown_ray()


_GUARD = pytest.StashKey[tuple]()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """Around each test not marked `ray`: a private RAY_TMPDIR (short: Ray's socket paths must
    fit in 107 bytes), checked afterwards for a Ray session, and this process's Ray state before
    and after."""
    if item.get_closest_marker("ray") is not None:
        yield
        return
    tmp = tempfile.mkdtemp(prefix="rayguard-")
    old = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = tmp
    item.stash[_GUARD] = (_ray_running(), tmp)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("RAY_TMPDIR", None)
        else:
            os.environ["RAY_TMPDIR"] = old
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """The teardown report of an unmarked test fails when the test started Ray."""
    outcome = yield
    report = outcome.get_result()
    guard = item.stash.get(_GUARD, None)
    if call.when != "teardown" or guard is None or report.failed:
        return
    was_running, tmp = guard
    found = []
    if not was_running and _ray_running():
        found.append("left ray.is_initialized() true")
        _stop_leftover_ray()  # so that the tests after it run without it
    root = os.path.join(tmp, "ray")
    sessions = sorted(p for p in (os.listdir(root) if os.path.isdir(root) else []) if p.startswith("session"))
    if sessions:
        found.append(f"started a Ray session ({sessions[0]} under RAY_TMPDIR={tmp})")
    if found:
        report.outcome = "failed"
        report.longrepr = f"{item.nodeid} is not marked `ray` but {' and '.join(found)}: {_RAY_MARK_HINT}"


@pytest.fixture(scope="session")
def cluster():
    """A real 3-node Ray cluster on 127.0.0.2-4, shared by the test modules that need one (a test
    that stops a node starts it again), stopped by pid at the end even when a test fails. Tests
    that use it are marked `cluster` and `ray`."""
    c = LocalCluster(nodes=3, cpus_per_node=1)
    try:
        c.start()
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def ray_up():
    """One Ray session for a module's tests (2 CPUs, 127.0.0.1, no dashboard), stopped at the end
    of the module even when a test fails. Tests that use it are marked `ray`."""
    from helpers import local_ray
    with local_ray(2):
        yield


@pytest.fixture
def no_ray_left():
    """A command stops the Ray it started and leaves the caller's running; a Ray left behind
    by a test without one of its own is stopped, and the test fails (use it with
    `pytestmark = pytest.mark.usefixtures("no_ray_left")`)."""
    import ray
    before = ray.is_initialized()
    yield
    if ray.is_initialized() and not before:
        _stop_leftover_ray()
        pytest.fail("the runner left its Ray session running")
    assert ray.is_initialized() == before, "the runner stopped the caller's Ray session"
