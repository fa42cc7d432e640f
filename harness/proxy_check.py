"""dorkos-proxy-check: the site's checks, run against a reader's own DorkOS.

    dorkos-proxy-check https://dorkos.example.com
    dorkos-proxy-check --stand-in https://dorkos.example.com   # DorkOS stopped

The lab proves each published config; a reader's server is not the lab.
This runs the same checks (harness.checks.outside_checks, and with --stand-in
the contract's own, harness.checks.contract and harness.checks.stream_checks) from the
reader's machine through the reader's proxy, and says for each failure
what to change and where the site explains it.

Two modes:

- live (the default): DorkOS keeps running and is only read from: its
  health route, its page and assets, the heartbeats of its global stream
  over SSE and a socket. Nothing is sent that changes anything.
- --stand-in: DorkOS is stopped for a few minutes, and a stand-in that
  behaves like it (harness.upstream.mock_dorkos) listens where it did
  (localhost:4242, ::1 as Node binds it). Being told what to do, it can
  show what a running DorkOS can't on request: events held back by a
  buffer, a minute of silence, an answer that starts after 65 s, a client
  leaving. It refuses to start while anything listens on port 4242.

Exit status: 0 when every check passed, 1 when one failed, 2 when the
checks could not run (a name that does not resolve, not DorkOS, login on
without an API key, port 4242 in use).

It needs only httpx and wsproto: nothing of the lab (Docker, browsers).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import ssl
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx

from harness.checks import outside_checks
from harness.checks.contract import (
    Property,
    check_not_compressed_or_cached,
    check_realtime,
    check_slow_first_byte,
    on,
    redirects_to_https,
    run_contract,
    tls_handshake_at,
    tls_versions_offered,
)
from harness.checks.endpoints import ContractViolation, Endpoint, violation
from harness.checks.stream_checks import (
    check_websocket_refusal,
    disconnect,
    idle_stream_survives,
    realtime,
    resume,
    stopped,
)
from harness.clients.sse_client import Target, open_stream, tls_handshake
from harness.upstream.mock_dorkos import MockDorkOS, MockSettings, client_address

if TYPE_CHECKING:
    from harness.lab.netns import PrivateNetwork

PAGE = "reverse-proxy/"  # the Reverse Proxy page, relative to the site
DORKOS_PORT = 4242
# Node binds DorkOS's default `localhost` to ::1 alone on Debian and Ubuntu.
STAND_IN_HOST = "::1"
# Any address a visitor could not have: a forged X-Forwarded-For.
FORGED_ADDRESS = "203.0.113.7"
API_KEY_VARIABLE = "DORKOS_API_KEY"
PASSED, FAILED, INFO, NOT_RUN = "pass", "fail", "info", "not run"


class CannotCheck(Exception):
    """The checks could not run at all: one clear line, exit status 2."""


# -- where a failure is explained ---------------------------------------------


@dataclass(frozen=True)
class Advice:
    fix: str
    section: str  # a heading of the Reverse Proxy page
    anchor: str

    @property
    def link(self) -> str:
        return f"{PAGE}#{self.anchor}"


SET_UP = Advice(
    "use the published config for your proxy, as it is", "Set up the proxy", "set-up-the-proxy"
)
LEAVING = Advice(
    "use the published config for your proxy, as it is (HAProxy: 3.0 or later, "
    "as 2.6 keeps quiet streams open)",
    "Set up the proxy",
    "set-up-the-proxy",
)
TELL_DORKOS = Advice(
    "forward the Host the browser sent (nginx: proxy_set_header Host $host), and set "
    "DORKOS_TRUSTED_HOSTS to your domain",
    "Tell DorkOS about the proxy",
    "tell-dorkos-about-the-proxy",
)
UPGRADE = Advice(
    "pass WebSocket upgrades on (nginx: the Upgrade and Connection $connection_upgrade "
    "lines and their map, never Connection '')",
    "The app loads, but replies never appear",
    "the-app-loads-but-replies-never-appear",
)
SCHEME = Advice(
    "send X-Forwarded-Proto (nginx: proxy_set_header X-Forwarded-Proto $scheme) and the "
    "Host the browser used, port included",
    "The page is blank, and assets answer 500",
    "the-page-is-blank-and-assets-answer-500",
)
BATCHES = Advice(
    "turn the proxy's buffering off for DorkOS (nginx: proxy_buffering off), and don't "
    "compress event streams",
    "Events arrive in batches instead of in real time",
    "events-arrive-in-batches-instead-of-in-real-time",
)
TIMEOUT = Advice(
    "raise the proxy's read timeout (nginx: proxy_read_timeout 86400s)",
    "The connection drops after 60 seconds",
    "the-connection-drops-after-60-seconds",
)
GATEWAY_TIMEOUT = Advice(
    "raise the proxy's read timeout (nginx: proxy_read_timeout 86400s)",
    "504 Gateway Timeout on long requests",
    "504-gateway-timeout-on-long-requests",
)
TLS = Advice(
    "allow TLS 1.2 and 1.3 only (nginx: ssl_protocols TLSv1.2 TLSv1.3); Caddy does by itself",
    "HTTPS: TLS versions and HTTP/2",
    "https-tls-versions-and-http2",
)
CLIENT = Advice(
    "pass the visitor's address on as the last X-Forwarded-For entry (nginx: "
    "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for)",
    "What DorkOS needs from a proxy",
    "what-dorkos-needs-from-a-proxy",
)


@dataclass(frozen=True)
class Diagnosis:
    """A failure whose message says `when` has this advice, not the check's own."""

    when: str
    advice: Advice


# -- the checks ---------------------------------------------------------------


@dataclass(frozen=True)
class Item:
    name: str
    title: str
    check: Callable[[Endpoint, MockDorkOS], str]
    advice: Advice
    diagnoses: tuple[Diagnosis, ...] = ()
    slow: bool = False
    stand_in: bool = False  # needs the stand-in: it tells DorkOS what to do
    long: bool = False  # only with --long
    informs: bool = False  # reports a fact; never fails

    def advice_for(self, failure: str) -> Advice:
        return next((d.advice for d in self.diagnoses if d.when in failure), self.advice)


def both_transports(
    check: Callable[..., str], **options: Any
) -> Callable[[Endpoint, MockDorkOS], str]:
    """A stream check over SSE and a socket side by side; SSE's failure first."""

    def run(endpoint: Endpoint, mock: MockDorkOS) -> str:
        with ThreadPoolExecutor(2, thread_name_prefix="transport") as pool:
            futures = [
                pool.submit(check, endpoint, mock, transport, **options)
                for transport in ("sse", "websocket")
            ]
            return "; ".join(future.result() for future in futures)

    return run


def _outside(check: Callable[[Endpoint], str]) -> Callable[[Endpoint, MockDorkOS], str]:
    def run(endpoint: Endpoint, _mock: MockDorkOS) -> str:
        return check(endpoint)

    return run


def dorkos_answers(endpoint: Endpoint, _mock: MockDorkOS) -> str:
    """/api/health answers as DorkOS does, through the proxy."""
    health = _health(endpoint.target)
    if health.status_code == 403 and "HOST_NOT_ALLOWED" in health.text:
        raise violation(
            endpoint,
            f"GET /api/health answered 403 HOST_NOT_ALLOWED: DorkOS does not trust the name "
            f"{endpoint.target.server_name} it was given",
        )
    if health.status_code != 200:
        raise violation(endpoint, f"GET /api/health answered {health.status_code}")
    version = health.json().get("version", "?")
    return f"/api/health 200, DorkOS {version}"


def https_certificate(endpoint: Endpoint, _mock: MockDorkOS) -> str:
    """The certificate is valid for the name, as a browser checks it."""
    with tls_handshake(endpoint.target) as connection:
        version = connection.version()
        certificate = connection.getpeercert() or {}
    until = certificate.get("notAfter", "?")
    return f"{version}, certificate valid for {endpoint.target.server_name} until {until}"


def tls_versions(endpoint: Endpoint, _mock: MockDorkOS) -> str:
    """TLS 1.0 and 1.1 refused, 1.2 and 1.3 offered."""
    tls_versions_offered(endpoint)
    return "TLS 1.0 and 1.1 refused, 1.2 and 1.3 offered"


def http2(endpoint: Endpoint, _mock: MockDorkOS) -> str:
    """Whether browsers get HTTP/2, and what that means for many tabs."""
    # At the newest version the site offers: what a browser gets.
    at = (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2)
    chosen = [tls_handshake_at(endpoint.target, v, ["h2", "http/1.1"]) for v in at]
    if next((c for c in chosen if c is not None), None) == "h2":
        return "on: every tab's requests share one connection"
    return (
        "off: browsers open at most six connections to the site; DorkOS 0.58 and later "
        "streams over WebSockets, which don't count, but SSE readers (0.57 and older) do"
    )


def http_redirects(endpoint: Endpoint, _mock: MockDorkOS) -> str:
    """Plain HTTP on port 80 sends the browser to HTTPS (any redirect will do)."""
    return redirects_to_https(endpoint, (301, 302, 307, 308))


def stream_uncompressed(endpoint: Endpoint, _mock: MockDorkOS) -> str:
    """/api/events reaches a browser as DorkOS sends it: an event stream, uncompressed."""
    target = endpoint.target
    with open_stream(target, "/api/events", read_timeout=outside_checks.ANSWER_S) as stream:
        status = stream.response.status_code
        encoding = stream.response.headers.get("Content-Encoding")
        kind = stream.response.headers.get("Content-Type", "")
    if status != 200 or not kind.startswith("text/event-stream"):
        raise violation(endpoint, f"GET /api/events answered {status} {kind!r}")
    if encoding is not None:
        raise violation(
            endpoint,
            f"/api/events arrived with Content-Encoding: {encoding}: a compressor holds "
            f"events back until it has enough to compress",
        )
    return "text/event-stream, no Content-Encoding"


def headers_dorkos_reads(endpoint: Endpoint, mock: MockDorkOS) -> str:
    """What DorkOS reads from the proxy: Host, the scheme, the visitor's address."""
    target = endpoint.target
    probe = f"/api/health?probe={uuid.uuid4()}"
    seen_from: dict[str, str] = {}
    with target.client(timeout=outside_checks.ANSWER_S) as client:
        for case, extra in (("plain", {}), ("forged", {"X-Forwarded-For": FORGED_ADDRESS})):
            with client.stream(
                "GET", f"{probe}&{case}", headers=extra, extensions=target.extensions
            ) as answer:
                stream = answer.extensions.get("network_stream")
                address = stream.get_extra_info("client_addr") if stream is not None else None
                seen_from[case] = str(address[0]) if address else "?"
                answer.read()
    records = {
        case: [r for r in mock.records if r.target == f"{probe}&{case}"] for case in seen_from
    }
    if any(len(found) != 1 for found in records.values()):
        raise violation(
            endpoint, "the stand-in did not see the probes: is the proxy pointed at it?"
        )
    plain, forged = records["plain"][0], records["forged"][0]
    problems = []
    if plain.header("Host") != target.authority:
        problems.append(
            f"Host reached DorkOS as {plain.header('Host')!r}, not {target.authority!r}"
        )
    scheme = target.scheme
    if plain.header("X-Forwarded-Proto") != scheme:
        problems.append(
            f"X-Forwarded-Proto reached DorkOS as {plain.header('X-Forwarded-Proto')!r}, "
            f"not {scheme!r}"
        )
    if client_address(plain) != seen_from["plain"]:
        problems.append(
            f"this machine, at {seen_from['plain']}, is counted by DorkOS as "
            f"{client_address(plain)} (X-Forwarded-For {plain.header('X-Forwarded-For')!r}): "
            f"every visitor shares one sign-in limit"
        )
    elif client_address(forged) != seen_from["forged"]:
        problems.append(
            f"with a forged X-Forwarded-For: {FORGED_ADDRESS}, DorkOS counts this machine as "
            f"{client_address(forged)}: a visitor can pick their address"
        )
    if problems:
        raise violation(endpoint, "; ".join(problems))
    return (
        f"Host {target.authority}, X-Forwarded-Proto {scheme}, this machine counted as "
        f"{seen_from['plain']}"
    )


# How the checks word their failures (harness.checks.stream_checks and
# outside_checks), and what each wording means; the first match wins.
REFUSED = (
    Diagnosis("4403", SCHEME),  # DorkOS refused the socket's Origin
    Diagnosis("answered 403", TELL_DORKOS),  # the host guard
)
SOCKET_FAILURES = (
    *REFUSED,
    Diagnosis("answered 200", UPGRADE),  # DorkOS answered a plain GET: no upgrade
    Diagnosis("answered 400", UPGRADE),
)
HELD_BACK = (
    Diagnosis("holding the stream back", BATCHES),
    Diagnosis("the read timed out", BATCHES),
)
ITEMS: tuple[Item, ...] = (
    Item("dorkos", "DorkOS answers through the proxy", dorkos_answers, TELL_DORKOS),
    Item("https", "HTTPS: a valid certificate for the name", https_certificate, SET_UP),
    Item("tls-versions", "HTTPS: TLS 1.2 and 1.3 only", tls_versions, TLS),
    Item("http-redirect", "Plain HTTP redirects to HTTPS", http_redirects, SET_UP),
    Item("http2", "HTTP/2", http2, TLS, informs=True),
    Item(
        "page-and-assets",
        "The app's page and assets, with the browser's Origin",
        _outside(outside_checks.forwarded),
        SCHEME,
        (Diagnosis("HOST_NOT_ALLOWED", TELL_DORKOS),),
    ),
    Item(
        "stream-uncompressed",
        "SSE /api/events: an uncompressed event stream",
        stream_uncompressed,
        BATCHES,
        REFUSED,
    ),
    Item(
        "headers-dorkos-reads",
        "Host, scheme and visitor's address reach DorkOS",
        headers_dorkos_reads,
        CLIENT,
        (Diagnosis("Host reached", TELL_DORKOS), Diagnosis("X-Forwarded-Proto", SCHEME)),
        stand_in=True,
    ),
    Item(
        "events-in-real-time",
        "SSE: each event as it is sent",
        check_realtime,
        BATCHES,
        REFUSED,
        stand_in=True,
    ),
    Item(
        "socket-events-in-real-time",
        "WebSocket: each event as it is sent",
        on("websocket", realtime),
        BATCHES,
        SOCKET_FAILURES,
        stand_in=True,
    ),
    Item(
        "not-compressed-or-cached",
        "Streams not compressed or cached",
        check_not_compressed_or_cached,
        BATCHES,
        REFUSED,
        stand_in=True,
    ),
    Item(
        "disconnect-reaches-dorkos",
        "A client leaving reaches DorkOS",
        both_transports(disconnect),
        LEAVING,
        (*SOCKET_FAILURES, *HELD_BACK),
        stand_in=True,
    ),
    Item(
        "resume",
        "Reconnects resume where they left off",
        both_transports(resume),
        SET_UP,
        (*SOCKET_FAILURES, *HELD_BACK),
        stand_in=True,
    ),
    Item(
        "socket-refusal",
        "DorkOS's refusal of a socket reaches the page",
        check_websocket_refusal,
        UPGRADE,
        SOCKET_FAILURES,
        stand_in=True,
    ),
    Item(
        "socket-heartbeats",
        "WebSocket /api/events: upgrade, heartbeats",
        _outside(outside_checks.socket_heartbeats),
        UPGRADE,
        (
            *SOCKET_FAILURES,
            Diagnosis("then closed", TIMEOUT),
            Diagnosis("holds small frames back", BATCHES),
        ),
        slow=True,
    ),
    Item(
        "sse-heartbeats",
        "SSE /api/events: heartbeats in real time",
        _outside(outside_checks.sse_heartbeats),
        TIMEOUT,  # /api/events is never buffered (X-Accel-Buffering): the stream ended
        REFUSED,
        slow=True,
    ),
    Item(
        "silence-survives",
        "A stream silent for 65 s stays open",
        both_transports(idle_stream_survives, heartbeat_interval=None),
        TIMEOUT,
        (*SOCKET_FAILURES, *HELD_BACK),
        slow=True,
        stand_in=True,
    ),
    Item(
        "slow-answer",
        "An answer that starts after 65 s gets through",
        check_slow_first_byte,
        GATEWAY_TIMEOUT,
        (Diagnosis("403 Forbidden", TELL_DORKOS),),
        slow=True,
        stand_in=True,
    ),
    Item(
        "quiet-stream",
        f"A quiet stream kept {outside_checks.QUIET_STREAM_S:.0f} s by heartbeats",
        _outside(outside_checks.quiet_streams_survive),
        TIMEOUT,
        SOCKET_FAILURES,
        slow=True,
        long=True,
    ),
)


TLS_ITEMS = ("https", "tls-versions", "http-redirect", "http2")


def items_for(*, stand_in: bool, long: bool) -> list[Item]:
    return [i for i in ITEMS if (stand_in or not i.stand_in) and (long or not i.long)]


# -- the reader's server --------------------------------------------------------


@dataclass(frozen=True)
class Remote:
    """The reader's site, as the checks see an endpoint."""

    target: Target
    proxy: str = "your proxy"
    network: PrivateNetwork | None = None

    @property
    def label(self) -> str:
        return self.target.origin

    def log_tail(self, lines: int = 30) -> str:
        return "(the proxy's log is on your server)"


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _reason(error: BaseException) -> str:
    """The innermost cause, in a few words: what a person needs to read."""
    error = _innermost(error)
    if isinstance(error, ssl.SSLCertVerificationError):
        return error.verify_message or str(error)
    return stopped(error)


def target_for(
    url: str, *, address: str | None, ca_file: str | None, api_key: str | None
) -> Target:
    parts = urlsplit(url if "://" in url else f"https://{url}")
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise CannotCheck(f"{url!r} is not a web address like https://dorkos.example.com")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    host = address or parts.hostname
    try:
        socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        raise CannotCheck(f"{host} does not resolve: {error.strerror}") from error
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    return Target(f"{parts.scheme}://{_bracketed(host)}:{port}", parts.hostname, ca_file, headers)


def _health(target: Target) -> httpx.Response:
    with target.client(timeout=outside_checks.ANSWER_S) as client:
        return client.get("/api/health", extensions=target.extensions)


def reach(target: Target) -> str | None:
    """Whether this is DorkOS, reachable, and open to the checks.

    Returns why HTTPS failed, if it did (the report says so, and what to
    fix); raises CannotCheck when nothing can be checked.
    """
    try:
        health = _health(target)
    except httpx.ConnectError as error:
        reason = _reason(error)
        if isinstance(_innermost(error), ssl.SSLError):
            return reason
        raise CannotCheck(f"nothing answers at {target.base_url}: {reason}") from error
    except httpx.HTTPError as error:
        raise CannotCheck(f"{target.origin}/api/health failed: {_reason(error)}") from error
    recognised = health.status_code == 200 and _json(health).get("status") == "ok"
    recognised |= _json(health).get("code") in ("HOST_NOT_ALLOWED", "AUTH_REQUIRED")
    if not recognised:
        kind = health.headers.get("Content-Type", "no Content-Type")
        raise CannotCheck(
            f"{target.origin} is not DorkOS, or its proxy does not send /api to DorkOS: "
            f"/api/health answered {health.status_code} ({kind}), not DorkOS's "
            f'{{"status":"ok",...}}'
        )
    with target.client(timeout=outside_checks.ANSWER_S) as client:
        events = client.get("/api/sessions", extensions=target.extensions)
    if events.status_code == 401:
        if "Authorization" in target.headers:
            raise CannotCheck(f"DorkOS at {target.origin} refused the API key (401)")
        raise CannotCheck(
            f"DorkOS at {target.origin} has login on (401 {_json(events).get('code', '')}): "
            f"give the checks an API key in {API_KEY_VARIABLE}, or with --api-key-file"
        )
    return None


def _innermost(error: BaseException) -> BaseException:
    while error.__cause__ is not None or error.__context__ is not None:
        error = error.__cause__ or error.__context__  # type: ignore[assignment]
    return error


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        found = response.json()
    except ValueError:
        return {}
    return found if isinstance(found, dict) else {}


# -- running them ---------------------------------------------------------------


@dataclass(frozen=True)
class Result:
    name: str
    title: str
    status: str  # pass, fail, info, not run
    summary: str
    fix: str | None = None
    see: str | None = None  # the page and section
    link: str | None = None  # where on the site


@dataclass(frozen=True)
class Report:
    url: str
    mode: str
    results: list[Result] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """No check failed (one not run, for an http:// address, is not a failure)."""
        return all(r.status != FAILED for r in self.results)


def _failed(item: Item, why: str, advice: Advice | None = None) -> Result:
    advice = advice or item.advice_for(why)
    see = f"Reverse Proxy: {advice.section}"
    return Result(item.name, item.title, FAILED, why, advice.fix, see, advice.link)


def _result(item: Item, future: Future[str], endpoint: Endpoint) -> Result:
    try:
        summary = future.result()
    except ContractViolation as failure:
        why = str(failure).split("\n--- proxy log")[0].removeprefix(f"{endpoint.label}: ")
        return _failed(item, why)
    except Exception as error:  # a check that could not finish failed too
        return _failed(item, f"could not finish: {_reason(error)}")
    return Result(item.name, item.title, INFO if item.informs else PASSED, summary)


def run_checks(
    endpoint: Endpoint, mock: MockDorkOS | None, items: Sequence[Item], mode: str
) -> Report:
    """Every item through the endpoint: the fast ones in turn, beside the slow ones."""
    report = Report(endpoint.target.origin, mode)
    tls_failure = reach(endpoint.target)
    if endpoint.target.scheme == "http":
        plain = [i for i in items if i.name in TLS_ITEMS]
        report.results.extend(
            Result(i.name, i.title, NOT_RUN, "not run: the address is http://") for i in plain
        )
        items = [i for i in items if i not in plain]
    elif tls_failure is not None:
        https = next(i for i in items if i.name == "https")
        certificate = Advice(
            "serve a certificate for the name, from a CA browsers trust (certbot, or Caddy's "
            "automatic HTTPS)",
            https.advice.section,
            https.advice.anchor,
        )
        report.results.append(
            _failed(https, f"the TLS handshake failed: {tls_failure}", certificate)
        )
        report.results.extend(
            Result(i.name, i.title, NOT_RUN, "not run: HTTPS failed")
            for i in items
            if i is not https
        )
        return report
    futures = run_contract(
        endpoint,
        mock,  # type: ignore[arg-type]  # live: only checks that need none
        [Property(i.name, i.check, slow=i.slow) for i in items],
        # A reader waits for the report: the minutes of silence start at once.
        slow_after_fast=False,
    )
    report.results.extend(_result(i, futures[i.name], endpoint) for i in items)
    return report


@contextlib.contextmanager
def stand_in(host: str, server_name: str) -> Iterator[MockDorkOS]:
    """The stand-in DorkOS where DorkOS listened, once nothing else does."""
    for address in ("::1", "127.0.0.1", host):
        with contextlib.suppress(OSError), socket.create_connection((address, DORKOS_PORT), 1):
            raise CannotCheck(
                f"something listens on {_bracketed(address)}:{DORKOS_PORT} (DorkOS?): stop it "
                f"first (for example `sudo systemctl stop dorkos`), then run this again"
            )
    settings = MockSettings(host=host, port=DORKOS_PORT, trusted_hosts=frozenset({server_name}))
    try:
        mock = MockDorkOS(settings).start()
    except RuntimeError as error:
        raise CannotCheck(str(error)) from error
    try:
        yield mock
    finally:
        mock.stop()


# -- the report ---------------------------------------------------------------

MARKS = {PASSED: "✓", FAILED: "✗", INFO: "i", NOT_RUN: "-"}


LIVE_SEES_LESS = (
    "Live checks only read from DorkOS. A proxy that buffers older routes, times out a "
    "stream silent for 65 s, or loses the visitor's address looks fine to them: "
    "--stand-in shows those."
)


def render(report: Report, width: int = 78) -> str:
    """The report as a person reads it: a line a check, its figures under it."""

    def wrapped(text: str, indent: str) -> list[str]:
        return textwrap.wrap(
            text,
            width,
            initial_indent=indent,
            subsequent_indent=indent,
            break_on_hyphens=False,
            break_long_words=False,
        )

    lines = [f"DorkOS behind {report.url} ({report.mode})", ""]
    advised: set[str | None] = set()
    for r in report.results:
        lines.append(f"  {MARKS[r.status]} {r.title}")
        lines += wrapped(r.summary, "      ")
        if r.status == FAILED and r.fix:
            if r.link in advised:
                lines.append("      Fix: as above")
                continue
            advised.add(r.link)
            lines += wrapped(f"Fix: {r.fix}", "      ")
            lines += wrapped(f"See: {r.see} ({r.link})", "      ")
    counted = {s: sum(r.status == s for r in report.results) for s in MARKS}
    lines += [
        "",
        f"{counted[PASSED]} passed, {counted[FAILED]} failed"
        + (f", {counted[NOT_RUN]} not run" if counted[NOT_RUN] else "")
        + (" (links are to the DorkOS reverse-proxy guide)" if counted[FAILED] else "")
        + ".",
    ]
    if report.mode == "live":
        lines += wrapped(LIVE_SEES_LESS, "")
    return "\n".join(lines)


def as_json(report: Report) -> str:
    return json.dumps(
        {
            "url": report.url,
            "mode": report.mode,
            "passed": report.passed,
            "checks": [asdict(r) for r in report.results],
        },
        indent=2,
    )


def _api_key(args: argparse.Namespace) -> str | None:
    if args.api_key_file:
        try:
            with open(args.api_key_file) as file:
                return file.read().strip() or None
        except OSError as error:
            raise CannotCheck(f"{args.api_key_file}: {error.strerror}") from error
    return os.environ.get(API_KEY_VARIABLE) or None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dorkos-proxy-check",
        description="Check that a reverse proxy in front of DorkOS passes its streams on: "
        "WebSocket upgrades, events in real time, quiet streams kept open, HTTPS.",
    )
    p.add_argument("url", help="your DorkOS's address, e.g. https://dorkos.example.com")
    p.add_argument(
        "--stand-in",
        action="store_true",
        help=f"DorkOS is stopped: serve a stand-in on localhost:{DORKOS_PORT} and run every "
        "check, also those that need DorkOS to hold events back or fall silent",
    )
    p.add_argument(
        "--stand-in-address",
        default=STAND_IN_HOST,
        help=f"where the stand-in listens (default {STAND_IN_HOST}, where DorkOS's "
        "`localhost` is; 127.0.0.1 if you set DORKOS_HOST to it)",
    )
    p.add_argument("--long", action="store_true", help="also keep a quiet stream open for 75 s")
    p.add_argument(
        "--address", help="connect here instead of where the name resolves (as curl --resolve)"
    )
    p.add_argument("--cacert", help="trust this CA file instead of the system's")
    p.add_argument(
        "--api-key-file",
        help=f"a file holding a DorkOS API key, for login on (or set {API_KEY_VARIABLE}); "
        "it is sent as Authorization: Bearer and never printed",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        target = target_for(
            args.url, address=args.address, ca_file=args.cacert, api_key=_api_key(args)
        )
        endpoint = Remote(target)
        items = items_for(stand_in=args.stand_in, long=args.long)
        if args.stand_in:
            with stand_in(args.stand_in_address, target.server_name) as mock:
                report = run_checks(endpoint, mock, items, "stand-in")
        else:
            report = run_checks(endpoint, None, items, "live")
    except CannotCheck as error:
        print(f"dorkos-proxy-check: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dorkos-proxy-check: interrupted", file=sys.stderr)
        return 130
    columns = min(shutil.get_terminal_size((88, 24)).columns, 100)
    print(as_json(report) if args.json else render(report, columns))
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
