"""A WebSocket client that opens DorkOS's streams as its web app does.

Like a browser: it sends the page's Origin and offers permessage-deflate,
answers pings, sends none of its own (a page can't), and never writes to a
stream socket. A handshake answered with anything but 101 fails at once,
with that status, as in a browser ("Unexpected response code: 200"), even
when the answer is an event stream that never ends.

wsproto does the framing, as in the mock; this module owns the socket and
every wait on it, so no wait can outlive its timeout. Frames are parsed
into the same `Frame` as SSE frames, with the time each arrived, so the
checks read both transports alike.
"""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import time
from collections.abc import Iterator
from typing import Any

from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    Event,
    Message,
    Ping,
    Pong,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.extensions import PerMessageDeflate

from harness.clients.sse_client import Frame, Target
from harness.upstream.mock_streams import SOCKET_HEARTBEAT

HEARTBEAT_EVENT = json.loads(SOCKET_HEARTBEAT)["event"]
# What Chromium sends with every handshake, beyond the WebSocket headers.
BROWSER_HEADERS = {"Cache-Control": "no-cache", "Pragma": "no-cache"}


class HandshakeRefused(Exception):
    """The handshake was answered with another status than 101."""

    def __init__(self, status: int, reason: str, headers: dict[str, str]) -> None:
        super().__init__(f"{status} {reason}".strip())
        self.status, self.reason, self.headers = status, reason, headers


class HandshakeUnanswered(Exception):
    """No answer to the handshake came in time."""


class SocketClosed(Exception):
    """The socket closed: with the server's close code, or None for no close frame.

    None is what a page sees as 1006.
    """

    def __init__(self, code: int | None, reason: str = "") -> None:
        super().__init__("without a close frame" if code is None else f"{code} {reason!r}")
        self.code, self.reason = code, reason


def parse_message(message: str | bytes, arrived: float) -> Frame:
    if isinstance(message, bytes):
        return Frame(arrived, None, None, message.decode(errors="replace"), None)
    decoded: dict[str, Any] = json.loads(message)
    data = json.dumps(decoded["data"]) if "data" in decoded else None
    return Frame(arrived, decoded.get("event"), decoded.get("id"), data, None)


class SocketStream:
    """One open socket: its messages, read as they arrive."""

    def __init__(self, sock: socket.socket, connection: WSConnection) -> None:
        self._sock = sock
        self._connection = connection
        self._pending: list[Event] = []
        self._parts: list[str | bytes] = []
        # Every frame read so far, kept when a read times out so a check can
        # say how much arrived before it gave up.
        self.received: list[Frame] = []

    def _write(self, event: Event) -> None:
        self._sock.sendall(self._connection.send(event))

    def _next_event(self, deadline: float) -> Event:
        while not self._pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no frame arrived in time")
            self._sock.settimeout(remaining)
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
                raise TimeoutError("no frame arrived in time") from None
            except OSError:
                data = b""
            self._connection.receive_data(data or None)
            self._pending.extend(self._connection.events())
            if not data and not self._pending:
                raise SocketClosed(None)
        return self._pending.pop(0)

    def recv(self, timeout: float) -> str | bytes:
        """The next whole message; answers pings, and raises SocketClosed on a close."""
        deadline = time.monotonic() + timeout
        while True:
            event = self._next_event(deadline)
            if isinstance(event, Ping):
                self._write(event.response())
            elif isinstance(event, CloseConnection):
                if self._connection.state is ConnectionState.REMOTE_CLOSING:
                    self._write(event.response())
                raise SocketClosed(event.code, event.reason or "")
            elif isinstance(event, Message):
                self._parts.append(event.data)
                if event.message_finished:
                    parts, self._parts = self._parts, []
                    if isinstance(event, TextMessage):
                        return "".join(str(p) for p in parts)
                    return b"".join(p for p in parts if isinstance(p, bytes))

    def take(self, count: int, *, timeout: float, events_only: bool = True) -> list[Frame]:
        """The next `count` frames (not counting heartbeats when events_only).

        Raises TimeoutError when no frame comes for `timeout` seconds, and
        SocketClosed when the socket closes first.
        """
        taken: list[Frame] = []
        while len(taken) < count:
            frame = parse_message(self.recv(timeout), time.monotonic())
            self.received.append(frame)
            if events_only and frame.event == HEARTBEAT_EVENT:
                continue
            taken.append(frame)
        return taken

    def send_text(self, text: str) -> None:
        self._write(TextMessage(data=text))

    def ping(self, timeout: float) -> None:
        """Send a ping and wait for its pong."""
        self._write(Ping(payload=b"dorkos-docs"))
        deadline = time.monotonic() + timeout
        while not isinstance(self._next_event(deadline), Pong):
            pass

    def closed_with(self, timeout: float) -> tuple[int | None, str]:
        """Wait for the server to close the socket: its close code and reason."""
        try:
            while True:
                self.recv(timeout)
        except SocketClosed as closed:
            return closed.code, closed.reason

    def close(self) -> None:
        """Leave as a page does: a close frame, then the connection goes."""
        with contextlib.suppress(OSError):
            if self._connection.state is ConnectionState.OPEN:
                self._write(CloseConnection(code=1000))
        self._sock.close()


def _handshake(
    sock: socket.socket, connection: WSConnection, request: Request, timeout: float
) -> list[Event]:
    """Send the request; the events after the 101. Raises at anything else."""
    sock.sendall(connection.send(request))
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise HandshakeUnanswered(f"no answer to the WebSocket handshake in {timeout:.0f} s")
        sock.settimeout(remaining)
        try:
            data = sock.recv(65536)
        except TimeoutError:
            continue
        connection.receive_data(data or None)
        events = list(connection.events())
        for index, event in enumerate(events):
            if isinstance(event, AcceptConnection):
                return events[index + 1 :]
            if isinstance(event, RejectConnection):
                headers = {k.decode(): v.decode() for k, v in event.headers}
                raise HandshakeRefused(event.status_code, _reason(event), headers)
            if isinstance(event, RejectData):
                continue
        if not data:
            raise HandshakeUnanswered("the connection closed before the handshake was answered")


def _reason(event: RejectConnection) -> str:
    # wsproto keeps no reason phrase; say what the status means to a browser.
    return {200: "OK", 400: "Bad Request", 403: "Forbidden", 404: "Not Found"}.get(
        event.status_code, ""
    )


@contextlib.contextmanager
def open_socket(
    target: Target,
    path: str,
    *,
    timeout: float,
    origin: str | None = "page",
    headers: dict[str, str] | None = None,
    authority: str | None = None,
) -> Iterator[SocketStream]:
    """Open a socket to `path` as a page of the site would (`origin="page"`).

    `origin=None` sends no Origin, as a client outside a browser does.
    `authority` is the Host to send, if not the target's. Raises
    HandshakeRefused when the handshake is answered with anything but 101,
    and HandshakeUnanswered when no answer comes within `timeout`.
    """
    sock: socket.socket = socket.create_connection(target.address, timeout=timeout)
    try:
        if target.scheme == "https":
            context: ssl.SSLContext = target.ssl_context()
            context.set_alpn_protocols(["http/1.1"])
            sock = context.wrap_socket(sock, server_hostname=target.server_name)
        extra = {**BROWSER_HEADERS, **target.headers, **(headers or {})}
        if origin is not None:
            extra["Origin"] = target.origin if origin == "page" else origin
        request = Request(
            host=authority or target.authority,
            target=path,
            extensions=[PerMessageDeflate()],
            extra_headers=[(k.encode(), v.encode()) for k, v in extra.items()],
        )
        connection = WSConnection(ConnectionType.CLIENT)
        stream = SocketStream(sock, connection)
        stream._pending = _handshake(sock, connection, request, timeout)
    except BaseException:
        sock.close()
        raise
    try:
        yield stream
    finally:
        stream.close()
