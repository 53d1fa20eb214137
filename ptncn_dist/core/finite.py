"""Where a NaN or Inf first appeared. Every layer watches the messages it sends and receives
(`FiniteWatch`, driven by the schedule) and, at the end of each segment and before each
checkpoint shard, its own weights, optimizer slots and carried state. A layer whose first
non-finite value is one it sent, while all it had received was finite, is where the values
appeared; `first_origin` picks that layer among every layer's report.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import DivergenceError


class NonFiniteState(DivergenceError):
    """A layer holds NaN or Inf in its weights, optimizer slots or carried state."""


@dataclass(frozen=True)
class Sighting:
    """A layer's first non-finite value: at sequence step `t`, `what` it was; `origin` when
    the layer computed it from finite inputs (it sent it, or holds it, before receiving any)."""

    layer: int
    t: int
    origin: bool
    what: str


def is_finite(xp, value) -> bool:
    """Whether an array (or float) holds no NaN or Inf; integer arrays always do."""
    if value is None:
        return True
    dtype = getattr(value, "dtype", None)
    if dtype is not None and dtype.kind not in "fc":
        return True
    return bool(xp.isfinite(value).all())


def nonfinite_names(xp, named) -> list[str]:
    """The names of the (name, array) pairs that hold NaN or Inf."""
    return [name for name, value in named if not is_finite(xp, value)]


class FiniteWatch:
    """One layer's watch: records its first non-finite value (later ones are not checked)."""

    def __init__(self, layer: int, xp):
        self.layer, self.xp = layer, xp
        self.t = 0
        self.first: Sighting | None = None

    def sent(self, to: int, items: list) -> None:
        if self.first is None:
            bad = [kind for kind, value in items if not is_finite(self.xp, value)]
            if bad:
                self.first = Sighting(self.layer, self.t, True, f"its {', '.join(bad)} sent to layer {to}")

    def received(self, keys: tuple, values: tuple) -> None:
        if self.first is None:
            for key, value in zip(keys, values):
                if key is not None and not is_finite(self.xp, value):
                    self.first = Sighting(self.layer, self.t, False, f"the {key[2]} received from layer {key[3]}")
                    return

    def held(self, names: list[str]) -> None:
        """Non-finite arrays of the layer's own state, found at the end of a segment."""
        if self.first is None and names:
            self.first = Sighting(self.layer, self.t, True, f"its own {', '.join(names)} after the step's updates")

    def reset(self) -> None:
        self.first = None


def first_origin(sightings) -> Sighting | None:
    """The sighting that says where non-finite values appeared: the earliest step; at that step
    a layer that computed them before one that received them; then the lowest layer."""
    found = [s for s in sightings if s is not None]
    if not found:
        return None
    return min(found, key=lambda s: (s.t, not s.origin, s.layer))


class StepDiverged(Exception):
    """A segment's first step where a NaN or Inf showed: in layer 1's loss or in any layer's
    messages or state (`t`: step in sequence; `sighting`: where it appeared, if a layer saw it)."""

    def __init__(self, t: int, sighting: Sighting | None = None):
        where = f" in layer {sighting.layer} ({sighting.what})" if sighting is not None else " in the loss"
        super().__init__(f"non-finite values at sequence step {t}{where}")
        self.t, self.sighting = t, sighting


def diverged(loss_t: int | None, sightings) -> StepDiverged | None:
    """The StepDiverged a segment ends with, from layer 1's first non-finite loss step and every
    layer's sighting (None: all finite)."""
    seen = first_origin(sightings)
    if seen is None and loss_t is None:
        return None
    t = min(x for x in (loss_t, seen.t if seen else None) if x is not None)
    return StepDiverged(t, seen)


def check_state(xp, layer: int, named) -> None:
    """NonFiniteState naming the layer and its arrays holding NaN or Inf (before a checkpoint)."""
    bad = nonfinite_names(xp, named)
    if bad:
        raise NonFiniteState(f"layer {layer} holds non-finite values in {', '.join(bad)}")
