"""Black-box checks of a DorkOS-like server: does the mock do what DorkOS does?

Every proof on the site is only as true as the mock behind the proxy. These
checks talk to an upstream by address alone, as a proxy would, and describe
what they saw in one short line each (status codes, header names and
values, frame kinds, close codes, heartbeat times rounded to 5 s): nothing
that changes from run to run. Run against the mock and against a real
DorkOS, the two descriptions of each behaviour must be equal, or the
difference must be explained in DIFFERENCES.

`make conformance` (harness.upstream.real_dorkos) runs them against a real DorkOS and
the mock side by side and writes data/conformance.json and the table in
generated/; `make test` runs them against the mock and fails where it no
longer answers as DorkOS did (tests/test_conformance.py).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import re
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
from wsproto.utilities import RemoteProtocolError

from harness.checks.outside_checks import page_assets
from harness.clients.sse_client import Frame, Target, open_stream
from harness.clients.ws_client import (
    HEARTBEAT_EVENT,
    HandshakeRefused,
    HandshakeUnanswered,
    SocketClosed,
    open_socket,
)
from harness.proxies.kind import REPO_ROOT

DATA_FILE = REPO_ROOT / "data" / "conformance.json"
TABLE_FILE = REPO_ROOT / "generated" / "conformance.md"
SUMMARY_FILE = REPO_ROOT / "generated" / "conformance-summary.md"

# The reader's name for the server, which both DorkOS and the mock are
# started to trust (DORKOS_TRUSTED_HOSTS), and the browser's origin for it.
TRUSTED = "dorkos.example.com"
PAGE_ORIGIN = f"https://{TRUSTED}"
UNTRUSTED = "evil.example.com"


def _broadcast(frame: Frame) -> bool:
    """An event with a JSON object for data: what DorkOS's global stream
    broadcasts as sessions change (`session_status`, `notification`), here
    from the turns of the checks that run beside the heartbeat checks."""
    return frame.event not in (None, HEARTBEAT_EVENT) and (frame.data or "").startswith("{")


# After a stream's first frame, this many frames are watched for, each within
# HEARTBEAT_WAIT_S: DorkOS's 15 s heartbeat period, and a margin far from it.
FRAMES_WATCHED = 2
HEARTBEAT_WAIT_S = 20.0
# How long a check waits for a frame or an answer that should come at once.
ANSWER_S = 10.0
# More events than a turn of DorkOS's test runtime has (7).
TURN_EVENTS_AT_MOST = 50
# DorkOS's sign-in limit: this many attempts per client address per 15 min.
SIGNIN_LIMIT = 10
# Two documentation ranges (RFC 5737), for the addresses a proxy would put
# in X-Forwarded-For; nothing is ever sent to them.
VISITORS_A, VISITORS_B = "198.51.100", "203.0.113"


@dataclass(frozen=True)
class Upstream:
    """A DorkOS-like server listening on loopback, as the checks reach it."""

    label: str  # "the mock", "DorkOS 0.62.0"
    host: str  # "127.0.0.1" or "::1"
    port: int

    @property
    def base_url(self) -> str:
        shown = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{shown}:{self.port}"

    def target(self) -> Target:
        return Target(self.base_url, TRUSTED)

    def client(self, timeout: float = ANSWER_S) -> httpx.Client:
        # As Target.client: loopback, so no proxy lookup (it races with pytest).
        return httpx.Client(base_url=self.base_url, timeout=timeout, trust_env=False)

    def raw(self, request: bytes, *, until: bytes = b"\r\n\r\n", wait: float = ANSWER_S) -> bytes:
        """Send bytes; what came back up to and including `until` (or the close)."""
        with socket.create_connection((self.host, self.port), timeout=wait) as sock:
            sock.sendall(request)
            received = b""
            deadline = time.monotonic() + wait
            while until not in received and time.monotonic() < deadline:
                sock.settimeout(max(0.01, deadline - time.monotonic()))
                try:
                    chunk = sock.recv(65536)
                except TimeoutError:
                    break
                if not chunk:
                    break
                received += chunk
            return received


Observe = Callable[[Upstream], str]


@dataclass(frozen=True)
class Behaviour:
    name: str
    question: str  # what the table's first column says
    observe: Observe


# -- helpers ---------------------------------------------------------------

ROUTES = {
    "global": "/api/events",
    "session": "/api/sessions/{id}/events",
    "tunnel (deprecated)": "/api/tunnel/stream",
    "extensions (deprecated)": "/api/extensions/events",
}
# Headers left out of a response head's description, and headers named
# without their value: both change from response to response.
_LEFT_OUT = {"date", "keep-alive"}
_NAMED_ONLY = {"etag", "last-modified", "content-length"}


def _path(route: str) -> str:
    return ROUTES[route].format(id=uuid.uuid4())


def _head(raw: bytes) -> tuple[str, list[tuple[str, str]], bytes]:
    head, _, rest = raw.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    headers = [(k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in lines)]
    return status, headers, rest


def _shown_headers(headers: list[tuple[str, str]]) -> str:
    return ", ".join(
        k if k.lower() in _NAMED_ONLY else f"{k}: {v}"
        for k, v in headers
        if k.lower() not in _LEFT_OUT
    )


def _get(path: str, headers: dict[str, str], version: str = "HTTP/1.1") -> bytes:
    lines = [f"GET {path} {version}", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _answer(response: httpx.Response) -> str:
    """`403 HOST_NOT_ALLOWED`: the status, and DorkOS's error code when there is one."""
    code = None
    if response.headers.get("content-type", "").startswith("application/json"):
        with contextlib.suppress(ValueError):
            body = response.json()
            code = body.get("code") if isinstance(body, dict) else None
    return f"{response.status_code} {code}" if code else str(response.status_code)


def _frame_kind(frame: Frame) -> str:
    if frame.event is None and frame.comment is not None and frame.data is None:
        return f"comment `: {frame.comment}`"
    kind = f"`{frame.event}`" if frame.event else "a message with no event"
    if frame.data in (None, ""):
        data = "no data" if frame.data is None else "empty data"
    else:
        try:
            parsed = json.loads(frame.data)
        except ValueError:
            data = "text data"
        else:
            data = "JSON object data" if isinstance(parsed, dict) else "JSON data"
    return f"{kind} with {data}" + (", an id" if frame.event_id else ", no id")


def _at(seconds: float) -> str:
    return f"{5 * round(seconds / 5)} s"


# -- framing and headers ---------------------------------------------------


def health(upstream: Upstream) -> str:
    raw = upstream.raw(_get("/api/health", {"Host": TRUSTED}))
    status, headers, _ = _head(raw)
    names = {k.lower(): v for k, v in headers}
    framing = "Content-Length" if "content-length" in names else "no Content-Length"
    return (
        f"{status}; {names.get('content-type')}; {framing}; Keep-Alive: {names.get('keep-alive')}"
    )


def unknown_api_path(upstream: Upstream) -> str:
    with upstream.client() as client:
        return _answer(client.get("/api/no-such-route", headers={"Host": TRUSTED}))


def stream_head(route: str) -> Observe:
    def observe(upstream: Upstream) -> str:
        raw = upstream.raw(_get(_path(route), {"Host": TRUSTED, "Accept": "text/event-stream"}))
        status, headers, _ = _head(raw)
        return f"{status}; {_shown_headers(headers)}"

    return observe


def http10_stream(upstream: Upstream) -> str:
    raw = upstream.raw(_get(_path("session"), {"Host": TRUSTED}, version="HTTP/1.0"))
    status, headers, _ = _head(raw)
    names = {k.lower(): v for k, v in headers}
    return (
        f"{status}; Transfer-Encoding {names.get('transfer-encoding', 'none')}; "
        f"Content-Length {names.get('content-length', 'none')}; "
        f"Connection: {names.get('connection')}"
    )


def first_frame(route: str) -> Observe:
    def observe(upstream: Upstream) -> str:
        with open_stream(upstream.target(), _path(route), read_timeout=ANSWER_S) as stream:
            if stream.response.status_code != 200:
                stream.response.read()
                return f"no stream: {_answer(stream.response)}"
            return _frame_kind(stream.take(1, events_only=False)[0])

    return observe


def _watched(seen: list[str]) -> str:
    if len(seen) < FRAMES_WATCHED:
        seen.append(f"then nothing for {HEARTBEAT_WAIT_S:.0f} s")
    return "; ".join(seen)


def sse_heartbeats(route: str) -> Observe:
    """The frames after the first, when nothing happens: DorkOS's heartbeats."""

    def observe(upstream: Upstream) -> str:
        seen: list[str] = []
        with open_stream(upstream.target(), _path(route), read_timeout=HEARTBEAT_WAIT_S) as stream:
            opened = time.monotonic()
            if stream.response.status_code != 200:
                return f"no stream: {stream.response.status_code}"
            stream.take(1, events_only=False)
            with contextlib.suppress(httpx.ReadTimeout):
                while len(seen) < FRAMES_WATCHED:
                    (frame,) = stream.take(1, events_only=False)
                    if not _broadcast(frame):
                        seen.append(f"{_frame_kind(frame)} at {_at(frame.arrived - opened)}")
        return _watched(seen)

    return observe


# -- sockets ---------------------------------------------------------------


def _socket_answer(
    upstream: Upstream,
    path: str,
    *,
    origin: str | None,
    host: str = TRUSTED,
    forwarded_proto: str | None = "https",
) -> str:
    """How an upgrade ends up: its first frame, a close code, or an HTTP status."""
    headers = {"X-Forwarded-Proto": forwarded_proto} if forwarded_proto else {}
    try:
        with open_socket(
            upstream.target(),
            path,
            timeout=ANSWER_S,
            origin=origin,
            headers=headers,
            authority=host,
        ) as sock:
            try:
                (frame,) = sock.take(1, timeout=ANSWER_S, events_only=False)
            except SocketClosed as closed:
                return f"101, then closed with {closed.code}"
            except TimeoutError:
                return f"101, then nothing in {ANSWER_S:.0f} s"
            if frame.event is None:
                return "101, then a binary message"
            return f"101, then {_frame_kind(frame)}"
    except HandshakeRefused as refused:
        return f"handshake answered {refused.status}"
    except (HandshakeUnanswered, RemoteProtocolError, OSError):
        return "connection closed without an answer"


def socket_first_frame(route: str) -> Observe:
    def observe(upstream: Upstream) -> str:
        return _socket_answer(upstream, _path(route), origin=PAGE_ORIGIN)

    return observe


def socket_heartbeats(route: str) -> Observe:
    def observe(upstream: Upstream) -> str:
        seen: list[str] = []
        with open_socket(
            upstream.target(),
            _path(route),
            timeout=ANSWER_S,
            origin=PAGE_ORIGIN,
            headers={"X-Forwarded-Proto": "https"},
            authority=TRUSTED,
        ) as sock:
            opened = time.monotonic()
            sock.take(1, timeout=ANSWER_S, events_only=False)
            with contextlib.suppress(TimeoutError):
                while len(seen) < FRAMES_WATCHED:
                    (frame,) = sock.take(1, timeout=HEARTBEAT_WAIT_S, events_only=False)
                    if _broadcast(frame):
                        continue
                    shown = (
                        f"`{HEARTBEAT_EVENT}`"
                        if frame.event == HEARTBEAT_EVENT
                        else _frame_kind(frame)
                    )
                    seen.append(f"{shown} at {_at(frame.arrived - opened)}")
        return _watched(seen)

    return observe


def socket_origins(upstream: Upstream) -> str:
    """The origin policy of the upgrade router, case by case, on /api/events."""
    cases: dict[str, dict[str, Any]] = {
        "page origin, https": {"origin": PAGE_ORIGIN},
        "page origin, no X-Forwarded-Proto": {"origin": PAGE_ORIGIN, "forwarded_proto": None},
        "origin http, X-Forwarded-Proto https": {"origin": f"http://{TRUSTED}"},
        "origin with :8443, Host without": {"origin": f"{PAGE_ORIGIN}:8443"},
        "Origin null": {"origin": "null"},
        "no Origin": {"origin": None},
        "no Origin, untrusted Host": {"origin": None, "host": UNTRUSTED},
    }
    return "; ".join(
        f"{case}: {_socket_answer(upstream, '/api/events', **options).split(', then ')[-1]}"
        for case, options in cases.items()
    )


def socket_refusals(upstream: Upstream) -> str:
    cases = {
        "unknown room": f"/api/rooms/{uuid.uuid4()}/events",
        "session id not a UUID": "/api/sessions/not-a-uuid/events",
        "a path with no socket": "/api/health",
    }
    return "; ".join(
        f"{case}: {_socket_answer(upstream, path, origin=PAGE_ORIGIN)}"
        for case, path in cases.items()
    )


# RFC 6455's example nonce (16 bytes), and 18 bytes a hand-written check
# might send; the `ws` package behind DorkOS's sockets checks the length.
SOCKET_KEYS = {
    "a 16-byte key": "dGhlIHNhbXBsZSBub25jZQ==",
    "an 18-byte key": "ZG9ya29zLXByb3h5LWNoZWNr",
}


def socket_key(upstream: Upstream) -> str:
    """An upgrade to /api/events, by hand, with each Sec-WebSocket-Key."""
    answers = []
    for case, key in SOCKET_KEYS.items():
        request = (
            f"GET {ROUTES['global']} HTTP/1.1\r\nHost: {TRUSTED}\r\nOrigin: {PAGE_ORIGIN}\r\n"
            f"X-Forwarded-Proto: https\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
            f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n\r\n"
        )
        with socket.create_connection(upstream.target().address, timeout=ANSWER_S) as sock:
            sock.sendall(request.encode())
            status = sock.recv(64).split(b"\r\n", 1)[0].decode(errors="replace")
        answers.append(f"{case}: {status.removeprefix('HTTP/1.1 ')[:3] or 'no answer'}")
    return "; ".join(answers)


def terminal(upstream: Upstream) -> str:
    path = f"/api/terminal/{uuid.uuid4()}/socket"
    cases: dict[str, dict[str, Any]] = {
        "trusted Host": {"origin": PAGE_ORIGIN},
        "untrusted Host": {"origin": f"https://{UNTRUSTED}", "host": UNTRUSTED},
    }
    return "; ".join(
        f"{case}: {_socket_answer(upstream, path, **options)}" for case, options in cases.items()
    )


# -- cursors -----------------------------------------------------------------


def stale_cursor(upstream: Upstream) -> str:
    """A cursor from another server start, over SSE and over a socket."""
    session = str(uuid.uuid4())
    stale = f"{session}-1000-3"
    path = ROUTES["session"].format(id=session)
    with open_stream(
        upstream.target(), path, headers={"Last-Event-ID": stale}, read_timeout=ANSWER_S
    ) as stream:
        over_sse = _frame_kind(stream.take(1)[0])
    over_socket = _socket_answer(upstream, f"{path}?resume={stale}", origin=PAGE_ORIGIN)
    return f"SSE: {over_sse}; socket: {over_socket.split(', then ')[-1]}"


# -- a turn: DorkOS's test runtime answering a message -------------------------


def _turn(upstream: Upstream, transport: str, session: str) -> list[Frame]:
    """Open the session's stream, send a message, and take its turn's events."""
    path = ROUTES["session"].format(id=session)

    def send() -> None:
        with upstream.client() as client:
            sent = client.post(
                f"/api/sessions/{session}/messages",
                json={"content": "hi"},
                headers={"Host": TRUSTED},
            )
        if sent.status_code != 202:
            raise RuntimeError(f"POST of a message answered {_answer(sent)}")

    if transport == "SSE":
        with open_stream(upstream.target(), path, read_timeout=ANSWER_S) as stream:
            stream.take(1)
            send()
            return until_turn_ends(lambda: stream.take(1)[0])
    with open_socket(
        upstream.target(),
        path,
        timeout=ANSWER_S,
        origin=PAGE_ORIGIN,
        headers={"X-Forwarded-Proto": "https"},
        authority=TRUSTED,
    ) as sock:
        sock.take(1, timeout=ANSWER_S)
        send()
        return until_turn_ends(lambda: sock.take(1, timeout=ANSWER_S)[0])


def until_turn_ends(take: Callable[[], Frame], within_s: float = ANSWER_S) -> list[Frame]:
    """A session's frames until its turn ends, within `within_s` of the message.

    Heartbeats keep coming whether or not a turn does, so the bound is on
    the whole wait, not on each frame.
    """
    frames: list[Frame] = []
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline and len(frames) < TURN_EVENTS_AT_MOST:
        frame = take()
        if frame.event in (None, HEARTBEAT_EVENT):
            continue  # a comment or a heartbeat, not the turn
        frames.append(frame)
        if frame.event == "turn_end":
            return frames
    raise TimeoutError(
        f"no `turn_end` within {within_s:.0f} s of the message; got {[f.event for f in frames]}"
    )


def _events(frames: list[Frame]) -> str:
    shown = []
    for frame in frames:
        text = json.loads(frame.data or "{}").get("text") if frame.event == "text_delta" else None
        shown.append(f"`{frame.event}`" + (f" {text!r}" if text else ""))
    ids = {bool(f.event_id) for f in frames}
    return ", ".join(shown) + ("; each with an id" if ids == {True} else "; not all with an id")


def reply(transport: str) -> Observe:
    def observe(upstream: Upstream) -> str:
        return "202; then " + _events(_turn(upstream, transport, str(uuid.uuid4())))

    return observe


def resume(transport: str) -> Observe:
    """Back on the stream with the third event's id as the cursor."""

    def observe(upstream: Upstream) -> str:
        session = str(uuid.uuid4())
        frames = _turn(upstream, transport, session)
        cursor = frames[2].event_id or ""
        path = ROUTES["session"].format(id=session)
        if transport == "SSE":
            with open_stream(
                upstream.target(), path, headers={"Last-Event-ID": cursor}, read_timeout=ANSWER_S
            ) as stream:
                again = until_turn_ends(lambda: stream.take(1)[0])
        else:
            with open_socket(
                upstream.target(),
                f"{path}?resume={cursor}",
                timeout=ANSWER_S,
                origin=PAGE_ORIGIN,
                headers={"X-Forwarded-Proto": "https"},
                authority=TRUSTED,
            ) as sock:
                again = until_turn_ends(lambda: sock.take(1, timeout=ANSWER_S)[0])
        numbers = [frames.index(f) + 1 for f in frames for a in again if a.event_id == f.event_id]
        return f"events {', '.join(map(str, numbers)) or 'none'} of the turn again: " + _events(
            again
        )

    return observe


def snapshot_after_turn(upstream: Upstream) -> str:
    session = str(uuid.uuid4())
    _turn(upstream, "SSE", session)
    path = ROUTES["session"].format(id=session)
    with open_stream(upstream.target(), path, read_timeout=ANSWER_S) as stream:
        (snapshot,) = stream.take(1)
    messages = json.loads(snapshot.data or "{}").get("messages", [])
    return f"`{snapshot.event}` with messages: " + "; ".join(
        f"{m.get('role')} {m.get('content')!r}" for m in messages
    )


# -- the guards ----------------------------------------------------------------


def host_guard(upstream: Upstream) -> str:
    cases = {
        "/api/health, untrusted Host": ("/api/health", UNTRUSTED),
        "/api/health, trusted name on another port": ("/api/health", f"{TRUSTED}:8443"),
        "session stream, untrusted Host": (_path("session"), UNTRUSTED),
        "the app's page, untrusted Host": ("/", UNTRUSTED),
    }
    answers = []
    with upstream.client() as client:
        for case, (path, host) in cases.items():
            with client.stream("GET", path, headers={"Host": host}) as response:
                if response.headers.get("content-type", "").startswith("application/json"):
                    response.read()
                answers.append(f"{case}: {_answer(response)}")
    return "; ".join(answers)


def origin_on_http(upstream: Upstream) -> str:
    """A request carrying the browser's Origin, as a same-origin POST or asset does."""
    cases = {
        "X-Forwarded-Proto https": {"X-Forwarded-Proto": "https"},
        "none": {},
        "X-Forwarded-Proto http": {"X-Forwarded-Proto": "http"},
    }
    answers = []
    with upstream.client() as client:
        for case, extra in cases.items():
            response = client.get(
                "/api/health", headers={"Host": TRUSTED, "Origin": PAGE_ORIGIN, **extra}
            )
            answers.append(f"{case}: {_answer(response)}")
        on_8443 = client.get(
            "/api/health",
            headers={
                "Host": TRUSTED,
                "Origin": f"{PAGE_ORIGIN}:8443",
                "X-Forwarded-Proto": "https",
            },
        )
    answers.append(f"Origin with :8443, Host without: {_answer(on_8443)}")
    return "; ".join(answers)


def app_assets(upstream: Upstream) -> str:
    """The app's page and the assets it loads, as Chromium asks for them."""
    with upstream.client() as client:
        page = client.get("/", headers={"Host": TRUSTED})
        assets = page_assets(page.text)
        kinds = ", ".join(
            f"{kind} {'with' if cross else 'without'} crossorigin" for kind, _, cross in assets
        )
        answers = [f"/: {page.status_code}, loads {kinds or 'no asset'}"]
        for case, extra in {
            "with X-Forwarded-Proto https": {"X-Forwarded-Proto": "https"},
            "without X-Forwarded-Proto": {},
        }.items():
            statuses = sorted(
                {
                    _answer(
                        client.get(url, headers={"Host": TRUSTED, "Origin": PAGE_ORIGIN, **extra})
                    )
                    for _, url, cross in assets
                    if cross
                }
            )
            answers.append(f"assets with Origin, {case}: {', '.join(statuses) or '-'}")
    return "; ".join(answers)


def client_address(upstream: Upstream) -> str:
    """Whose address the sign-in limit counts: the last X-Forwarded-For entry.

    Every request here is a wrong sign-in; a fresh pair of documentation
    addresses each time, so the buckets of an earlier run don't count.
    """
    host = uuid.uuid4().int % 250 + 1
    visitor_a, visitor_b = f"{VISITORS_A}.{host}", f"{VISITORS_B}.{host}"

    def sign_in(client: httpx.Client, forwarded_for: str) -> str:
        response = client.post(
            "/api/auth/sign-in/email",
            json={"email": "owner@example.com", "password": "wrong"},
            headers={"Host": TRUSTED, "X-Forwarded-For": forwarded_for},
        )
        return _answer(response)

    with upstream.client() as client:
        first = [sign_in(client, visitor_a) for _ in range(SIGNIN_LIMIT)]
        next_same = sign_in(client, visitor_a)
        next_other = sign_in(client, visitor_b)
        behind_second_proxy = sign_in(client, f"{visitor_b}, {visitor_a}")
    return (
        f"attempts 1-{SIGNIN_LIMIT} from one address: {', '.join(sorted(set(first)))}; "
        f"the next from it: {next_same}; from another: {next_other}; "
        f"with `X-Forwarded-For: <another>, <it>`: {behind_second_proxy}"
    )


BEHAVIOURS: tuple[Behaviour, ...] = (
    Behaviour("health", "GET /api/health", health),
    Behaviour("unknown-api-path", "GET of an /api path nothing serves", unknown_api_path),
    *(
        Behaviour(
            f"sse-head-{key.split()[0]}", f"SSE response head, {key} stream", stream_head(key)
        )
        for key in ROUTES
    ),
    Behaviour("sse-http10", "SSE to an HTTP/1.0 request (nginx's default)", http10_stream),
    *(
        Behaviour(f"sse-first-{key.split()[0]}", f"SSE first frame, {key} stream", first_frame(key))
        for key in ROUTES
    ),
    *(
        Behaviour(
            f"sse-heartbeat-{key.split()[0]}",
            f"SSE after the first frame, {key} stream, nothing happening",
            sse_heartbeats(key),
        )
        for key in ROUTES
    ),
    *(
        Behaviour(
            f"socket-first-{key}", f"Socket first frame, {key} stream", socket_first_frame(key)
        )
        for key in ("global", "session")
    ),
    *(
        Behaviour(
            f"socket-heartbeat-{key}",
            f"Socket after the first frame, {key} stream, nothing happening",
            socket_heartbeats(key),
        )
        for key in ("global", "session")
    ),
    Behaviour("socket-origin", "Socket to /api/events: origin policy", socket_origins),
    Behaviour("socket-refusals", "Sockets DorkOS refuses", socket_refusals),
    Behaviour("terminal", "Terminal socket", terminal),
    Behaviour("socket-key", "Socket upgrade by hand: Sec-WebSocket-Key", socket_key),
    Behaviour("stale-cursor", "Resume from a cursor of another server start", stale_cursor),
    *(
        Behaviour(f"reply-{t.lower()}", f"A message's turn, on the session's {t}", reply(t))
        for t in ("SSE", "socket")
    ),
    *(
        Behaviour(
            f"resume-{t.lower()}", f"Back on the session's {t} from the turn's 3rd id", resume(t)
        )
        for t in ("SSE", "socket")
    ),
    Behaviour("snapshot-after-turn", "A new stream's snapshot after a turn", snapshot_after_turn),
    Behaviour("host-guard", "Host guard (login off)", host_guard),
    Behaviour("origin-http", "GET /api/health with the page's Origin", origin_on_http),
    Behaviour("app-assets", "The app's page and its assets", app_assets),
    Behaviour("client-address", "Sign-in limit, by client address", client_address),
)


def observe_all(
    upstream: Upstream, behaviours: tuple[Behaviour, ...] = BEHAVIOURS
) -> dict[str, str]:
    """Every behaviour's description, the slow ones side by side with the rest."""

    def one(behaviour: Behaviour) -> str:
        try:
            return behaviour.observe(upstream)
        except Exception as error:  # an answer too: the mock must fail alike
            return f"check failed: {type(error).__name__}: {error}"

    with ThreadPoolExecutor(max_workers=len(behaviours), thread_name_prefix="conform") as pool:
        answers = dict(zip([b.name for b in behaviours], pool.map(one, behaviours), strict=True))
    return answers


# -- what the run found, on the site ---------------------------------------------

# Where the mock answers otherwise than DorkOS on purpose, and what that means
# for the proofs. A difference not listed here fails the test suite, and so
# does an entry here that is no longer a difference.
DIFFERENCES: dict[str, str] = {}


def load() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DATA_FILE.read_text())
    return data


def record(dorkos: dict[str, str], mock: dict[str, str], about: dict[str, str]) -> dict[str, Any]:
    return {
        "dorkos": about,
        "ran_on": datetime.date.today().isoformat(),
        "behaviours": [
            {
                "name": b.name,
                "question": b.question,
                "dorkos": dorkos[b.name],
                "mock": mock[b.name],
            }
            for b in BEHAVIOURS
        ],
    }


def render(data: dict[str, Any]) -> str:
    about = data["dorkos"]
    lines = [
        f"DorkOS {about['version']} (commit `{about['commit'][:12]}`, {about['source']}, "
        f"on Node.js {about['node']}), run on {data['ran_on']}.",
        "",
        "| Behaviour | DorkOS | The mock |",
        "|---|---|---|",
    ]
    for row in data["behaviours"]:
        mock = "the same" if row["mock"] == row["dorkos"] else row["mock"]
        lines.append(f"| {row['question']} | {_cell(row['dorkos'])} | {_cell(mock)} |")
    if DIFFERENCES:
        lines += ["", "Where the mock differs on purpose:", ""]
        lines += [f"- **{name}**: {why}" for name, why in DIFFERENCES.items()]
    return "\n".join(lines) + "\n"


def render_summary(data: dict[str, Any]) -> str:
    """What the Tested with page says: which DorkOS the mock answers as, and
    which DorkOS the published configs last ran in front of."""
    from harness.checks import behind_proxies

    return _mock_summary(data) + "\n" + behind_proxies.summary(behind_proxies.load())


def _mock_summary(data: dict[str, Any]) -> str:
    about = data["dorkos"]
    total = len(data["behaviours"])
    same = sum(row["mock"] == row["dorkos"] for row in data["behaviours"])
    answered, rest = ("all", "") if same == total else (f"{same} of", "; the rest are explained")
    return (
        f"The DorkOS in these runs is the mock, which answered {answered} {total} black-box "
        f"checks exactly as DorkOS {about['version']} (commit `{about['commit'][:12]}`) did "
        f"on {data['ran_on']}{rest} (see "
        f"[How it is tested](how-it-is-tested.md#the-mock-against-the-real-dorkos)).\n"
    )


def _cell(text: str) -> str:
    # A line per part of the answer, but a media type keeps its charset.
    return re.sub(r"; (?!charset=)", "<br>", text.replace("|", "\\|"))


def render_files(data: dict[str, Any]) -> None:
    """generated/: the mock against DorkOS, and the configs in front of DorkOS."""
    from harness.checks import behind_proxies

    TABLE_FILE.write_text(render(data))
    SUMMARY_FILE.write_text(render_summary(data))
    behind_proxies.TABLE_FILE.write_text(behind_proxies.render(behind_proxies.load()))


@contextlib.contextmanager
def mock_upstream() -> Iterator[Upstream]:
    """The mock as every proxy run has it (its defaults), on a free loopback port."""
    from harness.upstream.mock_dorkos import MockDorkOS, MockSettings

    with MockDorkOS(MockSettings(port=0)) as mock:
        yield Upstream("the mock", "127.0.0.1", mock.port)


def main() -> None:
    """`make conformance`: DorkOS and the mock, side by side; writes what they answered."""
    import argparse
    import signal
    import sys
    import tempfile
    from pathlib import Path

    from harness.checks import behind_proxies
    from harness.upstream import real_dorkos

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--write", action="store_true", help="rewrite data/ and generated/")
    parser.add_argument(
        "--render", action="store_true", help="only render generated/ from data/conformance.json"
    )
    parser.add_argument("--port", type=int, default=4242, help="where DorkOS listens (loopback)")
    args = parser.parse_args()
    if args.render:
        render_files(load())
        return
    # Stopped from outside: leave through the `finally`s, which stop every
    # DorkOS and proxy this run started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        build = real_dorkos.find_build()
        dorkos = real_dorkos.with_dorkos(build, args.port, observe_all)
    except real_dorkos.DorkosUnavailable as error:
        sys.exit(f"make conformance: {error}")
    with mock_upstream() as upstream:
        mock = observe_all(upstream)
    about = {
        "version": build.version,
        "commit": build.commit,
        "source": build.source,
        "node": real_dorkos.node_version(),
    }
    data = record(dorkos, mock, about)
    for row in data["behaviours"]:
        same = "same" if row["dorkos"] == row["mock"] else "DIFFERENT"
        print(f"{same:9} {row['name']}\n  DorkOS: {row['dorkos']}\n  mock:   {row['mock']}")
    with tempfile.TemporaryDirectory(prefix="conformance-") as workdir:
        in_front = behind_proxies.in_front_of(build, about, Path(workdir))
    if args.write:
        DATA_FILE.write_text(json.dumps(data, indent=2) + "\n")
        behind_proxies.write(in_front)
        render_files(data)
        print(
            f"wrote {DATA_FILE.relative_to(REPO_ROOT)}, {behind_proxies.DATA_FILE.name} and "
            f"generated/"
        )
    failed = [n for run in in_front["runs"] for n, o in run["checks"].items() if not o["passed"]]
    if failed:
        sys.exit(f"make conformance: through the published configs, {failed} failed")


if __name__ == "__main__":
    main()
