"""When things go wrong: DorkOS restarts, the proxy reloads, with streams open.

A reader's proxy doesn't live in a quiet minute: DorkOS is upgraded and
restarted, certbot's renewal reloads nginx, Caddy reloads its config. These
checks run each published config through that, with a DorkOS of the run's
own (one that can be stopped without stopping anyone else's), listening
where DorkOS itself listens by default.

Each check reports what the reader would see (the status while DorkOS is
down, how soon the proxy forwards again, whether open streams survive a
reload) and fails where the reader would be left stuck: a hanging request,
502s after DorkOS is back, or a reconnect that loses or repeats events.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx

from harness.checks.endpoints import Endpoint, violation
from harness.checks.stream_checks import (
    HELD_BACK_AFTER_S,
    STREAM_STOPPED,
    TRANSPORTS,
    Transport,
    new_session,
    opened,
    spoken,
    stream_path,
)
from harness.clients.sse_client import Frame
from harness.proxies.launch import RunningProxy
from harness.tables import margins
from harness.upstream.mock_dorkos import Listening, MockDorkOS

# DorkOS is down this long, as for an upgrade's restart.
DOWN_S = 3.0
# While it is down, the proxy must answer (an error, but an answer): a
# healthy proxy refuses at once, in milliseconds (1.5 s at worst on a busy
# two-core machine, a TLS handshake included); a hanging one never does.
ANSWER_WITHIN_S = 30.0
# Once it is back, the proxy must forward its very next request: a healthy
# proxy tries DorkOS for each request, so that one gets DorkOS's 200 however
# busy the machine is. nginx's default instead marks a failed upstream down
# for 10 s (fail_timeout) from its last failure, just before DorkOS came
# back; how long the 502s went on is then followed for this long, to say so.
RECOVER_WITHIN_S = 5.0
# How often the browser-like client asks while DorkOS is down or coming
# back: the app's own retries are of this order.
ASK_EVERY_S = 0.1


def _health(endpoint: Endpoint) -> tuple[int, float]:
    """GET /api/health: its status (0: no answer) and how long the answer took."""
    started = time.monotonic()
    try:
        with endpoint.target.client(timeout=ANSWER_WITHIN_S) as client:
            status = client.get("/api/health", extensions=endpoint.target.extensions).status_code
    except httpx.TimeoutException:
        status = 0
    return status, time.monotonic() - started


def _cut(take: Callable[[int], list[Frame]]) -> str:
    """How an open stream ended once DorkOS went away."""
    try:
        frames = take(1)
    except STREAM_STOPPED as error:
        return type(error).__name__
    return f"still delivering ({frames[0].event!r})"


def check_dorkos_restart(endpoint: Endpoint, mock: MockDorkOS, dorkos: Listening) -> str:
    """DorkOS stops with streams open, and is back DOWN_S later with a new epoch.

    Open streams end (so the app reconnects); while DorkOS is down the proxy
    answers, and at once; once it is back, the proxy forwards the very next
    request to it; and a client that reconnects as the app does, from a
    cursor of the old epoch, gets a fresh snapshot, as DorkOS promises then.
    """
    session = new_session(mock, heartbeat_interval=None)
    path = stream_path(session)
    endings = {}
    with (
        opened(endpoint, path, "sse", timeout=HELD_BACK_AFTER_S) as sse,
        opened(endpoint, path, "websocket", timeout=HELD_BACK_AFTER_S) as socket,
    ):
        sse(1), socket(1)  # the snapshots
        cursor = mock.publish(session)
        sse(1), socket(1)
        dorkos.stop(drop_connections=True)
        down_at = time.monotonic()
        endings = {"sse": _cut(sse), "websocket": _cut(socket)}
    still_open = {t: how for t, how in endings.items() if how.startswith("still")}
    if still_open:
        dorkos.start()
        raise violation(endpoint, f"DorkOS stopped, and the proxy kept streams open: {still_open}")
    statuses: set[int] = set()
    slowest = 0.0
    while time.monotonic() < down_at + DOWN_S:
        status, took = _health(endpoint)
        statuses.add(status)
        slowest = max(slowest, took)
        time.sleep(ASK_EVERY_S)  # the pace of a client retrying, not a wait for a signal
    mock.new_epoch()
    dorkos.start()
    up_at = time.monotonic()
    if 0 in statuses or slowest > ANSWER_WITHIN_S:
        raise violation(
            endpoint,
            f"while DorkOS was down, a request waited {slowest:.1f} s for an answer; "
            f"bound {ANSWER_WITHIN_S:.0f} s",
        )
    margins.observe("answer while DorkOS is down", slowest, ANSWER_WITHIN_S, endpoint.label)
    first, took = _health(endpoint)
    if first != 200:
        raise violation(endpoint, _still_down(endpoint, first, up_at))
    margins.observe("first answer after DorkOS is back", took, ANSWER_WITHIN_S, endpoint.label)
    resumed = {t: _reconnect(endpoint, path, cursor, t) for t in TRANSPORTS}
    wrong = {t: first for t, first in resumed.items() if first != "snapshot"}
    if wrong:
        raise violation(
            endpoint,
            f"reconnecting from {cursor} (DorkOS's previous start) got {wrong}; DorkOS "
            f"answers a cursor from another start with a fresh snapshot",
        )
    shown = ", ".join(str(s) for s in sorted(statuses))
    return (
        f"streams ended ({endings['sse']} over SSE, {endings['websocket']} over a socket); "
        f"while down: {shown} within {slowest * 1000:.0f} ms; the first request after "
        f"DorkOS was back got its 200 in {took * 1000:.0f} ms; reconnects got a fresh snapshot"
    )


def _still_down(endpoint: Endpoint, first: int, up_at: float) -> str:
    """Why the first request after DorkOS came back failed, and for how long after."""
    shown = "no answer" if first == 0 else str(first)
    status = first
    while time.monotonic() - up_at <= RECOVER_WITHIN_S:
        time.sleep(ASK_EVERY_S)  # as above: a client asking again
        status = _health(endpoint)[0]
        if status == 200:
            return (
                f"DorkOS was back, and the proxy answered the next request {shown}, not "
                f"DorkOS's 200; it forwarded again {time.monotonic() - up_at:.1f} s later"
            )
    return (
        f"DorkOS was back, and the proxy answered the next request {shown}, not DorkOS's "
        f"200; {RECOVER_WITHIN_S:.0f} s later the proxy still answered {status}"
    )


def _reconnect(endpoint: Endpoint, path: str, cursor: str, transport: Transport) -> str:
    """The first frame a client reconnecting from `cursor` gets, as the app reconnects."""
    if transport == "sse":
        again, headers = path, {"Last-Event-ID": cursor}
    else:
        again, headers = f"{path}?resume={cursor}", {}
    try:
        with opened(endpoint, again, transport, timeout=HELD_BACK_AFTER_S, headers=headers) as take:
            return take(1)[0].event or "(no event)"
    except STREAM_STOPPED as error:
        return f"{spoken(transport)}: {type(error).__name__}"


RELOADS = 3
# Once the streams they serve have closed, an old nginx worker exits at once,
# and for ever later while one stays open. The wait includes asking Docker
# for the container's processes, which takes a second on a busy machine.
OLD_WORKERS_GONE_WITHIN_S = 30.0


def _old_workers(proxy: RunningProxy) -> tuple[int, float]:
    """Workers an earlier config left running (nginx's), and their memory in MiB."""
    marker = proxy.kind.old_worker_marker
    if marker is None:
        return 0, 0.0
    listed = proxy.container.top(ps_args="-o pid,rss,args")["Processes"]
    old = [row for row in listed if marker in row[2]]
    return len(old), sum(int(row[1]) for row in old) / 1024


def _reload(proxy: RunningProxy) -> None:
    code, output = proxy.container.exec_run(proxy.reload_command)
    if code != 0:
        raise violation(
            proxy, f"`{' '.join(proxy.reload_command)}` failed (exit {code}): {output!r}"
        )


def check_proxy_reload(endpoint: Endpoint, mock: MockDorkOS, dorkos: Listening) -> str:
    """The proxy reloads RELOADS times with streams open, as certbot's renewal does.

    Each open stream either goes on, or is cut and resumed the way the app
    resumes; either way the client gets every event once. nginx keeps an
    old worker for as long as a stream it serves stays open: their number
    and memory are reported, and they must be gone once the streams close.
    """
    assert isinstance(endpoint, RunningProxy)
    session = new_session(mock, heartbeat_interval=None)
    path = stream_path(session)
    seen: dict[Transport, str] = {}
    with (
        opened(endpoint, path, "sse", timeout=HELD_BACK_AFTER_S) as sse,
        opened(endpoint, path, "websocket", timeout=HELD_BACK_AFTER_S) as socket,
    ):
        takes: dict[Transport, Callable[[int], list[Frame]]] = {"sse": sse, "websocket": socket}
        for take in takes.values():
            take(1)  # the snapshot
        cursor = mock.publish(session, n=1)
        for take in takes.values():
            take(1)
        for _ in range(RELOADS):
            _reload(endpoint)
        after = [mock.publish(session, n=n) for n in (2, 3)]
        for transport, take in takes.items():
            seen[transport] = _after_reload(endpoint, path, cursor, after, transport, take)
        old_open = _old_workers(endpoint)
    closed_at = time.monotonic()
    gone_at = closed_at + OLD_WORKERS_GONE_WITHIN_S
    counted = endpoint.kind.old_worker_marker is not None
    title = endpoint.kind.title
    while _old_workers(endpoint)[0]:
        if time.monotonic() > gone_at:
            raise violation(
                endpoint,
                f"{_old_workers(endpoint)[0]} old {title} workers still ran "
                f"{OLD_WORKERS_GONE_WITHIN_S:.0f} s after the last stream closed",
            )
        time.sleep(ASK_EVERY_S)  # polls the container's process list
    if counted:
        margins.observe(
            f"old {title} workers gone",
            time.monotonic() - closed_at,
            OLD_WORKERS_GONE_WITHIN_S,
            endpoint.label,
        )
    workers = (
        f"; {old_open[0]} old {title} workers ({old_open[1]:.1f} MiB) ran on while the "
        f"streams were open, none once they closed"
        if counted
        else ""
    )
    return f"{RELOADS} reloads: SSE {seen['sse']}, socket {seen['websocket']}{workers}"


def _after_reload(
    endpoint: Endpoint,
    path: str,
    cursor: str,
    after: list[str],
    transport: Transport,
    take: Callable[[int], list[Frame]],
) -> str:
    """How one stream fared: kept open, or cut and resumed exactly once."""
    try:
        got = [f.event_id for f in take(len(after))]
        how = "kept open"
    except STREAM_STOPPED:
        if transport == "sse":
            again, headers = path, {"Last-Event-ID": cursor}
        else:
            again, headers = f"{path}?resume={cursor}", {}
        with opened(endpoint, again, transport, timeout=HELD_BACK_AFTER_S, headers=headers) as t:
            got = [f.event_id for f in t(len(after))]
        how = "cut, resumed"
    if got != after:
        raise violation(
            endpoint,
            f"{spoken(transport)}, after the reloads: expected {after} once each, got {got}",
        )
    return f"{how}, every event once"
