"""The mock's WebSocket side behaves as DorkOS 0.58 and later do.

Each fact here was read in DorkOS's source (the upgrade router, the origin
policy, the socket sink); the tests talk to the mock directly, so a proxy
test that fails can be trusted to be about the proxy.
"""

from __future__ import annotations

import json
import socket
import uuid

import pytest

from harness.clients.sse_client import Target, open_stream
from harness.clients.ws_client import HandshakeRefused, open_socket
from harness.upstream.mock_dorkos import MockDorkOS

WAIT = 5.0


def session_path(session: str | None = None) -> str:
    return f"/api/sessions/{session or uuid.uuid4()}/events"


def test_upgrade_gets_a_socket_and_a_plain_get_gets_sse_on_the_same_path(
    mock: MockDorkOS, target: Target
) -> None:
    path = session_path()
    with open_socket(target, path, timeout=WAIT) as sock:
        (snapshot,) = sock.take(1, timeout=WAIT)
    with open_stream(target, path) as stream:
        assert stream.response.headers["content-type"] == "text/event-stream"
        (sse_snapshot,) = stream.take(1)
    assert snapshot.event == sse_snapshot.event == "snapshot"
    assert [r.transport for r in mock.requests_to(path)] == ["websocket", "sse"]
    assert mock.requests_to(path)[0].status == 101


def test_frames_are_json_text_with_ids_on_sequenced_frames_only(
    mock: MockDorkOS, target: Target
) -> None:
    session = str(uuid.uuid4())
    with open_socket(target, session_path(session), timeout=WAIT) as sock:
        sock.take(1, timeout=WAIT)
        sent = mock.publish(session, n=1)
        raw = sock.recv(timeout=WAIT)
    frame = json.loads(raw)
    assert list(frame) == ["event", "data", "id"]
    assert (frame["event"], frame["id"], frame["data"]["n"]) == ("text_delta", sent, 1)


def test_heartbeat_is_an_ordinary_frame(mock: MockDorkOS, target: Target) -> None:
    with (
        mock.configured(heartbeat_interval=0.05),
        open_socket(target, session_path(), timeout=WAIT) as sock,
    ):
        sock.take(1, timeout=WAIT)
        assert sock.recv(timeout=WAIT) == '{"event":"__heartbeat"}'


def test_global_stream_says_connected_over_a_socket(target: Target) -> None:
    with open_socket(target, "/api/events", timeout=WAIT) as sock:
        (connected,) = sock.take(1, timeout=WAIT)
    assert connected.event == "connected"
    assert "connectedAt" in json.loads(connected.data or "{}")


def test_resume_replays_missed_frames_exactly_once(mock: MockDorkOS, target: Target) -> None:
    session = str(uuid.uuid4())
    ids = [mock.publish(session, n=n) for n in range(1, 5)]
    with open_socket(target, f"{session_path(session)}?resume={ids[1]}", timeout=WAIT) as sock:
        assert [f.event_id for f in sock.take(2, timeout=WAIT)] == ids[2:]
        live = mock.publish(session, n=5)
        assert [f.event_id for f in sock.take(1, timeout=WAIT)] == [live]


def test_cursor_from_another_server_start_gets_a_snapshot(target: Target) -> None:
    session = str(uuid.uuid4())
    stale = f"{session}-1000-3"
    with open_socket(target, f"{session_path(session)}?resume={stale}", timeout=WAIT) as sock:
        assert sock.take(1, timeout=WAIT)[0].event == "snapshot"


@pytest.mark.parametrize(
    ("origin", "host", "forwarded_proto", "opens"),
    [
        # No Origin: not a browser; nothing to compare.
        (None, "dorkos.example.com", None, True),
        ("http://dorkos.example.com", "dorkos.example.com", None, True),
        ("https://dorkos.example.com", "dorkos.example.com", "https", True),
        # Without X-Forwarded-Proto the scheme is http (DorkOS 0.59).
        ("https://dorkos.example.com", "dorkos.example.com", None, False),
        # The first value counts, as when proxies append.
        ("https://dorkos.example.com", "dorkos.example.com", "https, http", True),
        # The Host is compared as sent, port included.
        ("https://dorkos.example.com:8443", "dorkos.example.com", "https", False),
        ("https://dorkos.example.com:8443", "dorkos.example.com:8443", "https", True),
        ("null", "dorkos.example.com", None, False),
        # Same origin, but a host name DORKOS_TRUSTED_HOSTS doesn't list.
        ("http://evil.example.com", "evil.example.com", None, False),
        # DorkOS's own origins on loopback are always trusted.
        ("http://localhost:<port>", "dorkos.example.com", None, True),
    ],
)
def test_origin_policy(
    mock: MockDorkOS,
    target: Target,
    origin: str | None,
    host: str,
    forwarded_proto: str | None,
    opens: bool,
) -> None:
    origin = origin.replace("<port>", str(mock.port)) if origin else origin
    headers = {"X-Forwarded-Proto": forwarded_proto} if forwarded_proto else {}
    with open_socket(
        target, session_path(), timeout=WAIT, origin=origin, headers=headers, authority=host
    ) as sock:
        if opens:
            assert sock.take(1, timeout=WAIT)[0].event == "snapshot"
        else:
            assert sock.closed_with(timeout=WAIT) == (4403, "Origin not trusted")


@pytest.mark.parametrize(
    ("path", "code", "reason"),
    [
        ("/api/rooms/no-such-room/events", 4404, "No such room"),
        ("/api/sessions/not-a-uuid/events", 4400, "Invalid session ID"),
    ],
)
def test_refused_stream_completes_the_handshake_then_closes_with_4000_plus_status(
    mock: MockDorkOS, target: Target, path: str, code: int, reason: str
) -> None:
    with open_socket(target, path, timeout=WAIT, origin=None) as sock:
        assert sock.closed_with(timeout=WAIT) == (code, reason)
    (record,) = mock.requests_to(path)
    assert (record.status, record.close_code) == (101, code)


def test_an_open_room_streams(mock: MockDorkOS, target: Target) -> None:
    room = mock.open_room("lobby")
    with open_socket(target, f"/api/rooms/{room}/events", timeout=WAIT) as sock:
        assert sock.take(1, timeout=WAIT)[0].event == "snapshot"
    with open_stream(target, f"/api/rooms/{room}/events") as stream:
        # Over SSE DorkOS flushes the room stream's head with a comment first.
        first, snapshot = stream.take(2, events_only=False)
    assert (first.comment, snapshot.event) == ("connected", "snapshot")


def test_global_stream_at_capacity_closes_with_4503(mock: MockDorkOS, target: Target) -> None:
    with (
        mock.configured(max_global_readers=1),
        open_socket(target, "/api/events", timeout=WAIT) as first,
    ):
        first.take(1, timeout=WAIT)
        with open_socket(target, "/api/events", timeout=WAIT) as second:
            assert second.closed_with(timeout=WAIT) == (4503, "Service Unavailable")
        with target.client() as client:
            assert client.get("/api/events").status_code == 503


def test_terminal_echoes_input_as_binary_frames(mock: MockDorkOS, target: Target) -> None:
    terminal = mock.open_terminal(str(uuid.uuid4()))
    with open_socket(target, f"/api/terminal/{terminal}/socket", timeout=WAIT) as sock:
        assert sock.recv(timeout=WAIT) == b"$ "
        sock.send_text(json.dumps({"type": "input", "data": "ls\r"}))
        assert sock.recv(timeout=WAIT) == b"ls\r"


@pytest.mark.parametrize(
    ("terminal", "origin", "status"),
    # A terminal that was never opened, and an untrusted origin.
    [(str(uuid.uuid4()), "page", 404), (str(uuid.uuid4()), "null", 403)],
)
def test_terminal_refuses_at_the_handshake(
    target: Target, terminal: str, origin: str, status: int
) -> None:
    with (
        pytest.raises(HandshakeRefused) as refused,
        open_socket(target, f"/api/terminal/{terminal}/socket", timeout=WAIT, origin=origin),
    ):
        pass
    assert refused.value.status == status


def test_unclaimed_upgrade_path_is_dropped_unanswered(mock: MockDorkOS) -> None:
    request = (
        "GET /api/nothing HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", mock.port), timeout=WAIT) as sock:
        sock.sendall(request.encode())
        assert sock.recv(1024) == b""


def test_upgrade_header_without_connection_upgrade_is_a_plain_get(
    mock: MockDorkOS, target: Target
) -> None:
    """What a proxy that drops `Connection: upgrade` gets: DorkOS answers SSE."""
    path = session_path()
    with open_stream(target, path, headers={"Upgrade": "websocket"}) as stream:
        assert stream.response.status_code == 200
        assert stream.response.headers["content-type"] == "text/event-stream"
    assert mock.requests_to(path)[0].transport == "sse"


def test_pings_are_answered(target: Target) -> None:
    with open_socket(target, session_path(), timeout=WAIT) as sock:
        sock.ping(timeout=WAIT)


def test_a_client_that_leaves_is_gone_upstream(mock: MockDorkOS, target: Target) -> None:
    path = session_path()
    with open_socket(target, path, timeout=WAIT) as sock:
        sock.take(1, timeout=WAIT)
    (record,) = mock.requests_to(path)
    assert record.closed.wait(timeout=WAIT), "the mock never saw the client leave"


def test_paced_frames_wait_for_the_client(mock: MockDorkOS, target: Target) -> None:
    session = mock.behave(
        str(uuid.uuid4()), events_per_stream=2, event_interval=0.0, paced_by_client=True
    )
    with open_socket(target, session_path(session), timeout=WAIT) as sock:
        sock.take(1, timeout=WAIT)
        with pytest.raises(TimeoutError):
            sock.take(1, timeout=0.5)
        mock.delivered(session)
        assert sock.take(1, timeout=WAIT)[0].event_id == mock.event_id(session, 1)
