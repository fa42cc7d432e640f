"""What the mock's own tests share: a mock on a free port, and a client's view of it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from harness.clients.sse_client import Target
from harness.upstream.mock_dorkos import MockDorkOS, MockSettings


@pytest.fixture
def mock() -> Iterator[MockDorkOS]:
    with MockDorkOS(MockSettings(port=0, heartbeat_interval=None, snapshot_bytes=2048)) as server:
        yield server


@pytest.fixture
def target(mock: MockDorkOS) -> Target:
    return Target(mock.base_url, "dorkos.example.com")
