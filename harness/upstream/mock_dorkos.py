"""A stand-in for the DorkOS server, as far as a reverse proxy can tell.

It speaks raw HTTP/1.x over asyncio streams rather than through a framework,
because the framing is the point: nginx talks HTTP/1.0 to its upstreams by
default, Node answers such a request with a body delimited by closing the
connection, and that changes what proxy buffering does. Every behaviour that
a test may want to vary is a field of `MockSettings`.

Its three durable streams answer on the same paths as DorkOS 0.58 and
later: a WebSocket to a request that asks for an upgrade (what the web app
uses), Server-Sent Events to any other (integrations, and the app up to
0.57). Which one is chosen as Node chooses: a request whose `Connection`
names `upgrade` and that has an `Upgrade` header goes to the upgrade
router. The sequencing behind both is one core (harness.upstream.mock_streams).

Differences from DorkOS that are deliberate (see docs/how-it-is-tested.md):
- it listens on the addresses a run gives it (harness.lab.proxy_lab: ::1, where Node
  20 binds DorkOS's default `localhost` on Debian), not on a name;
- live events are produced by a schedule the test sets (or by `publish`),
  not by an agent;
- login is modelled only as API keys (settings.api_keys, off by
  default), not as session cookies or sign-in;
- the terminal socket echoes what is typed instead of running a shell.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import re
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Message, Request, TextMessage
from wsproto.utilities import RemoteProtocolError

from harness.upstream.mock_streams import (
    ResourceLog,
    SocketSink,
    SseSink,
    StreamFrame,
    StreamSink,
    beat,
    deliver,
    resume_point,
    serve_socket_input,
)

if TYPE_CHECKING:
    from harness.lab.netns import PrivateNetwork

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
    # DorkOS serves this many readers of /api/events, SSE and sockets
    # together; the next gets 503, or a socket closed with 4503.
    max_global_readers: int = 500
    # DORKOS_CORS_ORIGIN: when set, the only origins a socket may come from.
    cors_origins: tuple[str, ...] = ()
    # DORKOS_AUTH_SIGNIN_RATE_LIMIT: sign-in attempts per client address in
    # 15 minutes (the mock never forgets within its lifetime).
    sign_in_limit: int = 10
    # Login on, with these API keys (none: login off). As DorkOS's session
    # gate: /api wants `Authorization: Bearer <key>` (a session cookie is not
    # modelled) but for /api/health and /api/auth, else 401 AUTH_REQUIRED;
    # the host guard stands down; a durable stream's socket without a key
    # opens and closes with 4401. Read in DorkOS's source
    # (services/core/auth/session-gate.ts, streams/stream-upgrade-auth.ts).
    api_keys: frozenset[str] = frozenset()


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
    # "http", "sse", or "websocket" once the upgrade was accepted.
    transport: str = "http"
    # The close code the mock sent on a socket it refused after the handshake.
    close_code: int | None = None
    head: bytes = field(default=b"", repr=False)
    connection_closed_at: float | None = None
    # Set once connection_closed_at is: what a test waits on.
    closed: threading.Event = field(default_factory=threading.Event, repr=False, compare=False)

    def header(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k.lower() == name.lower()]
        return ", ".join(values) if values else None

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    def query(self, name: str) -> str | None:
        values = parse_qs(urlsplit(self.target).query).get(name)
        return values[0] if values else None

    @property
    def asks_for_upgrade(self) -> bool:
        """As Node decides: `Connection` names upgrade and `Upgrade` is there."""
        tokens = {t.strip().lower() for t in (self.header("Connection") or "").split(",")}
        return "upgrade" in tokens and self.header("Upgrade") is not None


@dataclass
class _Connection:
    records: list[RequestRecord] = field(default_factory=list)


class _ClientGone(Exception):
    pass


class Listening:
    """Where a mock serves one run's network; stopped and started as DorkOS restarts."""

    def __init__(self, mock: MockDorkOS, network: PrivateNetwork, hosts: tuple[str, ...]) -> None:
        self.mock, self.network, self.hosts = mock, network, hosts
        self._servers: list[asyncio.base_events.Server] = []

    def start(self) -> None:
        for host in self.hosts:
            address = (host, self.mock.settings.port)
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            try:
                sock = self.network.call(
                    socket.create_server, address, family=family, backlog=LISTEN_BACKLOG
                )
            except OSError as error:
                self.stop()
                shown = f"[{host}]" if ":" in host else host
                raise RuntimeError(
                    f"the mock DorkOS upstream could not listen on {shown}:{address[1]} "
                    f"in {self.network.name}: {error}"
                ) from error
            try:
                self._servers.append(self.mock._serve(sock))
            except BaseException:
                sock.close()
                raise

    def stop(self, *, drop_connections: bool = False) -> None:
        """Stop listening; with `drop_connections`, cut every open one, as a crash would."""
        while self._servers:
            self.mock._unserve(self._servers.pop(), drop_connections=drop_connections)

    def close(self) -> None:
        self.stop()


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
        self._logs: dict[str, ResourceLog] = {}
        self._replies: set[asyncio.Future[None]] = set()  # turns under way
        self._messages: dict[str, list[dict[str, str]]] = {}  # each session's history
        self._rooms: set[str] = set()
        self._global_readers = 0
        self._sign_in_attempts: dict[str, list[float]] = {}
        self._terminals: set[str] = set()
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
    def listening_in(
        self, network: PrivateNetwork, hosts: tuple[str, ...] | None = None
    ) -> Iterator[Listening]:
        """Also serve `hosts` (settings.host) on settings.port inside a run's network."""
        listening = Listening(self, network, hosts or (self.settings.host,))
        listening.start()
        try:
            yield listening
        finally:
            listening.close()

    def _serve(self, sock: socket.socket) -> asyncio.base_events.Server:
        loop = self._loop
        if loop is None:
            raise RuntimeError("the mock is not running")
        server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, sock=sock, backlog=LISTEN_BACKLOG), loop
        ).result(timeout=10)
        self._private_servers.append(server)
        return server

    def _unserve(self, server: asyncio.base_events.Server, *, drop_connections: bool) -> None:
        loop = self._loop
        self._private_servers.remove(server)
        if loop is None:
            return

        async def close() -> None:
            server.close()
            if drop_connections:
                for writer in list(self._writers):
                    writer.transport.abort()

        asyncio.run_coroutine_threadsafe(close(), loop).result(timeout=10)

    def new_epoch(self) -> int:
        """What a restarted DorkOS has: cursors from before it no longer resume."""
        self.started_ms = max(self.started_ms + 1, int(time.time() * 1000))
        return self.started_ms

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

    def behave(self, resource_id: str, **overrides: Any) -> str:
        """Give one session (or room) its own settings; returns its id.

        Lets tests run streams that behave differently side by side (an idle
        one, a slow one) through the same proxy at the same time.
        """
        dataclasses.replace(self.settings, **overrides)  # reject unknown names now
        self._overrides[resource_id] = overrides
        return resource_id

    def settings_for(self, path: str) -> MockSettings:
        parts = path.strip("/").split("/")
        resource = parts[2] if len(parts) >= 3 and parts[1] in ("sessions", "rooms") else None
        if parts[0] == "api" and resource in self._overrides:
            return dataclasses.replace(self.settings, **self._overrides[resource])
        return self.settings

    def open_terminal(self, terminal_id: str) -> str:
        """A terminal that exists: its socket opens; any other is refused (404)."""
        self._terminals.add(terminal_id)
        return terminal_id

    def open_room(self, room_id: str) -> str:
        """A room that exists: its stream answers; any other is refused (404, 4404)."""
        self._rooms.add(room_id)
        return room_id

    def requests_to(self, path: str) -> list[RequestRecord]:
        with self._records_lock:
            return [r for r in self.records if r.path == path]

    def clear_records(self) -> None:
        with self._records_lock:
            self.records.clear()

    def event_id(self, resource_id: str, seq: int) -> str:
        return f"{resource_id}-{self.started_ms}-{seq}"

    def publish(self, resource_id: str, event: str = "text_delta", **payload: Any) -> str:
        """Append a live event to a session (or room) and send it to its readers."""
        loop = self._loop
        if loop is None:
            raise RuntimeError("the mock is not running")
        future = asyncio.run_coroutine_threadsafe(self._publish(resource_id, event, payload), loop)
        return future.result(timeout=5)

    def events_sent(self, resource_id: str) -> int:
        """How many live events a session (or room) has had so far."""
        log = self._logs.get(resource_id)
        return len(log.events) if log is not None else 0

    def delivered(self, resource_id: str) -> None:
        """A paced client has every frame sent to it so far: send the next."""
        loop = self._loop
        if loop is None:
            raise RuntimeError("the mock is not running")
        loop.call_soon_threadsafe(lambda: self._log(resource_id).delivered.set())

    def _log(self, resource_id: str) -> ResourceLog:
        return self._logs.setdefault(resource_id, ResourceLog(resource_id))

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
            # Cancelled again at shutdown, while it waits: still quiet.
            with contextlib.suppress(Exception, asyncio.CancelledError):
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
        record = RequestRecord(method, target, version, headers, peer_ip, received_at, head=head)
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
        if record.asks_for_upgrade:
            # Node hands these to the upgrade router; Express never sees them.
            await self._upgrade(record, settings, reader, writer)
            return False

        rejection = self._guard(record)
        if rejection is not None:
            status, payload = rejection
            return await self._send_json(record, writer, status, payload)

        if record.method == "POST" and record.path == SIGN_IN_PATH:
            return await self._sign_in(record, writer)
        route = _stream_route(record.path)
        if record.method == "GET" and record.path in DEPRECATED_STREAMS:
            await self._deprecated_stream(record, reader, writer, DEPRECATED_STREAMS[record.path])
            return False
        if record.method == "GET" and record.path == "/api/health":
            health = {"status": "ok", "version": "mock", "uptime": 1}
            return await self._send_json(record, writer, 200, health, keep_alive_hint=True)
        if record.method == "GET" and route is not None and route[0] != "terminal":
            await self._stream_over_sse(record, settings, route, reader, writer)
            return False
        parts = record.path.strip("/").split("/")
        if (
            record.method == "POST"
            and parts[:2] == ["api", "sessions"]
            and parts[3:] == ["messages"]
        ):
            return await self._accept_message(record, writer, body)
        if record.method == "GET" and not _under_api(record.path):
            # express.static, then the single-page app's index.html fallback.
            content_type, content = APP_FILES.get(record.path, APP_FILES["/index.html"])
            return await self._send(record, writer, 200, content_type, content)
        return await self._send_json(
            record, writer, 404, {"error": "Not found", "code": "API_NOT_FOUND"}
        )

    async def _sign_in(self, record: RequestRecord, writer: asyncio.StreamWriter) -> bool:
        """Better Auth's password sign-in, behind DorkOS's limit per client address."""
        address = client_address(record)
        attempts = self._sign_in_attempts.setdefault(address, [])
        attempts.append(time.monotonic())
        if len(attempts) > self.settings.sign_in_limit:
            return await self._send_json(
                record,
                writer,
                429,
                {
                    "error": "Too many sign-in attempts. Try again in a few minutes.",
                    "code": "RATE_LIMITED",
                },
            )
        # Inside, Better Auth's own throttle (on in production): 3 attempts
        # in 10 s, answered without DorkOS's error code.
        recent = [at for at in attempts if at > attempts[-1] - BETTER_AUTH_WINDOW_S]
        if len(recent) > BETTER_AUTH_ATTEMPTS:
            message = {"message": "Too many requests. Please try again later."}
            return await self._send(
                record, writer, 429, "text/plain;charset=UTF-8", json.dumps(message).encode()
            )
        return await self._send_json(
            record,
            writer,
            401,
            {"code": "INVALID_EMAIL_OR_PASSWORD", "message": "Invalid email or password"},
        )

    async def _deprecated_stream(
        self,
        record: RequestRecord,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        route: tuple[str, bytes],
    ) -> None:
        """An older SSE route: no X-Accel-Buffering, one opening frame, no heartbeat."""
        record.transport = "sse"
        content_type, opening = route
        head = self._stream_headers(record, accel_buffering=False, content_type=content_type)
        writer.write(self._head(record, 200, head))
        await self._stream_writer(record, writer)(opening)
        await self._run_stream(self.settings, _watch_for_close(reader), _forever())

    async def _accept_message(
        self, record: RequestRecord, writer: asyncio.StreamWriter, body: bytes
    ) -> bool:
        if len(body) > JSON_BODY_LIMIT:
            return await self._send_json(record, writer, 413, {"error": "too large"})
        try:
            message = json.loads(body or b"null")
        except ValueError:
            return await self._send_json(record, writer, 400, {"error": "invalid JSON"})
        session = record.path.strip("/").split("/")[2]
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str) and content:
            reply = asyncio.ensure_future(self._reply(session, content))
            self._replies.add(reply)
            reply.add_done_callback(self._replies.discard)
        answer = {"sessionId": session, "messageId": str(uuid.uuid4()), "bytes": len(body)}
        return await self._send_json(record, writer, 202, answer)

    async def _reply(self, session: str, content: str) -> None:
        """DorkOS's test runtime (DORKOS_TEST_RUNTIME) answering a message: one turn."""
        queued = {"id": str(uuid.uuid4()), "content": content, "disposition": "queue"}
        for event, payload in (
            ("status_change", {"status": {"steerable": False}}),
            ("queue_update", {"queue": [queued]}),
            ("turn_start", {"userMessage": content}),
            ("queue_update", {"queue": []}),
            ("status_change", {"status": {"model": "claude-haiku-4-5"}}),
            ("text_delta", {"text": f"Echo: {content}"}),
            ("turn_end", {}),
        ):
            seq = await self._publish(session, event, {"type": event, **payload})
            if event == "turn_start":
                turn = seq.rsplit("-", 1)[-1]
        # The session's history, which a new stream's snapshot carries.
        self._messages.setdefault(session, []).extend(
            [
                {"id": f"user-{turn}", "role": "user", "content": content},
                {"id": f"assistant-{turn}", "role": "assistant", "content": f"Echo: {content}"},
            ]
        )

    def _guard(self, record: RequestRecord) -> tuple[int, dict[str, str]] | None:
        settings = self.settings
        host = record.header("Host") or ""
        login_on = bool(settings.api_keys)
        # The host guard covers the API only; the app's page and assets are
        # served whatever the Host. With login on it stands down.
        if (
            settings.host_guard
            and not login_on
            and _under_api(record.path)
            and not self._host_allowed(host)
        ):
            name = _host_name(host)
            return 403, {"code": "HOST_NOT_ALLOWED", "error": f"Host {name!r} is not allowed"}
        origin = record.header("Origin")
        if settings.origin_check and origin is not None:
            scheme = record.header("X-Forwarded-Proto") or "http"
            if origin != f"{scheme}://{host}":
                return 500, {"code": "INTERNAL_ERROR"}
        if login_on and gated(record.path) and not self._has_key(record):
            return 401, {"error": "Unauthorized", "code": "AUTH_REQUIRED"}
        return None

    def _has_key(self, record: RequestRecord) -> bool:
        # DorkOS splits on one space and wants exactly `Bearer`.
        scheme, _, key = (record.header("Authorization") or "").partition(" ")
        return scheme == "Bearer" and key in self.settings.api_keys

    def _host_allowed(self, host: str) -> bool:
        # The guard checks the name only, not the port.
        return _host_name(host).lower() in LOOPBACK_NAMES | self.settings.trusted_hosts

    def _head(self, record: RequestRecord, status: int, headers: list[tuple[str, str]]) -> bytes:
        record.status = status
        lines = [
            f"HTTP/1.1 {status} {REASONS[status]}",
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

    @staticmethod
    def _stream_headers(
        record: RequestRecord, accel_buffering: bool, content_type: str = "text/event-stream"
    ) -> list[tuple[str, str]]:
        headers = [
            ("Content-Type", content_type),
            ("Cache-Control", "no-cache"),
            ("Connection", "keep-alive"),
        ]
        if accel_buffering:
            headers.append(("X-Accel-Buffering", "no"))
        if record.version == "HTTP/1.1":
            headers.append(("Transfer-Encoding", "chunked"))
        # To HTTP/1.0, Node sends neither Transfer-Encoding nor Content-Length:
        # the body ends when the connection closes.
        return headers

    @staticmethod
    def _stream_writer(
        record: RequestRecord, writer: asyncio.StreamWriter
    ) -> Callable[[bytes], Coroutine[Any, Any, None]]:
        """How a stream's bytes go out: in chunks to HTTP/1.1, as they are to 1.0."""
        chunked = record.version == "HTTP/1.1"

        async def write(data: bytes) -> None:
            writer.write(b"%x\r\n%s\r\n" % (len(data), data) if chunked else data)
            await writer.drain()

        return write

    async def _stream_over_sse(
        self,
        record: RequestRecord,
        settings: MockSettings,
        route: tuple[str, str | None],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        kind, resource = route
        if kind == "room" and resource not in self._rooms:
            await self._send_json(record, writer, 404, {"error": "Room not found"})
            return
        if kind == "global" and self._global_readers >= settings.max_global_readers:
            await self._send_json(record, writer, 503, {"error": "Too many SSE clients"})
            return
        record.transport = "sse"
        head = self._stream_headers(record, settings.accel_buffering_header)
        writer.write(self._head(record, 200, head))
        await writer.drain()
        sink = SseSink(self._stream_writer(record, writer), global_stream=kind == "global")
        if kind == "room":
            await sink.comment("connected")  # DorkOS flushes the room stream's head so
        cursor = record.header("Last-Event-ID") or record.query("resume")
        producer = self._produce(sink, kind, resource, settings, cursor, record.query("after"))
        await self._run_stream(settings, _watch_for_close(reader), producer)

    async def _run_stream(
        self,
        settings: MockSettings,
        watcher: Coroutine[Any, Any, None],
        producer: Coroutine[Any, Any, None],
    ) -> None:
        """Run a stream until its client goes away (or the stream's time is up)."""
        watching = asyncio.ensure_future(watcher)
        producing = asyncio.ensure_future(producer)
        try:
            await asyncio.wait(
                [watching, producing],
                timeout=settings.max_stream_seconds,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            watching.cancel()
            producing.cancel()
            with contextlib.suppress(BaseException):
                await producing
        raise _ClientGone

    # -- the streams, whatever the transport ------------------------------

    async def _produce(
        self,
        sink: StreamSink,
        kind: str,
        resource: str | None,
        settings: MockSettings,
        cursor: str | None,
        after: str | None,
    ) -> None:
        """What a stream sends: the sequencing core for sessions and rooms."""
        if kind == "global":
            self._global_readers += 1
            try:
                connected = json.dumps({"connectedAt": time.strftime("%Y-%m-%dT%H:%M:%SZ")})
                await sink.send(StreamFrame("connected", connected))
                await beat(sink, settings.heartbeat_interval)
            finally:
                self._global_readers -= 1
            return
        assert resource is not None
        log = self._log(resource)

        def snapshot() -> StreamFrame:
            filler = "x" * max(0, settings.snapshot_bytes - 100)
            key = "sessionId" if kind == "session" else "roomId"
            return StreamFrame(
                "snapshot",
                json.dumps(
                    {key: resource, "messages": self._messages.get(resource, []), "history": filler}
                ),
            )

        await deliver(
            sink,
            log,
            replay_after=resume_point(resource, self.started_ms, cursor, after),
            snapshot=snapshot,
            heartbeat_interval=settings.heartbeat_interval,
            schedule=lambda: self._scheduled_events(resource, settings),
        )

    async def _scheduled_events(self, resource_id: str, settings: MockSettings) -> None:
        log = self._log(resource_id)
        for _ in range(settings.events_per_stream):
            if settings.paced_by_client:
                await log.delivered.wait()
                log.delivered.clear()
            await asyncio.sleep(settings.event_interval)
            await self._publish(resource_id, "text_delta", {"text": "Hello"})

    async def _publish(self, resource_id: str, event: str, payload: dict[str, Any]) -> str:
        log = self._log(resource_id)
        # Each event carries its send time, so a client can measure the delay
        # a proxy adds. CLOCK_MONOTONIC is machine-wide on Linux.
        data = json.dumps({"seq": len(log.events) + 1, "sent": time.monotonic(), **payload})
        return log.append(self.started_ms, event, data).frame.id or ""

    # -- WebSocket ---------------------------------------------------------

    async def _upgrade(
        self,
        record: RequestRecord,
        settings: MockSettings,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        """DorkOS's upgrade router: route, origin policy, route checks, then the socket."""
        route = _stream_route(record.path)
        if route is None:
            # An upgrade to a path nobody claims: the socket is destroyed
            # unanswered ("answering would only tell a scanner what is here").
            writer.transport.abort()
            return
        kind, resource = route
        trusted = self._origin_trusted(record)
        if kind == "terminal":
            # The terminal refuses at the handshake, with an HTTP status.
            if not trusted:
                await self._refuse_handshake(record, writer, 403, "Origin not trusted")
                return
            if resource not in self._terminals:
                await self._refuse_handshake(record, writer, 404, "Not Found")
                return
        # As the `ws` package checks it: base64 of exactly 16 bytes.
        key = record.header("Sec-WebSocket-Key") or ""
        if not _WS_KEY.fullmatch(key):
            await self._refuse_handshake(record, writer, 400, "Bad Request")
            return
        connection = WSConnection(ConnectionType.SERVER)
        try:
            connection.receive_data(record.head)
            request = next(e for e in connection.events() if isinstance(e, Request))
        except (RemoteProtocolError, StopIteration):
            await self._refuse_handshake(record, writer, 400, "Bad Request")
            return
        # The `ws` package takes the first subprotocol offered; DorkOS sets none.
        accept = AcceptConnection(subprotocol=next(iter(request.subprotocols), None))
        writer.write(connection.send(accept))
        await writer.drain()
        record.status, record.transport = 101, "websocket"

        async def write(data: bytes) -> None:
            writer.write(data)
            await writer.drain()

        async def read() -> bytes:
            with contextlib.suppress(ConnectionError):
                return await reader.read(65536)
            return b""

        sink = SocketSink(write, connection)
        refusal = (403, "Origin not trusted") if not trusted else self._refusal(kind, resource)
        if self.settings.api_keys and kind != "terminal" and not self._has_key(record):
            refusal = (401, "Unauthorized")  # the credential gate comes first
        if refusal is not None:
            # A refused stream completes the handshake and closes at once with
            # 4000 + the status, which a browser's page can see (a failed
            # handshake is only ever 1006 to it).
            status, reason = refusal
            record.close_code = 4000 + status
            await write(connection.send(CloseConnection(code=record.close_code, reason=reason)))
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(serve_socket_input(read, sink), CLOSE_TIMEOUT_S)
            return
        if kind == "terminal":
            producer = _forever()
            await sink.binary(b"$ ")

            async def echo(message: Message[Any]) -> None:
                if isinstance(message, TextMessage):
                    typed = json.loads(message.data)
                    if typed.get("type") == "input":
                        await sink.binary(str(typed.get("data", "")).encode())

            watcher = serve_socket_input(read, sink, echo)
        else:
            cursor = record.query("resume")
            producer = self._produce(sink, kind, resource, settings, cursor, record.query("after"))
            watcher = serve_socket_input(read, sink)
        await self._run_stream(settings, watcher, producer)

    def _refusal(self, kind: str, resource: str | None) -> tuple[int, str] | None:
        """The route's own checks, as DorkOS makes them before a socket opens."""
        if kind == "global" and self._global_readers >= self.settings.max_global_readers:
            return 503, "Service Unavailable"
        if kind == "session" and not _is_uuid(resource):
            return 400, "Invalid session ID"
        if kind == "room" and resource not in self._rooms:
            return 404, "No such room"
        return None

    def _origin_trusted(self, record: RequestRecord) -> bool:
        """DorkOS's origin policy for upgrades (lib/trusted-origins.ts), login off."""
        origin = record.header("Origin")
        if origin is None:
            return True  # not a browser: no origin to check, and no host either
        origin = origin.strip().lower()
        if origin in ("", "null"):
            return False
        if origin in (f"http://localhost:{self.port}", f"http://127.0.0.1:{self.port}"):
            return True
        if self.settings.cors_origins:
            return origin in self.settings.cors_origins
        # Same origin: the scheme from the first X-Forwarded-Proto (read
        # whoever sent it), else http; the Host as sent, port included; and
        # the host's name must be one the host guard allows.
        forwarded = record.header("X-Forwarded-Proto")
        scheme = forwarded.split(",")[0].strip().lower() if forwarded else "http"
        host = (record.header("Host") or "").strip().lower()
        return self._host_allowed(host) and origin == f"{scheme}://{host}"

    async def _refuse_handshake(
        self, record: RequestRecord, writer: asyncio.StreamWriter, status: int, reason: str
    ) -> None:
        record.status = status
        writer.write(f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()


_WS_KEY = re.compile(r"[+/0-9A-Za-z]{22}==")
# How long a refused socket waits for the client's close frame.
CLOSE_TIMEOUT_S = 5.0
REASONS = {
    200: "OK",
    202: "Accepted",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    413: "Payload Too Large",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
_ROUTES = (
    ("global", re.compile(r"^/api/events$")),
    ("session", re.compile(r"^/api/sessions/([^/]+)/events$")),
    ("room", re.compile(r"^/api/rooms/([^/]+)/events$")),
    ("terminal", re.compile(r"^/api/terminal/([^/]+)/socket$")),
)


def _stream_route(path: str) -> tuple[str, str | None] | None:
    """(kind, resource id) for the paths DorkOS streams on, as its upgrade router matches them."""
    for kind, pattern in _ROUTES:
        found = pattern.match(path)
        if found:
            return kind, (found.group(1) if found.groups() else None)
    return None


def _is_uuid(value: str | None) -> bool:
    try:
        uuid.UUID(value or "")
    except ValueError:
        return False
    return True


def _host_name(host: str) -> str:
    return host.rsplit(":", 1)[0] if not host.endswith("]") else host


async def _forever() -> None:
    await asyncio.Event().wait()


async def _watch_for_close(reader: asyncio.StreamReader) -> None:
    # A stream's client sends nothing more; any read returning means it went
    # away (EOF) or broke the protocol, so the stream ends either way.
    with contextlib.suppress(ConnectionError):
        await reader.read(1)


def client_address(record: RequestRecord) -> str:
    """Whom DorkOS takes a request to come from (Express's `req.ip`).

    With `trust proxy` at 1, Express believes one hop: the last entry of
    X-Forwarded-For (the one the proxy in front of DorkOS added), or the
    connection's own address when there is none. DorkOS's sign-in limit and
    its other rate limits count by it.
    """
    forwarded = record.header("X-Forwarded-For")
    return forwarded.split(",")[-1].strip() if forwarded else record.peer


def gated(path: str) -> bool:
    """What DorkOS's session gate covers with login on."""
    path = path.lower()
    exempt = path in ("/api/health",) or path.startswith(("/api/auth/", "/api/health/"))
    return _under_api(path) and (not exempt or path == "/api/health/deep")


def _under_api(path: str) -> bool:
    return path == "/api" or path.startswith("/api/")


SIGN_IN_PATH = "/api/auth/sign-in/email"
BETTER_AUTH_ATTEMPTS, BETTER_AUTH_WINDOW_S = 3, 10.0
# The two deprecated SSE routes and the frame each opens with.
DEPRECATED_STREAMS = {
    "/api/tunnel/stream": (
        "text/event-stream",
        b'event: tunnel_status\ndata: {"connected":false}\n\n',
    ),
    # Set through Express's res.set(), which adds the charset.
    "/api/extensions/events": ("text/event-stream; charset=utf-8", b":ok\n\n"),
}
# As DorkOS's built app: its page loads its script and stylesheet with
# `crossorigin`, so Chromium sends Origin on those same-origin requests, and
# DorkOS's origin check answers them 500 when a proxy leaves out
# X-Forwarded-Proto or the port: the page stays blank. The script marks the
# page as started, which the browser check reads.
APP_SCRIPT = "/assets/index-mock.js"
APP_STYLESHEET = "/assets/index-mock.css"
INDEX_HTML = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>DorkOS</title>
<script type="module" crossorigin src="{APP_SCRIPT}"></script>
<link rel="stylesheet" crossorigin href="{APP_STYLESHEET}">
</head>
<body><div id="root">DorkOS</div></body></html>
""".encode()
# What the app's script does first: mark the page, and open the global
# stream's socket, as DorkOS's app does as it starts.
APP_JS = b"""window.dorkosApp = "started";
document.getElementById("root").dataset.app = "started";
const events = new URL("/api/events", location.href);
events.protocol = location.protocol === "https:" ? "wss:" : "ws:";
window.dorkosEvents = new WebSocket(events.href);
"""
APP_FILES = {
    "/index.html": ("text/html; charset=UTF-8", INDEX_HTML),
    APP_SCRIPT: (
        "text/javascript; charset=UTF-8",
        APP_JS,
    ),
    APP_STYLESHEET: ("text/css; charset=UTF-8", b"#root { min-height: 100vh; }\n"),
}


def main() -> None:
    """Run the mock by hand: `python -m harness.upstream.mock_dorkos [--port N]`."""
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
    parser.add_argument("--max-stream-seconds", type=float, default=MockSettings.max_stream_seconds)
    args = parser.parse_args()
    settings = MockSettings(
        host=args.host,
        port=args.port,
        events_per_stream=args.events_per_stream,
        event_interval=args.event_interval,
        snapshot_bytes=args.snapshot_bytes,
        heartbeat_interval=args.heartbeat_interval or None,
        max_stream_seconds=args.max_stream_seconds,
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
