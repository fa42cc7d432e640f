"""Bad input fails loudly, names the file and line, and leaves no container."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from harness.containers import (
    LABEL,
    PID_LABEL,
    RUN_ID,
    EngineUnreachable,
    docker_client,
    sweep_leftovers,
)
from harness.lab import ProxyLab, proxy_lab
from harness.proxies import ConfigRejected

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyLab]:
    with proxy_lab(tmp_path_factory.mktemp("failures")) as shared:
        yield shared


def leftover_containers(lab: ProxyLab) -> list[str]:
    """This run's containers: another suite may share the engine meanwhile.

    The low-level list carries names and labels; the high-level one inspects
    each container afterwards, and fails on one another run just removed.
    """
    listed = lab.client.api.containers(all=True, filters={"label": f"{LABEL}={RUN_ID}"})
    return [str(c["Names"][0]).lstrip("/") for c in listed]


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
    before = leftover_containers(lab)  # other runs may share the engine
    with pytest.raises(ConfigRejected) as rejected, lab.run(image, snippet):
        pass
    message = str(rejected.value)
    assert message.startswith(f"{snippet}: {image.description} rejects this config")
    assert complaint.format(path=snippet) in message
    assert set(leftover_containers(lab)) <= set(before)


def test_container_is_removed_when_a_test_fails_inside(lab: ProxyLab) -> None:
    image = lab.images_for("nginx")[0]
    snippet = Path(__file__).parent.parent / "snippets/nginx/dorkos.conf"
    before = leftover_containers(lab)
    with pytest.raises(RuntimeError, match="a failing test"), lab.run(image, snippet) as proxy:
        assert proxy.container.name in leftover_containers(lab)
        raise RuntimeError("a failing test")
    assert set(leftover_containers(lab)) <= set(before)


@dataclass
class FakeEngine:
    """The engine's container list, as the low-level API gives it."""

    listed: list[dict[str, Any]]
    removed: list[str] = field(default_factory=list)

    def containers(self, **_: Any) -> list[dict[str, Any]]:
        return self.listed

    def remove_container(self, container_id: str, force: bool) -> None:
        self.removed.append(container_id)


def test_sweep_removes_only_what_dead_runs_left() -> None:
    dead_pid = str(2**22 + 1)  # above Linux's largest pid, so never alive
    engine = FakeEngine(
        [
            {"Id": "1", "Names": ["/crashed"], "Labels": {LABEL: "old", PID_LABEL: dead_pid}},
            {"Id": "2", "Names": ["/unlabelled-pid"], "Labels": {LABEL: "older"}},
            {"Id": "3", "Names": ["/other-live-run"], "Labels": {LABEL: "other", PID_LABEL: "1"}},
            {"Id": "4", "Names": ["/this-run"], "Labels": {LABEL: RUN_ID, PID_LABEL: dead_pid}},
        ]
    )
    client = SimpleNamespace(api=engine)
    assert sweep_leftovers(client) == ["crashed", "unlabelled-pid"]  # type: ignore[arg-type]
    assert engine.removed == ["1", "2"]


def test_unreachable_engine_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    with pytest.raises(
        EngineUnreachable,
        match=r"no Docker engine is reachable at "
        r"unix:///nonexistent/docker\.sock",
    ):
        docker_client()
