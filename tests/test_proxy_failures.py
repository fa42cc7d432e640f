"""Bad input fails loudly, names the file and line, and leaves no container."""

from __future__ import annotations

import http.server
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import docker.errors
import pytest

from harness.lab.containers import (
    LABEL,
    PID_LABEL,
    RUN_ID,
    EngineUnreachable,
    docker_client,
    sweep_leftovers,
)
from harness.lab.proxy_lab import DORKOS_LISTENS_ON, ProxyLab, proxy_lab
from harness.proxies.images import DebianImage, ImageUnavailable, build_dir
from harness.proxies.kind import ConfigRejected

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyLab]:
    with proxy_lab(tmp_path_factory.mktemp("failures")) as shared:
        yield shared


@pytest.fixture
def created_by_lab(lab: ProxyLab, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The ids of the containers this module's lab creates during the test.

    Not this run's label: the shared lab's runs, started in the background
    when it opened, create and remove containers with that label meanwhile.
    This lab has an engine connection of its own, so what goes through it is
    this test's.
    """
    created: list[str] = []
    create = lab.client.api.create_container

    def recording(*args: Any, **kwargs: Any) -> dict[str, Any]:
        response: dict[str, Any] = create(*args, **kwargs)
        created.append(response["Id"])
        return response

    monkeypatch.setattr(lab.client.api, "create_container", recording)
    return created


def still_there(lab: ProxyLab, created: list[str]) -> list[str]:
    """Which of `created` the engine still has, by name."""
    assert created, "the test created no container, so it shows nothing about removing one"
    listed = lab.client.api.containers(all=True, filters={"label": f"{LABEL}={RUN_ID}"})
    return [str(c["Names"][0]).lstrip("/") for c in listed if c["Id"] in created]


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
    lab: ProxyLab,
    created_by_lab: list[str],
    tmp_path: Path,
    proxy: str,
    text: str,
    complaint: str,
) -> None:
    snippet = tmp_path / ("broken.conf" if proxy == "nginx" else "Caddyfile")
    snippet.write_text(text)
    image = lab.images_for(proxy)[0]
    with pytest.raises(ConfigRejected) as rejected, lab.run(image, snippet):
        pass
    message = str(rejected.value)
    assert message.startswith(f"{snippet}: {image.description} rejects this config")
    assert complaint.format(path=snippet) in message
    assert still_there(lab, created_by_lab) == []


@pytest.mark.proxies("nginx")
def test_container_is_removed_when_a_test_fails_inside(
    lab: ProxyLab, created_by_lab: list[str]
) -> None:
    image = lab.images_for("nginx")[0]
    snippet = Path(__file__).parent.parent / "snippets/nginx/dorkos.conf"
    with pytest.raises(RuntimeError, match="a failing test"), lab.run(image, snippet) as proxy:
        assert proxy.container.name in still_there(lab, created_by_lab)
        raise RuntimeError("a failing test")
    assert still_there(lab, created_by_lab) == []


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


@pytest.mark.proxies("nginx")
def test_port_already_taken_in_a_runs_network_is_named(lab: ProxyLab) -> None:
    image = lab.images_for("nginx")[0]
    snippet = Path(__file__).parent.parent / "snippets/nginx/dorkos.conf"
    # The run's DorkOS already holds [::1]:4242 there.
    with (
        lab.run(image, snippet) as proxy,
        pytest.raises(RuntimeError) as taken,
        lab.mock.listening_in(proxy.network, DORKOS_LISTENS_ON),
    ):
        pass
    message = str(taken.value)
    assert "could not listen on [::1]:4242 in the private network of" in message
    assert "Address already in use" in message


class _EmptyMirror(http.server.BaseHTTPRequestHandler):
    """A Debian mirror on loopback that has nothing: every file is a 404."""

    asked: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        self.asked.append(self.path)
        self.send_error(404)

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_an_image_build_that_fails_leaves_nothing_half_built(lab: ProxyLab) -> None:
    # The build fails where a real one would (mmdebstrap, once apt finds no
    # Release file), against a mirror of the test's own on loopback.
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), _EmptyMirror) as mirror:
        threading.Thread(target=mirror.serve_forever, daemon=True).start()
        try:
            url = f"http://127.0.0.1:{mirror.server_address[1]}/debian"
            broken = DebianImage(
                "broken-build",
                "nginx",
                "an image from a mirror that has nothing",
                suite="bookworm",
                packages=("nginx",),
                mirror=url,
            )
            for attempt in (1, 2):  # the second run tries afresh: no failure is remembered
                _EmptyMirror.asked.clear()
                with pytest.raises(ImageUnavailable, match="does not have a Release file"):
                    broken.ensure(lab.client)
                assert "/debian/dists/bookworm/Release" in _EmptyMirror.asked, (
                    f"attempt {attempt} asked the mirror for {_EmptyMirror.asked}"
                )
                with pytest.raises(docker.errors.ImageNotFound):
                    lab.client.images.get(broken.tag())
                leftovers = [
                    *build_dir().glob("broken-build-*"),
                    *build_dir().glob("debian-bases-*/bookworm-*"),
                ]
                assert leftovers == [], f"attempt {attempt} left {leftovers}"
        finally:
            mirror.shutdown()


# A run started from a terminal finds SIGINT at its default; one started in
# the background (nohup, some CI runners) inherits it ignored, and Python
# then never raises KeyboardInterrupt. The run under test starts as from a
# terminal, with the same process id, so its containers' label still names it.
AS_FROM_A_TERMINAL = (
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
    "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])"
)


# It interrupts a run of the Caddyfile's example.
@pytest.mark.proxies("caddy")
@pytest.mark.slow
def test_ctrl_c_leaves_no_container_behind(tmp_path: Path) -> None:
    """Ctrl-C in the middle of a run: its proxies go at once, and nothing is left."""
    run = subprocess.Popen(
        [
            sys.executable,
            "-c",
            AS_FROM_A_TERMINAL,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-q",
            "docs/reverse-proxy.md",
            "-k",
            "Caddyfile",
            "--basetemp",
            str(tmp_path / "run"),
        ],
        cwd=Path(__file__).parent.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # A process group of its own, as a terminal's foreground job has:
        # Ctrl-C reaches the whole group, Chromium and its driver included.
        start_new_session=True,
    )
    client = docker_client()
    try:
        label = {"label": f"{PID_LABEL}={run.pid}"}
        deadline = time.monotonic() + 120
        # Wait for its proxies to be up, a real signal of a run under way.
        while len(client.api.containers(filters=label)) < 2:
            assert run.poll() is None, run.communicate()[0]
            assert time.monotonic() < deadline, "the run never started its proxies"
            time.sleep(0.2)  # polls the engine's list of this run's containers
        os.killpg(run.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        output, _ = run.communicate(timeout=60)
        left = client.api.containers(all=True, filters=label)
        assert left == [], f"containers left behind: {[c['Names'] for c in left]}\n{output}"
        assert "interrupted: removed" in output, output
        assert run.returncode == 2, output  # pytest's "interrupted"
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate()
        client.close()
