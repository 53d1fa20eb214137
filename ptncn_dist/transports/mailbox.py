"""What a layer actor has received and not yet used, keyed as the schedule awaits it:
(clock, iteration, kind, sender). Bounded and checked on arrival: only a neighbour may send,
only the kinds it sends ("z", "eps", "y" up; "pred", "y" down), only the widths of that link,
at most `max_batch` rows, iterations below K, and clocks within one step of the layer's own. A
message that fails any check, or repeats a key, is dropped and counted; it never ends the run.
A batch that differs from the segment's is caught when the step takes the message and raised
as a MessageError, which the trainer recovers from like a lost worker."""
from __future__ import annotations

import asyncio
import logging

from ..messages import Message, MessageError

log = logging.getLogger(__name__)


class Mailbox:
    def __init__(self, spec, max_batch: int = 0):
        self.l, self.k_max, self.max_batch = spec.index, spec.inference_steps, max_batch
        self.widths = {}
        if not spec.is_bottom:
            self.widths.update({(self.l - 1, k): spec.d_in for k in ("z", "eps", "y")})
        if not spec.is_top:
            self.widths.update({(self.l + 1, "pred"): spec.d, (self.l + 1, "y"): spec.d_up})
        self.arrived: dict = {}
        self.waiters: dict = {}
        self.clock = 0
        self.batch = None
        self.dropped: dict[str, int] = {}
        self.received: dict = {}

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
        if not 0 <= msg.iteration < self.k_max:
            return "bad iteration"
        if not self.clock - 1 <= msg.step <= self.clock + 1:
            return "clock out of window"
        if (msg.step, msg.iteration, msg.kind, msg.layer) in self.arrived:
            return "duplicate"
        return None

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
        reason = self.check(msg, link)
        if reason is not None:
            self.drop(reason, f"from layer {msg.layer}: {msg.kind} step {msg.step} {msg.array.shape}")
            return False
        self.received.setdefault(msg.kind, set()).add((msg.layer, *msg.array.shape))
        key = (msg.step, msg.iteration, msg.kind, msg.layer)
        waiter = self.waiters.pop(key, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(msg.array)
        else:
            self.arrived[key] = msg.array
        return True

    async def get(self, key):
        """The message under `key`, once it has arrived (checked against the segment's batch)."""
        arr = self.arrived.pop(key, None)
        if arr is None:
            waiter = self.waiters[key] = asyncio.get_running_loop().create_future()
            arr = await waiter
        return self._checked(key, arr)

    def take(self, key):
        """The message under `key`, which must have arrived (a compiled graph's lock-step round)."""
        if key not in self.arrived:
            raise MessageError(f"layer {self.l}: message {key} has not arrived in its round")
        return self._checked(key, self.arrived.pop(key))

    def _checked(self, key, arr):
        if self.batch is not None and arr.shape[0] != self.batch:
            raise MessageError(f"layer {self.l}: message {key} has {arr.shape[0]} rows, the segment's "
                               f"batch is {self.batch}")
        return arr

    def advance(self, clock: int) -> None:
        """The layer's clock moved on: forget anything older than one step before it."""
        self.clock = clock
        for key in [k for k in self.arrived if k[0] < clock - 1]:
            del self.arrived[key]

    def clear(self) -> None:
        for fut in self.waiters.values():
            fut.cancel()
        self.arrived, self.waiters, self.clock = {}, {}, 0
