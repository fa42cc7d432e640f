"""The published configs in front of a DorkOS that can't be told what to do.

The contract (harness.checks.contract) proves each config against the mock, which
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

import datetime
import functools
import hashlib
import json
import secrets
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from harness.checks import check_it_works
from harness.checks.contract import Property, run_contract
from harness.checks.endpoints import ContractViolation, Endpoint, violation
from harness.checks.outside_checks import (
    ANSWER_S,
    QUIET_STREAM_S,
    SOCKET_STOPS,
    forwarded,
    next_frame,
    page_socket,
    quiet_streams_survive,
    socket_heartbeats,
    sse_heartbeats,
)
from harness.checks.stream_checks import StreamEnded
from harness.clients import browser
from harness.clients.sse_client import Frame, open_stream
from harness.clients.ws_client import (
    SocketClosed,
)
from harness.proxies.images import ProxyImage
from harness.proxies.kind import REPO_ROOT
from harness.proxies.launch import RunningProxy
from harness.proxies.registry import RECOMMENDED_SNIPPETS, kind
from harness.upstream import real_dorkos
from harness.upstream.conformance import until_turn_ends

if TYPE_CHECKING:
    from harness.lab.proxy_lab import ProxyLab
    from harness.upstream.real_dorkos import DorkosBuild

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
    slow: bool = False  # waits (out heartbeats, or for its turn): runs beside the others


@dataclass(frozen=True)
class Outcome:
    passed: bool
    summary: str  # what it measured, or why it failed (the first line of it)


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
            next_frame(stream)  # the snapshot: subscribed
        except (httpx.ReadTimeout, httpx.RemoteProtocolError, StreamEnded) as error:
            raise violation(
                endpoint, f"SSE: no reply: not even the snapshot came in {ANSWER_S:.0f} s"
            ) from error
        _send_message(endpoint, session)
        try:
            frames = until_turn_ends(lambda: next_frame(stream, events_only=False), ANSWER_S)
        except (TimeoutError, httpx.ReadTimeout, httpx.RemoteProtocolError, StreamEnded) as error:
            raise violation(endpoint, f"SSE: no reply ({error})") from error
        seen.append(_reply_in(endpoint, "SSE", frames))
    session = str(uuid.uuid4())
    with page_socket(endpoint, f"/api/sessions/{session}/events") as sock:
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
        slow=True,  # waits its turn for Chromium, which runs two at a time
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
        "proxy": f"{kind(image.proxy).title} {version}",
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
    from harness.lab.proxy_lab import proxy_lab

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
