"""The recovery loop on its own, with an engine whose calls fail a set number of times (the
chaos tests drive the same loop with real killed Ray actors)."""
import pytest

from ptncn_dist.training.recovery import Recovery


class Lost(Exception):
    """Stands for a lost worker."""


class FlakyEngine:
    """An engine whose work fails with Lost `failures` times (noticed after `detection_s`, when
    given); rebuild counts its calls."""

    def __init__(self, failures: int, detection_s: float | None = None):
        self.failures, self.rebuilds, self.detection_s = failures, 0, detection_s

    def failure_types(self):
        return (Lost,)

    def rebuild(self):
        self.rebuilds += 1

    def stats(self):
        return {"placement": [{"layer": 1, "ip": "127.0.0.2"}]}

    def work(self):
        if self.failures:
            self.failures -= 1
            exc = Lost("worker died\nsecond line")
            if self.detection_s is not None:
                exc.detection_s = self.detection_s
            raise exc
        return "done"


def make(engine, max_failures=3, has_checkpoints=True, log=lambda *_: None):
    run = {"step": 47}
    written = []

    def restore():
        run["step"] = 40

    rec = Recovery(engine, restore=restore, step=lambda: run["step"], max_failures=max_failures,
                   has_checkpoints=has_checkpoints, log=log, record=written.append)
    rec.in_flight = 5
    return rec, run, written


def test_each_failure_rebuilds_rolls_back_and_is_recorded():
    engine = FlakyEngine(failures=2)
    rec, run, written = make(engine)
    assert rec.guarded(engine.work) == "done"
    assert engine.rebuilds == 2 and rec.count == 2 and run["step"] == 40
    first, second = rec.records
    assert first["cause"] == "Lost: worker died"
    assert (first["failed_by_step"], first["resumed_from_step"], first["steps_replayed"]) == (52, 40, 12)
    assert (second["failed_by_step"], second["steps_replayed"]) == (45, 5)
    assert [w["recovery"] for w in written] == [1, 2]
    assert written[0]["step"] == 40 and written[0]["placement"] == [{"layer": 1, "ip": "127.0.0.2"}]


def test_gives_up_after_max_failures():
    engine = FlakyEngine(failures=3)
    rec, _, _ = make(engine, max_failures=2)
    with pytest.raises(RuntimeError, match="giving up after 2 recoveries"):
        rec.guarded(engine.work)
    assert engine.rebuilds == 2


def test_without_checkpoints_the_failure_propagates():
    engine = FlakyEngine(failures=1)
    rec, _, _ = make(engine, has_checkpoints=False)
    with pytest.raises(Lost):
        rec.guarded(engine.work)
    assert engine.rebuilds == 0 and rec.count == 0


def test_other_errors_are_not_recovered():
    engine = FlakyEngine(failures=0)
    rec, _, _ = make(engine)

    def broken():
        raise ValueError("a bug, not a lost worker")

    with pytest.raises(ValueError):
        rec.guarded(broken)
    assert engine.rebuilds == 0 and rec.records == []


def test_the_time_to_notice_a_failure_counts_in_the_recovery_time():
    """A hung layer is noticed only after its silence (LayerHung carries how long): `seconds` is
    that plus the rebuild and restore; a loss Ray reports at once adds nothing."""
    lines = []
    engine = FlakyEngine(failures=1, detection_s=10.25)
    rec, _, written = make(engine, log=lines.append)
    rec.guarded(engine.work)
    (r,) = rec.records
    assert r["detection_s"] == 10.25 and 0 <= r["rebuild_s"] < 1.0
    assert r["seconds"] == pytest.approx(r["detection_s"] + r["rebuild_s"], abs=1e-3)
    assert written[0]["detection_s"] == 10.25
    assert "noticed after 10.2 s" in lines[0] and "10.2 s to notice the failure" in lines[1]
    instant = FlakyEngine(failures=1)
    rec, _, _ = make(instant)
    rec.guarded(instant.work)
    assert rec.records[0]["detection_s"] == 0.0 and rec.records[0]["seconds"] == rec.records[0]["rebuild_s"]
