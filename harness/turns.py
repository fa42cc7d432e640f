"""Busy work and timing take turns, so runs can overlap without skewing timings.

Starting a container, running certbot or holding 500 streams costs a burst
of CPU. On a two-core machine, such bursts beside a real-time check added up
to 44 ms to an event's delay, against 0.6 ms on a quiet machine; with a
dozen runs starting at once, delays passed the 100 ms bound. So any amount
of busy work may overlap, and any number of timed checks may overlap, but
the two kinds never do.

Busy work goes first: a timed check waits while any busy work is under way
or waiting, and busy work waits only for timed checks already under way.
When every run starts at once, all the start-ups then happen in one burst
and the timed checks after it, instead of taking turns a hundred times.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Literal

Kind = Literal["busy", "timing"]


class Turns:
    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._phase: Kind | None = None
        self._active = 0
        self._waiting: dict[Kind, int] = {"busy": 0, "timing": 0}
        self._holding = threading.local()

    def begin(self, kind: Kind, wait_at_most: float | None = None) -> bool:
        """Wait for a turn of `kind`; False if `wait_at_most` seconds passed first."""
        # A thread that waited for a turn while holding one could wait for
        # ever; that is a bug in the caller, so say so at once.
        if getattr(self._holding, "kind", None) is not None:
            raise RuntimeError(f"{kind!r} asked for inside {self._holding.kind!r} on one thread")
        with self._changed:
            self._waiting[kind] += 1
            try:
                given = self._changed.wait_for(
                    lambda: (
                        self._phase in (None, kind)
                        and (kind == "busy" or not self._waiting["busy"])
                    ),
                    timeout=wait_at_most,
                )
            finally:
                self._waiting[kind] -= 1
                self._changed.notify_all()
            if not given:
                return False
            self._phase = kind
            self._active += 1
        self._holding.kind = kind
        return True

    def end(self) -> None:
        self._holding.kind = None
        with self._changed:
            self._active -= 1
            if self._active == 0:
                self._phase = None
            self._changed.notify_all()

    @contextlib.contextmanager
    def turn(self, kind: Kind, wait_at_most: float | None = None) -> Iterator[bool]:
        """Hold a turn of `kind`; yields False (holding none) if the wait ran out."""
        held = self.begin(kind, wait_at_most)
        try:
            yield held
        finally:
            if held:
                self.end()


# One per process: the CPU they share is the machine's.
TURNS = Turns()


def busy() -> contextlib.AbstractContextManager[bool]:
    return TURNS.turn("busy")


def timing(wait_at_most: float | None = None) -> contextlib.AbstractContextManager[bool]:
    return TURNS.turn("timing", wait_at_most)
