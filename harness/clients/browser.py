"""A real browser: Debian's Chromium, headless, opening DorkOS's streams as its app does.

The raw clients send what the checks tell them to; a browser sends what
browsers send: its own Origin, its own WebSocket handshake (offering
permessage-deflate), HTTP/2 where the proxy offers it, and it enforces
its own rules on what comes back (a handshake answered 200 is an error,
not a stream). So every published config is also loaded in Chromium, as
https://dorkos.example.com with the run's certificate authority trusted the
way a reader's own CA would be (an NSS database in the browser's home),
and the page's own JavaScript opens the streams:

- a WebSocket to a session stream, as the app (0.58 and later) does, which
  must deliver the snapshot and the events after it;
- an EventSource to another, as integrations and the app up to 0.57 do;
- a WebSocket to the global stream, which must say `connected`;
- a WebSocket DorkOS refuses (an unknown room), whose close code 4404 the
  page must see.

Before any of that, the page itself must start: like DorkOS's own, it loads
its script and stylesheet with `crossorigin`, so Chromium sends `Origin` on
them, and DorkOS refuses an Origin that doesn't match the scheme and Host it
was given (500): then the reader's page stays blank.

Chromium runs inside the run's private network, like every other check
(it is started from the thread that entered it), so it reaches the proxy
at 127.0.0.1 and nothing else at all.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from harness.checks.endpoints import Endpoint, violation
from harness.checks.stream_checks import HELD_BACK_AFTER_S, new_session
from harness.lab.tls import SERVER_NAME
from harness.upstream.mock_dorkos import MockDorkOS

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page, Playwright, WebSocket

# Debian's Chromium by default; DORKOS_DOCS_CHROMIUM names another Chromium
# (Google Chrome on a CI runner, say).
CHROMIUM = Path(os.environ.get("DORKOS_DOCS_CHROMIUM", "/usr/bin/chromium"))
# Chromium is the heaviest thing a run starts; two at once keep both cores
# busy without crowding out the proxies being checked.
_AT_ONCE = threading.BoundedSemaphore(2)
EVENTS = 3
# How long the page waits for each stream: generous, as every wait here
# (a browser starting on a busy machine takes seconds).
STREAM_WAIT_S = 2 * HELD_BACK_AFTER_S
LAUNCH_WAIT_S = 120.0
# The flags Debian's Chromium needs to run headless as root, with nothing of
# its own reaching out.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def require_chromium() -> None:
    if not CHROMIUM.is_file() or shutil.which("certutil") is None:
        raise BrowserUnavailable(
            f"{CHROMIUM} or certutil is missing: make test installs Debian's chromium and "
            f"libnss3-tools as root; elsewhere install them (apt-get install chromium "
            f"libnss3-tools)"
        )


def launch(playwright: Playwright, home: Path, *extra_args: str) -> Browser:
    """Debian's Chromium, headless, with `home` as its home (and NSS database)."""
    return playwright.chromium.launch(
        executable_path=str(CHROMIUM),
        args=[*CHROMIUM_ARGS, *extra_args],
        env={"HOME": str(home), "PATH": os.environ.get("PATH", "")},
        timeout=LAUNCH_WAIT_S * 1000,
    )


# Runs in the page: the app's way of opening each stream, and what came of it.
PAGE_SCRIPT = """
async ({session, sseSession, room, events, waitMs}) => {
  const wsUrl = (path) => {
    const url = new URL(path, location.href);
    url.protocol = location.protocol === 'https:' ? 'wss:' : 'ws:';
    return url.href;
  };
  const socket = (path, want) => new Promise((resolve) => {
    const got = {events: [], opened: false};
    const ws = new WebSocket(wsUrl(path));
    const done = (extra) => { clearTimeout(timer); resolve({...got, ...extra}); };
    const timer = setTimeout(() => { ws.close(); done({timedOut: true}); }, waitMs);
    ws.onopen = () => { got.opened = true; };
    ws.onmessage = (message) => {
      const frame = JSON.parse(message.data);
      if (frame.event === '__heartbeat') return;
      got.events.push(frame.event);
      if (want && got.events.length >= want) { ws.close(); done({}); }
    };
    ws.onclose = (closed) => done({closeCode: closed.code, closeReason: closed.reason});
  });
  const eventSource = (path, want) => new Promise((resolve) => {
    const got = {events: [], opened: false};
    const source = new EventSource(path);
    const done = (extra) => { clearTimeout(timer); source.close(); resolve({...got, ...extra}); };
    const timer = setTimeout(() => done({timedOut: true}), waitMs);
    source.onopen = () => { got.opened = true; };
    for (const name of ['snapshot', 'text_delta']) {
      source.addEventListener(name, () => {
        got.events.push(name);
        if (got.events.length >= want) done({});
      });
    }
  });
  const [ws, sse, refused, global] = await Promise.all([
    socket(`/api/sessions/${session}/events`, 1 + events),
    eventSource(`/api/sessions/${sseSession}/events`, 1 + events),
    socket(`/api/rooms/${room}/events`, 0),
    socket('/api/events', 1),
  ]);
  const protocol = performance.getEntriesByType('navigation')[0].nextHopProtocol;
  return {ws, sse, refused, global, protocol};
}
"""


# Runs in the page: a message sent as the app sends it, and the reply on the
# session's socket, which the page opens first as the app does.
REPLY_SCRIPT = """
async ({session, message, waitMs}) => {
  const url = new URL(`/api/sessions/${session}/events`, location.href);
  url.protocol = location.protocol === 'https:' ? 'wss:' : 'ws:';
  return await new Promise((resolve) => {
    const got = {events: [], text: '', opened: false};
    let posting = null;
    const ws = new WebSocket(url.href);
    const done = (extra) => { clearTimeout(timer); ws.close(); resolve({...got, ...extra}); };
    const timer = setTimeout(() => done({timedOut: true}), waitMs);
    ws.onopen = () => { got.opened = true; };
    ws.onclose = (closed) => done({closeCode: closed.code});
    ws.onmessage = async (received) => {
      const frame = JSON.parse(received.data);
      if (frame.event === '__heartbeat') return;
      got.events.push(frame.event);
      if (frame.event === 'snapshot') {
        posting = fetch(`/api/sessions/${session}/messages`, {
          method: 'POST', headers: {'Content-Type': 'application/json'},
          body: JSON.stringify({content: message}),
        }).then((sent) => sent.status);
      } else if (frame.event === 'text_delta') {
        got.text += frame.data?.text ?? '';
      } else if (frame.event === 'turn_end') {
        // The reply can come before the POST's own answer does.
        got.posted = await posting;
        done({});
      }
    };
  });
}
"""


def check_app_replies(endpoint: Endpoint, reply_text: str) -> str:
    """DorkOS's page starts, opens its own stream, and a message gets its reply.

    For a DorkOS that can't be scripted (a real one, in `make conformance`)
    as for the mock: the app's page and assets, the socket the app's own
    script opens to /api/events, and a message sent from the page with the
    reply read off the session's socket.
    """
    arguments = {"session": str(uuid.uuid4()), "message": "hi", "waitMs": STREAM_WAIT_S * 1000}
    seen, console = _open_app(endpoint, arguments)
    problems = []
    failed_assets = [a for a in seen["assets"] if not a.endswith(" 200")]
    if failed_assets or not seen["assets"]:
        problems.append(f"the app's assets: {', '.join(seen['assets']) or 'none requested'}")
    if not seen["app_socket"]:
        problems.append(f"the app's own socket to /api/events {seen['app_socket_ending']}")
    reply = seen["reply"]
    if (
        reply.get("posted") != 202
        or reply_text not in reply["text"]
        or "turn_end" not in (reply["events"])
    ):
        problems.append(
            f"a message from the page was answered {reply.get('posted')}, and its session's "
            f"socket brought {reply['events']} (text {reply['text']!r}), "
            f"{_ending(reply) if 'turn_end' not in reply['events'] else 'without the reply'}"
        )
    if problems:
        raise violation(
            endpoint,
            f"DorkOS's app in Chromium: {'; '.join(problems)}. Console errors: {console or 'none'}",
        )
    return (
        f"{len(seen['assets'])} assets 200; the app's socket got {seen['app_socket']}; "
        f"a message's reply: {' '.join(dict.fromkeys(reply['events']))}"
    )


def _open_app(endpoint: Endpoint, arguments: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:

    app_socket: list[str] = []  # the first frames of the app's own /api/events socket
    endings: list[str] = []
    created: list[str] = []

    def watch(socket: WebSocket) -> None:
        if urlsplit(socket.url).path != "/api/events":
            return
        created.append(socket.url)
        socket.on("framereceived", lambda frame: app_socket.append(_event_of(frame)))
        socket.on("close", lambda _: endings.append("closed"))
        socket.on("socketerror", lambda error: endings.append(f"failed: {error}"))

    def watch_sockets(page: Page) -> None:
        page.on("websocket", watch)

    with _app_page(endpoint, watch_sockets) as (page, console, assets):
        reply: dict[str, Any] = page.evaluate(REPLY_SCRIPT, arguments)
        # The app opens its socket as it starts; wait for its first frame
        # (or its end), pumping the browser's events meanwhile.
        deadline = time.monotonic() + STREAM_WAIT_S
        while not app_socket and not endings and time.monotonic() < deadline:
            page.wait_for_timeout(100)
    ending = ", ".join(endings) or (
        f"opened, then nothing for {STREAM_WAIT_S:.0f} s" if created else "was never opened"
    )
    return {
        "assets": sorted(assets),
        "app_socket": ", ".join(dict.fromkeys(app_socket[:3])),
        "app_socket_ending": ending if not app_socket else "",
        "reply": reply,
    }, console


def _event_of(frame: str | bytes) -> str:
    try:
        return str(json.loads(frame).get("event"))
    except (ValueError, AttributeError):
        return "a frame that is not JSON"


class BrowserUnavailable(RuntimeError):
    pass


def check_in_chromium(endpoint: Endpoint, mock: MockDorkOS) -> str:
    """The app's streams work in Chromium: sockets, EventSource, a refusal's code."""
    require_chromium()  # before the mock is told of sessions no browser will open
    behaviour: dict[str, Any] = {"events_per_stream": EVENTS, "event_interval": 0.05}
    arguments = {
        "session": new_session(mock, **behaviour),
        "sseSession": new_session(mock, **behaviour),
        "room": str(uuid.uuid4()),  # no such room: DorkOS refuses with 4404
        "events": EVENTS,
        "waitMs": STREAM_WAIT_S * 1000,
    }
    with _app_page(endpoint) as (page, console, assets):
        # The app's own script marks the page as started; with it refused
        # (a 500 to the Origin its crossorigin load sends), the page is blank.
        app = page.evaluate("() => window.dorkosApp ?? null")
        seen: dict[str, Any] = page.evaluate(PAGE_SCRIPT, arguments)
        seen["app"], seen["assets"] = app, sorted(assets)
    problems = _problems(seen)
    session_path = f"/api/sessions/{arguments['session']}/events"
    if problems:
        upgrade = mock.requests_to(session_path)
        upstream = (
            f"DorkOS saw the socket's request as {upgrade[0].transport} with Upgrade "
            f"{upgrade[0].header('Upgrade')!r}, Connection {upgrade[0].header('Connection')!r}"
            if upgrade
            else "DorkOS never saw the socket's request"
        )
        raise violation(
            endpoint,
            f"in Chromium: {'; '.join(problems)}. {upstream}. Console errors: {console or 'none'}",
        )
    (record,) = mock.requests_to(session_path)
    return (
        f"page over {seen['protocol']}; socket: {len(seen['ws']['events'])} frames; "
        f"EventSource: {len(seen['sse']['events'])} events; refused socket closed "
        f"{seen['refused']['closeCode']}; DorkOS saw the browser's Origin "
        f"{record.header('Origin')}, Sec-WebSocket-Extensions "
        f"{record.header('Sec-WebSocket-Extensions')!r}"
    )


def _trust(ca_file: str | None, home: Path) -> None:
    """Trust `ca_file` in Chromium's NSS database under `home`, as a reader's CA."""
    if ca_file is None:
        raise BrowserUnavailable("the run's target has no CA file to trust")
    database = f"sql:{home / '.pki' / 'nssdb'}"
    (home / ".pki" / "nssdb").mkdir(parents=True)
    for command in (
        ["certutil", "-d", database, "-N", "--empty-password"],
        ["certutil", "-d", database, "-A", "-n", "dorkos-docs test CA", "-t", "C,,", "-i", ca_file],
    ):
        subprocess.run(command, check=True, capture_output=True)


@contextlib.contextmanager
def _app_page(
    endpoint: Endpoint, before_loading: Callable[[Page], None] | None = None
) -> Iterator[tuple[Page, list[str], list[str]]]:
    """DorkOS's page, loaded in a Chromium of its own that trusts the run's CA.

    Yields the page, its console errors and how each of the app's assets was
    answered, all collected from the start; `before_loading` can watch the
    page for more before it loads.
    """
    # Imported here: only the browser checks need Playwright's driver.
    from playwright.sync_api import sync_playwright

    require_chromium()
    console: list[str] = []
    assets: list[str] = []
    with (
        _AT_ONCE,
        tempfile.TemporaryDirectory(prefix="chromium-home-") as home,
        sync_playwright() as playwright,
    ):
        _trust(endpoint.target.ca_file, Path(home))
        # The reader's domain resolves to the proxy, as DNS would make it.
        browser = launch(
            playwright, Path(home), f"--host-resolver-rules=MAP {SERVER_NAME} 127.0.0.1"
        )
        try:
            page = browser.new_page()
            _watch(page, console, assets)
            if before_loading is not None:
                before_loading(page)
            page.goto(f"{endpoint.target.origin}/", timeout=LAUNCH_WAIT_S * 1000)
            yield page, console, assets
        finally:
            browser.close()


def _watch(page: Page, console: list[str], assets: list[str]) -> None:
    """Collect the page's console errors, and how each of the app's assets was answered."""
    page.on(
        "console",
        lambda message: console.append(message.text) if message.type == "error" else None,
    )
    page.on(
        "response",
        lambda response: (
            assets.append(f"{urlsplit(response.url).path} answered {response.status}")
            if urlsplit(response.url).path.startswith("/assets/")
            else None
        ),
    )


def _problems(seen: dict[str, Any]) -> list[str]:
    problems = []
    if seen["app"] != "started":
        problems.append(
            f"the app's page stayed blank: its script never ran "
            f"({', '.join(seen['assets']) or 'no asset was even requested'})"
        )
    wanted = ["snapshot", *["text_delta"] * EVENTS]
    if seen["ws"]["events"] != wanted:
        problems.append(
            f"the session's WebSocket got {seen['ws']['events']} (wanted {wanted}), "
            f"{_ending(seen['ws'])}"
        )
    if seen["sse"]["events"] != wanted:
        problems.append(
            f"the session's EventSource got {seen['sse']['events']} (wanted {wanted})"
            + (" and timed out" if seen["sse"].get("timedOut") else "")
        )
    if seen["global"]["events"] != ["connected"]:
        problems.append(
            f"the global stream's WebSocket got {seen['global']['events']}, "
            f"{_ending(seen['global'])}"
        )
    refused = seen["refused"]
    if refused.get("closeCode") != 4404:
        problems.append(
            f"the socket DorkOS refuses (4404) {_ending(refused)}, so the app would retry "
            f"instead of saying why"
        )
    return problems


def _ending(stream: dict[str, Any]) -> str:
    if stream.get("timedOut"):
        return f"then nothing for {STREAM_WAIT_S:.0f} s"
    code, reason = stream.get("closeCode"), stream.get("closeReason")
    opened = "opened" if stream.get("opened") else "never opened"
    return f"{opened}, closed with {code}" + (f" {reason!r}" if reason else "")
