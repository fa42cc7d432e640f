"""What a reader's browser must see of DorkOS's streams, over either transport.

DorkOS serves its three durable streams on the same paths over two
transports: a WebSocket to a request that asks for an upgrade (the web app
since 0.58) and Server-Sent Events to any other (integrations, and the app
up to 0.57). The checks that matter to both (real time, silence, a client
leaving, resuming) are written once here and run once per transport; the
ones only a socket has (the upgrade itself, a refusal's close code, the
terminal) follow.

No check is decided by how fast the proxy is. Each waits for something the
proxy either does or doesn't do, and gives up only after a bound many times
what a healthy proxy takes on a busy machine (harness.tables.margins prints how
far from it every run was).
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, Literal

import httpx

from harness.checks.endpoints import Endpoint, violation
from harness.clients.sse_client import Frame, open_stream
from harness.clients.ws_client import (
    HandshakeRefused,
    HandshakeUnanswered,
    SocketClosed,
    open_socket,
)
from harness.tables import margins
from harness.upstream.mock_dorkos import MockDorkOS, RequestRecord

Transport = Literal["sse", "websocket"]
TRANSPORTS: tuple[Transport, ...] = ("sse", "websocket")

# Whether events arrive in real time is decided by pacing, not by a bound
# on delay that a busy machine can eat: the mock sends each event only after
# the client has the one before, so a proxy that holds an event back stalls
# the stream outright. This is how long a stalled stream is waited for: ten
# times the worst delay a healthy proxy showed on a busy two-core machine
# (1.5 s in fourteen runs, one building images, three with a core kept
# busy), against for ever for a proxy that buffers. The delays themselves
# are reported, and `make bench` measures them on a quiet machine.
HELD_BACK_AFTER_S = 15.0
REALTIME_EVENTS = 8
# nginx's default proxy_read_timeout is 60 s; a stream or a response must
# outlast it by a margin to show the config changed it. The silence is timed
# by the mock from its own last write, which nginx's timer counts from too;
# a late mock timer only makes the silence longer.
SILENCE_S = 65.0
# When a client goes away, DorkOS frees the subscription at once (older
# versions also released the session's write lock); the proxy must pass the
# close on. A proxy that doesn't passes it on at DorkOS's next write, which
# on an idle stream without heartbeats never comes; a healthy one takes
# milliseconds, and 2.9 s at worst on a busy two-core machine. The bound is
# far from both.
DISCONNECT_BOUND_S = 30.0
# How long after its due time the mock's timed event may come before the
# test process itself counts as stalled (its timers were late by a second
# at most on a busy two-core machine).
MOCK_SENDS_WITHIN_S = SILENCE_S + 60.0
# How often a check looks whether the mock has sent its event after the
# silence; what it adds to the event's measured delay, at most.
SENT_POLL_S = 0.1


class StreamEnded(Exception):
    """An SSE response ended before the frames the client waited for."""


# What a stream that stops short raises, whichever the transport.
STREAM_STOPPED = (
    httpx.ReadTimeout,
    httpx.RemoteProtocolError,
    TimeoutError,
    SocketClosed,
    StreamEnded,
)


class StreamRefused(Exception):
    """The stream never opened: a status other than 200 (SSE) or 101 (socket)."""


def stopped(error: BaseException) -> str:
    """How a stream stopped, in words a reader of a report understands."""
    if isinstance(error, (httpx.ReadTimeout, TimeoutError)):
        return "the read timed out"
    if isinstance(error, SocketClosed):
        return (
            f"the socket closed {error}"
            if error.code is None
            else f"the socket closed with {error}"
        )
    if isinstance(error, httpx.RemoteProtocolError):
        return f"the proxy cut the response off: {error}"
    return str(error) or type(error).__name__


def new_session(mock: MockDorkOS, **behaviour: Any) -> str:
    return mock.behave(str(uuid.uuid4()), **behaviour)


def stream_path(session_id: str) -> str:
    return f"/api/sessions/{session_id}/events"


def spoken(transport: Transport) -> str:
    return "over SSE" if transport == "sse" else "over a WebSocket"


@contextlib.contextmanager
def opened(
    endpoint: Endpoint,
    path: str,
    transport: Transport,
    *,
    timeout: float,
    headers: dict[str, str] | None = None,
) -> Iterator[Callable[[int], list[Frame]]]:
    """Open a stream as the browser does on `transport`; yields `take(n)`.

    `take(n)` returns the next n frames (heartbeats left out) and raises one
    of STREAM_STOPPED when none comes for `timeout` seconds or the stream
    ends. A stream that never opens raises StreamRefused, saying why.
    """
    if transport == "sse":
        with open_stream(endpoint.target, path, headers=headers, read_timeout=timeout) as stream:
            if stream.response.status_code != 200:
                raise StreamRefused(
                    f"GET {path} answered {stream.response.status_code} "
                    f"{stream.response.reason_phrase}, not 200"
                )

            def take(count: int) -> list[Frame]:
                frames = stream.take(count)
                if len(frames) < count:
                    raise StreamEnded(f"the response ended after {len(frames)} of {count} frames")
                return frames

            yield take
        return
    try:
        with open_socket(endpoint.target, path, timeout=timeout, headers=headers) as sock:
            yield lambda count: sock.take(count, timeout=timeout)
    except HandshakeRefused as refused:
        kind = refused.headers.get("content-type", "no body")
        raise StreamRefused(
            f"the WebSocket handshake to {path} was answered {refused} ({kind}), "
            f"not 101 Switching Protocols"
        ) from refused
    except HandshakeUnanswered as unanswered:
        raise StreamRefused(f"the WebSocket handshake to {path}: {unanswered}") from unanswered


# -- both transports ------------------------------------------------------


def realtime(
    endpoint: Endpoint, mock: MockDorkOS, transport: Transport, *, accel_header: bool = True
) -> str:
    """Every event reaches the client before the next one is sent.

    `accel_header`: whether DorkOS sends `X-Accel-Buffering: no`, which turns
    nginx's buffering off for the response by itself (older routes omit it;
    an upgrade's response is no longer HTTP, so it only matters to SSE).
    """
    condition = spoken(transport)
    if transport == "sse":
        condition += f", upstream {'sends' if accel_header else 'omits'} X-Accel-Buffering: no"
    session = new_session(
        mock,
        accel_buffering_header=accel_header,
        events_per_stream=REALTIME_EVENTS,
        event_interval=0.0,
        paced_by_client=True,
        heartbeat_interval=None,
    )
    frames: list[Frame] = []
    path = stream_path(session)
    with (
        _violations(endpoint, condition),
        opened(endpoint, path, transport, timeout=HELD_BACK_AFTER_S) as take,
    ):
        for index in range(1 + REALTIME_EVENTS):
            what = "the snapshot" if index == 0 else f"event {index} of {REALTIME_EVENTS}"
            try:
                (frame,) = take(1)
            except (httpx.ReadTimeout, TimeoutError) as error:
                raise violation(
                    endpoint,
                    f"{condition}: {what} did not arrive within {HELD_BACK_AFTER_S:.0f} s "
                    f"({stopped(error)}); each event is sent only once the one "
                    f"before it has arrived, so the proxy is holding the stream back",
                ) from error
            except STREAM_STOPPED as error:
                raise violation(
                    endpoint,
                    f"{condition}: {what}: the stream ended first ({stopped(error)})",
                ) from error
            frames.append(frame)
            mock.delivered(session)
    live = [f for f in frames if f.event_id is not None]
    if frames[0].event != "snapshot" or len(live) != REALTIME_EVENTS:
        raise violation(
            endpoint,
            f"{condition}: expected a snapshot and {REALTIME_EVENTS} events, "
            f"got {[f.event for f in frames]}",
        )
    delays = sorted(f.delay_ms or 0.0 for f in live)
    margins.observe("paced event's delay", delays[-1] / 1000, HELD_BACK_AFTER_S, endpoint.label)
    return (
        f"{condition}: {REALTIME_EVENTS} events, each before the next was sent "
        f"(delays: median {delays[len(delays) // 2]:.1f} ms, worst {delays[-1]:.1f} ms)"
    )


def idle_stream_survives(
    endpoint: Endpoint,
    mock: MockDorkOS,
    transport: Transport,
    *,
    heartbeat_interval: float | None,
) -> str:
    """A stream quiet for SILENCE_S stays open and delivers the event after it.

    Decided by what happens, not by the clock: the client waits until either
    the mock has sent its event after the silence or the proxy has closed its
    connection to the mock, whichever comes first. Only the event's way
    through the proxy is then bounded, as in the real-time check, so a late
    timer in a busy test process cannot fail a healthy proxy.
    """
    # The mock sends one event SILENCE_S after its snapshot, timed from its
    # own write: the moment a proxy's read timeout starts counting from.
    session = new_session(
        mock,
        heartbeat_interval=heartbeat_interval,
        events_per_stream=1,
        event_interval=SILENCE_S,
    )
    path = stream_path(session)
    quiet = (
        "no bytes" if heartbeat_interval is None else f"only {heartbeat_interval:.0f}-s heartbeats"
    )
    condition = f"{spoken(transport)}, a stream with {quiet} for {SILENCE_S:.0f} s"
    opened_at = time.monotonic()
    with (
        _violations(endpoint, condition),
        opened(endpoint, path, transport, timeout=HELD_BACK_AFTER_S) as take,
    ):
        _take_or_violation(endpoint, take, f"{condition}: the snapshot")
        (record,) = mock.requests_to(path)
        if not _until_sent_or_closed(mock, session, record):
            lasted = (record.connection_closed_at or time.monotonic()) - opened_at
            try:
                take(1)
            except (httpx.ReadTimeout, TimeoutError) as error:
                raise violation(
                    endpoint,
                    f"{condition}: the proxy closed its connection to DorkOS {lasted:.1f} s "
                    f"after opening and left the client's stream open with nothing to come",
                ) from error
            except STREAM_STOPPED as error:
                raise violation(
                    endpoint,
                    f"{condition} did not survive: it ended {lasted:.1f} s after opening "
                    f"({stopped(error)}); it must stay open",
                ) from error
            raise violation(endpoint, f"{condition}: a frame came after DorkOS's connection closed")
        frames = _take_or_violation(endpoint, take, f"{condition}: the event after it")
    delay_ms = frames[0].delay_ms or 0.0
    margins.observe("event after the silence", delay_ms / 1000, HELD_BACK_AFTER_S, endpoint.label)
    return f"{condition}: still open; the next event arrived {delay_ms:.1f} ms after it was sent"


def _until_sent_or_closed(mock: MockDorkOS, session: str, record: RequestRecord) -> bool:
    """True once the mock has sent the session an event; False if the proxy hung up first.

    Called once the client has the snapshot, which the mock wrote before it
    started counting the silence: for most of it nothing but a close can
    happen, so that is waited for alone (hundreds of these run at once, and
    polling all the while kept the test process busy waking them). Then it
    looks every SENT_POLL_S, from well before the event is due even if the
    snapshot took seconds to come through.
    """
    deadline = time.monotonic() + MOCK_SENDS_WITHIN_S
    if record.closed.wait(timeout=SILENCE_S - 5.0):
        return mock.events_sent(session) > 0
    while not record.closed.wait(timeout=SENT_POLL_S):
        if mock.events_sent(session):
            return True
        if time.monotonic() > deadline:
            # Not the proxy's doing: the test process itself has stalled.
            raise RuntimeError(
                f"the mock had not sent its event {MOCK_SENDS_WITHIN_S:.0f} s after its "
                f"snapshot to {record.target}, due at {SILENCE_S:.0f} s"
            )
    # The proxy may send the event on and then close: the event decides.
    return mock.events_sent(session) > 0


def _take_or_violation(
    endpoint: Endpoint, take: Callable[[int], list[Frame]], what: str
) -> list[Frame]:
    """The next frame, or a violation saying it was held back or the stream ended."""
    try:
        return take(1)
    except (httpx.ReadTimeout, TimeoutError) as error:
        raise violation(
            endpoint,
            f"{what} did not arrive within {HELD_BACK_AFTER_S:.0f} s "
            f"({stopped(error)}); the proxy is holding the stream back",
        ) from error
    except STREAM_STOPPED as error:
        raise violation(endpoint, f"{what}: the stream ended first ({stopped(error)})") from error


def disconnect(endpoint: Endpoint, mock: MockDorkOS, transport: Transport) -> str:
    """A client that goes away is gone upstream within the bound."""
    results = []
    for condition, behaviour, frames_first in (
        ("while events flow", {"events_per_stream": 10_000, "event_interval": 0.05}, 4),
        # No heartbeats: a proxy that waits for DorkOS's next write to notice
        # the client has gone would then wait for ever.
        ("while the stream is idle", {"heartbeat_interval": None}, 1),
    ):
        session = new_session(mock, **behaviour)
        path = stream_path(session)
        with (
            _violations(endpoint, spoken(transport)),
            opened(endpoint, path, transport, timeout=HELD_BACK_AFTER_S) as take,
        ):
            take(frames_first)
        left = time.monotonic()
        (record,) = mock.requests_to(path)
        if not record.closed.wait(timeout=DISCONNECT_BOUND_S):
            raise violation(
                endpoint,
                f"{spoken(transport)}, {condition}: the client left, and "
                f"{DISCONNECT_BOUND_S:.0f} s later the upstream connection was still "
                f"open; bound {DISCONNECT_BOUND_S:.0f} s",
            )
        # The client leaves with a close frame, and DorkOS may close before the
        # client has finished leaving: that is no wait at all.
        took = max(0.0, (record.connection_closed_at or left) - left)
        margins.observe("close passed upstream", took, DISCONNECT_BOUND_S, endpoint.label)
        results.append(f"{condition}: {took * 1000:.0f} ms")
    return (
        f"{spoken(transport)}: upstream closed {', '.join(results)} after the client left "
        f"(bound {DISCONNECT_BOUND_S:.0f} s)"
    )


def resume(endpoint: Endpoint, mock: MockDorkOS, transport: Transport) -> str:
    """A reconnect from a cursor gets every missed event exactly once, then live ones.

    The cursor rides as the app sends it: `Last-Event-ID` over SSE,
    `?resume=` in the URL of a socket (a browser's WebSocket can't set
    headers).
    """
    session = new_session(mock)
    path = stream_path(session)
    with (
        _violations(endpoint, spoken(transport)),
        opened(endpoint, path, transport, timeout=HELD_BACK_AFTER_S) as take,
    ):
        take(1)  # the snapshot
        seen = [mock.publish(session, n=n) for n in range(3)]
        received = [f.event_id for f in take(3)]
    if received != seen:
        raise violation(endpoint, f"{spoken(transport)}: expected {seen}, got {received}")
    missed = [mock.publish(session, n=n) for n in range(3, 6)]
    if transport == "sse":
        again, headers, carried = path, {"Last-Event-ID": seen[-1]}, "Last-Event-ID"
    else:
        again, headers, carried = f"{path}?resume={seen[-1]}", {}, "?resume="
    with (
        _violations(endpoint, spoken(transport)),
        opened(endpoint, again, transport, timeout=HELD_BACK_AFTER_S, headers=headers) as take,
    ):
        replayed = [f.event_id or f.event for f in take(3)]
        live = mock.publish(session, n=6)
        then = take(1)[0].event_id
    reached = mock.requests_to(path)[-1]
    cursor = reached.header("Last-Event-ID") if transport == "sse" else reached.query("resume")
    if cursor != seen[-1]:
        raise violation(
            endpoint, f"{spoken(transport)}: DorkOS got {carried} {cursor!r}; sent {seen[-1]!r}"
        )
    if [*replayed, then] != [*missed, live]:
        raise violation(
            endpoint,
            f"{spoken(transport)}, after reconnecting from {seen[-1]}: expected the missed "
            f"events {missed} and then {live}, got {[*replayed, then]}",
        )
    return (
        f"{spoken(transport)}: {carried} reached DorkOS unchanged; {len(missed)} missed "
        f"events replayed once, then live"
    )


# -- only a socket ----------------------------------------------------------


def check_websocket_upgrade(endpoint: Endpoint, mock: MockDorkOS) -> str:
    """The browser's upgrade reaches DorkOS as one: 101, Origin accepted, frames flow.

    A proxy that drops `Upgrade` or `Connection: upgrade` turns it into a
    plain GET, which DorkOS answers as SSE on the same path: a 200 the
    browser's WebSocket can't use (the app loads, and no reply appears).
    """
    session = new_session(mock)
    path = stream_path(session)
    try:
        with open_socket(endpoint.target, path, timeout=HELD_BACK_AFTER_S) as sock:
            (first,) = sock.take(1, timeout=HELD_BACK_AFTER_S)
    except (HandshakeRefused, HandshakeUnanswered) as refused:
        raise violation(
            endpoint,
            f"a browser's WebSocket handshake for {path} got no 101: {_answer(refused)}. "
            f"DorkOS saw {_upgrade_headers(mock, path)}{_served_as(mock, path)}: a "
            f"browser gives up on such a socket, so the app loads and no reply appears",
        ) from refused
    except SocketClosed as closed:
        raise violation(
            endpoint,
            f"the socket for {path} opened, then DorkOS closed it{_close_code(closed)}: "
            f"its Origin check refused {endpoint.target.origin} against the Host and "
            f"X-Forwarded-Proto it was given. DorkOS saw {_upgrade_headers(mock, path)}",
        ) from closed
    (record,) = mock.requests_to(path)
    if record.transport != "websocket" or first.event != "snapshot":
        raise violation(
            endpoint,
            f"expected a socket whose first frame is the snapshot; DorkOS served "
            f"{record.transport}, first frame {first.event!r}",
        )
    return (
        f"101; DorkOS saw {_upgrade_headers(mock, path)} and accepted Origin "
        f"{endpoint.target.origin}; first frame: snapshot"
    )


def _answer(error: BaseException) -> str:
    return str(error)


def _served_as(mock: MockDorkOS, path: str) -> str:
    records = mock.requests_to(path)
    if records and records[-1].transport != "websocket":
        return f", and answered it as {records[-1].transport} ({records[-1].status})"
    return ""


def _upgrade_headers(mock: MockDorkOS, path: str) -> str:
    records = mock.requests_to(path)
    if not records:
        return "no request at all"
    seen = records[-1]
    names = ("Upgrade", "Connection", "Origin", "Host", "X-Forwarded-Proto")
    return ", ".join(f"{name}: {seen.header(name)!r}" for name in names)


def check_websocket_refusal(endpoint: Endpoint, mock: MockDorkOS) -> str:
    """DorkOS's refusal of a socket (4000 + status) reaches the browser as sent.

    The app stops retrying on 4401, 4403 and 4404 and says why; a proxy that
    loses the close frame leaves it seeing 1006 and retrying for ever.
    """
    path = f"/api/rooms/{uuid.uuid4()}/events"  # no such room: 4404
    try:
        with open_socket(endpoint.target, path, timeout=HELD_BACK_AFTER_S) as sock:
            code, reason = sock.closed_with(timeout=HELD_BACK_AFTER_S)
    except (HandshakeRefused, HandshakeUnanswered, TimeoutError) as error:
        raise violation(
            endpoint,
            f"a socket for an unknown room got no 101 ({_answer(error)}), so the browser "
            f"sees 1006, not DorkOS's 4404. DorkOS saw {_upgrade_headers(mock, path)}"
            f"{_served_as(mock, path)}",
        ) from error
    if (code, reason) != (4404, "No such room"):
        shown = "no close frame (a page sees 1006)" if code is None else f"{code} {reason!r}"
        raise violation(
            endpoint,
            f"DorkOS refused the socket for an unknown room with 4404 'No such room'; "
            f"the client got {shown}",
        )
    return "a refused socket closed with 4404 'No such room', as DorkOS sent it"


def check_terminal(endpoint: Endpoint, mock: MockDorkOS) -> str:
    """The terminal's socket carries binary output and typed input both ways."""
    path = f"/api/terminal/{mock.open_terminal(str(uuid.uuid4()))}/socket"
    try:
        with open_socket(endpoint.target, path, timeout=HELD_BACK_AFTER_S) as sock:
            prompt = sock.recv(timeout=HELD_BACK_AFTER_S)
            sock.send_text(json.dumps({"type": "input", "data": "ls\r"}))
            echoed = sock.recv(timeout=HELD_BACK_AFTER_S)
    except (HandshakeRefused, HandshakeUnanswered, *STREAM_STOPPED) as error:
        raise violation(
            endpoint,
            f"the terminal socket {path}: {_answer(error)}. DorkOS saw "
            f"{_upgrade_headers(mock, path)}{_served_as(mock, path)}",
        ) from error
    if (prompt, echoed) != (b"$ ", b"ls\r"):
        raise violation(
            endpoint,
            f"expected the prompt and the echo as binary frames, got {prompt!r}, {echoed!r}",
        )
    return "binary output and typed input passed both ways"


def _close_code(error: BaseException) -> str:
    if isinstance(error, SocketClosed) and error.code is not None:
        return f", close code {error.code} {error.reason!r}"
    return ""


@contextlib.contextmanager
def _violations(endpoint: Endpoint, condition: str) -> Iterator[None]:
    """A stream that never opened is a violation that says why."""
    try:
        yield
    except StreamRefused as refused:
        raise violation(endpoint, f"{condition}: {refused}") from refused
