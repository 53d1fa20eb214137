"""The order of a P-TNCN step for one layer, written once: which phase runs, what is sent to
whom, what is awaited. Every engine drives these generators; they differ only in how a message
travels (ptncn_dist/transports/), never in the arithmetic (ptncn_dist/core/layer.py) or the order.

A step is a generator. It runs the layer's phases, hands outgoing messages to `send(to, clock,
iteration, items)` and, where it needs its neighbours, yields an `Await`: the keys of the
messages it waits for (None for a neighbour it does not have). The driver answers with the
arrays, in the same order. Drivers: `run_lockstep` (all layers in one process), the layer actor
(awaits its mailbox), the compiled graph (one graph node per round).

Exact schedule (MODEL.md; two exchanges per step, plus one per extra iteration with K > 1):
  forward_state -> send z up; learn W, E of step t-1; predict -> send prediction down
  await z from below, prediction from above (iteration 0)
  [iterate -> send s^k up, s^k @ W down -> await the same from the neighbours]  K - 1 times
  correct -> send eps and y up, y down; learn M, V, U (while those messages travel)
  await y and eps from below, y from above; keep (z, eps_below) for W, E; carry forward
W and E of step t learn at the start of step t+1 (`flush` at the end of a segment): they are
not used between the two, and the layer's z leaves for the layer above a round earlier.

Pipelined schedule (K = 1; one exchange per step): at step t a layer awaits what its neighbours
sent at step t-1 (nothing at a sequence's first step: zeros), runs its whole step, then sends
(z, eps, y) up and (pred, y) down (nothing after a sequence's last step). What that changes in
the model: `LayerCore.finish_pipelined`.

The segment around the steps is written here once too (`Segment`, `SegmentRun`, `finish`): the
inputs put on the device, the reset at t0 = 0 (or the check that a continued sequence has carried
state for the data's batch), the plan, layer 1's loss tally and the divergence error. Every
driver runs it; they differ only in how a step waits for its messages.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np

from .. import metrics
from ..errors import CheckpointError
from .backend import to_numpy, to_xp
from .finite import FiniteWatch, diverged, nonfinite_names

Key = tuple  # (clock, iteration, kind, sender): one message in a mailbox
Send = Callable[[int, int, int, list], None]  # send(to, clock, iteration, [(kind, array), ...])


@dataclass(frozen=True)
class Await:
    """What a step waits for: message keys (None: no such neighbour), with a name for traces."""

    name: str
    keys: tuple


@dataclass(frozen=True)
class StepPlan:
    """One step of a segment: its position, whether it learns, and where its sequence ends."""

    t: int
    learn: bool
    first: bool
    last: bool


def plan(t0: int, t1: int, length: int, learn: bool, t_prime: int) -> list[StepPlan]:
    """Steps t0..t1-1 of sequences of `length` steps; learning from t_prime on when `learn`."""
    return [StepPlan(t, learn and t >= t_prime, t == 0, t == length - 1) for t in range(t0, t1)]


class LayerSchedule:
    """One layer's place in the schedule: its LayerCore, where its messages go, its clock (steps
    run, the key of its messages) and the W, E update it holds over to the next step."""

    def __init__(self, core, send: Send, mode: str):
        self.core, self.mode, self._send = core, mode, send
        self.l = core.spec.index
        self.below, self.above = not core.spec.is_bottom, not core.spec.is_top
        self.clock = 0
        self.pending = None
        self.watch = FiniteWatch(self.l, core.xp)

    def send(self, to: int, clock: int, iteration: int, items: list) -> None:
        self.watch.sent(to, items)
        self._send(to, clock, iteration, items)

    def step(self, x, m, p: StepPlan) -> Iterator[Await]:
        self.watch.t = p.t
        gen = self.exact(x, m, p.learn) if self.mode == "exact" else self.pipelined(x, m, p)
        return self._watched(gen)

    def _watched(self, gen: Iterator[Await]) -> Iterator[Await]:
        """The step, with every answer to its Awaits shown to the finiteness watch."""
        answer = None
        while True:
            try:
                wait = next(gen) if answer is None else gen.send(answer)
            except StopIteration:
                return
            answer = yield wait
            self.watch.received(wait.keys, answer)

    def _states(self, c: int, k: int) -> tuple:
        return ((c, k, "z", self.l - 1) if self.below else None,
                (c, k, "pred", self.l + 1) if self.above else None)

    def exact(self, x, m, do_learn: bool) -> Iterator[Await]:
        core, l, c, send = self.core, self.l, self.clock, self.send
        z = core.forward_state()
        if self.above:
            send(l + 1, c, 0, [("z", z)])
        self.flush()
        pred = core.predict(x, m)
        if self.below:
            send(l - 1, c, 0, [("pred", pred)])
        z_below, pred_above = yield Await("wait z, pred", self._states(c, 0))
        for k in range(1, core.spec.inference_steps):
            s, pred_k = core.iterate(m, z_below=z_below, pred_above=pred_above)
            if self.above:
                send(l + 1, c, k, [("z", s)])
            if self.below:
                send(l - 1, c, k, [("pred", pred_k)])
            z_below, pred_above = yield Await("wait s, pred", self._states(c, k))
        y, eps = core.correct(m, z_below=z_below, pred_above=pred_above)
        if self.above:
            send(l + 1, c, 0, [("eps", eps), ("y", y)])
        if self.below:
            send(l - 1, c, 0, [("y", y)])
        if do_learn:
            core.learn_recurrent()
        y_below, eps_below, y_above = yield Await("wait y, eps", (
            (c, 0, "y", l - 1) if self.below else None, (c, 0, "eps", l - 1) if self.below else None,
            (c, 0, "y", l + 1) if self.above else None))
        if do_learn:
            self.pending = core.generative_pair(eps_below)
        core.carry_forward(x, y_below, y_above)
        self.clock += 1

    def pipelined(self, x, m, p: StepPlan) -> Iterator[Await]:
        core, l, c, send = self.core, self.l, self.clock, self.send
        z_below = eps_below = pred_above = None
        if not p.first:
            z_below, eps_below, y_below, pred_above, y_above = yield Await("wait for step t-1", tuple(
                [(c - 1, 0, k, l - 1) if self.below else None for k in ("z", "eps", "y")]
                + [(c - 1, 0, k, l + 1) if self.above else None for k in ("pred", "y")]))
            core.take_neighbours(y_below=y_below, y_above=y_above)
        z, pred = core.forward(x, m) if not self.below else core.forward()
        xp, dtype = core.xp, core.dtype
        if self.below and z_below is None:
            z_below = xp.zeros((z.shape[0], core.spec.d_in), dtype)
        if self.above and pred_above is None:
            pred_above = xp.zeros_like(z)
        y, eps = core.correct(m, z_below=z_below, pred_above=pred_above)
        core.finish_pipelined(p.learn, x=x, eps_below_prev=eps_below)
        if not p.last:
            if self.above:
                send(l + 1, c, 0, [("z", z), ("eps", eps), ("y", y)])
            if self.below:
                send(l - 1, c, 0, [("pred", pred), ("y", y)])
        self.clock += 1

    def flush(self) -> None:
        """Apply a W, E update still held from the last step (also at the end of a segment)."""
        pending, self.pending = self.pending, None
        if pending is not None:
            self.core.learn_generative(pending)

    def end_segment(self) -> None:
        """The segment's last held update applied, then the layer's own state checked."""
        self.flush()
        if self.watch.first is None:
            self.watch.held(nonfinite_names(self.core.xp, self.core.named_arrays()))

    def restart(self) -> None:
        """Forget held updates, the clock and any sighting (new weights or a restored state)."""
        self.pending, self.clock = None, 0
        self.watch.reset()


def advance(gen: Iterator[Await], answer) -> Await | None:
    """Run a step until it waits again (its Await) or ends (None)."""
    try:
        return next(gen) if answer is None else gen.send(answer)
    except StopIteration:
        return None


def run_lockstep(steps: list[Iterator[Await]], boxes: list[dict]) -> None:
    """Drive every layer's step in one thread: each runs until it waits, then resumes once every
    message it waits for is in its mailbox (`boxes[i]`, keyed as the Await keys)."""
    waits = [advance(g, None) for g in steps]
    while any(w is not None for w in waits):
        progress = False
        for i, w in enumerate(waits):
            box = boxes[i]
            if w is not None and all(k is None or k in box for k in w.keys):
                waits[i] = advance(steps[i], tuple(None if k is None else box.pop(k) for k in w.keys))
                progress = True
        if not progress:
            stuck = {i + 1: w.keys for i, w in enumerate(waits) if w is not None}
            raise RuntimeError(f"schedule deadlock: layers wait for messages nobody sent: {stuck}")


@dataclass
class SegmentLoss:
    """Layer 1's tally over a segment: loss sums from t_prime on (per position too with `by_t`),
    the first non-finite step, and each step's forecast when asked."""

    by_t: bool = False
    keep: bool = False
    sums: dict = field(default_factory=dict)
    xhats: list = field(default_factory=list)
    diverged: int | None = None

    def add(self, xp, xhat, x, m, t: int, t_prime: int) -> None:
        part = metrics.step_loss_sums(xp, xhat, x, m)
        if self.diverged is None and not all(np.isfinite(v) for v in part.values()):
            self.diverged = t
        if t >= t_prime:
            metrics.accumulate(self.sums, part, t, by_t=self.by_t)
        if self.keep:
            self.xhats.append(np.array(to_numpy(xhat), copy=True))

    def result(self) -> dict:
        return {"sums": self.sums, "xhats": self.xhats, "diverged": self.diverged}



# -- the segment around the steps, the same for every driver ------------------------------------

def token_ids(x, mask) -> np.ndarray:
    """Token ids with padded positions set to -1 (a zero input row, no target)."""
    return np.where(np.asarray(mask) > 0, x, -1).astype(np.int64)


def segment_inputs(xp, dtype, x, mask) -> tuple:
    """Host inputs of a segment (T, B, ...) or of one step (B, ...) on the device of `xp`: token
    ids (padded -1) or frames in `dtype` (None where no input is given), the mask as a column."""
    ms = to_xp(xp, np.asarray(mask)[..., None], dtype)
    if x is None:
        return None, ms
    return (to_xp(xp, token_ids(x, mask)) if x.dtype.kind in "iu" else to_xp(xp, x, dtype)), ms


def check_carried(cores, batch: int, t0: int) -> None:
    """Before continuing a sequence at step t0 > 0: every layer carries a state (restored from a
    checkpoint) for a batch of `batch` sequences; else a one-line CheckpointError."""
    for core in cores:
        c = core.carry
        got = None if c is None else int(c["y"].shape[0])
        if got != batch:
            have = "no carried state" if c is None else f"a carried state for a batch of {got}"
            raise CheckpointError(f"layer {core.spec.index} has {have}, and continuing a sequence at step {t0} "
                                  f"needs one for the data's batch of {batch}: the checkpoint it was restored "
                                  f"from does not fit this data")


@dataclass(frozen=True)
class Segment:
    """What a driver asks for: steps t0..t1-1 of `batch` sequences of `length` steps, learning
    from t_prime on when `learn`; loss sums per position too with `by_t`, forecasts with
    `keep_xhat`. Plain data: it travels to every layer actor as it is."""

    t0: int
    t1: int
    length: int
    batch: int
    learn: bool
    t_prime: int
    keep_xhat: bool = False
    by_t: bool = False

    @classmethod
    def of(cls, mask, t0: int, t1: int, *, learn: bool, t_prime: int, keep_xhat: bool = False,
           by_t: bool = False) -> "Segment":
        """The segment of a (T, B) mask's batch."""
        return cls(t0, t1, int(mask.shape[0]), int(mask.shape[1]), bool(learn), t_prime, keep_xhat, by_t)

    def plan(self) -> list[StepPlan]:
        return plan(self.t0, self.t1, self.length, self.learn, self.t_prime)


class SegmentRun:
    """One process's part of a segment: the layers it holds (`scheds`, in layer order; all of them
    in one process, one in a layer actor). `loop` is the whole segment for a driver that holds
    the segment's inputs; a driver fed a step at a time (the compiled graph) calls `begin`,
    `inputs`, `steps`, `stepped` and `end` itself, in that order."""

    def __init__(self, seg: Segment, scheds: list[LayerSchedule]):
        self.seg, self.scheds = seg, scheds
        core = scheds[0].core
        self.xp, self.dtype = core.xp, core.dtype
        self.tally = SegmentLoss(seg.by_t, seg.keep_xhat) if core.spec.is_bottom else None
        # The whole stack in this process: it may stop at the first non-finite step (a single
        # layer may not: its neighbours would wait for it).
        self.whole = core.spec.is_bottom and scheds[-1].core.spec.is_top
        self.outcome: dict | None = None

    def begin(self) -> None:
        """t0 = 0 starts every sequence from zero carried state; a later t0 continues the carried
        state, which must be for the data's batch (`check_carried`)."""
        cores = [s.core for s in self.scheds]
        if self.seg.t0 == 0:
            for core in cores:
                core.reset(self.seg.batch)
        else:
            check_carried(cores, self.seg.batch, self.seg.t0)

    def inputs(self, x, mask) -> tuple:
        """The inputs on this process's device (x only where layer 1 is held)."""
        return segment_inputs(self.xp, self.dtype, x if self.tally is not None else None, mask)

    def steps(self, p: StepPlan, x_t, m_t) -> list[Iterator[Await]]:
        """Step p of every layer held: generators the driver runs to their end."""
        return [s.step(x_t if s.core.spec.is_bottom else None, m_t, p) for s in self.scheds]

    def stepped(self, p: StepPlan, x_t, m_t) -> bool:
        """After step p: layer 1's loss tallied. True when the segment stops here (a non-finite
        value showed, and this process holds the whole stack)."""
        if self.tally is None:
            return False
        self.tally.add(self.xp, self.scheds[0].core.xhat, x_t, m_t, p.t, self.seg.t_prime)
        return self.whole and (self.tally.diverged is not None or any(s.watch.first for s in self.scheds))

    def end(self) -> dict:
        """Held updates applied and states checked; what `finish` needs from this process."""
        for s in self.scheds:
            s.end_segment()
        out = self.tally.result() if self.tally is not None else {"sums": {}, "xhats": [], "diverged": None}
        self.outcome = {**out, "nonfinite": [s.watch.first for s in self.scheds]}
        return self.outcome

    def loop(self, x, mask) -> Iterator[list[Iterator[Await]]]:
        """The segment: yields each step's generators for the driver to run (its only job), and
        leaves `outcome` when it ends. `x`, `mask`: the segment's host inputs (T, B, ...)."""
        xs, ms = self.inputs(x, mask)
        self.begin()
        for p in self.seg.plan():
            x_t = None if xs is None else xs[p.t]
            yield self.steps(p, x_t, ms[p.t])
            if self.stepped(p, x_t, ms[p.t]):
                break
        self.end()


def finish(outcomes: list[dict]) -> tuple[dict, list]:
    """A segment's result from every process's `SegmentRun.end` (layer 1's first): its loss sums
    and forecasts, or StepDiverged at the first step where a NaN or Inf showed."""
    bad = diverged(outcomes[0]["diverged"], [s for o in outcomes for s in o["nonfinite"]])
    if bad is not None:
        raise bad
    return outcomes[0]["sums"], outcomes[0]["xhats"]
