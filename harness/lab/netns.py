"""A private loopback for each run, so runs can overlap.

Every published config listens on 127.0.0.1's ports 80 and 443 and proxies
to 127.0.0.1:4242. Two such configs can't share one loopback, and a suite
that ran them one after another would wait out each one's minute of silence
in turn. Instead each run gets a network namespace of its own:

- the first container of a run owns it (Docker's network mode "none": a
  loopback and nothing else); the run's other containers join that one;
- the test process puts its own sockets there with setns(2), one thread at a
  time: the mock upstream listens on that namespace's 127.0.0.1:4242, and the
  checks connect from inside it, so the proxy sees exactly the addresses and
  ports the page tells a reader to use.

Nothing in a private namespace can reach the machine's network, and nothing
on the machine (a real DorkOS on 4242, a proxy on 443) gets in the way.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from docker.models.containers import Container

from harness.lab.tls import SERVER_NAME

_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
T = TypeVar("T")


def _setns(fd: int) -> None:
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(
            errno,
            f"setns(CLONE_NEWNET) failed: {os.strerror(errno)} (entering another "
            f"container's network namespace needs root, as Docker itself does)",
        )


class PrivateNetwork:
    """One run's network namespace: who owns it, and how to enter it."""

    def __init__(self, name: str, hosts: dict[str, str] | None = None) -> None:
        self.name = name  # what error messages call it
        # Names the run's containers resolve besides the reader's domain: a
        # Compose service's name, as Compose's DNS would answer it.
        self.hosts = hosts or {}
        self.owner: Container | None = None
        self._fd: int | None = None

    def docker_options(self) -> dict[str, Any]:
        """How the next container of this run is networked."""
        if self.owner is None:
            # The reader's domain resolves to the proxy, as DNS would make it;
            # containers that join share this hosts file.
            options: dict[str, Any] = {
                "network_mode": "none",
                "extra_hosts": {SERVER_NAME: "127.0.0.1", **self.hosts},
            }
            if Path("/proc/sys/net/ipv6").is_dir():
                # Docker turns IPv6 off in such a namespace; a server's
                # loopback has ::1, which `localhost` in a config also names.
                options["sysctls"] = {"net.ipv6.conf.lo.disable_ipv6": "0"}
            return options
        return {"network_mode": f"container:{self.owner.id}"}

    def joined_by(self, container: Container) -> None:
        """Record a started container; the first one becomes the owner."""
        if self.owner is not None:
            return
        container.reload()
        pid = container.attrs["State"]["Pid"]  # 0 once it has exited
        if not pid:
            raise RuntimeError(f"{self.name}: container {container.name} has no process")
        self._fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
        self.owner = container

    @contextlib.contextmanager
    def entered(self) -> Iterator[None]:
        """Sockets this thread creates inside the block live in the namespace."""
        if self._fd is None:
            raise RuntimeError(f"{self.name}: no container has started yet")
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        try:
            _setns(self._fd)
            try:
                yield
            finally:
                _setns(home)
        finally:
            os.close(home)

    def call(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        with self.entered():
            return function(*args, **kwargs)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


@contextlib.contextmanager
def private_network(name: str, hosts: dict[str, str] | None = None) -> Iterator[PrivateNetwork]:
    network = PrivateNetwork(name, hosts)
    try:
        yield network
    finally:
        network.close()
