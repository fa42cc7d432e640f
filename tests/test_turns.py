"""Busy work and timed checks never overlap, and neither waits for ever."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from harness.turns import Kind, Turns


def hold(turns: Turns, kind: Kind, seconds: float, log: list[tuple[str, float, float]]) -> None:
    with turns.turn(kind):
        began = time.monotonic()
        time.sleep(seconds)
        log.append((kind, began, time.monotonic()))


def run_all(*work: Callable[[], None]) -> None:
    threads = [threading.Thread(target=w, daemon=True) for w in work]
    for thread in threads:
        thread.start()
        time.sleep(0.01)  # in this order
    for thread in threads:
        thread.join(timeout=10)
        assert not thread.is_alive(), "a turn was never given"


def overlapping(log: list[tuple[str, float, float]]) -> list[tuple[str, str]]:
    return [
        (a[0], b[0])
        for i, a in enumerate(log)
        for b in log[i + 1 :]
        if a[0] != b[0] and a[1] < b[2] and b[1] < a[2]
    ]


Log = list[tuple[str, float, float]]


def take_turns(*holders: tuple[Kind, float]) -> Log:
    """Each (kind, seconds) holds a turn on its own thread, started in this order."""
    turns, log = Turns(), []  # type: Turns, Log
    run_all(*(lambda k=kind, s=seconds: hold(turns, k, s, log) for kind, seconds in holders))
    return log


def start_order(log: Log) -> list[str]:
    return [entry[0] for entry in sorted(log, key=lambda entry: entry[1])]


def test_kinds_never_overlap_and_each_kind_shares() -> None:
    log = take_turns(
        ("timing", 0.2), ("timing", 0.2), ("busy", 0.2), ("busy", 0.2), ("timing", 0.2)
    )
    assert overlapping(log) == []
    setups = [entry for entry in log if entry[0] == "busy"]
    assert setups[0][1] < setups[1][2] and setups[1][1] < setups[0][2], "busy work did not share"


def test_waiting_busy_work_goes_before_new_timed_checks() -> None:
    log = take_turns(("timing", 0.2), ("busy", 0.1), ("timing", 0.1))
    assert start_order(log) == ["timing", "busy", "timing"]


def test_asking_for_a_turn_inside_one_is_an_error() -> None:
    turns = Turns()
    with (
        turns.turn("busy"),
        pytest.raises(RuntimeError, match="'timing' asked for inside 'busy'"),
    ):
        turns.begin("timing")


def test_busy_work_goes_first_while_timed_checks_wait() -> None:
    """So that all runs' start-ups happen in one burst, then the timed checks."""
    log = take_turns(("busy", 0.2), ("timing", 0.1), ("busy", 0.1))
    assert start_order(log) == ["busy", "busy", "timing"]


def test_a_bounded_wait_gives_up_and_leaves_no_waiter() -> None:
    turns = Turns()
    timed = threading.Thread(target=hold, args=(turns, "timing", 0.5, []), daemon=True)
    timed.start()
    time.sleep(0.05)
    with turns.turn("busy", wait_at_most=0.1) as held:
        assert held is False
    timed.join(timeout=5)
    # A busy waiter left counted would keep every timed check out.
    with turns.turn("timing", wait_at_most=1.0) as held:
        assert held is True
