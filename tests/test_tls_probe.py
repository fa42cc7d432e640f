"""The TLS version probe can see an old protocol when a server offers one.

Without this, "TLS 1.0 refused" could mean only that the client never tried.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import warnings
from collections.abc import Iterator

import pytest
import trustme

from harness.checks.contract import tls_handshake_at
from harness.clients.sse_client import Target


@pytest.fixture(params=["old-protocols-allowed", "modern-only"])
def server(request: pytest.FixtureRequest) -> Iterator[tuple[str, Target]]:
    ca = trustme.CA()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("dorkos.example.com").configure_cert(context)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        if request.param == "old-protocols-allowed":
            context.minimum_version = ssl.TLSVersion.TLSv1
            context.set_ciphers("ALL:@SECLEVEL=0")
        else:
            context.minimum_version = ssl.TLSVersion.TLSv1_2
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.05)  # so the loop notices `done` promptly
    port = listener.getsockname()[1]
    done = threading.Event()

    def serve() -> None:
        while not done.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            with connection, contextlib.suppress(OSError):
                context.wrap_socket(connection, server_side=True).close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield request.param, Target(f"https://127.0.0.1:{port}", "dorkos.example.com")
    done.set()
    thread.join(timeout=5)
    listener.close()


def test_probe_reports_what_the_server_offers(server: tuple[str, Target]) -> None:
    kind, target = server
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        old = [
            tls_handshake_at(target, v, ["http/1.1"])
            for v in (ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1)
        ]
    modern = [
        tls_handshake_at(target, v, ["http/1.1"])
        for v in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3)
    ]
    assert all(m is not None for m in modern)
    if kind == "old-protocols-allowed":
        assert all(o is not None for o in old)
    else:
        assert old == [None, None]
