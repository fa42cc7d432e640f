"""An EventSource-like client that records when each frame arrived."""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx

# What a browser's EventSource sends (Chromium's, less cookies and UA).
BROWSER_EVENTSOURCE_HEADERS = {
    "Accept": "text/event-stream",
    "Accept-Encoding": "gzip, deflate, br",
    "Cache-Control": "no-cache",
}


@dataclass(frozen=True)
class Frame:
    """One SSE frame (or comment) and the monotonic time its last byte arrived."""

    arrived: float
    event: str | None
    event_id: str | None
    data: str | None
    comment: str | None

    @property
    def sent(self) -> float | None:
        """The upstream's send time, for frames the mock stamped."""
        if self.data is None or not self.data.startswith("{"):
            return None
        value = json.loads(self.data).get("sent")
        return float(value) if value is not None else None

    @property
    def delay_ms(self) -> float | None:
        sent = self.sent
        return None if sent is None else (self.arrived - sent) * 1000


def parse_frame(block: str, arrived: float) -> Frame:
    event = event_id = data = comment = None
    data_lines = []
    for line in block.split("\n"):
        if line.startswith(":"):
            comment = line[1:].strip()
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "event":
            event = value
        elif name == "id":
            event_id = value
        elif name == "data":
            data_lines.append(value)
    if data_lines:
        data = "\n".join(data_lines)
    return Frame(arrived, event, event_id, data, comment)


@dataclass
class Target:
    """Where a client connects, and who it says it is talking to.

    Tests connect to an address on loopback but send the reader's host name in
    SNI and in Host, exactly as a browser pointed at the domain would.
    """

    base_url: str  # e.g. https://127.0.0.1:443
    server_name: str  # e.g. dorkos.example.com
    ca_file: str | None = None
    # Sent with every request and handshake, e.g. an API key's Authorization.
    headers: dict[str, str] = field(default_factory=dict)

    def ssl_context(self) -> ssl.SSLContext:
        # Trust only the test CA: a config that serves another certificate
        # must fail, whatever the machine's trust store says.
        context = ssl.create_default_context(cafile=self.ca_file)
        if self.ca_file is None:
            context.load_default_certs()
        return context

    def client(self, timeout: float = 30.0, *, local_address: str | None = None) -> httpx.Client:
        """A client for the target; from `local_address`, if given, as another visitor."""
        verify = self.ssl_context() if self.base_url.startswith("https") else True
        return httpx.Client(
            base_url=self.base_url,
            verify=verify,
            # Loopback only: no proxy to look up in os.environ, which races
            # with pytest's PYTEST_CURRENT_TEST (harness.lab.containers says how).
            trust_env=False,
            headers={**self.headers, "Host": self.authority},
            timeout=httpx.Timeout(timeout),
            transport=httpx.HTTPTransport(local_address=local_address, verify=verify)
            if local_address
            else None,
        )

    @property
    def extensions(self) -> dict[str, str]:
        return {"sni_hostname": self.server_name}

    @property
    def scheme(self) -> str:
        return self.base_url.split(":", 1)[0]

    @property
    def address(self) -> tuple[str, int]:
        """Where to connect: a name, or an address ([::1] without brackets)."""
        host, port = self.base_url.split("://", 1)[1].rsplit(":", 1)
        return host.removeprefix("[").removesuffix("]"), int(port)

    @property
    def authority(self) -> str:
        """The host (and port, unless it is the scheme's default) a browser puts in Host."""
        port = self.address[1]
        default = 443 if self.scheme == "https" else 80
        return self.server_name if port == default else f"{self.server_name}:{port}"

    @property
    def origin(self) -> str:
        """What a browser sends as Origin from a page of this site."""
        return f"{self.scheme}://{self.authority}"


def tls_handshake(target: Target) -> ssl.SSLSocket:
    """A verified TLS connection to the server, as a browser would make it."""
    raw = socket.create_connection(target.address, timeout=5)
    try:
        return target.ssl_context().wrap_socket(raw, server_hostname=target.server_name)
    except BaseException:
        raw.close()
        raise


class EventStream:
    """Frames from one open stream, read as they arrive."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._chunks = response.iter_bytes()
        self._buffer = ""
        self._arrived = 0.0  # when the buffer's last chunk came
        # Every frame read so far, kept when a read times out so a test can
        # say how much arrived before it gave up.
        self.received: list[Frame] = []

    def frames(self) -> Iterator[Frame]:
        # Frames left over from a chunk an earlier call stopped reading come
        # first: they arrived with that chunk, and no more may come for a while.
        while True:
            while "\n\n" in self._buffer:
                block, self._buffer = self._buffer.split("\n\n", 1)
                frame = parse_frame(block, self._arrived)
                self.received.append(frame)
                yield frame
            chunk = next(self._chunks, None)
            if chunk is None:
                return
            self._arrived = time.monotonic()
            self._buffer += chunk.decode().replace("\r\n", "\n")

    def take(self, count: int, *, events_only: bool = True) -> list[Frame]:
        """The next `count` frames (not counting comments when events_only)."""
        taken: list[Frame] = []
        if count == 0:
            return taken
        for frame in self.frames():
            if events_only and frame.comment is not None and frame.data is None:
                continue
            taken.append(frame)
            if len(taken) == count:
                break
        return taken


@contextlib.contextmanager
def open_stream(
    target: Target,
    path: str,
    *,
    headers: dict[str, str] | None = None,
    read_timeout: float = 30.0,
) -> Iterator[EventStream]:
    with (
        target.client(timeout=read_timeout) as client,
        client.stream(
            "GET",
            path,
            headers={**BROWSER_EVENTSOURCE_HEADERS, **(headers or {})},
            extensions=target.extensions,
        ) as response,
    ):
        yield EventStream(response)


class Dechunker:
    """Undo HTTP/1.1 chunked framing incrementally (Caddy sends chunks)."""

    def __init__(self) -> None:
        self.buffer = b""
        self.remaining = 0  # bytes left in the current chunk
        self.done = False  # the last (empty) chunk was read

    def feed(self, data: bytes) -> bytes:
        self.buffer += data
        out = b""
        while self.buffer and not self.done:
            if self.remaining < 0:  # the CRLF after a chunk's data
                if len(self.buffer) < 2:
                    break
                self.buffer, self.remaining = self.buffer[2:], 0
                continue
            if self.remaining > 0:
                take = self.buffer[: self.remaining]
                out += take
                self.buffer = self.buffer[len(take) :]
                self.remaining -= len(take)
                if self.remaining == 0:
                    self.remaining = -1
                continue
            line_end = self.buffer.find(b"\r\n")
            if line_end < 0:
                break
            self.remaining = int(self.buffer[:line_end].split(b";")[0], 16)
            self.buffer = self.buffer[line_end + 2 :]
            if self.remaining == 0:
                self.done = True
        return out
