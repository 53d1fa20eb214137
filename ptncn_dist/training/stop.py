"""A graceful stop for a training run: the first SIGINT (Ctrl-C) or SIGTERM asks the run to stop
at the end of the segment it is in, write a checkpoint there and end; a second one stops at once
(KeyboardInterrupt), losing the steps since the last checkpoint.

Signal handlers can only be set from the main thread, so a run trained in another thread (a Ray
Tune trial) keeps whatever its host does with signals."""
from __future__ import annotations

import contextlib
import signal
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    """Context manager: while inside, SIGINT and SIGTERM set `signal` (its name) instead of
    interrupting; the handlers that were there before come back on exit."""

    def __init__(self, log=print):
        self.log, self.signal = log, None
        self._previous: dict = {}

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _handle(self, signum, frame) -> None:
        if self.signal is not None:
            self.__exit__()
            raise KeyboardInterrupt
        self.signal = signal.Signals(signum).name
        self.log(f"{self.signal}: the run stops at the end of this segment and writes a checkpoint there "
                 f"(send it again to stop at once, losing the steps since the last checkpoint)")


@contextlib.contextmanager
def handlers_kept(signals=SIGNALS):
    """Whatever handled SIGINT and SIGTERM before the block handles them after it. Ray Tune's
    `Tuner.fit` sets a SIGINT handler of its own and leaves it behind when it ends normally: the
    process's next Ctrl-C would only set an event that nothing waits on any more."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = {sig: signal.getsignal(sig) for sig in signals}
    try:
        yield
    finally:
        for sig, handler in before.items():
            if handler is not None:
                signal.signal(sig, handler)
