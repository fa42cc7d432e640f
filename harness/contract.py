"""The streaming contract: what a reader's browser must see through a proxy.

Each property is a function of a running proxy and the mock upstream. It
returns a one-line summary of what it measured, or raises ContractViolation
with the bound, the measured value and the proxy's log tail.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from harness.mock_dorkos import MockDorkOS, RequestRecord
from harness.proxies import RunningProxy, tls_handshake
from harness.sse_client import Frame, open_stream
from harness.tls import SERVER_NAME

# Added delay allowed per event: arrival at the client minus send time at the
# upstream. Real-time delivery through a proxy on loopback costs well under a
# millisecond; batching costs whole seconds. 100 ms separates the two without
# flaking on a busy machine.
REALTIME_BOUND_MS = 100.0
REALTIME_EVENTS = 8
REALTIME_INTERVAL_S = 0.15
# A stream that goes this long without a complete frame is being held back.
REALTIME_GIVE_UP_S = 3.0
CLIENT_IP = "127.0.0.1"

# What DorkOS needs forwarded, and the value each header must carry when a
# browser on this machine opens https://dorkos.example.com:
# - Host: the host guard checks it, and WebSocket upgrades compare Origin to it;
# - X-Forwarded-Proto: DorkOS trusts one proxy hop, and a same-origin POST
#   fails its Origin check without `https` here;
# - X-Forwarded-For: the client address DorkOS logs and rate-limits by.
# nginx's snippet also sets X-Real-IP; Caddy sets the X-Forwarded-* headers
# by default and X-Real-IP not at all.
EXPECTED_FORWARDED_HEADERS = {
    "nginx": {
        "Host": SERVER_NAME,
        "X-Real-IP": CLIENT_IP,
        "X-Forwarded-For": CLIENT_IP,
        "X-Forwarded-Proto": "https",
    },
    "caddy": {
        "Host": SERVER_NAME,
        "X-Forwarded-For": CLIENT_IP,
        "X-Forwarded-Proto": "https",
    },
}


class ContractViolation(AssertionError):
    pass


def violation(proxy: RunningProxy, message: str) -> ContractViolation:
    return ContractViolation(
        f"{proxy.snippet} on {proxy.image.description}: {message}\n"
        f"--- proxy log (last lines) ---\n{proxy.log_tail()}"
    )


def new_session_path() -> str:
    return f"/api/sessions/{uuid.uuid4()}/events"


def check_realtime(proxy: RunningProxy, mock: MockDorkOS) -> str:
    """Every event reaches the client within the bound after it was sent.

    Checked twice: with the upstream sending `X-Accel-Buffering: no` (which
    turns nginx's buffering off by itself) and without it (older DorkOS
    routes), so the config has to do the work.
    """
    summaries = []
    for accel_header in (True, False):
        condition = f"upstream {'sends' if accel_header else 'omits'} X-Accel-Buffering: no"
        with (
            mock.configured(
                accel_buffering_header=accel_header,
                events_per_stream=REALTIME_EVENTS,
                event_interval=REALTIME_INTERVAL_S,
            ),
            open_stream(
                proxy.target, new_session_path(), read_timeout=REALTIME_GIVE_UP_S
            ) as stream,
        ):
            if stream.response.status_code != 200:
                raise violation(
                    proxy,
                    f"{condition}: stream answered {stream.response.status_code}, expected 200",
                )
            try:
                frames = stream.take(1 + REALTIME_EVENTS)
            except httpx.ReadTimeout as error:
                got = [f for f in stream.received if f.event_id is not None]
                raise violation(
                    proxy,
                    f"{condition}: {len(got)} of {REALTIME_EVENTS} events arrived (one was "
                    f"sent every {REALTIME_INTERVAL_S} s), then nothing for "
                    f"{REALTIME_GIVE_UP_S:.0f} s: the proxy is holding the stream back; "
                    f"bound {REALTIME_BOUND_MS:.0f} ms per event",
                ) from error
        live = [f for f in frames if f.event_id is not None]
        if frames[0].event != "snapshot" or len(live) != REALTIME_EVENTS:
            raise violation(
                proxy,
                f"{condition}: expected a snapshot and {REALTIME_EVENTS} "
                f"events, got {[f.event for f in frames]}",
            )
        worst = _worst_delay(live)
        if worst.delay_ms is None or worst.delay_ms > REALTIME_BOUND_MS:
            raise violation(
                proxy,
                (
                    f"{condition}: event {live.index(worst) + 1} of {len(live)} arrived "
                    f"{worst.delay_ms:,.0f} ms after it was sent; "
                    f"bound {REALTIME_BOUND_MS:,.0f} ms. "
                    f"All delays (ms): {[round(f.delay_ms or 0) for f in live]}"
                ),
            )
        summaries.append(f"{condition}: worst delay {worst.delay_ms:.1f} ms")
    return "; ".join(summaries)


def _worst_delay(frames: list[Frame]) -> Frame:
    return max(frames, key=lambda f: f.delay_ms if f.delay_ms is not None else float("inf"))


def check_forwarded_headers(proxy: RunningProxy, mock: MockDorkOS) -> str:
    """The upstream sees who the client is and how it connected."""
    expected = EXPECTED_FORWARDED_HEADERS[proxy.image.proxy]
    mock.clear_records()
    with proxy.target.client() as client:
        health = client.get("/api/health", extensions=proxy.target.extensions)
        # A browser sends Origin on a same-origin POST; DorkOS then needs
        # X-Forwarded-Proto to agree with the page's scheme.
        post = client.post(
            f"/api/sessions/{uuid.uuid4()}/messages",
            json={"content": "hi"},
            headers={"Origin": proxy.target.origin},
            extensions=proxy.target.extensions,
        )
    seen = _only(proxy, mock.requests_to("/api/health"))
    wrong = {
        name: seen.header(name) for name, value in expected.items() if seen.header(name) != value
    }
    if wrong:
        raise violation(
            proxy,
            (
                f"the upstream saw {wrong}; expected { ({k: expected[k] for k in wrong}) }. "
                f"All headers it saw: {seen.headers}"
            ),
        )
    if health.status_code != 200:
        raise violation(proxy, f"GET /api/health answered {health.status_code}: {health.text}")
    if post.status_code != 202:
        raise violation(
            proxy,
            (
                f"a browser's POST with Origin {proxy.target.origin} answered {post.status_code} "
                f"({post.text}); DorkOS accepts it (202) only when X-Forwarded-Proto and Host "
                f"match the Origin"
            ),
        )
    return ", ".join(f"{k}: {v}" for k, v in expected.items()) + "; browser POST: 202"


def _only(proxy: RunningProxy, records: list[RequestRecord]) -> RequestRecord:
    if len(records) != 1:
        raise violation(proxy, f"expected the upstream to see 1 request, it saw {len(records)}")
    return records[0]


def check_https(proxy: RunningProxy, mock: MockDorkOS) -> str:
    """TLS for the reader's domain, trusted through the test CA alone."""
    try:
        connection = tls_handshake(proxy.target)
    except OSError as error:  # ssl.SSLError is an OSError
        raise violation(
            proxy,
            f"TLS handshake for {SERVER_NAME} on {proxy.target.base_url} "
            f"trusting only the test CA failed: {error}",
        ) from error
    with connection:
        version = connection.version()
        certificate = connection.getpeercert() or {}
        alt_names: Any = certificate.get("subjectAltName", ())
        names = [value for kind, value in alt_names if kind == "DNS"]
    if version not in ("TLSv1.2", "TLSv1.3"):
        raise violation(proxy, f"negotiated {version}; expected TLS 1.2 or 1.3")
    with proxy.target.client() as client:
        response = client.get("/api/health", extensions=proxy.target.extensions)
    if response.status_code != 200 or response.json().get("status") != "ok":
        raise violation(
            proxy,
            f"GET https://{SERVER_NAME}/api/health answered "
            f"{response.status_code}: {response.text[:200]}",
        )
    return f"{version}, certificate for {names}, /api/health 200 over HTTPS"


@dataclass(frozen=True)
class Property:
    name: str
    check: Callable[[RunningProxy, MockDorkOS], str]


# The properties every snippet is run through, in the order they are reported.
# ("accepts-config-and-starts" is reported first by the evaluator itself.)
PROPERTIES = (
    Property("events-in-real-time", check_realtime),
    Property("forwarded-headers", check_forwarded_headers),
    Property("https", check_https),
)
