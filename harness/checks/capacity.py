"""Whether a proxy holds as many streams at once as DorkOS allows.

DorkOS serves up to 500 readers on its global stream (the 501st is
refused), SSE and sockets together, and each browser tab holds a stream or
two. A proxy in front of it should hold 500 streams open at the same
moment: here half of them WebSockets, as today's app opens them, and half
SSE, as integrations do. Each stream opens and gets its snapshot; once all
of them are open, one event is published to every stream, and each must
receive it.

This is a count, not a timing: how fast is for the benchmark to say. The
deadlines only stop a proxy that holds bytes back from hanging the check;
they are many times what a healthy proxy took on a busy two-core machine.
Checks take turns, one run at a time: seven of them at once would be 3,500
handshakes on two cores, a load no single reader's proxy sees.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from harness.checks.endpoints import Endpoint, violation
from harness.clients.load_clients import LoadStream, StreamFailed, load_stream
from harness.clients.sse_client import Frame
from harness.tables import margins
from harness.upstream.mock_dorkos import MockDorkOS

STREAMS = 500
# Streams open over this long, as tabs reconnecting would, not in one burst.
RAMP_S = 2.0
# A proxy that can hold them all had them open in a few seconds, and each
# event delivered in well under one, on a quiet machine; on a busy two-core
# one, where this process also runs the mock and every other check, the
# slowest took 12.3 s to open and 6.2 s to get its event. A proxy that
# cannot hold them refuses or drops streams, which is seen at once.
ALL_OPEN_WITHIN_S = 120.0
EVENT_WITHIN_S = 90.0
_ONE_AT_A_TIME = threading.Lock()


async def _until(stream: LoadStream, wanted: Callable[[Frame], bool]) -> None:
    while not wanted(await stream.next_frame()):
        pass


async def _within(step: Coroutine[Any, Any, None], seconds: float, what: str) -> None:
    try:
        await asyncio.wait_for(step, seconds)
    except TimeoutError:
        raise StreamFailed(f"did not {what} within {seconds:.0f} s") from None


@dataclass
class Held:
    """How the streams fared: each one's error (None: it held), and the slowest waits."""

    errors: list[BaseException | None]
    slowest_open_s: float = 0.0  # from a stream's start to its snapshot
    slowest_event_s: float = 0.0  # from an event's publication to its arrival


async def _hold_streams(endpoint: Endpoint, mock: MockDorkOS, sessions: list[str]) -> Held:
    host, port = endpoint.target.base_url.split("://", 1)[1].rsplit(":", 1)
    context = endpoint.target.ssl_context()
    context.set_alpn_protocols(["http/1.1"])
    # Each stream settles once: open with its snapshot, or failed before.
    settled = 0
    all_settled = asyncio.Event()
    published: dict[str, tuple[str, float]] = {}  # session: (event id, when)
    events_sent = asyncio.Event()
    held = Held(errors=[])

    def settle() -> None:
        nonlocal settled
        settled += 1
        if settled == len(sessions):
            all_settled.set()

    async def one(index: int, session: str) -> None:
        await asyncio.sleep(RAMP_S * index / len(sessions))
        # Every other stream a socket: half as the app opens them, half as SSE.
        stream = load_stream("websocket" if index % 2 else "sse")
        is_open = False
        began = time.monotonic()

        async def opened() -> None:
            await stream.open(host, int(port), context, f"/api/sessions/{session}/events")
            await _until(stream, lambda frame: frame.event == "snapshot")

        try:
            await _within(opened(), ALL_OPEN_WITHIN_S, "open")
            is_open = True
            held.slowest_open_s = max(held.slowest_open_s, time.monotonic() - began)
            settle()
            await events_sent.wait()
            if session not in published:
                raise StreamFailed("no event could be published to it")
            event_id, sent = published[session]
            arrived = _until(stream, lambda frame: frame.event_id == event_id)
            await _within(arrived, EVENT_WITHIN_S, "get its event")
            held.slowest_event_s = max(held.slowest_event_s, time.monotonic() - sent)
        finally:
            if not is_open:
                settle()
            await stream.close()

    async def publish_when_all_open() -> None:
        try:
            await asyncio.wait_for(all_settled.wait(), RAMP_S + ALL_OPEN_WITHIN_S)
        finally:
            # Publish either way, so streams still open do not wait for ever.
            try:
                loop = asyncio.get_running_loop()
                for session in sessions:
                    event_id = await loop.run_in_executor(None, mock.publish, session)
                    published[session] = (event_id, time.monotonic())
            finally:
                events_sent.set()

    publisher = asyncio.ensure_future(publish_when_all_open())
    results = await asyncio.gather(
        *(one(i, s) for i, s in enumerate(sessions)), return_exceptions=True
    )
    await asyncio.gather(publisher, return_exceptions=True)
    held.errors = [r if isinstance(r, BaseException) else None for r in results]
    return held


# What a proxy logs when it runs out of something streams need.
_LIMIT = re.compile(
    r"worker_connections are not enough|Too many open files|\[(?:alert|crit|emerg)\]"
)


def limits_named(endpoint: Endpoint) -> list[str]:
    """The distinct lines of the proxy's log that name a limit it ran into."""
    lines = endpoint.log_tail(100_000).splitlines()
    # nginx's lines start with a time stamp; what follows says what it hit.
    return sorted({line.split("] ", 1)[-1] for line in lines if _LIMIT.search(line)})[:5]


def check_holds_streams(endpoint: Endpoint, mock: MockDorkOS) -> str:
    """All STREAMS streams open at once, and an event reaches every one of them."""
    sessions = [mock.behave(str(uuid.uuid4()), heartbeat_interval=None) for _ in range(STREAMS)]
    with _ONE_AT_A_TIME:
        held = asyncio.run(_hold_streams(endpoint, mock, sessions))
    failed = [e for e in held.errors if e is not None]
    if failed:
        kinds = sorted({f"{type(e).__name__}: {e}" for e in failed})
        raise violation(
            endpoint,
            f"{len(failed)} of {STREAMS} streams failed; all {STREAMS} must be open at "
            f"once and get their event. Failures: {kinds[:3]}. "
            f"Limits the proxy's log names so far: {limits_named(endpoint) or 'none'}",
        )
    margins.observe("stream open, of 500", held.slowest_open_s, ALL_OPEN_WITHIN_S, endpoint.label)
    margins.observe("event, to 500 streams", held.slowest_event_s, EVENT_WITHIN_S, endpoint.label)
    return (
        f"{STREAMS} streams open at once, half of them WebSockets; each got the event "
        f"published to it (slowest "
        f"to open {held.slowest_open_s:.1f} s, slowest event {held.slowest_event_s:.2f} s)"
    )
