"""What one test run shares: the engine, images, test CA and mock upstream."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import docker
from docker.models.containers import Container

from harness.containers import docker_client, sweep_leftovers
from harness.images import ProxyImage, selected_images
from harness.mock_dorkos import MockDorkOS, MockSettings
from harness.proxies import RunningProxy, run_proxy, serving
from harness.tls import TestCA


@dataclass
class ProxyLab:
    client: docker.DockerClient
    mock: MockDorkOS
    ca: TestCA
    workdir: Path
    images: tuple[ProxyImage, ...]
    _tags: dict[str, str] = field(default_factory=dict)

    def images_for(self, proxy: str) -> list[ProxyImage]:
        return [image for image in self.images if image.proxy == proxy]

    def tag(self, image: ProxyImage) -> str:
        if image.key not in self._tags:
            self._tags[image.key] = image.ensure(self.client)
        return self._tags[image.key]

    @contextlib.contextmanager
    def run(self, image: ProxyImage, snippet: Path) -> Iterator[RunningProxy]:
        """Serve one published snippet on port 443."""
        with run_proxy(
            self.client, image, self.tag(image), snippet, self.ca, self.workdir
        ) as proxy:
            yield proxy

    @contextlib.contextmanager
    def serving(
        self, image: ProxyImage, configs: list[Path], ports: list[int]
    ) -> Iterator[Container]:
        """Serve several configs (measurement variants) in one container."""
        with serving(
            self.client, image, self.tag(image), configs, self.ca, self.workdir, ports
        ) as container:
            yield container


@contextlib.contextmanager
def proxy_lab(workdir: Path) -> Iterator[ProxyLab]:
    with contextlib.closing(docker_client()) as client:
        removed = sweep_leftovers(client)
        if removed:
            print(f"removed containers left by an earlier run: {', '.join(removed)}")
        ca = TestCA.create(workdir / "ca")
        with MockDorkOS(MockSettings()) as mock:
            yield ProxyLab(client, mock, ca, workdir, selected_images())
