"""Many streams from one asyncio loop: the clients of the 500-stream check and the bench.

One stream reads as a browser would over either of DorkOS's transports: an
EventSource over a raw HTTP/1.1 connection, or the app's WebSocket (wsproto
framing, an Origin like a page's). Both give back frames with the time they
arrived, and leave the way a closed tab does: the connection just goes.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from typing import Literal, Protocol

from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    Event,
    RejectConnection,
    Request,
    TextMessage,
)

from harness.clients.sse_client import Dechunker, Frame, parse_frame
from harness.lab.tls import SERVER_NAME
from harness.upstream.mock_streams import SOCKET_HEARTBEAT

Transport = Literal["sse", "websocket"]
_HEARTBEAT = json.loads(SOCKET_HEARTBEAT)["event"]


class StreamFailed(Exception):
    pass


class LoadStream(Protocol):
    async def open(self, host: str, port: int, context: ssl.SSLContext | None, path: str) -> None:
        """Connect and ask for the stream; returns once it is answered."""

    async def next_frame(self) -> Frame:
        """The next frame that carries an event (heartbeats are skipped)."""

    async def close(self) -> None: ...


def load_stream(transport: Transport) -> LoadStream:
    return SseLoadStream() if transport == "sse" else SocketLoadStream()


async def _connect(
    host: str, port: int, context: ssl.SSLContext | None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(
        host, port, ssl=context, server_hostname=SERVER_NAME if context else None
    )


def _abort(writer: asyncio.StreamWriter | None) -> None:
    # As a closed tab does: no goodbye to wait for, the socket goes now.
    if writer is not None:
        writer.transport.abort()


class SseLoadStream:
    """One stream as an EventSource reads it."""

    def __init__(self) -> None:
        self.writer: asyncio.StreamWriter | None = None
        self.text = b""
        self.frames: list[Frame] = []

    async def open(self, host: str, port: int, context: ssl.SSLContext | None, path: str) -> None:
        self.reader, self.writer = await _connect(host, port, context)
        self.writer.write(
            f"GET {path} HTTP/1.1\r\nHost: {SERVER_NAME}\r\nAccept: text/event-stream\r\n"
            f"Cache-Control: no-cache\r\n\r\n".encode()
        )
        head = await self.reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            status_line = head.split(b"\r\n", 1)[0].decode()
            raise StreamFailed(f"answered {status_line!r}")
        self.dechunker = Dechunker() if b"transfer-encoding: chunked" in head.lower() else None

    async def next_frame(self) -> Frame:
        while not self.frames:
            data = await self.reader.read(65536)
            if not data:
                raise StreamFailed("the stream ended")
            arrived = time.monotonic()
            self.text += self.dechunker.feed(data) if self.dechunker else data
            *blocks, self.text = self.text.split(b"\n\n")
            parsed = (parse_frame(b.decode(), arrived) for b in blocks)
            self.frames += [f for f in parsed if f.data is not None]
        return self.frames.pop(0)

    async def close(self) -> None:
        _abort(self.writer)
        await asyncio.sleep(0)  # the transport lets go of its socket on the next turn


class SocketLoadStream:
    """One stream as DorkOS's app reads it, over a WebSocket."""

    def __init__(self) -> None:
        self.writer: asyncio.StreamWriter | None = None
        self.connection = WSConnection(ConnectionType.CLIENT)
        self.pending: list[Event] = []  # read, not yet looked at
        self.parts: list[str] = []
        self.ended = False  # the peer closed the connection

    async def open(self, host: str, port: int, context: ssl.SSLContext | None, path: str) -> None:
        self.reader, self.writer = await _connect(host, port, context)
        scheme = "https" if context else "http"
        origin = (b"Origin", f"{scheme}://{SERVER_NAME}".encode())
        request = Request(host=SERVER_NAME, target=path, extra_headers=[origin])
        self.writer.write(self.connection.send(request))
        while not isinstance(event := await self._next_event(), AcceptConnection):
            if isinstance(event, RejectConnection):
                raise StreamFailed(f"handshake answered {event.status_code}, not 101")

    async def _next_event(self) -> Event:
        while not self.pending:
            # At end of file, read() returns at once without yielding to the
            # loop, so reading again would spin for ever, out of reach of
            # any timeout: a closed socket must end the stream here.
            if self.ended:
                raise StreamFailed("the socket closed")
            data = await self.reader.read(65536)
            self.ended = not data
            self.connection.receive_data(data or None)
            self.pending.extend(self.connection.events())
        return self.pending.pop(0)

    async def next_frame(self) -> Frame:
        while True:
            event = await self._next_event()
            if isinstance(event, CloseConnection):
                raise StreamFailed(f"the socket closed with code {event.code}")
            if not isinstance(event, TextMessage):
                continue
            self.parts.append(event.data)  # a large frame can come in pieces
            if not event.message_finished:
                continue
            message, self.parts = "".join(self.parts), []
            decoded = json.loads(message)
            if decoded.get("event") == _HEARTBEAT:
                continue
            data = json.dumps(decoded["data"]) if "data" in decoded else None
            return Frame(time.monotonic(), decoded.get("event"), decoded.get("id"), data, None)

    async def close(self) -> None:
        _abort(self.writer)
        await asyncio.sleep(0)
