"""What one test run shares: the engine, images, test CA and mock upstream."""

from __future__ import annotations

import contextlib
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
from harness.proxies import RunningProxy, proxy_version, run_proxy, serving
from harness.tested_with import Outcome
from harness.tls import SERVER_NAME, TestCA


@dataclass
class ProxyLab:
    client: docker.DockerClient
    mock: MockDorkOS
    ca: TestCA
    workdir: Path
    images: tuple[ProxyImage, ...]
    # Services started on first use and stopped with the lab.
    services: contextlib.ExitStack
    # Every property's outcome, for the Tested-with table.
    outcomes: list[Outcome] = field(default_factory=list)
    # Rewrite generated files from this run instead of checking them.
    update_generated: bool = False
    _tags: dict[str, str] = field(default_factory=dict)
    _versions: dict[str, str] = field(default_factory=dict)
    _acme: AcmeDirectory | None = None

    def acme(self) -> AcmeDirectory:
        """The ACME server on loopback, started on first use."""
        if self._acme is None:
            self._acme = self.services.enter_context(
                pebble(self.client, self.tag(PEBBLE_IMAGE), self.workdir / "acme")
            )
        return self._acme

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

    @contextlib.contextmanager
    def run(
        self, image: ProxyImage, snippet: Path, *, acme: bool = False
    ) -> Iterator[RunningProxy]:
        """Serve one published snippet on port 443.

        With `acme`, the proxy gets its certificate from the ACME server
        itself (Caddy's automatic HTTPS); otherwise from the test CA.
        """
        certificates = self.acme() if acme else self.ca
        try:
            with run_proxy(
                self.client, image, self.tag(image), snippet, certificates, self.workdir
            ) as proxy:
                yield proxy
        except ContainerFailed as error:
            if not acme:
                raise
            # Most likely the certificate never came: show the CA's side too.
            raise AcmeStepFailed(
                f"ACME step `obtain a certificate for {SERVER_NAME}` did not complete:\n{error}\n"
                f"--- ACME server log (last lines) ---\n{self.acme().log_tail()}"
            ) from error

    @contextlib.contextmanager
    def certbot(self, snippet: Path, command: list[str]) -> Iterator[CertbotResult]:
        """Serve a starting config and run the page's certbot command on it."""
        image = CERTBOT_NGINX_IMAGE
        with certbot_nginx(
            self.client, image, self.tag(image), snippet, self.acme(), command
        ) as result:
            yield result

    @contextlib.contextmanager
    def serving(
        self, image: ProxyImage, configs: list[Path], ports: list[int]
    ) -> Iterator[Container]:
        """Serve configs for measurements (variants, benchmark) in one container."""
        with serving(
            self.client, image, self.tag(image), configs, self.ca, self.workdir, ports
        ) as container:
            yield container


@contextlib.contextmanager
def proxy_lab(workdir: Path, *, update_generated: bool = False) -> Iterator[ProxyLab]:
    with contextlib.closing(docker_client()) as client:
        removed = sweep_leftovers(client)
        if removed:
            print(f"removed containers left by an earlier run: {', '.join(removed)}")
        ca = TestCA.create(workdir / "ca")
        with MockDorkOS(MockSettings()) as mock, contextlib.ExitStack() as services:
            yield ProxyLab(
                client,
                mock,
                ca,
                workdir,
                selected_images(),
                services,
                update_generated=update_generated,
            )
