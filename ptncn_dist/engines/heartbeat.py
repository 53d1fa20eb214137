"""Per-layer heartbeats: a hung layer (alive but silent, such as a SIGSTOPped process) is caught
within seconds, not at the end of engine.segment_timeout_s.

Every layer actor runs a daemon thread (`Beater`) that sends (layer, steps run, pid, node) every
engine.heartbeat_s to one small `HeartbeatBoard` actor (no CPUs, on the driver's node), which
keeps when each layer last beat, by its own clock. A thread, not the actor's event loop, so the
beats go on while the layer computes or a compiled graph owns the actor; a stopped process stops
beating. The driver (`Heartbeats`) waits for results in short slices and asks the board for the
beats' ages in between: a layer silent for more than engine.hung_after_s has its process killed
and raises LayerHung, which the trainer recovers from like a lost worker. The segment timeout
stays the backstop for a deadlock in which every layer beats but none progresses."""
from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
import warnings
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class BeatTarget:
    """What a layer actor needs to beat: the board, the generation of actors it belongs to (beats
    of replaced actors are ignored) and the interval."""

    board: object
    generation: int
    every_s: float


@dataclass(frozen=True)
class Beat:
    """A layer's last beat as the driver sees it: `age_s` since it arrived (since the board was
    reset when the layer never beat)."""

    layer: int
    age_s: float
    steps: int = -1
    pid: int = 0
    ip: str = "?"
    node_id: str = ""


class LayerHung(Exception):
    """A layer sent no heartbeat for longer than engine.hung_after_s; `detection_s` is how long
    it had been silent when that was noticed."""

    def __init__(self, beat: Beat, hung_after_s: float):
        steps = f", {beat.steps} steps run" if beat.steps >= 0 else ""
        where = f"pid {beat.pid} on {beat.ip}" if beat.pid else "its process never beat"
        super().__init__(f"layer {beat.layer} ({where}) sent no heartbeat for {beat.age_s:.1f} s "
                         f"(engine.hung_after_s = {hung_after_s:g}{steps}): stopped or hung")
        self.beat, self.layer, self.detection_s = beat, beat.layer, beat.age_s


class HeartbeatBoard:
    """The Ray actor that holds the latest beat of each layer of the current generation."""

    def __init__(self):
        self.generation, self.since, self.last = 0, time.monotonic(), {}

    def reset(self, generation: int) -> None:
        self.generation, self.since, self.last = generation, time.monotonic(), {}

    def arm(self) -> None:
        """The generation's actors are all made: a layer that never beat is as old as this."""
        self.since = time.monotonic()

    def beat(self, generation: int, layer: int, steps: int, pid: int, ip: str, node_id: str) -> None:
        if generation == self.generation:
            self.last[layer] = (time.monotonic(), steps, pid, ip, node_id)

    def ages(self, layers: int) -> list[tuple]:
        """Per layer 1..layers: (age in s, steps, pid, ip, node id); a layer that never beat is as
        old as the `arm` call (or the reset) and has steps -1."""
        now = time.monotonic()
        out = []
        for l in range(1, layers + 1):
            t, *rest = self.last.get(l, (self.since, -1, 0, "?", ""))
            out.append((now - t, *rest))
        return out


class Beater(threading.Thread):
    """A layer actor's heartbeat: a fire-and-forget call to the board every `every_s`."""

    def __init__(self, target: BeatTarget, layer: int, steps: Callable[[], int]):
        super().__init__(daemon=True, name=f"heartbeat-layer-{layer}")
        self.target, self.layer, self.steps = target, layer, steps
        self.stopped = threading.Event()

    def run(self) -> None:
        import ray
        me = (os.getpid(), ray.util.get_node_ip_address(), ray.get_runtime_context().get_node_id())
        board, gen = self.target.board, self.target.generation
        while True:
            try:
                board.beat.remote(gen, self.layer, self.steps(), *me)
            except Exception:
                pass  # the board is gone: the driver falls back to the segment timeout
            if self.stopped.wait(self.target.every_s):
                return


def signal_process(node_id: str, pid: int, sig: int = signal.SIGKILL, only_if_stopped: bool = False):
    """Send `sig` (default SIGKILL, which ends even a stopped process at once) to process `pid`
    on node `node_id`, from a zero-CPU task placed there; returns the task's ref (True: sent,
    False: no such process, or with `only_if_stopped` none that is stopped)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    @ray.remote(num_cpus=0, max_retries=0)
    def _signal(p, s, stopped_only):
        try:
            if stopped_only:
                with open(f"/proc/{p}/stat") as fh:
                    if fh.read().rsplit(")", 1)[1].split()[0] not in ("T", "t"):
                        return False
            os.kill(p, s)
            return True
        except (ProcessLookupError, FileNotFoundError):
            return False

    where = NodeAffinitySchedulingStrategy(node_id, soft=False)
    return _signal.options(scheduling_strategy=where).remote(pid, sig, only_if_stopped)


class Heartbeats:
    """The driver's side: the board, a new generation per set of layer actors, and waits that
    check the beats between slices of at most `slice_s`."""

    def __init__(self, ray, every_s: float, hung_after_s: float):
        self.ray, self.every_s, self.hung_after_s = ray, every_s, hung_after_s
        self.slice_s = min(1.0, every_s)
        self.board, self.generation, self.layers = None, 0, 0

    def next_generation(self, layers: int) -> BeatTarget:
        """Before new layer actors are made: a fresh generation on the board (a new board if
        there is none or it was lost)."""
        ray = self.ray
        self.generation += 1
        self.layers = layers
        if self.board is not None:
            try:
                ray.get(self.board.reset.remote(self.generation), timeout=10)
                return BeatTarget(self.board, self.generation, self.every_s)
            except Exception:
                self.board = None
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
        self.board = ray.remote(HeartbeatBoard).options(num_cpus=0, scheduling_strategy=here).remote()
        ray.get(self.board.reset.remote(self.generation), timeout=60)
        return BeatTarget(self.board, self.generation, self.every_s)

    def armed(self) -> None:
        """After the generation's actors are made (which can take long): age never-beaten layers
        from now."""
        if self.board is not None:
            self.ray.get(self.board.arm.remote(), timeout=60)

    def check(self) -> None:
        """LayerHung for the layer silent longest, if any is past hung_after_s (its process is
        killed first, so that nothing waits on it any more)."""
        ray = self.ray
        if self.board is None:
            return
        try:
            ages = ray.get(self.board.ages.remote(self.layers), timeout=max(5.0, self.slice_s))
        except ray.exceptions.GetTimeoutError:
            return
        except ray.exceptions.RayActorError:
            warnings.warn("the heartbeat board was lost: a hung layer is caught by engine.segment_timeout_s "
                          "until the layers are next rebuilt", stacklevel=2)
            self.board = None
            return
        layer, (age, steps, pid, ip, node_id) = max(enumerate(ages, start=1), key=lambda la: la[1][0])
        if age > self.hung_after_s:
            if pid and node_id:
                signal_process(node_id, pid)
            raise LayerHung(Beat(layer, age, steps, pid, ip, node_id), self.hung_after_s)

    def wait(self, refs: list, timeout: float | None):
        """ray.wait for one of `refs`, checking the beats between slices; (done, pending), done
        empty after `timeout` s (None: no limit)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = self.slice_s if deadline is None else min(self.slice_s, deadline - time.monotonic())
            done, pending = self.ray.wait(refs, num_returns=1, timeout=max(0.0, left))
            if done or (deadline is not None and time.monotonic() >= deadline):
                return done, pending
            self.check()

    def get(self, refs: list, timeout: float | None = None) -> list:
        """Every result, the first failure surfaced at once; GetTimeoutError (with `detection_s`)
        when none of the pending ones finishes within `timeout` s."""
        pending = list(refs)
        while pending:
            done, pending = self.wait(pending, timeout)
            if not done:
                exc = self.ray.exceptions.GetTimeoutError(f"no layer finished its segment within {timeout:g} s")
                exc.detection_s = timeout
                raise exc
            self.ray.get(done[0])
        return self.ray.get(refs)

    @contextlib.contextmanager
    def watching(self):
        """For waits that cannot be sliced (a compiled graph's build and results): a thread
        checks the beats meanwhile; a hung layer's process is killed, which ends the wait with an
        error, and LayerHung is raised in its place (or after it, if the wait ended well)."""
        found: list[LayerHung] = []
        done = threading.Event()

        def watch():
            while not done.wait(self.slice_s):
                try:
                    self.check()
                except LayerHung as exc:
                    found.append(exc)
                    return
                except Exception:
                    return  # Ray shutting down: nothing left to watch

        thread = threading.Thread(target=watch, daemon=True, name="heartbeat-watch")
        thread.start()
        try:
            yield
        except Exception as exc:
            done.set()
            thread.join()
            if found:
                raise found[0] from exc
            raise
        done.set()
        thread.join()
        if found:
            raise found[0]

    def close(self) -> None:
        if self.board is not None:
            try:
                self.ray.kill(self.board)
            except Exception:
                pass
            self.board = None
