"""conftest.py's Ray guard, run on probe tests in a pytest of their own: a test not marked `ray`
that starts Ray, in this process or in a child, fails with a message saying to mark it; the same
test marked `ray` passes. So the fast tier, -m "not ray and not slow", cannot start Ray unseen."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import NODE_IP

pytestmark = [pytest.mark.ray, pytest.mark.slow]

PROBES = f'''
import subprocess, sys
import pytest
from ptncn_dist.engines.placement import shutdown_ray
from ptncn_dist.engines.ray_session import start_private

CHILD = ("from ptncn_dist.engines.ray_session import start_private; "
         "start_private({NODE_IP!r}, 1); import ray; ray.shutdown()")


def test_unmarked_leaves_ray_running():
    start_private({NODE_IP!r}, 1)


def test_unmarked_starts_and_stops_ray():
    start_private({NODE_IP!r}, 1)
    shutdown_ray()


def test_unmarked_starts_ray_in_a_child():
    subprocess.run([sys.executable, "-c", CHILD], check=True, timeout=300)


def test_unmarked_without_ray():
    pass


@pytest.mark.ray
def test_marked_starts_ray_in_a_child():
    subprocess.run([sys.executable, "-c", CHILD], check=True, timeout=300)
'''


def test_guard_fails_unmarked_tests_that_start_ray(tmp_path):
    shutil.copy(Path(__file__).with_name("conftest.py"), tmp_path / "conftest.py")
    (tmp_path / "pytest.ini").write_text('[pytest]\nmarkers =\n    ray: starts Ray\n    cluster: a cluster\n')
    (tmp_path / "test_probes.py").write_text(PROBES)
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", str(tmp_path)],
                         cwd=tmp_path, capture_output=True, text=True, timeout=600).stdout
    outcome = {}
    for line in out.splitlines():
        word = line.split()[:2]
        if word and word[0] in ("PASSED", "ERROR", "FAILED"):
            outcome.setdefault(word[1].split("::")[-1], set()).add(word[0])
    unmarked = {"test_unmarked_leaves_ray_running", "test_unmarked_starts_and_stops_ray",
                "test_unmarked_starts_ray_in_a_child"}
    assert {name for name, seen in outcome.items() if "ERROR" in seen or "FAILED" in seen} == unmarked, out[-4000:]
    assert {"test_unmarked_without_ray", "test_marked_starts_ray_in_a_child"} <= set(outcome), out[-4000:]
    assert "left ray.is_initialized() true and started a Ray session" in out, out[-4000:]
    assert out.count("is not marked `ray` but") >= 3 and "mark it @pytest.mark.ray" in out, out[-4000:]
