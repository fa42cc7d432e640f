"""What every check is run against: a proxy serving one config."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from harness.clients.sse_client import Target
from harness.upstream.mock_dorkos import MockDorkOS

if TYPE_CHECKING:  # the lab's; the checks themselves need no Docker
    from harness.lab.netns import PrivateNetwork


class Endpoint(Protocol):
    """A proxy serving one config, as the checks see it."""

    @property
    def proxy(self) -> str: ...  # its kind's name (harness.proxies.registry)

    @property
    def label(self) -> str: ...  # what a failure message calls it

    @property
    def target(self) -> Target: ...

    @property
    def network(self) -> PrivateNetwork | None: ...  # None: the machine's own

    def log_tail(self, lines: int = 30) -> str: ...


Check = Callable[[Endpoint, MockDorkOS], str]


def run_check(check: Check, endpoint: Endpoint, mock: MockDorkOS) -> str:
    """Run one check from inside the endpoint's network, where its 127.0.0.1 is.

    After Ctrl-C the proxies are gone: a check would only wait out its
    timeouts, and the run's clean-up would wait for every one in turn.
    """
    # Only the lab's containers can be interrupted; outside it (the reader's
    # dorkos-proxy-check) that module, and Docker's, is never loaded.
    containers = sys.modules.get("harness.lab.containers")
    if containers is not None and containers.interrupted():
        raise containers.Interrupted(f"{endpoint.label}: not checked, the run was interrupted")
    network = endpoint.network
    return check(endpoint, mock) if network is None else network.call(check, endpoint, mock)


class ContractViolation(AssertionError):
    pass


def violation(endpoint: Endpoint, message: str) -> ContractViolation:
    return ContractViolation(
        f"{endpoint.label}: {message}\n--- proxy log (last lines) ---\n{endpoint.log_tail()}"
    )
