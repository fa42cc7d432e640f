"""What any DorkOS does by itself, checked from outside, through a proxy.

DorkOS sends heartbeats on its global stream over both transports, answers
its health route, and serves its page and assets; a proxy in front of it
must let all of that through as a browser would meet it. None of these
checks tells DorkOS to do anything, so they run against the lab's mock, a
real DorkOS built from source (harness.checks.behind_proxies), and a reader's own
live server (harness.proxy_check) alike.

This module and what it imports need only the clients' packages (httpx,
wsproto): `dorkos-proxy-check` installs without the lab's.
"""

from __future__ import annotations

import contextlib
import html.parser
import itertools
import time
from collections.abc import Iterator
from typing import Any

import httpx

from harness.checks.endpoints import Endpoint, violation
from harness.checks.stream_checks import StreamEnded, stopped
from harness.clients.sse_client import EventStream, Frame, open_stream
from harness.clients.ws_client import (
    HEARTBEAT_EVENT,
    HandshakeRefused,
    HandshakeUnanswered,
    SocketClosed,
    open_socket,
)

# DorkOS sends a heartbeat every 15 s on its global stream, over both
# transports. A proxy passes each on at once or holds it until it has more
# (a buffer, a compressor); the bound between two is far from 15 s, and far
# below the for ever a buffered heartbeat takes.
HEARTBEAT_S = 15.0
HEARTBEAT_BOUND_S = 30.0
HEARTBEATS_WATCHED = 2
# nginx's and most proxies' default read timeout is 60 s; a quiet stream
# kept past it, by a margin, shows it is DorkOS's heartbeat that keeps it.
QUIET_STREAM_S = 75.0
# How long what should come at once (an answer, a reply's turn) may take on
# a busy two-core machine: the test runtime answers in milliseconds.
ANSWER_S = 20.0
SOCKET_STOPS = (TimeoutError, SocketClosed)


# -- heartbeats ------------------------------------------------------------


def next_frame(stream: EventStream, *, events_only: bool = True) -> Frame:
    """The next event of an SSE stream (or frame, comments included)."""
    taken = stream.take(1, events_only=events_only)
    if not taken:
        raise StreamEnded("the response ended")
    return taken[0]


def _gaps(arrivals: list[float]) -> list[float]:
    return [later - earlier for earlier, later in itertools.pairwise(arrivals)]


def _heartbeats_within_bound(endpoint: Endpoint, transport: str, arrivals: list[float]) -> str:
    gaps = _gaps(arrivals)
    late = [gap for gap in gaps if gap > HEARTBEAT_BOUND_S]
    if late or len(arrivals) < HEARTBEATS_WATCHED + 1:
        raise violation(
            endpoint,
            f"{transport}: DorkOS's heartbeats (every {HEARTBEAT_S:.0f} s) came "
            f"{', '.join(f'{g:.1f} s' for g in gaps) or 'never'} apart; bound "
            f"{HEARTBEAT_BOUND_S:.0f} s: the proxy holds small frames back",
        )
    return f"{transport}: heartbeats {', '.join(f'{g:.1f} s' for g in gaps)} apart"


def sse_heartbeats(endpoint: Endpoint) -> str:
    """/api/events over SSE: `connected`, then each heartbeat as it is sent."""
    arrivals = []
    with open_stream(endpoint.target, "/api/events", read_timeout=HEARTBEAT_BOUND_S) as stream:
        if stream.response.status_code != 200:
            raise violation(
                endpoint, f"SSE: GET /api/events answered {stream.response.status_code}"
            )
        arrivals.append(next_frame(stream).arrived)
        with contextlib.suppress(httpx.ReadTimeout, httpx.RemoteProtocolError, StreamEnded):
            for _ in range(HEARTBEATS_WATCHED):
                arrivals.append(next_frame(stream).arrived)
    return _heartbeats_within_bound(endpoint, "SSE", arrivals)


@contextlib.contextmanager
def page_socket(endpoint: Endpoint, path: str) -> Iterator[Any]:
    """A socket opened as the app's page opens it; a refusal is a violation."""
    try:
        with open_socket(endpoint.target, path, timeout=ANSWER_S) as sock:
            yield sock
    except HandshakeRefused as refused:
        raise violation(
            endpoint, f"the upgrade to {path} was answered {refused.status}, not 101"
        ) from refused
    except HandshakeUnanswered as unanswered:
        raise violation(
            endpoint, f"the upgrade to {path} got no answer in {ANSWER_S:.0f} s"
        ) from unanswered


def socket_heartbeats(endpoint: Endpoint) -> str:
    """/api/events over a socket: 101 with the page's Origin, then the heartbeats."""
    arrivals = []
    with page_socket(endpoint, "/api/events") as sock:
        try:
            (first,) = sock.take(1, timeout=ANSWER_S, events_only=False)
            arrivals.append(first.arrived)
            for _ in range(HEARTBEATS_WATCHED):
                (frame,) = sock.take(1, timeout=HEARTBEAT_BOUND_S, events_only=False)
                if frame.event == HEARTBEAT_EVENT:
                    arrivals.append(frame.arrived)
        except SocketClosed as closed:
            raise violation(
                endpoint, f"the socket to /api/events opened, then closed with {closed.code}"
            ) from closed
        except TimeoutError:
            pass  # reported below, with what did arrive
    return "101 with the page's Origin; " + _heartbeats_within_bound(endpoint, "socket", arrivals)


# -- a quiet stream ----------------------------------------------------------


def quiet_streams_survive(endpoint: Endpoint) -> str:
    """/api/events open for 75 s over both transports, kept alive by heartbeats alone."""
    deadline = time.monotonic() + QUIET_STREAM_S
    with (
        open_stream(endpoint.target, "/api/events", read_timeout=HEARTBEAT_BOUND_S) as stream,
        page_socket(endpoint, "/api/events") as sock,
    ):
        frames = {"SSE": 0, "socket": 0}
        try:
            while time.monotonic() < deadline:
                next_frame(stream)
                frames["SSE"] += 1
                sock.take(1, timeout=HEARTBEAT_BOUND_S, events_only=False)
                frames["socket"] += 1
        except (httpx.ReadTimeout, httpx.RemoteProtocolError, StreamEnded, *SOCKET_STOPS) as error:
            raise violation(
                endpoint,
                f"a quiet /api/events stream stopped after "
                f"{QUIET_STREAM_S - (deadline - time.monotonic()):.0f} s ({stopped(error)}); "
                f"it must outlive {QUIET_STREAM_S:.0f} s on DorkOS's heartbeats",
            ) from error
        kept = [f"{transport}: {count} frames" for transport, count in frames.items()]
    return f"open {QUIET_STREAM_S:.0f} s; " + ", ".join(kept)


# -- what DorkOS reads ---------------------------------------------------------


def forwarded(endpoint: Endpoint) -> str:
    """The reader's Host and scheme reach DorkOS: its guards let the page through."""
    target = endpoint.target
    answers = {}
    with target.client(timeout=ANSWER_S) as client:
        answers["GET /api/health"] = client.get("/api/health", extensions=target.extensions)
        answers["GET /api/health with the page's Origin"] = client.get(
            "/api/health", headers={"Origin": target.origin}, extensions=target.extensions
        )
        page = client.get("/", extensions=target.extensions)
        answers["the app's page"] = page
        for asset in _crossorigin_assets(page.text):
            answers[f"{asset} with the page's Origin"] = client.get(
                asset, headers={"Origin": target.origin}, extensions=target.extensions
            )
    wrong = {case: r for case, r in answers.items() if r.status_code != 200}
    if wrong:
        raise violation(
            endpoint,
            "DorkOS refused what the page sends: "
            + "; ".join(f"{case}: {r.status_code} {r.text[:120]!r}" for case, r in wrong.items()),
        )
    return f"200 to {len(answers)} requests, assets included"


def _crossorigin_assets(page: str) -> list[str]:
    return [url for _, url, crossorigin in page_assets(page) if crossorigin]


# -- the app's page ------------------------------------------------------------


class _Assets(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.found: list[tuple[str, str, bool]] = []  # (kind, url, crossorigin)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        named = dict(attrs)
        if tag == "script" and named.get("src"):
            self.found.append(("script", str(named["src"]), "crossorigin" in named))
        elif tag == "link" and named.get("rel") == "stylesheet" and named.get("href"):
            self.found.append(("stylesheet", str(named["href"]), "crossorigin" in named))


def page_assets(page: str) -> list[tuple[str, str, bool]]:
    """The app's own script and stylesheets a page loads: (kind, path, crossorigin)."""
    parser = _Assets()
    parser.feed(page)
    return [asset for asset in parser.found if asset[1].startswith("/")]
