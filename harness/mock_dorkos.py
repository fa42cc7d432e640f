"""A stand-in for the DorkOS server, as far as a reverse proxy can tell.

It speaks raw HTTP/1.x over asyncio streams rather than through a framework,
because the framing is the point: nginx talks HTTP/1.0 to its upstreams by
default, Node answers such a request with a body delimited by closing the
connection, and that changes what proxy buffering does. Every behaviour that
a test may want to vary is a field of `MockSettings`.

Differences from DorkOS that are deliberate (see docs/how-it-is-tested.md):
- it binds 127.0.0.1 only by default, where DorkOS binds whatever `localhost`
  resolves to first;
- live events are produced by a schedule the test sets (or by `publish`),
  not by an agent;
- login is not modelled: the host guard behaves as with login off.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import signal
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from harness.netns import PrivateNetwork

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "[::1]", "::1"})

# Express's json() limit of "1mb" is 1 MiB.
JSON_BODY_LIMIT = 1024 * 1024
# Node's default listen backlog. asyncio's is 100: with it, a burst of
# connections (500 streams opening at once) overflowed the queue and the
# proxy answered some with 502, which DorkOS itself would have accepted.
LISTEN_BACKLOG = 511


@dataclass(frozen=True)
class MockSettings:
    """How the mock behaves. Defaults are a reader's DorkOS behind a proxy."""

    host: str = "127.0.0.1"
    port: int = 4242
    # DORKOS_TRUSTED_HOSTS as a reader would set it for dorkos.example.com.
    trusted_hosts: frozenset[str] = frozenset({"dorkos.example.com"})
    host_guard: bool = True
    # A request carrying Origin must match <X-Forwarded-Proto or http>://<Host>.
    origin_check: bool = True
    # Most DorkOS stream routes send it; some older ones don't.
    accel_buffering_header: bool = True
    # DorkOS sends `: keepalive` every 15 s; None turns heartbeats off.
    heartbeat_interval: float | None = 15.0
    # Live events each session stream produces on its own, after the snapshot.
    events_per_stream: int = 0
    event_interval: float = 0.2
    # Send each scheduled event only once the client has said (`delivered`)
    # that the previous frame arrived: a proxy that holds a frame back then
    # stalls the stream outright, whatever the machine's load.
    paced_by_client: bool = False
    # Seconds between the request and the response headers (a slow upstream).
    first_byte_delay: float = 0.0
    # Bytes of history in the cold-connect snapshot (DorkOS: tens to hundreds
    # of KiB).
    snapshot_bytes: int = 32 * 1024
    # A stream is closed by the server after this long, so nothing leaks.
    max_stream_seconds: float = 600.0


@dataclass
class RequestRecord:
    """What the upstream saw of one request, and when its connection closed."""

    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]
    peer: str
    received_at: float
    status: int = 0
    body_bytes: int = 0
    connection_closed_at: float | None = None
    # Set once connection_closed_at is: what a test waits on.
    closed: threading.Event = field(default_factory=threading.Event, repr=False, compare=False)

    def header(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k.lower() == name.lower()]
        return ", ".join(values) if values else None

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]


@dataclass
class _Connection:
    records: list[RequestRecord] = field(default_factory=list)


@dataclass(frozen=True)
class SessionEvent:
    seq: int
    event_id: str
    frame: bytes


class _Session:
    def __init__(self, session_id: str) -> None:
        self.session_id = session_id
        self.log: list[SessionEvent] = []
        self.subscribers: set[asyncio.Queue[SessionEvent]] = set()
        # Set when a paced client has the last frame sent to it.
        self.delivered = asyncio.Event()


def sse_frame(*, data: str, event: str | None = None, event_id: str | None = None) -> bytes:
    lines = []
    if event_id is not None:
        lines.append(f"id: {event_id}")
    if event is not None:
        lines.append(f"event: {event}")
    lines.append(f"data: {data}")
    return ("\n".join(lines) + "\n\n").encode()


class _ClientGone(Exception):
    pass


class MockDorkOS:
    """The mock server, run on its own event loop in a background thread.

    Tests read `records` and call `publish` from their own thread; both are
    safe to use while the server runs.
    """

    def __init__(self, settings: MockSettings | None = None, *, listen: bool = True) -> None:
        self.settings = settings or MockSettings()
        # Whether start() listens on settings.host:port here; without it,
        # the mock serves only the private networks given to listening_in().
        self.listen = listen
        self.port = self.settings.port  # the real one once listening (port 0: any)
        self.started_ms = int(time.time() * 1000)
        self.records: list[RequestRecord] = []
        self._records_lock = threading.Lock()
        self._sessions: dict[str, _Session] = {}
        self._overrides: dict[str, dict[str, Any]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self._thread: threading.Thread | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._private_servers: list[asyncio.base_events.Server] = []

    # -- lifecycle -------------------------------------------------------

    def start(self) -> MockDorkOS:
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            if self.listen:
                try:
                    self._server = loop.run_until_complete(
                        asyncio.start_server(
                            self._handle,
                            self.settings.host,
                            self.settings.port,
                            reuse_address=True,
                            backlog=LISTEN_BACKLOG,
                        )
                    )
                except BaseException as error:  # reported to the starting thread
                    failure.append(error)
                    ready.set()
                    loop.close()
                    return
                self.port = self._server.sockets[0].getsockname()[1]
            ready.set()
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=run, name="mock-dorkos", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            raise RuntimeError(
                f"the mock DorkOS upstream could not listen on "
                f"{self.settings.host}:{self.settings.port}: {failure[0]}"
            ) from failure[0]
        return self

    @property
    def base_url(self) -> str:
        return f"http://{self.settings.host}:{self.port}"

    @contextlib.contextmanager
    def listening_in(self, network: PrivateNetwork) -> Iterator[None]:
        """Also serve settings.host:port inside a run's private network."""
        loop = self._loop
        if loop is None:
            raise RuntimeError("the mock is not running")
        address = (self.settings.host, self.settings.port)
        try:
            sock = network.call(socket.create_server, address, backlog=LISTEN_BACKLOG)
        except OSError as error:
            raise RuntimeError(
                f"the mock DorkOS upstream could not listen on {address[0]}:{address[1]} "
                f"in {network.name}: {error}"
            ) from error
        try:
            server = asyncio.run_coroutine_threadsafe(
                asyncio.start_server(self._handle, sock=sock, backlog=LISTEN_BACKLOG), loop
            ).result(timeout=10)
        except BaseException:
            sock.close()
            raise
        self._private_servers.append(server)
        try:
            yield
        finally:
            self._private_servers.remove(server)
            loop.call_soon_threadsafe(server.close)

    def stop(self) -> None:
        loop, server = self._loop, self._server
        if loop is None:
            return

        async def shutdown() -> None:
            for listening in (server, *self._private_servers):
                if listening is not None:
                    listening.close()
            for writer in list(self._writers):
                writer.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(shutdown(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        assert self._thread is not None
        self._thread.join(timeout=10)
        self._loop = self._server = None

    def __enter__(self) -> MockDorkOS:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @contextlib.contextmanager
    def configured(self, **changes: Any) -> Iterator[MockSettings]:
        """Change settings for the duration of a block (host and port excluded)."""
        if {"host", "port"} & changes.keys():
            raise ValueError("host and port are fixed once the mock listens")
        previous = self.settings
        self.settings = dataclasses.replace(previous, **changes)
        try:
            yield self.settings
        finally:
            self.settings = previous

    # -- what tests observe and drive -----------------------------------

    def behave(self, session_id: str, **overrides: Any) -> str:
        """Give one session its own settings; returns the session id.

        Lets tests run streams that behave differently side by side (an idle
        one, a slow one) through the same proxy at the same time.
        """
        dataclasses.replace(self.settings, **overrides)  # reject unknown names now
        self._overrides[session_id] = overrides
        return session_id

    def settings_for(self, path: str) -> MockSettings:
        parts = path.strip("/").split("/")
        if len(parts) >= 3 and parts[:2] == ["api", "sessions"] and parts[2] in self._overrides:
            return dataclasses.replace(self.settings, **self._overrides[parts[2]])
        return self.settings

    def requests_to(self, path: str) -> list[RequestRecord]:
        with self._records_lock:
            return [r for r in self.records if r.path == path]

    def clear_records(self) -> None:
        with self._records_lock:
            self.records.clear()

    def event_id(self, session_id: str, seq: int) -> str:
        return f"{session_id}-{self.started_ms}-{seq}"

    def publish(self, session_id: str, event: str = "text_delta", **payload: Any) -> str:
        """Append a live event to a session and send it to its subscribers."""
        loop = self._loop
        if loop is None:
            raise RuntimeError("the mock is not running")
        future = asyncio.run_coroutine_threadsafe(self._publish(session_id, event, payload), loop)
        return future.result(timeout=5).event_id

    def delivered(self, session_id: str) -> None:
        """A paced client has every frame sent to it so far: send the next."""
        loop = self._loop
        if loop is None:
            raise RuntimeError("the mock is not running")
        loop.call_soon_threadsafe(lambda: self._session(session_id).delivered.set())

    def _session(self, session_id: str) -> _Session:
        return self._sessions.setdefault(session_id, _Session(session_id))

    # -- HTTP ------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        peer = writer.get_extra_info("peername")
        peer_ip = str(peer[0]) if peer else "?"
        connection = _Connection()
        try:
            while True:
                record, body = await self._read_request(reader, peer_ip)
                if record is None:
                    break
                connection.records.append(record)
                with self._records_lock:
                    self.records.append(record)
                keep_alive = await self._respond(record, body, reader, writer)
                if not keep_alive:
                    break
        except (ConnectionError, _ClientGone, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            # Shutdown cancels every connection; ending quietly is the point.
            pass
        finally:
            closed_at = time.monotonic()
            for record in connection.records:
                if record.connection_closed_at is None:
                    record.connection_closed_at = closed_at
                    record.closed.set()
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _read_request(
        self, reader: asyncio.StreamReader, peer_ip: str
    ) -> tuple[RequestRecord | None, bytes]:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return None, b""
        received_at = time.monotonic()
        lines = head.decode("latin-1").split("\r\n")
        method, target, version = lines[0].split(" ", 2)
        headers = []
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers.append((name.strip(), value.strip()))
        record = RequestRecord(method, target, version, headers, peer_ip, received_at)
        body = b""
        length = record.header("Content-Length")
        if record.header("Transfer-Encoding") == "chunked":
            body = await self._read_chunked(reader)
        elif length:
            body = await reader.readexactly(int(length))
        record.body_bytes = len(body)
        return record, body

    @staticmethod
    async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
        body = bytearray()
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                return bytes(body)
            body += await reader.readexactly(size)
            await reader.readexactly(2)

    async def _respond(
        self,
        record: RequestRecord,
        body: bytes,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> bool:
        settings = self.settings_for(record.path)
        if settings.first_byte_delay:
            await asyncio.sleep(settings.first_byte_delay)

        rejection = self._guard(record)
        if rejection is not None:
            status, payload = rejection
            return await self._send_json(record, writer, status, payload)

        parts = record.path.strip("/").split("/")
        session_route = (
            (record.method, parts[3])
            if len(parts) == 4 and parts[:2] == ["api", "sessions"]
            else None
        )
        if record.method == "GET" and record.path == "/api/health":
            health = {"status": "ok", "version": "mock", "uptime": 1}
            return await self._send_json(record, writer, 200, health, keep_alive_hint=True)
        if session_route == ("GET", "events"):
            await self._stream_session(record, settings, parts[2], reader, writer)
            return False
        if session_route == ("POST", "messages"):
            return await self._accept_message(record, writer, body)
        if record.method == "GET" and record.path == "/api/events":
            await self._stream_global(record, settings, reader, writer)
            return False
        if record.method == "GET" and not record.path.startswith("/api/"):
            return await self._send(record, writer, 200, "text/html; charset=UTF-8", INDEX_HTML)
        return await self._send_json(record, writer, 404, {"error": "Not found"})

    async def _accept_message(
        self, record: RequestRecord, writer: asyncio.StreamWriter, body: bytes
    ) -> bool:
        if len(body) > JSON_BODY_LIMIT:
            return await self._send_json(record, writer, 413, {"error": "too large"})
        try:
            json.loads(body or b"null")
        except ValueError:
            return await self._send_json(record, writer, 400, {"error": "invalid JSON"})
        return await self._send_json(record, writer, 202, {"accepted": True, "bytes": len(body)})

    def _guard(self, record: RequestRecord) -> tuple[int, dict[str, str]] | None:
        settings = self.settings
        host = record.header("Host") or ""
        # The guard checks the name only, not the port.
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        if settings.host_guard and name not in LOOPBACK_NAMES | settings.trusted_hosts:
            return 403, {"code": "HOST_NOT_ALLOWED", "error": f"Host {name!r} is not allowed"}
        origin = record.header("Origin")
        if settings.origin_check and origin is not None:
            scheme = record.header("X-Forwarded-Proto") or "http"
            if origin != f"{scheme}://{host}":
                return 500, {"code": "INTERNAL_ERROR"}
        return None

    def _head(self, record: RequestRecord, status: int, headers: list[tuple[str, str]]) -> bytes:
        record.status = status
        reason = {
            200: "OK",
            202: "Accepted",
            400: "Bad Request",
            403: "Forbidden",
            404: "Not Found",
            413: "Payload Too Large",
            500: "Internal Server Error",
        }[status]
        lines = [
            f"HTTP/1.1 {status} {reason}",
            "X-Powered-By: Express",
            "Vary: Origin",
            "Access-Control-Allow-Credentials: true",
        ]
        lines += [f"{k}: {v}" for k, v in headers]
        lines.append(f"Date: {time.strftime('%a, %d %b %Y %H:%M:%S GMT', time.gmtime())}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    async def _send_json(
        self,
        record: RequestRecord,
        writer: asyncio.StreamWriter,
        status: int,
        payload: Mapping[str, object],
        keep_alive_hint: bool = False,
    ) -> bool:
        return await self._send(
            record,
            writer,
            status,
            "application/json; charset=utf-8",
            json.dumps(payload).encode(),
            keep_alive_hint,
        )

    async def _send(
        self,
        record: RequestRecord,
        writer: asyncio.StreamWriter,
        status: int,
        content_type: str,
        body: bytes,
        keep_alive_hint: bool = False,
    ) -> bool:
        keep_alive = (
            record.version == "HTTP/1.1" and (record.header("Connection") or "").lower() != "close"
        )
        headers = [("Content-Type", content_type), ("Content-Length", str(len(body)))]
        if keep_alive:
            headers.append(("Connection", "keep-alive"))
            if keep_alive_hint:
                headers.append(("Keep-Alive", "timeout=5"))
        else:
            headers.append(("Connection", "close"))
        writer.write(self._head(record, status, headers) + body)
        await writer.drain()
        return keep_alive

    # -- Server-Sent Events ----------------------------------------------

    def _stream_headers(
        self, record: RequestRecord, settings: MockSettings
    ) -> list[tuple[str, str]]:
        headers = [
            ("Content-Type", "text/event-stream"),
            ("Cache-Control", "no-cache"),
            ("Connection", "keep-alive"),
        ]
        if settings.accel_buffering_header:
            headers.append(("X-Accel-Buffering", "no"))
        if record.version == "HTTP/1.1":
            headers.append(("Transfer-Encoding", "chunked"))
        # To HTTP/1.0, Node sends neither Transfer-Encoding nor Content-Length:
        # the body ends when the connection closes.
        return headers

    @staticmethod
    def _framer(record: RequestRecord) -> Any:
        if record.version == "HTTP/1.1":
            return lambda data: b"%x\r\n%s\r\n" % (len(data), data)
        return lambda data: data

    async def _watch_for_close(self, reader: asyncio.StreamReader) -> None:
        # A stream's client sends nothing more; any read returning means it
        # went away (EOF) or broke the protocol, so the stream ends either way.
        with contextlib.suppress(ConnectionError):
            await reader.read(1)

    async def _run_stream(
        self,
        record: RequestRecord,
        settings: MockSettings,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        body: Any,
    ) -> None:
        writer.write(self._head(record, 200, self._stream_headers(record, settings)))
        await writer.drain()
        frame = self._framer(record)

        async def write(data: bytes) -> None:
            writer.write(frame(data))
            await writer.drain()

        watcher = asyncio.ensure_future(self._watch_for_close(reader))
        producer = asyncio.ensure_future(body(write))
        try:
            await asyncio.wait(
                [watcher, producer],
                timeout=settings.max_stream_seconds,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            watcher.cancel()
            producer.cancel()
            with contextlib.suppress(BaseException):
                await producer
        raise _ClientGone

    @staticmethod
    async def _heartbeats(write: Any, frame: bytes, interval: float | None) -> None:
        if interval is None:
            await asyncio.Event().wait()
            return
        while True:
            await asyncio.sleep(interval)
            await write(frame)

    async def _stream_session(
        self,
        record: RequestRecord,
        settings: MockSettings,
        session_id: str,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        session = self._session(session_id)
        cursor = record.header("Last-Event-ID")
        if cursor is None and "after=" in record.target:
            cursor = record.target.split("after=", 1)[1].split("&", 1)[0]
        replay = self._replay_after(session, cursor)

        async def body(write: Any) -> None:
            queue: asyncio.Queue[SessionEvent] = asyncio.Queue()
            session.subscribers.add(queue)
            try:
                if replay is None:
                    snapshot = self._snapshot(session, settings.snapshot_bytes)
                    await write(sse_frame(event="snapshot", data=snapshot))
                else:
                    for item in replay:
                        await write(item.frame)
                heartbeat = asyncio.ensure_future(
                    self._heartbeats(write, b": keepalive\n\n", settings.heartbeat_interval)
                )
                schedule = asyncio.ensure_future(self._scheduled_events(session_id, settings))
                try:
                    while True:
                        await write((await queue.get()).frame)
                finally:
                    heartbeat.cancel()
                    schedule.cancel()
            finally:
                session.subscribers.discard(queue)

        await self._run_stream(record, settings, reader, writer, body)

    def _replay_after(self, session: _Session, cursor: str | None) -> list[SessionEvent] | None:
        """Events after a cursor, or None for a cold connect (send a snapshot)."""
        if cursor is None:
            return None
        prefix = f"{session.session_id}-{self.started_ms}-"
        if not cursor.startswith(prefix):
            return None  # a cursor from another server start: fresh snapshot
        try:
            seq = int(cursor[len(prefix) :])
        except ValueError:
            return None
        return [item for item in session.log if item.seq > seq]

    @staticmethod
    def _snapshot(session: _Session, size: int) -> str:
        filler = "x" * max(0, size - 100)
        return json.dumps({"sessionId": session.session_id, "messages": [], "history": filler})

    async def _scheduled_events(self, session_id: str, settings: MockSettings) -> None:
        session = self._session(session_id)
        for _ in range(settings.events_per_stream):
            if settings.paced_by_client:
                await session.delivered.wait()
                session.delivered.clear()
            await asyncio.sleep(settings.event_interval)
            await self._publish(session_id, "text_delta", {"text": "Hello"})

    async def _publish(self, session_id: str, event: str, payload: dict[str, Any]) -> SessionEvent:
        session = self._session(session_id)
        seq = len(session.log) + 1
        event_id = self.event_id(session_id, seq)
        # Each event carries its send time, so a client can measure the delay
        # a proxy adds. CLOCK_MONOTONIC is machine-wide on Linux.
        data = json.dumps({"seq": seq, "sent": time.monotonic(), **payload})
        item = SessionEvent(seq, event_id, sse_frame(event=event, event_id=event_id, data=data))
        session.log.append(item)
        for queue in list(session.subscribers):
            queue.put_nowait(item)
        return item

    async def _stream_global(
        self,
        record: RequestRecord,
        settings: MockSettings,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        async def body(write: Any) -> None:
            connected = json.dumps({"connectedAt": time.strftime("%Y-%m-%dT%H:%M:%SZ")})
            await write(sse_frame(event="connected", data=connected))
            beat = b"event: heartbeat\ndata: \n\n"
            await self._heartbeats(write, beat, settings.heartbeat_interval)

        await self._run_stream(record, settings, reader, writer, body)


INDEX_HTML = b"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>DorkOS</title></head>
<body><div id="root">DorkOS</div></body></html>
"""


def main() -> None:
    """Run the mock by hand: `python -m harness.mock_dorkos [--port N]`."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default=MockSettings.host)
    parser.add_argument("--port", type=int, default=MockSettings.port)
    parser.add_argument("--events-per-stream", type=int, default=5)
    parser.add_argument("--event-interval", type=float, default=MockSettings.event_interval)
    parser.add_argument("--snapshot-bytes", type=int, default=MockSettings.snapshot_bytes)
    parser.add_argument(
        "--heartbeat-interval", type=float, default=15.0, help="0 turns heartbeats off"
    )
    args = parser.parse_args()
    settings = MockSettings(
        host=args.host,
        port=args.port,
        events_per_stream=args.events_per_stream,
        event_interval=args.event_interval,
        snapshot_bytes=args.snapshot_bytes,
        heartbeat_interval=args.heartbeat_interval or None,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with MockDorkOS(settings):
        # The line a parent process waits for before it sends traffic.
        print(f"mock DorkOS listening on http://{args.host}:{args.port}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            stop.wait()


if __name__ == "__main__":
    main()
