"""What a layer actor has received and not yet used, keyed as the schedule awaits it:
(clock, iteration, kind, sender). A message is for exactly one key and is used once.

Checked on arrival: only a neighbour may send, only the kinds it sends ("z", "eps", "y" up;
"pred", "y" down), only the widths of that link, at most `max_batch` rows, the layer's dtype,
iterations below K, and only keys the schedule will await. A message that fails a check is
dropped and counted by reason (`dropped`); only the two cases below end the step.

Window (`clock`: the steps this layer has run; a step's messages carry its clock):
- exact: step c awaits its own clock's messages. A neighbour can be one step ahead only with
  the first messages of its step c+1 (z up, pred down, iteration 0): it has run step c to its
  end, which took this layer's y of step c, and awaits this layer's step c+1 before sending more.
- pipelined: step c awaits its neighbours' step c-1, and a neighbour that has already run step c
  may have sent it. Never step c+1: that needs this layer's step-c messages, sent at the very end
  of step c, and the clock advances before the loop takes another message.
Other keys within one step of the clock are dropped ("not awaited").

Use once: a key a step has taken is remembered for REMEMBER steps; a replay is dropped
("replay"). A message handed to a step already waiting for it is used at once.

Duplicates: an identical copy of a message not yet used is dropped ("duplicate"). A different
message under the same key cannot be told from the real one (on Ray calls nothing proves the
sender; on a CURVE link it is the authenticated neighbour itself breaking the protocol), so
neither is used: both are dropped ("conflicting duplicate") and the step that takes the key
raises a MessageError. First writer never wins.

Clock mismatch: a message two or more steps from the clock (not a remembered replay) means a
neighbour is out of sync, and both sides would wait for engine.segment_timeout_s. The step
waiting now, and every later one until `clear`, raises a MessageError at once ("out of sync").
In the pipelined schedule a step whose messages were never awaited (the next step began a new
sequence) is remembered: its late messages are "stale", not a mismatch.

MessageError, like a batch that differs from the segment's (caught when the step takes the
message), is one of the engine's failure types: the trainer recovers as from a lost worker."""
from __future__ import annotations

import asyncio
import logging
from collections import deque

import numpy as np

from .messages import Message, MessageError

log = logging.getLogger(__name__)

REMEMBER = 2
"""Steps below the clock whose used keys are remembered (a replay of those is only dropped)."""

EXPIRED = 16
"""Pipelined steps never awaited that are remembered (their late messages are only dropped)."""


class Mailbox:
    def __init__(self, spec, max_batch: int = 0, dtype=np.float64, mode: str = "exact"):
        if mode not in ("exact", "pipelined"):
            raise ValueError(f"mode must be 'exact' or 'pipelined', not {mode!r}")
        self.l, self.k_max, self.max_batch = spec.index, spec.inference_steps, max_batch
        self.dtype, self.mode = np.dtype(dtype), mode
        self.widths = {}
        if not spec.is_bottom:
            self.widths.update({(self.l - 1, k): spec.d_in for k in ("z", "eps", "y")})
        if not spec.is_top:
            self.widths.update({(self.l + 1, "pred"): spec.d, (self.l + 1, "y"): spec.d_up})
        self.batch = None
        self.dropped: dict[str, int] = {}
        self.received: dict = {}
        self.waiters: dict = {}
        self.clear()

    # -- arrival ----------------------------------------------------------------------------------
    def check(self, msg: Message, link: int | None) -> str | None:
        """Why `msg` (arrived on the link from layer `link`, None: unknown) must be dropped."""
        if link is not None and msg.layer != link:
            return "claims another sender"
        width = self.widths.get((msg.layer, msg.kind))
        if width is None:
            return "kind or sender not expected"
        rows, cols = msg.array.shape
        if cols != width or (self.max_batch and rows > self.max_batch):
            return "wrong shape"
        if msg.array.dtype != self.dtype:
            return "wrong dtype"
        if not 0 <= msg.iteration < self.k_max:
            return "bad iteration"
        if (msg.step, msg.iteration, msg.kind, msg.layer) in self.used:
            return "replay"
        if msg.step in self.expired:
            return "stale"
        if abs(msg.step - self.clock) >= 2:
            return "out of sync"
        if not self._awaited(msg.step - self.clock, msg.iteration, msg.kind):
            return "not awaited"
        return None

    def _awaited(self, ahead: int, iteration: int, kind: str) -> bool:
        """Whether the schedule awaits this key at a step `ahead` of the clock (-1, 0 or 1)."""
        if self.mode == "pipelined":
            return ahead in (-1, 0) and iteration == 0
        if ahead == 0:
            return iteration == 0 or kind in ("z", "pred")
        return ahead == 1 and iteration == 0 and kind in ("z", "pred")

    def drop(self, reason: str, detail: str = "") -> None:
        if reason not in self.dropped:
            log.warning("layer %d: dropped a message (%s) %s", self.l, reason, detail)
        self.dropped[reason] = self.dropped.get(reason, 0) + 1

    def put(self, data: bytes, link: int | None = None) -> bool:
        """Decode and file one message; False (and counted) when it is dropped."""
        try:
            msg = Message.decode(data)
        except MessageError as exc:
            self.drop("undecodable", str(exc))
            return False
        key = (msg.step, msg.iteration, msg.kind, msg.layer)
        reason = self.check(msg, link)
        if reason == "out of sync":
            self._fail(f"layer {self.l}: layer {msg.layer} sent a message of step {msg.step} while this layer "
                       f"is at step {self.clock}: the neighbours are out of sync")
        elif reason is None and (key in self.conflicts or key in self.arrived):
            reason = self._duplicate(key, msg.array)
        if reason is not None:
            self.drop(reason, f"from layer {msg.layer}: {msg.kind} step {msg.step} iteration {msg.iteration} "
                              f"{msg.array.shape}")
            return False
        self.received.setdefault(msg.kind, set()).add((msg.layer, *msg.array.shape))
        waiter = self.waiters.pop(key, None)
        if waiter is not None and not waiter.done():
            self.used.add(key)
            waiter.set_result(msg.array)
        else:
            self.arrived[key] = msg.array
        return True

    def _duplicate(self, key, arr) -> str:
        """A second message under a key not yet used: the same one, or a conflict (neither kept)."""
        first = self.arrived.get(key)
        if first is not None and first.tobytes() == arr.tobytes():
            return "duplicate"
        if first is not None:
            del self.arrived[key]
            self.conflicts[key] = (f"layer {self.l}: two different messages arrived under {key}; neither is "
                                   f"used (the sender broke the protocol or another forged one)")
        return "conflicting duplicate"

    def _fail(self, text: str) -> None:
        """Out of sync: the waiting step, and every later one until `clear`, raises at once."""
        if self.failure is None:
            self.failure = text
        for fut in self.waiters.values():
            if not fut.done():
                fut.set_exception(MessageError(text))
        self.waiters = {}

    # -- the step takes its messages ----------------------------------------------------------------
    async def get(self, key):
        """The message under `key`, once it has arrived (checked against the segment's batch)."""
        self._may_take(key)
        if key in self.arrived:
            return self._use(key)
        waiter = self.waiters[key] = asyncio.get_running_loop().create_future()
        try:
            arr = await waiter
        finally:
            if self.waiters.get(key) is waiter:
                del self.waiters[key]
        return self._checked(key, arr)

    def take(self, key):
        """The message under `key`, which must have arrived (a compiled graph's lock-step round)."""
        self._may_take(key)
        if key not in self.arrived:
            raise MessageError(f"layer {self.l}: message {key} has not arrived in its round")
        return self._use(key)

    def _may_take(self, key) -> None:
        self.awaited.add(key[0])
        if self.failure is not None:
            raise MessageError(self.failure)
        if key in self.conflicts:
            raise MessageError(self.conflicts[key])

    def _use(self, key):
        self.used.add(key)
        return self._checked(key, self.arrived.pop(key))

    def _checked(self, key, arr):
        if self.batch is not None and arr.shape[0] != self.batch:
            raise MessageError(f"layer {self.l}: message {key} has {arr.shape[0]} rows, the segment's "
                               f"batch is {self.batch}")
        return arr

    # -- the clock --------------------------------------------------------------------------------
    def _floor(self) -> int:
        """The oldest step whose messages the schedule may still await."""
        return self.clock - 1 if self.mode == "pipelined" else self.clock

    def advance(self, clock: int) -> None:
        """The layer's clock moved on: forget messages no step will await, and used keys older
        than REMEMBER steps; in the pipelined schedule, remember the steps never awaited."""
        old = self._floor()
        self.clock = clock
        floor = self._floor()
        if self.mode == "pipelined":
            self.expired.extend(s for s in range(max(old, floor - EXPIRED), floor) if s not in self.awaited)
        self.arrived = {k: v for k, v in self.arrived.items() if k[0] >= floor}
        self.conflicts = {k: v for k, v in self.conflicts.items() if k[0] >= floor}
        self.used = {k for k in self.used if k[0] >= clock - REMEMBER}
        self.awaited = {s for s in self.awaited if s >= floor}

    def clear(self) -> None:
        """Clock 0 and nothing held (new weights or a restored state); the drop counts stay."""
        for fut in self.waiters.values():
            fut.cancel()
        self.arrived, self.waiters, self.conflicts, self.clock = {}, {}, {}, 0
        self.used, self.awaited, self.expired = set(), set(), deque(maxlen=EXPIRED)
        self.failure: str | None = None
