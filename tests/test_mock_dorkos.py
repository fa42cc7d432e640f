"""The mock upstream behaves as DorkOS does where a proxy can tell.

Each test talks to the mock directly (no proxy), so a proxy test that fails
can be trusted to be about the proxy.
"""

from __future__ import annotations

import socket
import time

import httpx
import pytest

from harness.clients.sse_client import Frame, Target, open_stream
from harness.upstream.mock_dorkos import MockDorkOS, MockSettings

SESSION = "/api/sessions/3f2b0c9e-0000-4000-8000-000000000001/events"


def raw_request(mock: MockDorkOS, request: bytes, read_for: float = 0.5) -> bytes:
    """Send bytes, read what arrives within `read_for` seconds."""
    with socket.create_connection(("127.0.0.1", mock.port)) as sock:
        sock.sendall(request)
        sock.settimeout(0.05)
        received = b""
        deadline = time.monotonic() + read_for
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                continue
            if not chunk:
                break
            received += chunk
        return received


def head_of(response: bytes) -> tuple[str, dict[str, str]]:
    head = response.split(b"\r\n\r\n", 1)[0].decode()
    status, *lines = head.split("\r\n")
    return status, {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}


def test_http10_stream_is_delimited_by_close(mock: MockDorkOS) -> None:
    request = f"GET {SESSION} HTTP/1.0\r\nHost: localhost\r\n\r\n".encode()
    status, headers = head_of(raw_request(mock, request))
    assert status == "HTTP/1.1 200 OK"
    assert "transfer-encoding" not in headers
    assert "content-length" not in headers
    # Node still says keep-alive here, although the body ends at close.
    assert headers["connection"] == "keep-alive"


def test_http11_stream_is_chunked(mock: MockDorkOS) -> None:
    request = f"GET {SESSION} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode()
    response = raw_request(mock, request)
    _status, headers = head_of(response)
    assert headers["transfer-encoding"] == "chunked"
    body = response.split(b"\r\n\r\n", 1)[1]
    size_line = body.split(b"\r\n", 1)[0]
    assert int(size_line, 16) > 0  # a chunk size, then the snapshot frame
    assert b"event: snapshot" in body


def test_stream_headers_match_dorkos(target: Target) -> None:
    with open_stream(target, SESSION) as stream:
        headers = stream.response.headers
    assert headers["content-type"] == "text/event-stream"
    assert headers["cache-control"] == "no-cache"
    assert headers["x-accel-buffering"] == "no"
    assert headers["x-powered-by"] == "Express"


def test_accel_buffering_header_can_be_switched_off(mock: MockDorkOS, target: Target) -> None:
    with mock.configured(accel_buffering_header=False), open_stream(target, SESSION) as stream:
        assert "x-accel-buffering" not in stream.response.headers


def test_cold_connect_gets_a_snapshot_then_scheduled_events(
    mock: MockDorkOS, target: Target
) -> None:
    with (
        mock.configured(events_per_stream=3, event_interval=0.05),
        open_stream(target, SESSION) as stream,
    ):
        frames = stream.take(4)
    snapshot, *live = frames
    assert (snapshot.event, snapshot.event_id) == ("snapshot", None)
    assert len(snapshot.data or "") >= 2000
    session_id = SESSION.split("/")[3]
    assert [f.event_id for f in live] == [f"{session_id}-{mock.started_ms}-{n}" for n in (1, 2, 3)]
    assert {f.event for f in live} == {"text_delta"}
    # Stamped with the send time on the machine's monotonic clock.
    assert all(f.delay_ms is not None and f.delay_ms >= 0 for f in live)


def test_paced_events_wait_for_the_client(mock: MockDorkOS, target: Target) -> None:
    session_id = SESSION.split("/")[3]
    settings = {"events_per_stream": 3, "event_interval": 0.0, "paced_by_client": True}
    with mock.configured(**settings):
        with open_stream(target, SESSION, read_timeout=0.5) as stream:
            assert stream.take(1)[0].event == "snapshot"
            # Nothing more until the client says the snapshot arrived.
            with pytest.raises(httpx.ReadTimeout):
                stream.take(1)
        with open_stream(target, SESSION.replace("0001", "0002")) as stream:
            assert stream.take(1)[0].event == "snapshot"
            for seq in (1, 2, 3):
                mock.delivered(session_id.replace("0001", "0002"))
                (event,) = stream.take(1)
                assert event.event_id == mock.event_id(session_id.replace("0001", "0002"), seq)


def test_heartbeats_are_comments_at_the_set_interval(mock: MockDorkOS, target: Target) -> None:
    opened = time.monotonic()
    with mock.configured(heartbeat_interval=0.1), open_stream(target, SESSION) as stream:
        frames = stream.take(4, events_only=False)
    beats = [f for f in frames if f.comment == "keepalive"]
    assert len(beats) == 3
    # The n-th heartbeat can't come before n intervals; a busy machine can
    # only make it later.
    assert [b.arrived - opened >= 0.1 * n for n, b in enumerate(beats, 1)] == [True] * 3


def test_no_heartbeats_when_off(target: Target) -> None:
    with open_stream(target, SESSION, read_timeout=0.5) as stream:
        stream.take(1)
        with pytest.raises(httpx.ReadTimeout):
            stream.take(1, events_only=False)


def test_resume_replays_missed_events_exactly_once(mock: MockDorkOS, target: Target) -> None:
    session_id = SESSION.split("/")[3]
    ids = [mock.publish(session_id, n=n) for n in range(1, 5)]
    with open_stream(target, SESSION, headers={"Last-Event-ID": ids[1]}) as stream:
        replayed = stream.take(2)
        assert [f.event_id for f in replayed] == ids[2:]
        live_id = mock.publish(session_id, n=5)
        assert stream.take(1)[0].event_id == live_id


def test_cursor_from_another_server_start_gets_a_snapshot(target: Target) -> None:
    session_id = SESSION.split("/")[3]
    stale = {"Last-Event-ID": f"{session_id}-1000-3"}
    with open_stream(target, SESSION, headers=stale) as stream:
        assert stream.take(1)[0].event == "snapshot"


def test_global_stream_says_connected_then_heartbeats(mock: MockDorkOS, target: Target) -> None:
    with mock.configured(heartbeat_interval=0.05), open_stream(target, "/api/events") as stream:
        frames: list[Frame] = stream.take(2)
    assert [f.event for f in frames] == ["connected", "heartbeat"]


def test_health_has_a_content_length(target: Target) -> None:
    with target.client() as client:
        response = client.get("/api/health")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"
    assert response.headers["content-length"] == str(len(response.content))


def test_messages_accept_json_up_to_one_mebibyte(target: Target) -> None:
    path = "/api/sessions/x/messages"
    with target.client() as client:
        accepted = client.post(path, content=b'"' + b"a" * (1024 * 1024 - 2) + b'"')
        too_large = client.post(path, content=b'"' + b"a" * (1024 * 1024) + b'"')
    assert accepted.status_code == 202
    assert too_large.status_code == 413


@pytest.mark.parametrize(
    ("host", "status"),
    [
        ("dorkos.example.com", 200),
        ("dorkos.example.com:8443", 200),  # the guard compares the name only
        ("localhost:4242", 200),
        ("127.0.0.1", 200),
        ("evil.example.com", 403),
    ],
)
def test_host_guard(mock: MockDorkOS, host: str, status: int) -> None:
    response = httpx.get(f"{mock.base_url}/api/health", headers={"Host": host})
    assert response.status_code == status
    if status == 403:
        assert response.json()["code"] == "HOST_NOT_ALLOWED"


def test_host_guard_covers_streams(mock: MockDorkOS) -> None:
    with httpx.stream("GET", mock.base_url + SESSION, headers={"Host": "evil.example"}) as r:
        assert r.status_code == 403


@pytest.mark.parametrize(
    ("forwarded_proto", "status"), [(None, 500), ("http", 500), ("https", 202)]
)
def test_origin_check_needs_forwarded_proto(
    mock: MockDorkOS, forwarded_proto: str | None, status: int
) -> None:
    headers = {"Host": "dorkos.example.com", "Origin": "https://dorkos.example.com"}
    if forwarded_proto:
        headers["X-Forwarded-Proto"] = forwarded_proto
    response = httpx.post(f"{mock.base_url}/api/sessions/x/messages", json={}, headers=headers)
    assert response.status_code == status


def test_static_index_at_root(target: Target) -> None:
    with target.client() as client:
        response = client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")


def test_records_headers_and_when_an_idle_stream_closed(mock: MockDorkOS, target: Target) -> None:
    with open_stream(target, SESSION, headers={"X-Forwarded-For": "192.0.2.7"}) as stream:
        stream.take(1)
        closed_by_client_at = time.monotonic()
    (record,) = mock.requests_to(SESSION)
    assert record.closed.wait(timeout=10), "the mock never saw the client's close"
    assert record.header("x-forwarded-for") == "192.0.2.7"
    assert record.version == "HTTP/1.1"
    assert record.connection_closed_at is not None
    assert record.connection_closed_at >= closed_by_client_at


def test_first_byte_delay(mock: MockDorkOS, target: Target) -> None:
    with mock.configured(first_byte_delay=0.3), target.client() as client:
        started = time.monotonic()
        client.get("/api/health")
    assert time.monotonic() - started >= 0.3


def test_port_in_use_is_a_clear_error(mock: MockDorkOS) -> None:
    with (
        pytest.raises(RuntimeError, match=rf"could not listen on 127\.0\.0\.1:{mock.port}"),
        MockDorkOS(MockSettings(port=mock.port)),
    ):
        pass
