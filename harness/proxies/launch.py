"""Run a published snippet, byte for byte, in the proxy it is written for.

What a test needs beyond the snippet goes around it, never into it: each
proxy's kind says how (certificate files at the paths the snippet names,
a wrapper config that imports it unchanged).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import docker
from docker.models.containers import Container

from harness.clients.sse_client import Target, tls_handshake
from harness.lab.containers import log_tail, run_to_completion, running_container
from harness.lab.netns import PrivateNetwork
from harness.lab.tls import SERVER_NAME, TestCA
from harness.proxies.images import ProxyImage
from harness.proxies.kind import Certificates, ConfigRejected, ProxyKind, relative
from harness.proxies.registry import kind

if TYPE_CHECKING:
    from harness.upstream.mock_dorkos import Listening

HTTPS_PORT = 443


def proxy_version(client: docker.DockerClient, image: ProxyImage, tag: str) -> str:
    """The exact version the image's proxy prints."""
    proxy = kind(image.proxy)
    code, output = run_to_completion(
        client, tag, list(proxy.version_command), [], role=f"{image.key}-version"
    )
    found = re.search(proxy.version_pattern, output, re.MULTILINE)
    if code != 0 or found is None:
        raise RuntimeError(f"could not read the version of {tag}: exit {code}, {output!r}")
    return found.group(1)


def https_target(ca: Certificates, port: int = HTTPS_PORT) -> Target:
    """Where clients connect, trusting only the root that `ca` issues under."""
    root = ca.root_cert if isinstance(ca, TestCA) else ca.issuing_root
    return Target(f"https://127.0.0.1:{port}", SERVER_NAME, str(root))


@dataclass
class RunningProxy:
    image: ProxyImage
    snippet: str  # path relative to the repository
    container: Container
    target: Target
    network: PrivateNetwork
    # Where the run's DorkOS listens, to stop and start it (None: the caller's own).
    dorkos: Listening | None = None

    @property
    def reload_command(self) -> list[str]:
        """What a reader runs to reload the config (certbot's renewal hook does too)."""
        return list(self.kind.reload_command)

    @property
    def proxy(self) -> str:
        return self.image.proxy

    @property
    def kind(self) -> ProxyKind:
        return kind(self.image.proxy)

    @property
    def label(self) -> str:
        return f"{self.snippet} on {self.image.description}"

    def log_tail(self, lines: int = 30) -> str:
        return log_tail(self.container, lines)

    def stopped_log(self) -> str:
        """The proxy's whole log once it has stopped, so none of it is still on its way."""
        self.container.stop(timeout=10)
        self.container.wait(timeout=60)
        return bytes(self.container.logs()).decode(errors="replace")


@contextlib.contextmanager
def serving(
    client: docker.DockerClient,
    image: ProxyImage,
    tag: str,
    configs: list[Path],
    ca: Certificates,
    workdir: Path,
    ports: list[int],
    network: PrivateNetwork | None,
    main_config: Path | None = None,
    check: bool = True,
) -> Iterator[Container]:
    """Check config files with the proxy's own validator, then serve them.

    Without `check`, they are served at once: for a changed copy of a
    published config that its check has already passed (a measured
    variant), where a rejection still fails the start, with the proxy's
    log, and the check's container would only add to the machine's load.

    Yields once every port in `ports` completes a verified TLS handshake
    (inside `network`; None is the machine's own network).
    """
    launch = kind(image.proxy).launch(configs, ca, workdir, main_config)
    if check and launch.check_command is not None:
        code, output = run_to_completion(
            client, tag, launch.check_command, launch.mounts, role=f"{image.key}-check"
        )
        if code != 0:
            raise ConfigRejected(
                f"{', '.join(relative(c) for c in configs)}: {image.description} rejects "
                f"this config ({' '.join(launch.check_command)} exited {code}):\n"
                + launch.explain(output)
            )

    def handshakes_succeed() -> None:
        for port in ports:
            tls_handshake(https_target(ca, port)).close()

    with running_container(
        client,
        tag,
        launch.run_command,
        launch.mounts,
        role=image.key,
        network=network,
        **image.container_options(),
        environment=launch.environment,
        ready=handshakes_succeed,
        waiting_for=f"a TLS handshake for {SERVER_NAME} on 127.0.0.1 port(s) "
        f"{', '.join(map(str, ports))} that verifies against "
        + ("the test CA" if isinstance(ca, TestCA) else "the ACME server's issuing root"),
    ) as container:
        yield container


@contextlib.contextmanager
def run_proxy(
    client: docker.DockerClient,
    image: ProxyImage,
    tag: str,
    snippet: Path,
    ca: Certificates,
    workdir: Path,
    network: PrivateNetwork,
    main_config: Path | None = None,
    label: str | None = None,
    port: int = HTTPS_PORT,
    check: bool = True,
) -> Iterator[RunningProxy]:
    """Serve one snippet, byte for byte, on `port` (443) of `network`."""
    with serving(
        client, image, tag, [snippet], ca, workdir, [port], network, main_config, check
    ) as container:
        target = https_target(ca, port)
        yield RunningProxy(image, label or relative(snippet), container, target, network)
