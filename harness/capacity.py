"""Whether a proxy holds as many streams at once as DorkOS allows.

DorkOS serves up to 500 readers on its global stream (the 501st gets a
503), and each browser tab holds a stream or two. A proxy in front of it
should hold 500 streams open at the same moment. Here each stream opens and
gets its snapshot; once all of them are open, one event is published to
every stream, and each must receive it.

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
from dataclasses import dataclass

from harness import margins
from harness.endpoints import Endpoint, violation
from harness.mock_dorkos import MockDorkOS
from harness.sse_client import Dechunker
from harness.tls import SERVER_NAME

STREAMS = 500
# Streams open over this long, as tabs reconnecting would, not in one burst.
RAMP_S = 2.0
# A proxy that can hold them all had them open in a few seconds, and each
# event delivered in well under one.
ALL_OPEN_WITHIN_S = 60.0
EVENT_WITHIN_S = 30.0
_ONE_AT_A_TIME = threading.Lock()


class StreamFailed(Exception):
    pass


async def _request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str) -> bool:
    """Ask for the stream; whether its body comes chunked."""
    writer.write(
        f"GET {path} HTTP/1.1\r\nHost: {SERVER_NAME}\r\nAccept: text/event-stream\r\n"
        f"Cache-Control: no-cache\r\n\r\n".encode()
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), ALL_OPEN_WITHIN_S)
    if not head.startswith(b"HTTP/1.1 200"):
        status_line = head.split(b"\r\n", 1)[0].decode()
        raise StreamFailed(f"answered {status_line!r}")
    return b"transfer-encoding: chunked" in head.lower()


async def _close(writer: asyncio.StreamWriter) -> None:
    # As a closed tab does: no TLS goodbye to wait for, the socket goes now.
    writer.transport.abort()
    await asyncio.sleep(0)  # the transport lets go of its socket on the next turn


async def _read_until(
    reader: asyncio.StreamReader, dechunker: Dechunker | None, text: bytes, marker: bytes
) -> bytes:
    """Read until `marker` has arrived; what came after it."""
    while marker not in text:
        data = await reader.read(65536)
        if not data:
            raise StreamFailed(f"closed before {marker.decode()!r} arrived")
        text += dechunker.feed(data) if dechunker else data
    return text.split(marker, 1)[1]


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
        writer = None
        is_open = False
        began = time.monotonic()
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, int(port), ssl=context, server_hostname=SERVER_NAME),
                ALL_OPEN_WITHIN_S,
            )
            chunked = await _request(reader, writer, f"/api/sessions/{session}/events")
            dechunker = Dechunker() if chunked else None
            rest = await asyncio.wait_for(
                _read_until(reader, dechunker, b"", b"event: snapshot"), ALL_OPEN_WITHIN_S
            )
            rest = await asyncio.wait_for(
                _read_until(reader, dechunker, rest, b"\n\n"), ALL_OPEN_WITHIN_S
            )
            is_open = True
            held.slowest_open_s = max(held.slowest_open_s, time.monotonic() - began)
            settle()
            await events_sent.wait()
            if session not in published:
                raise StreamFailed("no event could be published to it")
            event_id, sent = published[session]
            await asyncio.wait_for(
                _read_until(reader, dechunker, rest, f"id: {event_id}".encode()), EVENT_WITHIN_S
            )
            held.slowest_event_s = max(held.slowest_event_s, time.monotonic() - sent)
        finally:
            if not is_open:
                settle()
            if writer is not None:
                await _close(writer)

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
        f"{STREAMS} streams open at once; each got the event published to it (slowest "
        f"to open {held.slowest_open_s:.1f} s, slowest event {held.slowest_event_s:.2f} s)"
    )
