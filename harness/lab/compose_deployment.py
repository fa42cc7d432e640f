"""The Docker Compose deployment: DorkOS's image and Caddy as two services.

There is no container registry on these machines, so neither image can be
pulled and Compose itself can't bring the project up. What the suite does
instead, and what the page says it does:

- the compose file is validated against the Compose specification's own
  schema (check-jsonschema's `vendor.compose-spec`);
- it is read for what the proxy depends on: Caddy's service mounts the
  Caddyfile beside it where Caddy reads it and publishes 80 and 443;
  DorkOS's service is not published, and trusts the reader's domain;
- the Caddyfile it mounts runs through the whole contract like every other
  config, on the lab's Caddy images, with the mock DorkOS answering as the
  `dorkos` service: the service's name resolves in the run's network, as
  Compose's DNS resolves it, and the mock listens on IPv4 only, as DorkOS's
  image does (`DORKOS_HOST=0.0.0.0`).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from harness.lab.tls import SERVER_NAME
from harness.proxies.kind import relative

CADDYFILE_IN_CONTAINER = "/etc/caddy/Caddyfile"
DORKOS_IMAGE = "ghcr.io/dork-labs/dorkos"
DORKOS_PORT = 4242
# Where the mock listens for a run of the compose Caddyfile: IPv4, as
# DorkOS's image binds 0.0.0.0 and not ::.
DORKOS_ON = ("127.0.0.1",)
_UPSTREAM = re.compile(r"^\s*reverse_proxy\s+(?P<host>[^\s:]+):(?P<port>\d+)\s*$", re.MULTILINE)


class ComposeError(AssertionError):
    """The compose file does not say what the page needs; the message names it."""


def load(compose: Path) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(compose.read_text())
    return data


def _service(compose: Path, data: dict[str, Any], image: str) -> tuple[str, dict[str, Any]]:
    found = [
        (name, service)
        for name, service in data.get("services", {}).items()
        if str(service.get("image", "")).split(":")[0] == image
    ]
    if len(found) != 1:
        raise ComposeError(f"{relative(compose)}: expected one service of image {image}")
    return found[0]


def dorkos_service(compose: Path) -> str:
    """The name the proxy reaches DorkOS by."""
    return _service(compose, load(compose), DORKOS_IMAGE)[0]


def mounted_caddyfile(compose: Path) -> Path:
    """The file beside the compose file that Caddy's service reads as its config."""
    _, caddy = _service(compose, load(compose), "caddy")
    for volume in caddy.get("volumes", []):
        source, _, rest = str(volume).partition(":")
        if rest.split(":")[0] == CADDYFILE_IN_CONTAINER:
            return (compose.parent / source).resolve()
    raise ComposeError(f"{relative(compose)}: Caddy's service mounts no {CADDYFILE_IN_CONTAINER}")


def hosts(compose: Path) -> dict[str, str]:
    """What the run's network resolves: DorkOS's service name, to where the mock is."""
    return {dorkos_service(compose): DORKOS_ON[0]}


def check(compose: Path) -> str:
    """The file is valid Compose and says what the proxy depends on."""
    schema = subprocess.run(
        [
            str(Path(sys.executable).parent / "check-jsonschema"),
            "--builtin-schema",
            "vendor.compose-spec",
            str(compose),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if schema.returncode != 0:
        raise ComposeError(
            f"{relative(compose)} is not valid Compose:\n{schema.stdout}{schema.stderr}"
        )
    data = load(compose)
    name, dorkos = _service(compose, data, DORKOS_IMAGE)
    _, caddy = _service(compose, data, "caddy")
    problems = []
    environment = dorkos.get("environment", {})
    if environment.get("DORKOS_TRUSTED_HOSTS") != SERVER_NAME:
        problems.append(f"{name} does not set DORKOS_TRUSTED_HOSTS: {SERVER_NAME}")
    if dorkos.get("ports"):
        problems.append(f"{name} publishes {dorkos['ports']}: only the proxy should reach it")
    if not {"80:80", "443:443"} <= {str(p) for p in caddy.get("ports", [])}:
        problems.append(f"Caddy's service does not publish 80 and 443: {caddy.get('ports')}")
    caddyfile = mounted_caddyfile(compose)
    upstreams = _UPSTREAM.findall(caddyfile.read_text()) if caddyfile.is_file() else []
    if upstreams != [(name, str(DORKOS_PORT))]:
        problems.append(
            f"{relative(caddyfile)} should proxy to {name}:{DORKOS_PORT}; it proxies to "
            f"{[':'.join(u) for u in upstreams] or 'nothing'}"
        )
    if problems:
        raise ComposeError(f"{relative(compose)}: " + "; ".join(problems))
    return (
        f"valid Compose; {name} trusts {SERVER_NAME} and is not published; Caddy mounts "
        f"{relative(caddyfile)} and proxies to {name}:{DORKOS_PORT}"
    )
