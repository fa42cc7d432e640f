"""DorkOS's durable streams as the mock serves them: one core, a sink per transport.

DorkOS writes the sequencing of a stream once (a snapshot on a cold connect,
a gap-free replay from a cursor, then live frames) behind a
`DurableStreamSink`, and gives each transport its own sink: an SSE sink that
writes `id:`/`event:`/`data:` lines, and a WebSocket sink that writes one
JSON text frame per frame (apps/server/src/services/core/streams/ in the
DorkOS source). The mock has the same shape, so a bug in the sequencing is
found, and fixed, for both transports at once.

What each transport writes, as DorkOS 0.62 does:
- a frame: over SSE the lines `id: <id>` (if it has one), `event: <event>`
  and `data: <json>`; over a socket `{"event":...,"data":...,"id":...}`;
- a heartbeat every 15 s: over SSE the comment `: keepalive` (a real
  `event: heartbeat` on /api/events); over a socket `{"event":"__heartbeat"}`.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from wsproto import WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import BytesMessage, CloseConnection, Message, Ping, TextMessage

Transport = Literal["sse", "websocket"]
# The reserved frame DorkOS's sockets carry for liveness (a browser's page
# can't see protocol pongs).
SOCKET_HEARTBEAT = '{"event":"__heartbeat"}'
# `?resume=` and Last-Event-ID carry `<resourceId>-<epoch>-<seq>`.
_CURSOR_TAIL = re.compile(r"-(\d+)-(\d+)$")


@dataclass(frozen=True)
class StreamFrame:
    """One frame of a durable stream; `id` only on frames with a place in the sequence."""

    event: str
    data: str | None = None  # JSON text
    id: str | None = None


class StreamSink(Protocol):
    """Where a stream's frames go: DorkOS's DurableStreamSink, less what the mock needs not."""

    transport: Transport

    async def send(self, frame: StreamFrame) -> None: ...

    async def heartbeat(self) -> None: ...


Write = Callable[[bytes], Coroutine[Any, Any, None]]


class SseSink:
    """Frames as Server-Sent Events, on a response whose head is already written."""

    transport: Transport = "sse"

    def __init__(self, write: Write, *, global_stream: bool = False) -> None:
        self._write = write
        # /api/events beats with a real event; the other streams with a comment.
        self._beat = b"event: heartbeat\ndata: \n\n" if global_stream else b": keepalive\n\n"

    async def send(self, frame: StreamFrame) -> None:
        lines = [f"id: {frame.id}"] if frame.id is not None else []
        lines += [f"event: {frame.event}", f"data: {frame.data or ''}"]
        await self._write(("\n".join(lines) + "\n\n").encode())

    async def comment(self, text: str) -> None:
        await self._write(f": {text}\n\n".encode())

    async def heartbeat(self) -> None:
        await self._write(self._beat)


class SocketSink:
    """Frames as JSON text messages on an accepted WebSocket."""

    transport: Transport = "websocket"

    def __init__(self, write: Write, connection: WSConnection) -> None:
        self._write = write
        self.connection = connection

    async def send(self, frame: StreamFrame) -> None:
        parts = [f'"event":{json.dumps(frame.event)}']
        if frame.data is not None:
            parts.append(f'"data":{frame.data}')
        if frame.id is not None:
            parts.append(f'"id":{json.dumps(frame.id)}')
        await self.text("{" + ",".join(parts) + "}")

    async def heartbeat(self) -> None:
        await self.text(SOCKET_HEARTBEAT)

    async def text(self, message: str) -> None:
        await self._write(self.connection.send(TextMessage(data=message)))

    async def binary(self, message: bytes) -> None:
        await self._write(self.connection.send(BytesMessage(data=message)))

    async def reply(self, event: CloseConnection | Ping) -> None:
        """Answer a close frame or a ping, as a WebSocket server must."""
        await self._write(self.connection.send(event.response()))


async def serve_socket_input(
    read: Callable[[], Coroutine[Any, Any, bytes]],
    sink: SocketSink,
    on_message: Callable[[Message[Any]], Coroutine[Any, Any, None]] | None = None,
) -> None:
    """Read the client's side of a socket until it closes or goes away.

    Answers pings (the `ws` package does by default) and a close frame with
    one of its own, as a WebSocket server must.
    """
    connection = sink.connection
    while True:
        data = await read()
        if not data:
            return  # gone without a close frame
        connection.receive_data(data)
        for event in connection.events():
            if isinstance(event, CloseConnection):
                # The client's close, to answer; or its answer to ours.
                if connection.state is ConnectionState.REMOTE_CLOSING:
                    await sink.reply(event)
                return
            if isinstance(event, Ping):
                await sink.reply(event)
            elif isinstance(event, Message) and on_message is not None:
                await on_message(event)


@dataclass(frozen=True)
class LoggedEvent:
    seq: int
    frame: StreamFrame


@dataclass
class ResourceLog:
    """The sequence of one session or room, and who is listening to it."""

    resource_id: str
    events: list[LoggedEvent] = field(default_factory=list)
    subscribers: set[asyncio.Queue[StreamFrame]] = field(default_factory=set)
    # Set when a paced client has every frame sent to it so far.
    delivered: asyncio.Event = field(default_factory=asyncio.Event)

    def append(self, epoch: int, event: str, data: str) -> LoggedEvent:
        seq = len(self.events) + 1
        frame = StreamFrame(event, data, f"{self.resource_id}-{epoch}-{seq}")
        logged = LoggedEvent(seq, frame)
        self.events.append(logged)
        for queue in list(self.subscribers):
            queue.put_nowait(frame)
        return logged

    def after(self, seq: int) -> list[StreamFrame]:
        return [logged.frame for logged in self.events if logged.seq > seq]


def resume_point(resource_id: str, epoch: int, cursor: str | None, after: str | None) -> int | None:
    """The sequence number to replay after, or None for a cold connect.

    As DorkOS's parseResumeCursor: a cursor (`Last-Event-ID` or `?resume=`)
    from another server start or another resource, or malformed, is a cold
    connect, not an error; `?after=<seq>` is read only without a cursor.
    """
    if cursor is not None:
        found = _CURSOR_TAIL.search(cursor)
        if not found or not cursor.startswith(f"{resource_id}-") or int(found[1]) != epoch:
            return None
        return int(found[2])
    if after is not None and after.isdigit():
        return int(after)
    return None


async def deliver(
    sink: StreamSink,
    log: ResourceLog,
    *,
    replay_after: int | None,
    snapshot: Callable[[], StreamFrame],
    heartbeat_interval: float | None,
    schedule: Callable[[], Coroutine[Any, Any, None]] | None = None,
) -> None:
    """The sequencing core: snapshot or replay, then live frames, with heartbeats.

    Subscribes before sending anything, so no event published meanwhile is
    missed, and a replayed event is never sent twice. Runs until cancelled
    (the client went away).
    """
    queue: asyncio.Queue[StreamFrame] = asyncio.Queue()
    log.subscribers.add(queue)
    tasks: list[asyncio.Future[None]] = []
    try:
        # What the opening frames cover, fixed before the first await: an
        # event published while they are written is queued, and goes out live.
        if replay_after is None:
            highest, opening = len(log.events), [snapshot()]
        else:
            opening = log.after(replay_after)
            highest = max(replay_after, len(log.events))
        for frame in opening:
            await sink.send(frame)
        tasks.append(asyncio.ensure_future(beat(sink, heartbeat_interval)))
        if schedule is not None:
            tasks.append(asyncio.ensure_future(schedule()))
        while True:
            frame = await queue.get()
            seq = int(_CURSOR_TAIL.search(frame.id or "-0-0")[2])  # type: ignore[index]
            if seq > highest:  # sent already, in the snapshot's or the replay's range
                highest = seq
                await sink.send(frame)
    finally:
        log.subscribers.discard(queue)
        for task in tasks:
            task.cancel()


async def beat(sink: StreamSink, interval: float | None) -> None:
    """Heartbeats every `interval` seconds (none at all when None), for ever."""
    if interval is None:
        await asyncio.Event().wait()
        return
    while True:
        await asyncio.sleep(interval)
        await sink.heartbeat()
