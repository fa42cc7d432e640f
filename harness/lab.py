"""What one test run shares: the engine, images, test CA and mock upstream."""

from __future__ import annotations

import contextlib
import itertools
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import docker
from docker.models.containers import Container

from harness.acme import AcmeDirectory, AcmeStepFailed, pebble
from harness.certbot_flow import CertbotResult, certbot_nginx
from harness.containers import ContainerFailed, docker_client, sweep_leftovers
from harness.images import CERTBOT_NGINX_IMAGE, PEBBLE_IMAGE, ProxyImage, selected_images
from harness.mock_dorkos import MockDorkOS, MockSettings
from harness.netns import PrivateNetwork, private_network
from harness.proxies import (
    Certificates,
    RunningProxy,
    proxy_version,
    relative,
    run_proxy,
    serving,
)
from harness.tested_with import Outcome
from harness.tls import SERVER_NAME, TestCA


@dataclass
class ProxyLab:
    client: docker.DockerClient
    mock: MockDorkOS
    ca: TestCA
    workdir: Path
    images: tuple[ProxyImage, ...]
    # Every property's outcome, for the Tested-with table.
    outcomes: list[Outcome] = field(default_factory=list)
    # Rewrite generated files from this run instead of checking them.
    update_generated: bool = False
    _tags: dict[str, str] = field(default_factory=dict)
    _versions: dict[str, str] = field(default_factory=dict)
    _run_numbers: Iterator[int] = field(default_factory=itertools.count)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def images_for(self, proxy: str) -> list[ProxyImage]:
        return [image for image in self.images if image.proxy == proxy]

    def tag(self, image: ProxyImage) -> str:
        if image.key not in self._tags:
            self._tags[image.key] = image.ensure(self.client)
        return self._tags[image.key]

    def version(self, image: ProxyImage) -> str:
        if image.key not in self._versions:
            self._versions[image.key] = proxy_version(self.client, image, self.tag(image))
        return self._versions[image.key]

    def record(self, snippet: str, image: ProxyImage, prop: str, passed: bool) -> None:
        self.outcomes.append(
            Outcome(
                snippet, image.key, image.proxy, self.version(image), image.source, prop, passed
            )
        )

    def _run_dir(self, role: str) -> Path:
        """A folder of the run's own: runs overlap, and each writes files."""
        with self._lock:
            number = next(self._run_numbers)
        folder = self.workdir / f"run-{number:03d}-{role}"
        folder.mkdir(parents=True)
        return folder

    @contextlib.contextmanager
    def run(
        self, image: ProxyImage, snippet: Path, *, acme: bool = False
    ) -> Iterator[RunningProxy]:
        """Serve one published snippet on port 443 of a private network.

        With `acme`, the proxy gets its certificate from an ACME server of
        its own, started first (Caddy's automatic HTTPS); otherwise from the
        test CA. The mock upstream listens on that network's port 4242.
        """
        workdir = self._run_dir(image.key)
        name = f"the private network of {relative(snippet)} on {image.description}"
        with contextlib.ExitStack() as stack:
            network = stack.enter_context(private_network(name))
            certificates: Certificates = self.ca
            if acme:
                certificates = stack.enter_context(
                    pebble(self.client, self.tag(PEBBLE_IMAGE), workdir / "acme", network)
                )
            try:
                proxy = stack.enter_context(
                    run_proxy(
                        self.client,
                        image,
                        self.tag(image),
                        snippet,
                        certificates,
                        workdir,
                        network,
                    )
                )
            except ContainerFailed as error:
                if not isinstance(certificates, AcmeDirectory):
                    raise
                # Most likely the certificate never came: show the CA's side too.
                raise AcmeStepFailed(
                    f"ACME step `obtain a certificate for {SERVER_NAME}` did not complete:\n"
                    f"{error}\n--- ACME server log (last lines) ---\n{certificates.log_tail()}"
                ) from error
            stack.enter_context(self.mock.listening_in(network))
            yield proxy

    @contextlib.contextmanager
    def certbot(self, snippet: Path, command: list[str]) -> Iterator[CertbotResult]:
        """Serve a starting config and run the page's certbot command on it."""
        image = CERTBOT_NGINX_IMAGE
        workdir = self._run_dir(image.key)
        name = f"the private network of {relative(snippet)} with certbot"
        with (
            private_network(name) as network,
            pebble(self.client, self.tag(PEBBLE_IMAGE), workdir / "acme", network) as acme,
            certbot_nginx(
                self.client, image, self.tag(image), snippet, acme, command, network
            ) as result,
            self.mock.listening_in(network),
        ):
            yield result

    @contextlib.contextmanager
    def serving(
        self, image: ProxyImage, configs: list[Path], ports: list[int], *, private: bool = True
    ) -> Iterator[tuple[Container, PrivateNetwork | None]]:
        """Serve configs for measurements (variants, benchmark) in one container.

        In a private network with the mock listening there, unless `private`
        is False: the benchmark runs its own mock on the machine's loopback.
        """
        workdir = self._run_dir(image.key)
        with contextlib.ExitStack() as stack:
            network = None
            if private:
                network = stack.enter_context(
                    private_network(f"the private network of measurements on {image.key}")
                )
            container = stack.enter_context(
                serving(
                    self.client, image, self.tag(image), configs, self.ca, workdir, ports, network
                )
            )
            if network is not None:
                stack.enter_context(self.mock.listening_in(network))
            yield container, network


@contextlib.contextmanager
def proxy_lab(workdir: Path, *, update_generated: bool = False) -> Iterator[ProxyLab]:
    with contextlib.closing(docker_client()) as client:
        removed = sweep_leftovers(client)
        if removed:
            print(f"removed containers left by an earlier run: {', '.join(removed)}")
        ca = TestCA.create(workdir / "ca")
        # The mock listens only inside each run's private network.
        with MockDorkOS(MockSettings(), listen=False) as mock:
            yield ProxyLab(
                client, mock, ca, workdir, selected_images(), update_generated=update_generated
            )
