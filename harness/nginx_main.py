"""Debian's own nginx.conf, as nginx runs it on a one-core server.

Debian's nginx.conf says `worker_processes auto;`: one worker per core, each
with `worker_connections 768`. This machine has more than one core, and
nginx counts the machine's cores, not the container's CPU share, so the
harness writes the `1` that `auto` means on a one-core server. Everything
else is Debian's file, byte for byte, except where a published fragment
(snippets/nginx/events.conf) takes the place of the block it replaces.
"""

from __future__ import annotations

import re
from pathlib import Path

import docker

from harness.containers import run_to_completion
from harness.images import ProxyImage
from harness.proxies import relative

NGINX_CONF = "/etc/nginx/nginx.conf"
_WORKERS = re.compile(r"^worker_processes\s+auto;$", re.MULTILINE)
_EVENTS_BLOCK = re.compile(r"^events\s*\{.*?^\}\n", re.MULTILINE | re.DOTALL)


class MainConfigError(ValueError):
    pass


def one_core(
    client: docker.DockerClient,
    image: ProxyImage,
    tag: str,
    workdir: Path,
    fragment: Path | None = None,
) -> Path:
    """The image's nginx.conf with one worker, and `fragment` in place of its events block."""
    code, debian = run_to_completion(client, tag, ["cat", NGINX_CONF], [], f"{image.key}-conf")
    if code != 0:
        raise MainConfigError(f"could not read {NGINX_CONF} from {tag}: {debian}")
    text, found = _WORKERS.subn("worker_processes 1;", debian)
    if found != 1:
        raise MainConfigError(f"{image.description}: {NGINX_CONF} has no `worker_processes auto;`")
    if fragment is not None:
        if len(_EVENTS_BLOCK.findall(text)) != 1:
            raise MainConfigError(f"{image.description}: {NGINX_CONF} has no one events block")
        text = _EVENTS_BLOCK.sub(lambda _: fragment.read_text(), text)
    path = workdir / "nginx.conf"
    path.write_text(text)
    return path


def describe(fragment: Path | None) -> str:
    where = f" with {relative(fragment)} in place of its events block" if fragment else ""
    return f"Debian's nginx.conf on one worker, as on a one-core server{where}"
