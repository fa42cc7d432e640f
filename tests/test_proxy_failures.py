"""Bad input fails loudly, names the file and line, and leaves no container."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.containers import LABEL, EngineUnreachable, docker_client
from harness.lab import ProxyLab, proxy_lab
from harness.proxies import ConfigRejected

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyLab]:
    with proxy_lab(tmp_path_factory.mktemp("failures")) as shared:
        yield shared


def leftover_containers(lab: ProxyLab) -> list[str]:
    return [str(c.name) for c in lab.client.containers.list(all=True, filters={"label": LABEL})]


@pytest.mark.parametrize(
    ("proxy", "text", "complaint"),
    [
        (
            "nginx",
            "server {\n    listen 443 ssl;\n    proxy_bufering off;\n}\n",
            r'unknown directive "proxy_bufering" in {path}:3',
        ),
        (
            "caddy",
            "dorkos.example.com {\n\treverse_proxy localhost:4242 {\n"
            "\t\tflush_intervall -1\n\t}\n}\n",
            r"{path}:3",
        ),
    ],
)
def test_rejected_config_names_file_and_line(
    lab: ProxyLab, tmp_path: Path, proxy: str, text: str, complaint: str
) -> None:
    snippet = tmp_path / ("broken.conf" if proxy == "nginx" else "Caddyfile")
    snippet.write_text(text)
    image = lab.images_for(proxy)[0]
    with pytest.raises(ConfigRejected) as rejected, lab.run(image, snippet):
        pass
    message = str(rejected.value)
    assert message.startswith(f"{snippet}: {image.description} rejects this config")
    assert complaint.format(path=snippet) in message
    assert leftover_containers(lab) == []


def test_container_is_removed_when_a_test_fails_inside(lab: ProxyLab) -> None:
    image = lab.images_for("nginx")[0]
    snippet = Path(__file__).parent.parent / "snippets/nginx/dorkos.conf"
    with pytest.raises(RuntimeError, match="a failing test"), lab.run(image, snippet) as proxy:
        assert proxy.container.name in leftover_containers(lab)
        raise RuntimeError("a failing test")
    assert leftover_containers(lab) == []


def test_unreachable_engine_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    with pytest.raises(
        EngineUnreachable,
        match=r"no Docker engine is reachable at "
        r"unix:///nonexistent/docker\.sock",
    ):
        docker_client()
