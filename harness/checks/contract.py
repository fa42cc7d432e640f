"""The streaming contract: what a reader's browser must see through a proxy.

Each property is a check of one proxy endpoint against the mock upstream. It
returns a one-line summary of what it measured, or raises ContractViolation
with the bound, the measured value and the proxy's log tail.

Every check uses its own session ids with their own mock behaviour, so the
two slow checks (a minute of silence each) can run side by side through the
same proxy once its fast checks are done.
"""

from __future__ import annotations

import dataclasses
import functools
import socket
import ssl
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx

from harness.checks import capacity
from harness.checks.endpoints import (
    Check,
    Endpoint,
    run_check,
    violation,
)
from harness.checks.stream_checks import (
    HELD_BACK_AFTER_S,
    SILENCE_S,
    Transport,
    check_terminal,
    check_websocket_refusal,
    check_websocket_upgrade,
    disconnect,
    idle_stream_survives,
    new_session,
    realtime,
    resume,
    stream_path,
)
from harness.clients import browser
from harness.clients.sse_client import Target, open_stream, tls_handshake
from harness.lab.tls import SERVER_NAME
from harness.tables import margins
from harness.upstream.mock_dorkos import MockDorkOS, RequestRecord, client_address

if TYPE_CHECKING:
    from harness.proxies.kind import ProxyKind

# Just under Express's 1 MiB json() limit, as a long pasted message would be.
LARGE_JSON_BYTES = 1_000_000
CLIENT_IP = "127.0.0.1"
# How long past the mock's SILENCE_S a slow answer may take to reach the
# client: the mock's timer and the proxy under load (2.1 s at worst on a busy
# two-core machine, printed with the other margins). A proxy that gives up
# first answers 502 or 504 itself, at its own timeout.
SLOW_ANSWER_GRACE_S = 30.0


# What DorkOS needs forwarded, and the value each header must carry when a
# browser on this machine opens https://dorkos.example.com (with the port,
# if the site is served on another than 443):
# - Host: the host guard checks its name, and sockets and POSTs compare the
#   browser's Origin with it, port included;
# - X-Forwarded-Proto: the scheme of that comparison; DorkOS trusts one proxy
#   hop for it;
# - X-Forwarded-For: the client address DorkOS logs and rate-limits by.
# Each proxy's kind names what else it sends (nginx's snippet X-Real-IP,
# Caddy X-Forwarded-Host, Apache the name of the site that answered).
def expected_forwarded_headers(endpoint: Endpoint) -> dict[str, str]:
    host = endpoint.target.authority
    values = {"client": CLIENT_IP, "host": host, "server_name": SERVER_NAME}
    more = proxy_kind(endpoint).more_forwarded_headers
    return {
        "Host": host,
        "X-Forwarded-For": CLIENT_IP,
        "X-Forwarded-Proto": "https",
        **{name: values[value] for name, value in more.items()},
    }


def proxy_kind(endpoint: Endpoint) -> ProxyKind:
    """What the harness knows of the endpoint's proxy.

    Imported here, not at the top: dorkos-proxy-check imports this module
    for checks that need no proxy's kind, and must not load Docker's SDK.
    """
    from harness.proxies.registry import kind

    return kind(endpoint.proxy)


# A visitor's address, other than the proxy's own (127.0.0.1 or ::1, from
# where it reaches DorkOS), so that whose address DorkOS counts can be told
# apart; and one a visitor might put in X-Forwarded-For to pass for another.
VISITOR_ADDRESS = "127.0.0.2"
FORGED_ADDRESS = "203.0.113.66"


# -- fast properties -----------------------------------------------------


def check_realtime(endpoint: Endpoint, mock: MockDorkOS) -> str:
    """Every event reaches the client before the next one is sent, over SSE.

    Checked twice: with the upstream sending `X-Accel-Buffering: no` (which
    turns nginx's buffering off by itself) and without it (older DorkOS
    routes), so the config has to do the work.
    """
    return "; ".join(realtime(endpoint, mock, "sse", accel_header=accel) for accel in (True, False))


def check_forwarded_headers(endpoint: Endpoint, mock: MockDorkOS) -> str:
    """The upstream sees who the client is and how it connected."""
    return forwarded_headers(endpoint, mock, expected_forwarded_headers(endpoint))


def check_headers_dorkos_reads(endpoint: Endpoint, mock: MockDorkOS) -> str:
    """Only what DorkOS itself reads (X-Real-IP is for other tools' logs)."""
    expected = expected_forwarded_headers(endpoint)
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
    problems = []
    if wrong:
        problems.append(
            f"the upstream saw {wrong}; expected { ({k: expected[k] for k in wrong}) }. "
            f"All headers it saw: {seen.headers}"
        )
    if health.status_code != 200:
        problems.append(f"GET /api/health answered {health.status_code}: {health.text}")
    if post.status_code != 202:
        problems.append(
            f"a browser's POST with Origin {endpoint.target.origin} answered "
            f"{post.status_code} ({post.text}); DorkOS accepts it (202) only when "
            f"X-Forwarded-Proto and Host match the Origin"
        )
    if problems:
        raise violation(endpoint, "; and ".join(problems))
    return ", ".join(f"{k}: {v}" for k, v in expected.items()) + "; browser POST: 202"


def check_client_address(endpoint: Endpoint, mock: MockDorkOS) -> str:
    """DorkOS counts each visitor by their own address, which they can't forge.

    Its sign-in limit (10 attempts per address in 15 minutes) and its other
    rate limits count by that address: a proxy that sends no
    X-Forwarded-For makes every visitor the proxy, so one stranger's wrong
    passwords lock everyone out; one that passes a visitor's own
    X-Forwarded-For on as the last entry lets them pick any address.
    """
    probe = f"/api/health?visitor={uuid.uuid4()}"
    target = endpoint.target
    with target.client(local_address=VISITOR_ADDRESS) as client:
        for case, headers in (("plain", {}), ("forged", {"X-Forwarded-For": FORGED_ADDRESS})):
            client.get(f"{probe}&{case}", headers=headers, extensions=target.extensions)
    seen = {
        case: _only(endpoint, [r for r in mock.records if r.target == f"{probe}&{case}"])
        for case in ("plain", "forged")
    }
    counted = {case: client_address(record) for case, record in seen.items()}
    if counted["plain"] != VISITOR_ADDRESS:
        raise violation(
            endpoint,
            f"a visitor at {VISITOR_ADDRESS} is counted by DorkOS as {counted['plain']} "
            f"(X-Forwarded-For {seen['plain'].header('X-Forwarded-For')!r}, the proxy "
            f"connecting from {seen['plain'].peer}): every visitor shares one sign-in limit",
        )
    if counted["forged"] != VISITOR_ADDRESS:
        raise violation(
            endpoint,
            f"a visitor at {VISITOR_ADDRESS} sending X-Forwarded-For: {FORGED_ADDRESS} is "
            f"counted by DorkOS as {counted['forged']} (it got X-Forwarded-For "
            f"{seen['forged'].header('X-Forwarded-For')!r}): a visitor can pick their address",
        )
    return (
        f"{VISITOR_ADDRESS} counted as {counted['plain']}; with a forged X-Forwarded-For "
        f"as {counted['forged']} (DorkOS got {seen['forged'].header('X-Forwarded-For')!r})"
    )


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


def check_https_over_ipv6(endpoint: Endpoint, mock: MockDorkOS) -> str:
    """The site answers on IPv6 too, as a browser reaching an AAAA record does."""
    over_ipv6 = dataclasses.replace(
        endpoint.target, base_url=endpoint.target.base_url.replace("127.0.0.1", "[::1]")
    )
    try:
        with over_ipv6.client() as client:
            response = client.get("/api/health", extensions=over_ipv6.extensions)
    except httpx.HTTPError as error:
        raise violation(
            endpoint,
            f"GET https://{SERVER_NAME}/api/health on {over_ipv6.base_url} (IPv6) failed: "
            f"{error!r}; the config does not listen on IPv6",
        ) from error
    if response.status_code != 200:
        raise violation(
            endpoint,
            f"GET https://{SERVER_NAME}/api/health on {over_ipv6.base_url} answered "
            f"{response.status_code}: {response.text[:200]}",
        )
    return f"/api/health 200 on {over_ipv6.base_url}"


def tls_handshake_at(target: Target, version: ssl.TLSVersion, alpn: list[str]) -> str | None:
    """The protocol ALPN chose, if a handshake at exactly `version` succeeds; else None.

    Probes whether the server offers a version, so it verifies nothing and
    lowers OpenSSL's security level: TLS 1.0 and 1.1 would not even be tried
    at the default one, and a refusal must be the server's.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLS 1.0/1.1, on purpose
        context.minimum_version = context.maximum_version = version
    context.set_ciphers("ALL:@SECLEVEL=0")
    context.set_alpn_protocols(alpn)
    with socket.create_connection(target.address, timeout=5) as raw:
        try:
            with context.wrap_socket(raw, server_hostname=target.server_name) as tls:
                return tls.selected_alpn_protocol() or "none"
        except ssl.SSLError:
            return None


OLD_TLS = (ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1)
CURRENT_TLS = (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3)


def tls_versions_offered(endpoint: Endpoint) -> dict[ssl.TLSVersion, str | None]:
    """What ALPN chose at each TLS version (None: refused); a violation unless
    TLS 1.0 and 1.1 are refused and 1.2 and 1.3 offered."""
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
    return accepted


def check_tls_versions(endpoint: Endpoint, mock: MockDorkOS) -> str:
    """TLS 1.0 and 1.1 refused, 1.2 and 1.3 offered; reports whether HTTP/2 is on."""
    accepted = tls_versions_offered(endpoint)
    http2 = accepted[ssl.TLSVersion.TLSv1_3] == "h2"
    said = proxy_kind(endpoint).http2
    if http2 != said:
        raise violation(
            endpoint,
            f"HTTP/2 is {'on' if http2 else 'off'} (ALPN chose "
            f"{accepted[ssl.TLSVersion.TLSv1_3]!r}); the page says it is "
            f"{'on' if said else 'off'} for {endpoint.proxy}",
        )
    return f"TLS 1.0/1.1 refused, 1.2/1.3 offered; HTTP/2 {'on' if http2 else 'off'}"


def redirects_to_https(endpoint: Endpoint, statuses: tuple[int, ...] = (301, 308)) -> str:
    """Port 80 of the site's address answers with a redirect to its HTTPS URL."""
    host, _ = endpoint.target.address
    plain = Target(f"http://{f'[{host}]' if ':' in host else host}:80", endpoint.target.server_name)
    asked = f"http://{plain.server_name}/api/health?from=http"
    try:
        with plain.client(timeout=10) as client:
            response = client.get("/api/health?from=http", extensions=plain.extensions)
    except httpx.HTTPError as error:
        raise violation(endpoint, f"{asked}: nothing answers on port 80 ({error!r})") from error
    location = response.headers.get("Location", "")
    expected = f"https://{endpoint.target.authority}/api/health?from=http"
    if response.status_code not in statuses or location != expected:
        raise violation(
            endpoint,
            f"{asked} answered {response.status_code} with Location {location!r}; "
            f"expected a redirect ({', '.join(map(str, statuses))}) to {expected}",
        )
    return f"{response.status_code} to {location}"


def check_http_redirects_to_https(endpoint: Endpoint, mock: MockDorkOS) -> str:
    """Port 80 sends browsers to the HTTPS site (Caddy does it, certbot adds it):
    permanently, as the published configs do."""
    return redirects_to_https(endpoint)


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
            status = stream.response.status_code
            encoding = stream.response.headers.get("Content-Encoding")
            cache_control = stream.response.headers.get("Cache-Control")
            if status != 200:
                raise violation(endpoint, f"GET {path} answered {status}, not 200")
            if encoding is not None:
                raise violation(
                    endpoint,
                    f"the event stream arrived with Content-Encoding: {encoding}; streams must "
                    f"go out uncompressed (a compressor can hold events back: Caddy's encode "
                    f"did before 2.9)",
                )
            if cache_control != "no-cache":
                raise violation(
                    endpoint,
                    f"Cache-Control reached the browser as {cache_control!r}, not no-cache",
                )
            try:
                first = stream.take(1)[0]
            except (httpx.ReadTimeout, IndexError) as error:
                raise violation(
                    endpoint,
                    f"open #{attempt}: the snapshot did not arrive within "
                    f"{HELD_BACK_AFTER_S:.0f} s; the proxy is holding the stream back",
                ) from error
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


def check_slow_first_byte(endpoint: Endpoint, mock: MockDorkOS) -> str:
    """A response that starts after SILENCE_S reaches the client, not a 502/504."""
    session = new_session(mock, first_byte_delay=SILENCE_S)
    started = time.monotonic()
    with endpoint.target.client(timeout=SILENCE_S + SLOW_ANSWER_GRACE_S) as client:
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
    margins.observe(
        "answer that starts after the silence",
        took - SILENCE_S,
        SLOW_ANSWER_GRACE_S,
        endpoint.label,
    )
    return f"202 after {took:.1f} s"


@dataclass(frozen=True)
class Property:
    name: str
    check: Check
    slow: bool = False


def on(transport: Transport, check: Callable[..., str], **options: Any) -> Check:
    """A check of both transports' streams, run on one of them."""
    return functools.partial(check, transport=transport, **options)


# Every snippet is run through these, reported in this order.
# ("accepts-config-and-starts" is reported first by the evaluator itself.)
# `slow`: a check that spends its time waiting (a minute of silence; up to
# 30 s for a proxy to pass a close on, which a version that never does
# waits out; its turn for Chromium or for 500 streams, which runs take one
# or two at a time). They run side by side after the quick ones, so that
# those waits overlap instead of adding up; none of them decides by how
# fast the machine is.
PROPERTIES = (
    Property("events-in-real-time", check_realtime),
    Property("forwarded-headers", check_forwarded_headers),
    Property("client-address", check_client_address),
    Property("https", check_https),
    Property("tls-1.2-and-1.3-only", check_tls_versions),
    Property(
        "idle-stream-survives", on("sse", idle_stream_survives, heartbeat_interval=None), slow=True
    ),
    Property("slow-first-byte", check_slow_first_byte, slow=True),
    Property("disconnect-reaches-upstream", on("sse", disconnect), slow=True),
    Property("resume-with-last-event-id", on("sse", resume)),
    Property("not-compressed-or-cached", check_not_compressed_or_cached),
    Property("ordinary-traffic", check_ordinary_traffic),
    Property("websocket-upgrade", check_websocket_upgrade),
    Property("websocket-frames-in-real-time", on("websocket", realtime)),
    Property(
        "websocket-idle-survives",
        on("websocket", idle_stream_survives, heartbeat_interval=None),
        slow=True,
    ),
    Property("websocket-disconnect-reaches-upstream", on("websocket", disconnect), slow=True),
    Property("websocket-resume", on("websocket", resume)),
    Property("websocket-refusal-reaches-browser", check_websocket_refusal),
    Property("terminal-websocket", check_terminal),
    Property("in-chromium", browser.check_in_chromium, slow=True),
    Property(f"holds-{capacity.STREAMS}-streams", capacity.check_holds_streams, slow=True),
)


def run_contract(
    endpoint: Endpoint,
    mock: MockDorkOS,
    properties: Sequence[Property] = PROPERTIES,
    *,
    slow_after_fast: bool = True,
) -> dict[str, Future[str]]:
    """Start every property; returns one future per property name, in order.

    The fast checks run one after another, so none competes with its own
    endpoint's other traffic. The slow ones start together once the fast
    ones are done: a slow check that fails can leave the proxy marking
    DorkOS as down for a while (nginx does, after a timeout), and a fast
    check after it would then fail for a reason that is not its own.
    Without `slow_after_fast` they start at once beside the fast ones, for
    a run that would rather be short (their first failures come after a
    minute of silence, when the fast checks are long done).
    """
    fast_done = threading.Event()
    if not slow_after_fast:
        fast_done.set()

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
