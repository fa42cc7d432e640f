"""The set-up scripts install Debian's packages on Debian, and on Ubuntu
(GitHub's runners) never put Debian's Docker or a snap's stub over the host's.

Each script runs for real, in a mount namespace of its own where
/etc/os-release says which system this is and `apt-get`, `docker` and
`dockerd` are stand-ins that only write down that they were called.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from harness.proxies.kind import REPO_ROOT

UBUNTU = 'NAME="Ubuntu"\nVERSION_ID="24.04"\nID=ubuntu\nID_LIKE=debian\n'
DEBIAN = 'NAME="Debian GNU/Linux"\nVERSION_ID="12"\nID=debian\n'


def _commands_but(hidden: set[str], path: str, into: Path) -> str:
    """A PATH of one folder holding every command `path` has except `hidden`.

    (A file can't be hidden in place: bash's `command -v` also names files
    that are there but not executable.)
    """
    into.mkdir()
    for folder in reversed(path.split(":")):  # the first on the PATH wins
        for command in Path(folder).glob("*") if Path(folder).is_dir() else ():
            if command.name not in hidden and os.access(command, os.X_OK):
                (into / command.name).unlink(missing_ok=True)
                (into / command.name).symlink_to(command)
    return str(into)


def _run_as_if_on(
    os_release: str, script: str, tmp_path: Path, *, engine: bool, env: dict[str, str]
) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """`script`'s result, and which stand-ins it called."""
    (tmp_path / "os-release").write_text(os_release)
    stand_ins = tmp_path / "bin"
    stand_ins.mkdir()
    called = tmp_path / "called"
    # With an engine, a stopped one: `docker info` fails. Without, there is
    # no docker or dockerd command at all.
    for name in ("apt-get", "docker", "dockerd") if engine else ("apt-get",):
        # `apt-get update` succeeds; an install does not, so nothing is.
        (stand_ins / name).write_text(
            f'#!/bin/sh\necho {name} "$*" >>{called}\n[ "$*" = "update -q" ]\n'
        )
        (stand_ins / name).chmod(0o755)
    path = os.environ["PATH"]
    if not engine:
        path = _commands_but({"docker", "dockerd"}, path, tmp_path / "commands")
    path = f"{stand_ins}:{path}"
    result = subprocess.run(
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-ec",
            f'mount --bind {tmp_path / "os-release"} /etc/os-release; exec "$0"',
            str(REPO_ROOT / "scripts" / script),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={
            **os.environ,
            "PATH": path,
            "DORKOS_DOCS_STATE": str(tmp_path / "state"),
            **env,
        },
    )
    calls = called.read_text().splitlines() if called.exists() else []
    return result, calls


def test_ubuntu_without_chromium_is_told_to_name_a_browser(tmp_path: Path) -> None:
    result, calls = _run_as_if_on(
        UBUNTU,
        "prepare-browser",
        tmp_path,
        engine=True,
        env={"DORKOS_DOCS_CHROMIUM": str(tmp_path / "no-chromium")},
    )
    assert result.returncode == 1, result
    assert "DORKOS_DOCS_CHROMIUM" in result.stderr and "snap" in result.stderr, result.stderr
    assert calls == [], f"installed on Ubuntu: {calls}"


def test_debian_without_chromium_installs_it(tmp_path: Path) -> None:
    result, calls = _run_as_if_on(
        DEBIAN,
        "prepare-browser",
        tmp_path,
        engine=True,
        env={"DORKOS_DOCS_CHROMIUM": str(tmp_path / "no-chromium")},
    )
    assert any(c.startswith("apt-get install") and "chromium" in c for c in calls), (
        calls,
        result.stderr,
    )


def test_ubuntu_with_a_stopped_engine_is_told_to_start_its_service(tmp_path: Path) -> None:
    result, calls = _run_as_if_on(UBUNTU, "prepare-host", tmp_path, engine=True, env={})
    assert result.returncode == 1, result
    assert "systemctl start docker" in result.stderr, result.stderr
    # `docker info` was asked; nothing installed, no engine of ours started.
    assert [c for c in calls if not c.startswith("docker info")] == [], calls


def test_ubuntu_without_docker_is_not_given_debians(tmp_path: Path) -> None:
    result, calls = _run_as_if_on(UBUNTU, "prepare-host", tmp_path, engine=False, env={})
    assert result.returncode == 1, result
    assert "docs.docker.com/engine/install/ubuntu" in result.stderr, result.stderr
    assert calls == [], f"installed on Ubuntu: {calls}"


def test_debian_without_docker_installs_debians(tmp_path: Path) -> None:
    result, calls = _run_as_if_on(DEBIAN, "prepare-host", tmp_path, engine=False, env={})
    assert any(c.startswith("apt-get install") and "docker.io" in c for c in calls), (
        calls,
        result.stderr,
    )
