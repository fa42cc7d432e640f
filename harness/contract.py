"""The streaming contract: what a reader's browser must see through a proxy.

Each property is a check of one proxy endpoint against the mock upstream. It
returns a one-line summary of what it measured, or raises ContractViolation
with the bound, the measured value and the proxy's log tail.

Every check uses its own session ids with their own mock behaviour, so the
two slow checks (a minute of silence each) can run side by side through the
same proxy once its fast checks are done.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
import uuid
import warnings
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx

from harness import capacity, margins
from harness.endpoints import (
    Check,
    Endpoint,
    run_check,
    violation,
)
from harness.mock_dorkos import MockDorkOS, RequestRecord
from harness.proxies import tls_handshake
from harness.sse_client import Frame, Target, open_stream
from harness.tls import SERVER_NAME

# Whether events arrive in real time is decided by pacing, not by a bound
# on delay that a busy machine can eat: the mock sends each event only after
# the client has the one before, so a proxy that holds an event back stalls
# the stream outright. This is how long a stalled stream is waited for: ten
# times and more the worst delay a healthy proxy showed on a busy two-core
# machine (a few hundred milliseconds), against for ever for a proxy that
# buffers. The delays themselves are reported, and `make bench` measures
# them on a quiet machine.
HELD_BACK_AFTER_S = 5.0
REALTIME_EVENTS = 8
# nginx's default proxy_read_timeout is 60 s; a stream or a response must
# outlast it by a margin to show the config changed it. The silence is timed
# by the mock from its own last write, which nginx's timer counts from too,
# so the 5 s margin is the timer's lateness allowed, not the scheduler's.
SILENCE_S = 65.0
# When a client goes away, DorkOS frees the subscription at once (older
# versions also released the session's write lock); the proxy must pass the
# close on. A proxy that doesn't passes it on at DorkOS's next write, which
# on an idle stream without heartbeats never comes; a healthy one took
# milliseconds under load. The bound is far from both.
DISCONNECT_BOUND_S = 10.0
# Just under Express's 1 MiB json() limit, as a long pasted message would be.
LARGE_JSON_BYTES = 1_000_000
CLIENT_IP = "127.0.0.1"

# What DorkOS needs forwarded, and the value each header must carry when a
# browser on this machine opens https://dorkos.example.com:
# - Host: the host guard checks it, and WebSocket upgrades compare Origin to it;
# - X-Forwarded-Proto: DorkOS trusts one proxy hop, and a same-origin POST
#   fails its Origin check without `https` here;
# - X-Forwarded-For: the client address DorkOS logs and rate-limits by.
# nginx's snippet also sets X-Real-IP; Caddy sets the X-Forwarded-* headers
# by default (X-Forwarded-Host too, as the page says) and X-Real-IP not at all.
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
        "X-Forwarded-Host": SERVER_NAME,
    },
}


def new_session(mock: MockDorkOS, **behaviour: Any) -> str:
    return mock.behave(str(uuid.uuid4()), **behaviour)


def stream_path(session_id: str) -> str:
    return f"/api/sessions/{session_id}/events"


# -- fast properties -----------------------------------------------------


def check_realtime(endpoint: Endpoint, mock: MockDorkOS) -> str:
    """Every event reaches the client before the next one is sent.

    Checked twice: with the upstream sending `X-Accel-Buffering: no` (which
    turns nginx's buffering off by itself) and without it (older DorkOS
    routes), so the config has to do the work.
    """
    return "; ".join(realtime_under(endpoint, mock, accel_header=a) for a in (True, False))


def realtime_under(endpoint: Endpoint, mock: MockDorkOS, *, accel_header: bool) -> str:
    condition = f"upstream {'sends' if accel_header else 'omits'} X-Accel-Buffering: no"
    session = new_session(
        mock,
        accel_buffering_header=accel_header,
        events_per_stream=REALTIME_EVENTS,
        event_interval=0.0,
        paced_by_client=True,
        heartbeat_interval=None,
    )
    frames: list[Frame] = []
    with open_stream(
        endpoint.target, stream_path(session), read_timeout=HELD_BACK_AFTER_S
    ) as stream:
        if stream.response.status_code != 200:
            raise violation(
                endpoint,
                f"{condition}: stream answered {stream.response.status_code}, expected 200",
            )
        for index in range(1 + REALTIME_EVENTS):
            try:
                (frame,) = stream.take(1)
            except (httpx.ReadTimeout, httpx.RemoteProtocolError) as error:
                what = "the snapshot" if index == 0 else f"event {index} of {REALTIME_EVENTS}"
                raise violation(
                    endpoint,
                    f"{condition}: {what} did not arrive within {HELD_BACK_AFTER_S:.0f} s "
                    f"({type(error).__name__}); each event is sent only once the one "
                    f"before it has arrived, so the proxy is holding the stream back",
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


def check_forwarded_headers(endpoint: Endpoint, mock: MockDorkOS) -> str:
    """The upstream sees who the client is and how it connected."""
    return forwarded_headers(endpoint, mock, EXPECTED_FORWARDED_HEADERS[endpoint.proxy])


def check_headers_dorkos_reads(endpoint: Endpoint, mock: MockDorkOS) -> str:
    """Only what DorkOS itself reads (X-Real-IP is for other tools' logs)."""
    expected = EXPECTED_FORWARDED_HEADERS[endpoint.proxy]
    return forwarded_headers(
        endpoint, mock, {k: v for k, v in expected.items() if k != "X-Real-IP"}
    )


def forwarded_headers(endpoint: Endpoint, mock: MockDorkOS, expected: dict[str, str]) -> str:
    probe = f"/api/health?probe={uuid.uuid4()}"
    with endpoint.target.client() as client:
        health = client.get(probe, extensions=endpoint.target.extensions)
        # A browser sends Origin on a same-origin POST; DorkOS then needs
        # X-Forwarded-Proto to agree with the page's scheme.
        post = client.post(
            f"/api/sessions/{uuid.uuid4()}/messages",
            json={"content": "hi"},
            headers={"Origin": endpoint.target.origin},
            extensions=endpoint.target.extensions,
        )
    seen = _only(endpoint, [r for r in mock.records if r.target == probe])
    wrong = {
        name: seen.header(name) for name, value in expected.items() if seen.header(name) != value
    }
    if wrong:
        raise violation(
            endpoint,
            f"the upstream saw {wrong}; expected { ({k: expected[k] for k in wrong}) }. "
            f"All headers it saw: {seen.headers}",
        )
    if health.status_code != 200:
        raise violation(endpoint, f"GET /api/health answered {health.status_code}: {health.text}")
    if post.status_code != 202:
        raise violation(
            endpoint,
            f"a browser's POST with Origin {endpoint.target.origin} answered "
            f"{post.status_code} ({post.text}); DorkOS accepts it (202) only when "
            f"X-Forwarded-Proto and Host match the Origin",
        )
    return ", ".join(f"{k}: {v}" for k, v in expected.items()) + "; browser POST: 202"


def _only(endpoint: Endpoint, records: list[RequestRecord]) -> RequestRecord:
    if len(records) != 1:
        raise violation(endpoint, f"expected the upstream to see 1 request, it saw {len(records)}")
    return records[0]


def check_https(endpoint: Endpoint, mock: MockDorkOS) -> str:
    """TLS for the reader's domain, trusted through the test CA alone."""
    try:
        connection = tls_handshake(endpoint.target)
    except OSError as error:  # ssl.SSLError is an OSError
        raise violation(
            endpoint,
            f"TLS handshake for {SERVER_NAME} on {endpoint.target.base_url} "
            f"trusting only the test CA failed: {error}",
        ) from error
    with connection:
        version = connection.version()
        certificate = connection.getpeercert() or {}
        alt_names: Any = certificate.get("subjectAltName", ())
        names = [value for kind, value in alt_names if kind == "DNS"]
    if version not in ("TLSv1.2", "TLSv1.3"):
        raise violation(endpoint, f"negotiated {version}; expected TLS 1.2 or 1.3")
    with endpoint.target.client() as client:
        response = client.get("/api/health", extensions=endpoint.target.extensions)
    if response.status_code != 200 or response.json().get("status") != "ok":
        raise violation(
            endpoint,
            f"GET https://{SERVER_NAME}/api/health answered "
            f"{response.status_code}: {response.text[:200]}",
        )
    return f"{version}, certificate for {names}, /api/health 200 over HTTPS"


def tls_handshake_at(target: Target, version: ssl.TLSVersion, alpn: list[str]) -> str | None:
    """The protocol ALPN chose, if a handshake at exactly `version` succeeds; else None.

    Probes whether the server offers a version, so it verifies nothing and
    lowers OpenSSL's security level: TLS 1.0 and 1.1 would not even be tried
    at the default one, and a refusal must be the server's.
    """
    host, port = target.base_url.split("://", 1)[1].rsplit(":", 1)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLS 1.0/1.1, on purpose
        context.minimum_version = context.maximum_version = version
    context.set_ciphers("ALL:@SECLEVEL=0")
    context.set_alpn_protocols(alpn)
    with socket.create_connection((host, int(port)), timeout=5) as raw:
        try:
            with context.wrap_socket(raw, server_hostname=target.server_name) as tls:
                return tls.selected_alpn_protocol() or "none"
        except ssl.SSLError:
            return None


# What the Reverse Proxy page says about HTTP/2 for each proxy's configs.
HTTP2_ON = {"caddy": True, "nginx": False}
OLD_TLS = (ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1)
CURRENT_TLS = (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3)


def check_tls_versions(endpoint: Endpoint, mock: MockDorkOS) -> str:
    """TLS 1.0 and 1.1 refused, 1.2 and 1.3 offered; reports whether HTTP/2 is on."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        names = {v: v.name.replace("v", " ").replace("_", ".") for v in (*OLD_TLS, *CURRENT_TLS)}
        accepted = {
            v: tls_handshake_at(endpoint.target, v, ["h2", "http/1.1"])
            for v in (*OLD_TLS, *CURRENT_TLS)
        }
    old = [names[v] for v in OLD_TLS if accepted[v] is not None]
    missing = [names[v] for v in CURRENT_TLS if accepted[v] is None]
    if old or missing:
        raise violation(
            endpoint,
            f"TLS versions: accepted {old or 'no old version'}, refused {missing or 'none'}; "
            f"expected TLS 1.0 and 1.1 refused, TLS 1.2 and 1.3 offered",
        )
    http2 = accepted[ssl.TLSVersion.TLSv1_3] == "h2"
    if http2 != HTTP2_ON[endpoint.proxy]:
        raise violation(
            endpoint,
            f"HTTP/2 is {'on' if http2 else 'off'} (ALPN chose "
            f"{accepted[ssl.TLSVersion.TLSv1_3]!r}); the page says it is "
            f"{'on' if HTTP2_ON[endpoint.proxy] else 'off'} for {endpoint.proxy}",
        )
    return f"TLS 1.0/1.1 refused, 1.2/1.3 offered; HTTP/2 {'on' if http2 else 'off'}"


def check_http_redirects_to_https(endpoint: Endpoint, mock: MockDorkOS) -> str:
    """Port 80 sends browsers to the HTTPS site (Caddy does it, certbot adds it)."""
    response = httpx.get(
        "http://127.0.0.1:80/api/health?from=http",
        headers={"Host": SERVER_NAME},
        follow_redirects=False,
        timeout=10,
    )
    location = response.headers.get("Location", "")
    expected = f"https://{SERVER_NAME}/api/health?from=http"
    if response.status_code not in (301, 308) or location != expected:
        raise violation(
            endpoint,
            f"http://{SERVER_NAME}/api/health?from=http answered {response.status_code} "
            f"with Location {location!r}; expected a permanent redirect to {expected}",
        )
    return f"{response.status_code} to {location}"


def _closed_after(endpoint: Endpoint, mock: MockDorkOS, path: str, since: float) -> float:
    """Seconds from `since` until the upstream saw the stream's connection close."""
    (record,) = mock.requests_to(path)
    if not record.closed.wait(timeout=DISCONNECT_BOUND_S):
        raise violation(
            endpoint,
            f"the client closed its stream, and {DISCONNECT_BOUND_S:.0f} s later the "
            f"upstream connection was still open; bound {DISCONNECT_BOUND_S:.0f} s",
        )
    assert record.connection_closed_at is not None
    return record.connection_closed_at - since


def check_disconnect(endpoint: Endpoint, mock: MockDorkOS) -> str:
    """A client that goes away is gone upstream within the bound."""
    results = []
    for condition, behaviour, frames_first in (
        ("while events flow", {"events_per_stream": 10_000, "event_interval": 0.05}, 4),
        # No heartbeats: a proxy that waits for DorkOS's next write to notice
        # the client has gone would then wait for ever.
        ("while the stream is idle", {"heartbeat_interval": None}, 1),
    ):
        session = new_session(mock, **behaviour)
        with open_stream(
            endpoint.target, stream_path(session), read_timeout=HELD_BACK_AFTER_S
        ) as stream:
            stream.take(frames_first)
        took = _closed_after(endpoint, mock, stream_path(session), time.monotonic())
        margins.observe("close passed upstream", took, DISCONNECT_BOUND_S, endpoint.label)
        results.append(f"{condition}: {took * 1000:.0f} ms")
    return (
        f"upstream closed {', '.join(results)} after the client left "
        f"(bound {DISCONNECT_BOUND_S:.0f} s)"
    )


def check_resume(endpoint: Endpoint, mock: MockDorkOS) -> str:
    """A reconnect with Last-Event-ID gets every missed event exactly once."""
    session = new_session(mock)
    path = stream_path(session)
    with open_stream(endpoint.target, path, read_timeout=HELD_BACK_AFTER_S) as stream:
        stream.take(1)  # the snapshot
        seen = [mock.publish(session, n=n) for n in range(3)]
        received = [f.event_id for f in stream.take(3)]
    if received != seen:
        raise violation(endpoint, f"live events: expected {seen}, got {received}")
    missed = [mock.publish(session, n=n) for n in range(3, 6)]
    with open_stream(
        endpoint.target,
        path,
        headers={"Last-Event-ID": seen[-1]},
        read_timeout=HELD_BACK_AFTER_S,
    ) as stream:
        replayed = [f.event_id or f.event for f in stream.take(3)]
        live = mock.publish(session, n=6)
        then = stream.take(1)[0].event_id
    cursor = mock.requests_to(path)[-1].header("Last-Event-ID")
    if cursor != seen[-1]:
        raise violation(
            endpoint, f"the upstream got Last-Event-ID {cursor!r}; the client sent {seen[-1]!r}"
        )
    if [*replayed, then] != [*missed, live]:
        raise violation(
            endpoint,
            f"after reconnecting from {seen[-1]}: expected the missed events {missed} "
            f"and then {live}, got {[*replayed, then]}",
        )
    return f"Last-Event-ID passed unchanged; {len(missed)} missed events replayed once"


def check_not_compressed_or_cached(endpoint: Endpoint, mock: MockDorkOS) -> str:
    """Streams reach the browser uncompressed, and every open reaches DorkOS."""
    session = new_session(mock)
    path = stream_path(session)
    for attempt in (1, 2):
        with open_stream(
            endpoint.target,
            path,
            headers={"Accept-Encoding": "gzip, deflate, br"},
            read_timeout=HELD_BACK_AFTER_S,
        ) as stream:
            encoding = stream.response.headers.get("Content-Encoding")
            cache_control = stream.response.headers.get("Cache-Control")
            first = stream.take(1)[0]
        if encoding is not None:
            raise violation(
                endpoint,
                f"the event stream arrived with Content-Encoding: {encoding}; streams must "
                f"go out uncompressed (a compressor can hold events back: Caddy's encode "
                f"did before 2.9)",
            )
        if cache_control != "no-cache":
            raise violation(
                endpoint, f"Cache-Control reached the browser as {cache_control!r}, not no-cache"
            )
        if first.event != "snapshot" or len(mock.requests_to(path)) != attempt:
            raise violation(
                endpoint,
                f"open #{attempt} of the same stream: the upstream saw "
                f"{len(mock.requests_to(path))} requests, the client got {first.event!r} "
                f"first; a proxy cache must not answer streams",
            )
    return "no Content-Encoding, Cache-Control: no-cache, each open reached the upstream"


def check_ordinary_traffic(endpoint: Endpoint, mock: MockDorkOS) -> str:
    """REST, health and the app's page pass through as they are."""
    body = b'{"content": "' + b"a" * (LARGE_JSON_BYTES - 15) + b'"}'
    with endpoint.target.client() as client:
        post = client.post(
            f"/api/sessions/{uuid.uuid4()}/messages",
            content=body,
            headers={"Content-Type": "application/json"},
            extensions=endpoint.target.extensions,
        )
        health = client.get("/api/health", extensions=endpoint.target.extensions)
        page = client.get("/", extensions=endpoint.target.extensions)
    if post.status_code != 202 or post.json().get("bytes") != len(body):
        raise violation(
            endpoint,
            f"POST of a {len(body):,}-byte JSON body answered {post.status_code} "
            f"({post.text[:200]}); expected 202 with all {len(body):,} bytes received",
        )
    if health.status_code != 200:
        raise violation(endpoint, f"GET /api/health answered {health.status_code}")
    if page.status_code != 200 or "DorkOS" not in page.text:
        raise violation(endpoint, f"GET / answered {page.status_code}: {page.text[:200]}")
    return f"POST {len(body):,} bytes: 202; /api/health: 200; /: 200"


# -- slow properties (a minute of silence each, run side by side) --------------


def check_idle_stream_survives(endpoint: Endpoint, mock: MockDorkOS) -> str:
    """A stream with no bytes for SILENCE_S stays open and delivers the next event.

    With heartbeats off: a resumed DorkOS stream writes nothing until the next
    event or heartbeat, and the config must not depend on the heartbeat.
    """
    return idle_stream_survives(endpoint, mock, heartbeat_interval=None)


def idle_stream_survives(
    endpoint: Endpoint, mock: MockDorkOS, *, heartbeat_interval: float | None
) -> str:
    # The mock sends one event SILENCE_S after its snapshot, timed from its
    # own write: the moment a proxy's read timeout starts counting from.
    session = new_session(
        mock,
        heartbeat_interval=heartbeat_interval,
        events_per_stream=1,
        event_interval=SILENCE_S,
    )
    quiet = (
        "no bytes" if heartbeat_interval is None else f"only {heartbeat_interval:.0f}-s heartbeats"
    )
    opened = time.monotonic()
    with open_stream(
        endpoint.target, stream_path(session), read_timeout=SILENCE_S + HELD_BACK_AFTER_S
    ) as stream:
        stream.take(1)  # the snapshot; then nothing but heartbeats until the event
        try:
            frames = stream.take(1)
        except (httpx.ReadTimeout, httpx.RemoteProtocolError) as error:
            frames = []
            ended = f"({type(error).__name__})"
        else:
            ended = "(the stream ended)"
    lasted = time.monotonic() - opened
    if not frames:
        raise violation(
            endpoint,
            f"a stream with {quiet} for {SILENCE_S:.0f} s did not survive: it ended "
            f"{lasted:.1f} s after opening {ended}; it must stay open",
        )
    delay_ms = frames[0].delay_ms or 0.0
    margins.observe("event after the silence", delay_ms / 1000, HELD_BACK_AFTER_S, endpoint.label)
    return (
        f"open after {SILENCE_S:.0f} s with {quiet}; the next event arrived "
        f"{delay_ms:.1f} ms after it was sent"
    )


def check_slow_first_byte(endpoint: Endpoint, mock: MockDorkOS) -> str:
    """A response that starts after SILENCE_S reaches the client, not a 502/504."""
    session = new_session(mock, first_byte_delay=SILENCE_S)
    started = time.monotonic()
    with endpoint.target.client(timeout=SILENCE_S + 15) as client:
        response = client.post(
            f"/api/sessions/{session}/messages",
            json={"content": "a long answer"},
            extensions=endpoint.target.extensions,
        )
    took = time.monotonic() - started
    if response.status_code != 202:
        raise violation(
            endpoint,
            f"the upstream answers after {SILENCE_S:.0f} s; the client got "
            f"{response.status_code} {response.reason_phrase} after {took:.1f} s "
            f"instead of DorkOS's 202",
        )
    return f"202 after {took:.1f} s"


@dataclass(frozen=True)
class Property:
    name: str
    check: Check
    slow: bool = False


# Every snippet is run through these, reported in this order.
# ("accepts-config-and-starts" is reported first by the evaluator itself.)
PROPERTIES = (
    Property("events-in-real-time", check_realtime),
    Property("forwarded-headers", check_forwarded_headers),
    Property("https", check_https),
    Property("tls-1.2-and-1.3-only", check_tls_versions),
    Property("idle-stream-survives", check_idle_stream_survives, slow=True),
    Property("slow-first-byte", check_slow_first_byte, slow=True),
    Property("disconnect-reaches-upstream", check_disconnect),
    Property("resume-with-last-event-id", check_resume),
    Property("not-compressed-or-cached", check_not_compressed_or_cached),
    Property("ordinary-traffic", check_ordinary_traffic),
    Property(f"holds-{capacity.STREAMS}-streams", capacity.check_holds_streams),
)


def run_contract(
    endpoint: Endpoint, mock: MockDorkOS, properties: Sequence[Property] = PROPERTIES
) -> dict[str, Future[str]]:
    """Start every property; returns one future per property name, in order.

    The fast checks run one after another, so none competes with its own
    endpoint's other traffic. The slow ones start together once the fast
    ones are done: a slow check that fails can leave the proxy marking
    DorkOS as down for a while (nginx does, after a timeout), and a fast
    check after it would then fail for a reason that is not its own.
    """
    fast_done = threading.Event()

    def after_fast_checks(check: Check) -> str:
        fast_done.wait()
        return run_check(check, endpoint, mock)

    slow_pool = ThreadPoolExecutor(max_workers=len(properties), thread_name_prefix="slow")
    fast_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fast")
    futures = {
        p.name: (
            slow_pool.submit(after_fast_checks, p.check)
            if p.slow
            else fast_pool.submit(run_check, p.check, endpoint, mock)
        )
        for p in properties
    }
    fast_pool.submit(fast_done.set)  # one worker: runs after every fast check
    slow_pool.shutdown(wait=False)
    fast_pool.shutdown(wait=False)
    return futures
