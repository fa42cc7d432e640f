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
import json
import re
import ssl
import threading
import time
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Event, RejectConnection, Request, TextMessage

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


class _SseStream:
    """One stream as an EventSource reads it, over a raw TLS connection."""

    def __init__(self) -> None:
        self.writer: asyncio.StreamWriter | None = None
        self.rest = b""

    async def open(self, host: str, port: int, context: ssl.SSLContext, path: str) -> None:
        """Connect, ask for the stream, and read up to the end of its snapshot."""
        reader, self.writer = await asyncio.open_connection(
            host, port, ssl=context, server_hostname=SERVER_NAME
        )
        self.reader = reader
        self.writer.write(
            f"GET {path} HTTP/1.1\r\nHost: {SERVER_NAME}\r\nAccept: text/event-stream\r\n"
            f"Cache-Control: no-cache\r\n\r\n".encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            status_line = head.split(b"\r\n", 1)[0].decode()
            raise StreamFailed(f"answered {status_line!r}")
        chunked = b"transfer-encoding: chunked" in head.lower()
        self.dechunker = Dechunker() if chunked else None
        self.rest = await self._until(b"", b"event: snapshot")
        self.rest = await self._until(self.rest, b"\n\n")

    async def until_event(self, event_id: str) -> None:
        await self._until(self.rest, f"id: {event_id}".encode())

    async def _until(self, text: bytes, marker: bytes) -> bytes:
        """Read until `marker` has arrived; what came after it."""
        while marker not in text:
            data = await self.reader.read(65536)
            if not data:
                raise StreamFailed(f"closed before {marker.decode()!r} arrived")
            text += self.dechunker.feed(data) if self.dechunker else data
        return text.split(marker, 1)[1]

    async def close(self) -> None:
        if self.writer is not None:
            # As a closed tab does: no TLS goodbye to wait for, the socket goes now.
            self.writer.transport.abort()
            await asyncio.sleep(0)  # the transport lets go of its socket on the next turn


class _SocketStream:
    """One stream as the app reads it, over a WebSocket."""

    def __init__(self) -> None:
        self.writer: asyncio.StreamWriter | None = None
        self.connection = WSConnection(ConnectionType.CLIENT)
        self.pending: list[Event] = []  # read, not yet looked at

    async def open(self, host: str, port: int, context: ssl.SSLContext, path: str) -> None:
        """Connect, upgrade, and read up to the snapshot frame."""
        self.reader, self.writer = await asyncio.open_connection(
            host, port, ssl=context, server_hostname=SERVER_NAME
        )
        origin = (b"Origin", f"https://{SERVER_NAME}".encode())
        self.writer.write(
            self.connection.send(Request(host=SERVER_NAME, target=path, extra_headers=[origin]))
        )
        while not isinstance(event := await self._next_event(), AcceptConnection):
            if isinstance(event, RejectConnection):
                raise StreamFailed(f"handshake answered {event.status_code}, not 101")
        await self._until(lambda frame: frame.get("event") == "snapshot")

    async def until_event(self, event_id: str) -> None:
        await self._until(lambda frame: frame.get("id") == event_id)

    async def _next_event(self) -> Event:
        while not self.pending:
            data = await self.reader.read(65536)
            self.connection.receive_data(data or None)
            self.pending.extend(self.connection.events())
            if not data and not self.pending:
                raise StreamFailed("closed before the frame arrived")
        return self.pending.pop(0)

    async def _until(self, wanted: Any) -> None:
        parts: list[str] = []
        while True:
            event = await self._next_event()
            if isinstance(event, TextMessage):
                parts.append(event.data)  # a large frame can come in pieces
                if event.message_finished:
                    message, parts = "".join(parts), []
                    if wanted(json.loads(message)):
                        return

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.transport.abort()
            await asyncio.sleep(0)


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
        stream: _SseStream | _SocketStream = _SocketStream() if index % 2 else _SseStream()
        is_open = False
        began = time.monotonic()
        try:
            path = f"/api/sessions/{session}/events"
            await _within(stream.open(host, int(port), context, path), ALL_OPEN_WITHIN_S, "open")
            is_open = True
            held.slowest_open_s = max(held.slowest_open_s, time.monotonic() - began)
            settle()
            await events_sent.wait()
            if session not in published:
                raise StreamFailed("no event could be published to it")
            event_id, sent = published[session]
            await _within(stream.until_event(event_id), EVENT_WITHIN_S, "get its event")
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
