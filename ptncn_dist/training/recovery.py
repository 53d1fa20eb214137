"""Recovery from lost workers: new workers on live nodes, every layer rolled back to the last
complete checkpoint together, and the run goes on from there. The data stream replays the same
batches, so a recovered run ends on the weights of a run that never failed."""
from __future__ import annotations

import time
import traceback
from dataclasses import dataclass, field
from typing import Callable


@dataclass
class Recovery:
    """Runs the trainer's engine calls under `guarded`, and keeps the count and the record of
    every recovery. `restore` rolls every layer back to the newest checkpoint (raising when there
    is none), `step` says where the run is, `record` writes one metrics line. A record's
    `seconds` is the time it took to notice the failure (`detection_s`, carried by the exception:
    a hung layer's silence, a segment timeout; 0 for a loss Ray reports at once) plus the time to
    rebuild and restore the layers (`rebuild_s`)."""

    engine: object
    restore: Callable[[], None]
    step: Callable[[], int]
    max_failures: int
    has_checkpoints: bool
    log: Callable = print
    record: Callable[[dict], None] = lambda rec: None
    count: int = 0
    records: list[dict] = field(default_factory=list)
    in_flight: int = 0  # steps of the segment under way (replayed if a worker is lost in it)

    def guarded(self, fn):
        """fn(), recovering from lost workers until it succeeds or max_failures is reached.
        A handled failure's traceback frames are cleared: they hold the ObjectRefs of the
        failed call in a reference cycle that would otherwise outlive the Ray session."""
        while True:
            try:
                return fn()
            except self.engine.failure_types() as exc:
                self.recover(exc)
                traceback.clear_frames(exc.__traceback__)

    def recover(self, exc: BaseException) -> None:
        if not self.has_checkpoints:
            raise exc
        if 0 <= self.max_failures <= self.count:
            raise RuntimeError(f"giving up after {self.count} recoveries (train.max_failures = "
                               f"{self.max_failures}): {type(exc).__name__}: {exc}") from exc
        t0, failed_at = time.monotonic(), self.step() + self.in_flight
        detected = float(getattr(exc, "detection_s", 0.0) or 0.0)
        self.log(f"lost a worker at step {failed_at} ({type(exc).__name__}, noticed after {detected:.1f} s); "
                 f"rebuilding the layers")
        for attempt in range(3):
            try:
                self.engine.rebuild()
                break
            except Exception as again:
                if attempt == 2:
                    raise
                self.log(f"re-placement attempt {attempt + 1} failed ({type(again).__name__}); retrying")
                time.sleep(5.0)
        self.restore()
        self.count += 1
        first = str(exc).splitlines()[0][:200] if str(exc) else ""
        resumed, rebuilt = self.step(), time.monotonic() - t0
        rec = {"recovery": self.count, "cause": f"{type(exc).__name__}: {first}", "failed_by_step": failed_at,
               "resumed_from_step": resumed, "steps_replayed": failed_at - resumed,
               "detection_s": round(detected, 3), "rebuild_s": round(rebuilt, 3),
               "seconds": round(detected + rebuilt, 3)}
        self.records.append(rec)
        self.log(f"recovered in {rec['seconds']:.1f} s ({detected:.1f} s to notice the failure, {rebuilt:.1f} s to "
                 f"rebuild and restore): replaying {rec['steps_replayed']} steps from step {resumed}")
        self.record({"step": resumed, **rec, "placement": self.engine.stats().get("placement")})
