"""The worst figure each bounded wait saw in this run, to print beside its bound.

No check is decided by how fast a proxy is, but some have to stop waiting
somewhere: a stalled stream, a close that never comes, a container that is
never ready. Each such bound is meant to be ten times or more what a
healthy proxy takes on a busy machine. The end of every run prints the
worst figure seen next to its bound, so anyone can see how far from
failing a green run was, and a bound drifting too close shows up before it
turns a run red.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass


@dataclass(frozen=True)
class Margin:
    what: str  # e.g. "event delay through a proxy"
    worst: float  # seconds
    bound: float  # seconds
    where: str  # the run that saw the worst

    @property
    def times_under(self) -> float:
        return self.bound / self.worst if self.worst > 0 else float("inf")

    def line(self) -> str:
        return (
            f"{self.what}: worst {_seconds(self.worst)}, bound {_seconds(self.bound)} "
            f"({self.times_under:,.0f}x; {self.where})"
        )


def _seconds(value: float) -> str:
    return f"{value * 1000:,.0f} ms" if value < 1 else f"{value:,.1f} s"


_lock = threading.Lock()
_worst: dict[str, Margin] = {}


def observe(what: str, seconds: float, bound: float, where: str) -> None:
    """Record one healthy wait; only the worst of each kind is kept."""
    with _lock:
        seen = _worst.get(what)
        if seen is None or seconds > seen.worst:
            _worst[what] = Margin(what, seconds, bound, where)


def worst() -> list[Margin]:
    with _lock:
        return sorted(_worst.values(), key=lambda m: m.times_under)
