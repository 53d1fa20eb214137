"""What the test modules share, imported as `from helpers import ...` (pytest's default "prepend"
import mode puts tests/, the directory of every test module and of conftest.py, on sys.path,
from the repository root or anywhere else): where ../shared lives, the golden files, the node
address of the tests' private Ray sessions, `local_ray`, and the `FireAt` trainer callback.

Fixtures (the 3-node `cluster`) and the Ray guard live in conftest.py; nothing is imported from
conftest."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("PTNCN_SHARED_DIR", REPO.parent / "shared"))
DATA = Path(os.environ.get("PTNCN_DATA_DIR", SHARED / "data"))
GOLDEN = Path(os.environ.get("PTNCN_GOLDEN_DIR", SHARED / "golden"))

# The node address of the tests' private Ray sessions: on 127.0.0.1 Ray keeps every listener of
# the session on 127.0.0.1 (on 127.0.0.2 and up it binds them to all interfaces; see
# ptncn_dist/engines/ray_session.py and docs/security.md).
NODE_IP = "127.0.0.1"
# The experiments.compare runner's Ray arguments in the tests: a private 2-CPU Ray on NODE_IP (or
# the module's running one), two trials at once.
COMPARE_RAY = ("--num-cpus", "2", "--node-ip", NODE_IP, "--parallel", "2")


def golden_files():
    """The golden files, read at collection time from $PTNCN_GOLDEN_DIR (default ../shared/golden)."""
    if not GOLDEN.is_dir():
        return []
    return sorted(GOLDEN.glob("*.npz"))


def need_data(*parts):
    """DATA/parts, or skip the test naming the path that is missing."""
    path = DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is not present")
    return path


@contextlib.contextmanager
def local_ray(num_cpus: int = 4, ip: str = NODE_IP, **kwargs):
    """A private single-node Ray session on a loopback address (ray_session.start_private: token
    auth, dashboard off, `num_cpus` logical CPUs); stopped (after a garbage collection, see
    shutdown_ray) even when the body fails. A test that uses it must be marked `ray`."""
    import ray
    from ptncn_dist.engines.placement import shutdown_ray
    from ptncn_dist.engines.ray_session import start_private
    start_private(ip, num_cpus, "local_ray ip", **kwargs)
    try:
        yield ray
    finally:
        shutdown_ray()


class FireAt:
    """A Trainer callback (`Trainer(..., callbacks=[FireAt(step, fn)])`) that calls `fn(trainer)`
    once, at the end of the first training segment that reaches exactly `step` (segments end at
    log and checkpoint boundaries, so choose `step` as a multiple of train.log_every). Where it
    fires does not depend on timing; `fired` holds the step it fired at (a segment that
    overshoots the step fails the test rather than firing late)."""

    def __init__(self, step: int, fn):
        self.step, self.fn, self.fired = step, fn, []

    def __call__(self, trainer) -> None:
        if self.fired:
            return
        assert trainer.step <= self.step, (f"a segment jumped past step {self.step} to {trainer.step}: "
                                           f"choose a step on a train.log_every boundary")
        if trainer.step == self.step:
            self.fired.append(trainer.step)
            self.fn(trainer)


def tune_state_names_checkpoint(experiment_dirs) -> bool:
    """Whether a Tune experiment's saved state names a trial checkpoint that exists on disk (the
    state is written after the checkpoint and may lag it on a busy machine: a runner stopped
    before then has nothing to restore from). The state is JSON holding pickles as hex: their
    bytes are searched for the name, never unpickled."""
    import re
    for exp in experiment_dirs:
        for state in exp.glob("experiment_state-*.json"):
            try:
                text = state.read_text(encoding="utf-8")
            except OSError:
                continue
            for value in re.findall(r'value\\?"\s*:\s*\\?"([0-9a-f]+)', text):  # quotes escaped one level down
                for name in set(re.findall(rb"checkpoint_\d{6}", bytes.fromhex(value))):
                    if list(exp.glob(f"*/{name.decode()}")):
                        return True
    return False
