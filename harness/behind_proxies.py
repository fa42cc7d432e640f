"""The published configs in front of a DorkOS that can't be told what to do.

The contract (harness.contract) proves each config against the mock, which
holds events back, falls silent for a minute or hangs up on cue. A real
DorkOS does none of that on request, but what it does by itself can be
checked through every published config, exactly as a reader's browser would
meet it:

- its sockets upgrade with the page's Origin, and its heartbeats come
  through in real time, over both transports;
- a message sent through the proxy gets DorkOS's reply on the session's
  stream, over both transports;
- a stream with nothing to say but heartbeats outlives the proxy's
  timeouts;
- DorkOS gets what it reads from the proxy: the reader's Host, the
  scheme (so the page's Origin and the app's assets pass), and each
  visitor's own address (its sign-in limit counts visitors apart);
- in Chromium, the app's page starts, and a reply reaches it over a socket.

Each check takes only the endpoint: the same checks run against the mock in
`make test` (tests/test_behind_proxies.py, where a broken config must fail
them) and against a real DorkOS in `make conformance`, which writes their
outcome through each published config beside the black-box answers.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import hashlib
import itertools
import json
import secrets
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from harness import browser, check_it_works, real_dorkos
from harness.conformance import page_assets, until_turn_ends
from harness.contract import Property, run_contract
from harness.endpoints import ContractViolation, Endpoint, violation
from harness.images import ProxyImage
from harness.proxies import RECOMMENDED_SNIPPETS, REPO_ROOT, RunningProxy
from harness.sse_client import EventStream, Frame, open_stream
from harness.stream_checks import StreamEnded
from harness.tested_with import PROXY_NAMES
from harness.ws_client import (
    HEARTBEAT_EVENT,
    HandshakeRefused,
    HandshakeUnanswered,
    SocketClosed,
    open_socket,
)

if TYPE_CHECKING:
    from harness.lab import ProxyLab
    from harness.real_dorkos import DorkosBuild

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
# The test runtime's answer to a message: the text it echoes, and the event
# that ends the turn.
MESSAGE = "hi"
REPLY_TEXT = f"Echo: {MESSAGE}"
TURN_ENDS = "turn_end"
# DorkOS's sign-in limit: attempts per client address in 15 minutes.
SIGNIN_LIMIT = 10


def _two_visitors() -> tuple[str, str]:
    """Two loopback addresses no other check uses: a mock's limits outlive a run."""
    a, b, c = secrets.token_bytes(3)
    return f"127.{a}.{b}.{c % 250 + 2}", f"127.{a}.{b ^ 1}.{c % 250 + 2}"


@dataclass(frozen=True)
class Check:
    """One property a proxy must keep with DorkOS behind it, whoever DorkOS is."""

    name: str
    question: str  # what the table's first column says
    run: Callable[[Endpoint], str]
    slow: bool = False  # waits out heartbeats: runs beside the others


@dataclass(frozen=True)
class Outcome:
    passed: bool
    summary: str  # what it measured, or why it failed (the first line of it)


# -- heartbeats ------------------------------------------------------------


def _next(stream: EventStream, *, events_only: bool = True) -> Frame:
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
        arrivals.append(_next(stream).arrived)
        with contextlib.suppress(httpx.ReadTimeout, httpx.RemoteProtocolError, StreamEnded):
            for _ in range(HEARTBEATS_WATCHED):
                arrivals.append(_next(stream).arrived)
    return _heartbeats_within_bound(endpoint, "SSE", arrivals)


@contextlib.contextmanager
def _page_socket(endpoint: Endpoint, path: str) -> Iterator[Any]:
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
    with _page_socket(endpoint, "/api/events") as sock:
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


# -- a reply ---------------------------------------------------------------


def _send_message(endpoint: Endpoint, session: str) -> None:
    target = endpoint.target
    with target.client(timeout=ANSWER_S) as client:
        sent = client.post(
            f"/api/sessions/{session}/messages",
            json={"content": MESSAGE},
            headers={"Origin": target.origin},
            extensions=target.extensions,
        )
    if sent.status_code != 202:
        raise violation(
            endpoint,
            f"POST of a message with the page's Origin answered {sent.status_code} "
            f"{sent.text[:200]!r}, not 202",
        )


def _reply_in(endpoint: Endpoint, transport: str, frames: list[Frame]) -> str:
    names = [f.event for f in frames]
    text = "".join(
        json.loads(f.data or "{}").get("text", "") for f in frames if f.event == "text_delta"
    )
    if TURN_ENDS not in names or REPLY_TEXT not in text:
        raise violation(
            endpoint,
            f"{transport}: after a message, the session's stream brought {names} "
            f"(text {text!r}); wanted {REPLY_TEXT!r} and `{TURN_ENDS}`",
        )
    return f"{transport}: {' '.join(dict.fromkeys(n for n in names if n))}"


def reply(endpoint: Endpoint) -> str:
    """A message sent through the proxy, answered on the session's stream."""
    seen = []
    session = str(uuid.uuid4())
    path = f"/api/sessions/{session}/events"
    with open_stream(endpoint.target, path, read_timeout=ANSWER_S) as stream:
        try:
            _next(stream)  # the snapshot: subscribed
        except (httpx.ReadTimeout, httpx.RemoteProtocolError, StreamEnded) as error:
            raise violation(
                endpoint, f"SSE: no reply: not even the snapshot came in {ANSWER_S:.0f} s"
            ) from error
        _send_message(endpoint, session)
        try:
            frames = until_turn_ends(lambda: _next(stream, events_only=False), ANSWER_S)
        except (TimeoutError, httpx.ReadTimeout, httpx.RemoteProtocolError, StreamEnded) as error:
            raise violation(endpoint, f"SSE: no reply ({error})") from error
        seen.append(_reply_in(endpoint, "SSE", frames))
    session = str(uuid.uuid4())
    with _page_socket(endpoint, f"/api/sessions/{session}/events") as sock:
        try:
            sock.take(1, timeout=ANSWER_S)  # the snapshot
        except SOCKET_STOPS as error:
            raise violation(endpoint, f"socket: no reply: no snapshot ({error!r})") from error
        _send_message(endpoint, session)
        try:
            frames = until_turn_ends(
                lambda: sock.take(1, timeout=ANSWER_S, events_only=False)[0], ANSWER_S
            )
        except (TimeoutError, SocketClosed) as error:
            raise violation(endpoint, f"socket: no reply ({error})") from error
        seen.append(_reply_in(endpoint, "socket", frames))
    return "; ".join(seen)


# -- a quiet stream ----------------------------------------------------------


def quiet_streams_survive(endpoint: Endpoint) -> str:
    """/api/events open for 75 s over both transports, kept alive by heartbeats alone."""
    deadline = time.monotonic() + QUIET_STREAM_S
    with (
        open_stream(endpoint.target, "/api/events", read_timeout=HEARTBEAT_BOUND_S) as stream,
        _page_socket(endpoint, "/api/events") as sock,
    ):
        frames = {"SSE": 0, "socket": 0}
        try:
            while time.monotonic() < deadline:
                _next(stream)
                frames["SSE"] += 1
                sock.take(1, timeout=HEARTBEAT_BOUND_S, events_only=False)
                frames["socket"] += 1
        except (httpx.ReadTimeout, httpx.RemoteProtocolError, StreamEnded, *SOCKET_STOPS) as error:
            raise violation(
                endpoint,
                f"a quiet /api/events stream stopped after "
                f"{QUIET_STREAM_S - (deadline - time.monotonic()):.0f} s ({error!r}); "
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


def visitors_counted_apart(endpoint: Endpoint) -> str:
    """DorkOS's sign-in limit counts each visitor by their own address."""
    target = endpoint.target

    def attempts(visitor: str, count: int) -> list[int]:
        with target.client(timeout=ANSWER_S, local_address=visitor) as client:
            return [
                client.post(
                    "/api/auth/sign-in/email",
                    json={"email": "owner@example.com", "password": "wrong"},
                    extensions=target.extensions,
                ).status_code
                for _ in range(count)
            ]

    first, other = _two_visitors()
    limited = attempts(first, SIGNIN_LIMIT + 1)[-1]
    next_visitor = attempts(other, 1)[0]
    if limited != 429 or next_visitor == 429:
        raise violation(
            endpoint,
            f"after {SIGNIN_LIMIT + 1} wrong passwords from {first}, DorkOS answered it "
            f"{limited} (wanted 429) and the next visitor, {other}, {next_visitor} (wanted "
            f"not 429): DorkOS does not tell visitors apart through this proxy",
        )
    return f"{first} limited after {SIGNIN_LIMIT} attempts ({limited}); {other}: {next_visitor}"


CHECKS: tuple[Check, ...] = (
    Check(
        "socket-heartbeats",
        "Socket to /api/events: upgrade, heartbeats",
        socket_heartbeats,
        slow=True,
    ),
    Check("sse-heartbeats", "SSE /api/events: heartbeats in real time", sse_heartbeats, slow=True),
    Check("reply", "A message's reply, over SSE and a socket", reply),
    Check("forwarded", "Host and scheme: the API and the app's assets", forwarded),
    Check("client-address", "Visitors counted apart by the sign-in limit", visitors_counted_apart),
    Check(
        "in-chromium",
        "In Chromium: the app starts, a message gets its reply",
        lambda endpoint: browser.check_app_replies(endpoint, REPLY_TEXT),
    ),
    Check("check-it-works", "The page's two `curl` checks", check_it_works.check, slow=True),
    Check(
        "quiet-streams-survive",
        f"A quiet stream kept {QUIET_STREAM_S:.0f} s by heartbeats",
        quiet_streams_survive,
        slow=True,
    ),
)


def _without_mock(run: Callable[[Endpoint], str], endpoint: Endpoint, _mock: object) -> str:
    return run(endpoint)


def run_all(endpoint: Endpoint, checks: tuple[Check, ...] = CHECKS) -> dict[str, Outcome]:
    """Every check through one proxy: the fast ones in turn, beside the slow ones."""
    futures: dict[str, Future[str]] = run_contract(
        endpoint,
        None,  # type: ignore[arg-type]  # these checks need no mock
        [Property(c.name, functools.partial(_without_mock, c.run), slow=c.slow) for c in checks],
    )
    outcomes = {}
    for name, future in futures.items():
        try:
            outcomes[name] = Outcome(True, future.result())
        except ContractViolation as failed:
            why = str(failed).split("\n--- proxy log")[0].removeprefix(f"{endpoint.label}: ")
            outcomes[name] = Outcome(False, why)
        except Exception as error:  # a check that could not finish failed too
            outcomes[name] = Outcome(False, f"{type(error).__name__}: {error}")
    return outcomes


# -- runs, and what they found -------------------------------------------------

DATA_FILE = REPO_ROOT / "data" / "behind-proxies.json"
TABLE_FILE = REPO_ROOT / "generated" / "behind-proxies.md"
# What runs in front of a real DorkOS: the configs a reader ends with.
PUBLISHED = tuple(RECOMMENDED_SNIPPETS.items())


def through(
    lab: ProxyLab,
    image: ProxyImage,
    snippet: Path,
    *,
    shown_as: str | None = None,
    upstream: Callable[[RunningProxy, Callable[[], dict[str, Outcome]]], dict[str, Outcome]]
    | None = None,
) -> dict[str, Outcome]:
    """Every check through one config; in front of the lab's mock, or of `upstream`.

    `upstream(proxy, checks)` starts a DorkOS in the run's network, runs
    `checks()` while it serves, and returns what they found.
    """
    with lab.run(image, snippet, shown_as=shown_as, with_mock=upstream is None) as proxy:
        if upstream is None:
            return run_all(proxy)
        return upstream(proxy, lambda: run_all(proxy))


def snippet_hash(snippet: str) -> str:
    return hashlib.sha256((REPO_ROOT / snippet).read_bytes()).hexdigest()


def record_run(
    snippet: str, image: ProxyImage, version: str, found: dict[str, Outcome]
) -> dict[str, Any]:
    return {
        "config": snippet,
        "sha256": snippet_hash(snippet),
        "proxy": f"{PROXY_NAMES[image.proxy]} {version}",
        "checks": {name: {"passed": o.passed, "summary": o.summary} for name, o in found.items()},
    }


def load() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DATA_FILE.read_text())
    return data


def render(data: dict[str, Any]) -> str:
    """The table How it is tested shows: each check, each config on each version."""
    runs = data["runs"]
    header = [f"`{Path(r['config']).name}`<br>{r['proxy']}" for r in runs]
    lines = [
        f"Through the published configs, in front of DorkOS {data['dorkos']['version']} "
        f"(commit `{data['dorkos']['commit'][:12]}`), run on {data['ran_on']}.",
        "",
        "| Check | " + " | ".join(header) + " |",
        "|---" * (len(runs) + 1) + "|",
    ]
    for check in CHECKS:
        cells = []
        for run in runs:
            outcome = run["checks"].get(check.name)
            cells.append(
                "not run"
                if outcome is None
                else "passed"
                if outcome["passed"]
                else f"**failed**: {outcome['summary']}".replace("|", "\\|")
            )
        lines.append(f"| {check.question} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def summary(data: dict[str, Any]) -> str:
    """Tested with's sentence: which DorkOS the configs last ran in front of, and how."""
    version = data["dorkos"]["version"]
    changed = sorted(
        {r["config"] for r in data["runs"] if snippet_hash(r["config"]) != r["sha256"]}
    )
    failed = [
        f"{name} through `{Path(r['config']).name}` on {r['proxy']}"
        for r in data["runs"]
        for name, o in r["checks"].items()
        if not o["passed"]
    ]
    configs = ", ".join(
        f"`{Path(c).name}` ({', '.join(r['proxy'] for r in data['runs'] if r['config'] == c)})"
        for c in dict.fromkeys(r["config"] for r in data["runs"])
    )
    sentence = (
        f"The published configs ran in front of DorkOS {version} itself on {data['ran_on']}, "
        f"{configs}: "
        + (
            f"all {len(CHECKS)} checks that need no control over DorkOS passed"
            if not failed
            else f"these failed: {'; '.join(failed)}"
        )
        + " ([the checks](how-it-is-tested.md#through-the-published-configs))."
    )
    if changed:
        sentence += (
            f" Since then {', '.join(f'`{c}`' for c in changed)} changed, and has not been run "
            f"in front of DorkOS again."
        )
    return sentence + "\n"


def in_front_of(build: DorkosBuild, about: dict[str, str], workdir: Path) -> dict[str, Any]:
    """`make conformance`: each published config on each version, before a DorkOS of its own."""
    from harness.lab import proxy_lab

    def started(
        proxy: RunningProxy, checks: Callable[[], dict[str, Outcome]]
    ) -> dict[str, Outcome]:
        # In the run's network, where the config's localhost:4242 is.
        return real_dorkos.with_dorkos(build, 4242, lambda _: checks(), network=proxy.network)

    with proxy_lab(workdir) as lab:
        runs = [(s, image) for proxy, s in PUBLISHED for image in lab.images_for(proxy)]

        def one(snippet: str, image: ProxyImage) -> dict[str, Any]:
            found = through(lab, image, REPO_ROOT / snippet, upstream=started)
            print(f"{snippet} on {image.description}:", flush=True)
            for name, outcome in found.items():
                print(f"  {'passed' if outcome.passed else 'FAILED'} {name}: {outcome.summary}")
            return record_run(snippet, image, lab.version(image), found)

        # Two at a time: each is a DorkOS, a proxy and a browser on two cores.
        with ThreadPoolExecutor(2, thread_name_prefix="in-front") as pool:
            recorded = list(pool.map(lambda run: one(*run), runs))
    return {"dorkos": about, "ran_on": datetime.date.today().isoformat(), "runs": recorded}


def write(data: dict[str, Any]) -> None:
    """data/: what the run found (conformance.render_files writes its table)."""
    DATA_FILE.write_text(json.dumps(data, indent=2) + "\n")
