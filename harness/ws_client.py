"""A WebSocket client that opens DorkOS's streams as its web app does.

Like a browser: it sends the page's Origin and offers permessage-deflate,
sends no pings of its own (a page can't), and never writes to a stream
socket. Frames are parsed into the same `Frame` as SSE frames, with the
time each arrived, so the checks read both transports alike.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Iterator
from typing import Any

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from harness.mock_streams import SOCKET_HEARTBEAT
from harness.sse_client import Frame, Target

# What Chromium sends with every handshake, beyond the WebSocket headers.
BROWSER_HEADERS = {"Cache-Control": "no-cache", "Pragma": "no-cache"}
HEARTBEAT_EVENT = json.loads(SOCKET_HEARTBEAT)["event"]


def parse_message(message: str | bytes, arrived: float) -> Frame:
    if isinstance(message, bytes):
        return Frame(arrived, None, None, message.decode(errors="replace"), None)
    decoded: dict[str, Any] = json.loads(message)
    data = json.dumps(decoded["data"]) if "data" in decoded else None
    return Frame(arrived, decoded.get("event"), decoded.get("id"), data, None)


class SocketStream:
    """Frames from one open socket, read as they arrive."""

    def __init__(self, connection: ClientConnection) -> None:
        self.connection = connection
        # Every frame read so far, kept when a read times out so a check can
        # say how much arrived before it gave up.
        self.received: list[Frame] = []

    def take(self, count: int, *, timeout: float, events_only: bool = True) -> list[Frame]:
        """The next `count` frames (not counting heartbeats when events_only).

        Raises TimeoutError when no frame comes for `timeout` seconds, and
        websockets' ConnectionClosed when the socket closes first.
        """
        taken: list[Frame] = []
        while len(taken) < count:
            message = self.connection.recv(timeout=timeout)
            frame = parse_message(message, time.monotonic())
            self.received.append(frame)
            if events_only and frame.event == HEARTBEAT_EVENT:
                continue
            taken.append(frame)
        return taken

    def send_text(self, text: str) -> None:
        self.connection.send(text)

    def closed_with(self, timeout: float) -> tuple[int | None, str]:
        """Wait for the server to close the socket: its close code and reason.

        None is what a page sees as 1006: no close frame came.
        """
        try:
            while True:
                self.connection.recv(timeout=timeout)
        except ConnectionClosed as closed:
            if closed.rcvd is None:
                return None, ""
            return closed.rcvd.code, closed.rcvd.reason


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
    `authority` is the Host to send, if not the target's.
    Raises websockets' InvalidStatus when the handshake is answered with
    anything but 101 (the response is on the exception).
    """
    raw = socket.create_connection(target.address, timeout=timeout)
    scheme = "wss" if target.scheme == "https" else "ws"
    try:
        connection = connect(
            f"{scheme}://{authority or target.authority}{path}",
            sock=raw,
            ssl=target.ssl_context() if scheme == "wss" else None,
            server_hostname=target.server_name if scheme == "wss" else None,
            origin=target.origin if origin == "page" else origin,  # type: ignore[arg-type]
            additional_headers={**BROWSER_HEADERS, **(headers or {})},
            proxy=None,
            open_timeout=timeout,
            ping_interval=None,
            close_timeout=timeout,
            max_size=None,
        )
    except BaseException:
        raw.close()
        raise
    with connection:
        yield SocketStream(connection)
