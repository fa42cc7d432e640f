"""Running proxy containers: labelled, waited on for real, always removed."""

from __future__ import annotations

import contextlib
import functools
import os
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors
from docker.models.containers import Container

from harness.lab.netns import PrivateNetwork
from harness.tables import margins

# Every container this project starts carries this label, so the leftovers of
# a crashed run can be found and removed before the next run starts.
LABEL = "dorkos-docs.harness"
RUN_ID = uuid.uuid4().hex[:12]
# The process that started a container: while it lives, nobody sweeps it.
PID_LABEL = f"{LABEL}.pid"


# How long a container may take to become ready. With every run starting at
# once on two cores, the slowest took about 20 s (a Caddy getting its
# certificate from the ACME server); a container that is not ready in ten
# times that is not going to be.
READY_WITHIN_S = 200.0


class EngineUnreachable(RuntimeError):
    pass


class ContainerFailed(RuntimeError):
    """A container exited, or never became ready; the message has its log."""


def docker_client() -> docker.DockerClient:
    where = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    hint = (
        "  'make test' starts one by itself as root on Debian "
        "(scripts/prepare-host); elsewhere start Docker, or point DOCKER_HOST at it."
    )
    if where.startswith("unix://"):
        # docker-py leaks its socket when a unix socket refuses the
        # connection, so look before handing the address over.
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(where.removeprefix("unix://"))
            except OSError as error:
                raise EngineUnreachable(
                    f"no Docker engine is reachable at {where}: {error}\n{hint}"
                ) from error
    client = None
    try:
        # Runs overlap: many threads talk to the engine at once.
        client = docker.from_env(version="auto", timeout=120, max_pool_size=32)
        # The engine's socket is never behind a proxy, and looking for one
        # iterates os.environ on every call: from a background run's thread
        # that races with pytest, which sets PYTEST_CURRENT_TEST from the main
        # thread (a KeyError in os.environ's iteration, seen once).
        client.api.trust_env = False
        client.ping()
    except docker.errors.DockerException as error:
        if client is not None:
            client.close()
        raise EngineUnreachable(
            f"no Docker engine is reachable at {where}: {error}\n{hint}"
        ) from error
    return client


def sweep_leftovers(client: docker.DockerClient) -> list[str]:
    """Remove containers that an earlier, crashed run left behind.

    Another run still going on this machine keeps its containers: runs have
    networks of their own, so two can share an engine.
    """
    removed = []
    # The low-level list: it carries each container's labels, where the
    # high-level one inspects each container afterwards and fails on one
    # that another run removed in between.
    for listed in client.api.containers(all=True, filters={"label": LABEL}):
        labels = listed.get("Labels") or {}
        if labels.get(LABEL) == RUN_ID or process_alive(labels.get(PID_LABEL)):
            continue
        with contextlib.suppress(docker.errors.NotFound):
            client.api.remove_container(listed["Id"], force=True)
            removed.append(str(listed["Names"][0]).lstrip("/"))
    return removed


# Set on Ctrl-C: no container starts after it, and none waits on for
# readiness. A run that created its container just after the removal below
# listed this process's containers would otherwise wait out its deadline.
_INTERRUPTED = threading.Event()


class Interrupted(ContainerFailed):
    """The run was interrupted: nothing more is started or checked."""


def interrupted() -> bool:
    return _INTERRUPTED.is_set()


def remove_this_runs_containers(client: docker.DockerClient) -> list[str]:
    """Remove every container this process started, at once (an interrupted run).

    From now on no container of this process starts, or waits to be ready.
    """
    _INTERRUPTED.set()
    removed = []
    for listed in client.api.containers(all=True, filters={"label": f"{LABEL}={RUN_ID}"}):
        with contextlib.suppress(docker.errors.APIError):
            client.api.remove_container(listed["Id"], force=True)
            removed.append(str(listed["Names"][0]).lstrip("/"))
    return removed


def process_alive(pid: str | None) -> bool:
    if pid is None or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process, and alive
    return True


def log_tail(container: Container, lines: int = 40) -> str:
    try:
        text = container.logs(tail=lines).decode(errors="replace").rstrip()
    except docker.errors.NotFound:
        return "(container is gone; no log)"
    return text or "(the container wrote no log)"


@dataclass(frozen=True)
class Mount:
    source: str  # absolute path on the host
    target: str  # path in the container

    def as_volume(self) -> tuple[str, dict[str, str]]:
        return self.source, {"bind": self.target, "mode": "ro"}


def _run_kwargs(
    image: str, command: list[str], mounts: list[Mount], role: str, **extra: Any
) -> dict[str, Any]:
    return {
        **extra,
        "image": image,
        "command": command,
        "volumes": dict(m.as_volume() for m in mounts),
        "labels": {LABEL: RUN_ID, PID_LABEL: str(os.getpid()), f"{LABEL}.role": role},
        "name": f"dorkos-docs-{role}-{uuid.uuid4().hex[:8]}",
    }


# Debian 12's Docker engine (20.10.24) can deadlock when one container's
# network endpoint is created while another's is deleted (moby/moby#46661,
# fixed in 20.10.27): every call to it then hangs. Here, the containers that
# get an endpoint (a run's first container, on the "none" network, or one on
# the host's) are started and removed one at a time; the others have none.
_ENDPOINT_CHANGES = threading.Lock()


# The hosts file Docker writes for a container on its "none" network.
LOOPBACK_HOSTS = """127.0.0.1\tlocalhost
::1\tlocalhost ip6-localhost ip6-loopback
fe00::0\tip6-localnet
ff00::0\tip6-mcastprefix
ff02::1\tip6-allnodes
ff02::2\tip6-allrouters
"""


@functools.cache
def _loopback_hosts() -> Mount:
    folder = Path(tempfile.mkdtemp(prefix="dorkos-docs-hosts-"))
    (folder / "hosts").write_text(LOOPBACK_HOSTS)
    return Mount(str(folder / "hosts"), "/etc/hosts")


def _has_endpoint(options: dict[str, Any]) -> bool:
    return options.get("network_mode") in ("none", "host")


def run_to_completion(
    client: docker.DockerClient,
    image: str,
    command: list[str],
    mounts: list[Mount],
    role: str,
    timeout: float = 60.0,
) -> tuple[int, str]:
    """Run a one-off command (e.g. a config check); its exit code and output."""
    # No network: a config check or a version query needs none, not even
    # an endpoint on Docker's "none" network (see _ENDPOINT_CHANGES). Docker
    # then writes no hosts file, and a config naming `localhost` needs one.
    container = client.containers.create(
        **_run_kwargs(image, command, [*mounts, _loopback_hosts()], role, network_disabled=True)
    )
    try:
        container.start()
        result = container.wait(timeout=timeout)
        return int(result["StatusCode"]), container.logs().decode(errors="replace")
    finally:
        with contextlib.suppress(docker.errors.NotFound):
            container.remove(force=True)


@contextlib.contextmanager
def running_container(
    client: docker.DockerClient,
    image: str,
    command: list[str],
    mounts: list[Mount],
    *,
    role: str,
    network: PrivateNetwork | None,
    ready: Callable[[], None],
    waiting_for: str,
    deadline: float = READY_WITHIN_S,
    **extra: Any,
) -> Iterator[Container]:
    """Start a container and yield it once `ready()` stops raising.

    The container runs in `network` (the run's private loopback), or on the
    machine's own network when that is None (the benchmark's choice).
    `ready` is the real readiness signal (a handshake, a response), polled
    inside that network until the deadline. The container is removed on the
    way out, whether the test passed, failed, or was interrupted. `extra`
    goes to Docker as it is (environment, ...).
    """
    networking = network.docker_options() if network else {"network_mode": "host"}
    container: Container | None = None
    try:
        if _INTERRUPTED.is_set():
            raise Interrupted(f"{role} container: not started, the run was interrupted")
        container = client.containers.create(
            **_run_kwargs(image, command, mounts, role, **networking, **extra)
        )
        _start_and_wait(
            container, role, network, ready, waiting_for, deadline, _has_endpoint(networking)
        )
        yield container
    finally:
        if container is not None:
            with (
                _ENDPOINT_CHANGES if _has_endpoint(networking) else contextlib.nullcontext(),
                contextlib.suppress(docker.errors.NotFound),
            ):
                container.remove(force=True)


def _start_and_wait(
    container: Container,
    role: str,
    network: PrivateNetwork | None,
    ready: Callable[[], None],
    waiting_for: str,
    deadline: float,
    has_endpoint: bool,
) -> None:
    with _ENDPOINT_CHANGES if has_endpoint else contextlib.nullcontext():
        container.start()
    if network is not None:
        try:
            network.joined_by(container)
        except (OSError, RuntimeError) as error:
            container.reload()
            # One that exited at once is reported with its log, below.
            if container.status == "running":
                raise ContainerFailed(
                    f"{role} container: could not open its network namespace ({error}). "
                    f"The tests enter it from this process, so they need root and a "
                    f"Docker engine on this machine (not a remote or rootless one)."
                ) from error
        ready = functools.partial(network.call, ready)
    started = time.monotonic()
    give_up = started + deadline
    last_error: Exception | None = None
    while True:
        if _INTERRUPTED.is_set():
            raise Interrupted(f"{role} container: the run was interrupted while it started")
        container.reload()
        if container.status in ("exited", "dead"):
            code = container.attrs["State"]["ExitCode"]
            raise ContainerFailed(
                f"{role} container exited with code {code} while waiting for {waiting_for}.\n"
                f"Its log:\n{log_tail(container)}"
            )
        try:
            ready()
            margins.observe("container ready", time.monotonic() - started, deadline, role)
            return
        except Exception as error:  # not ready yet; remember why
            last_error = error
        if time.monotonic() > give_up:
            raise ContainerFailed(
                f"{role} container was not ready after {deadline:.0f} s: waited for "
                f"{waiting_for}; last attempt: {last_error!r}.\nIts log:\n{log_tail(container)}"
            )
        time.sleep(0.05)  # poll interval of the readiness signal above
