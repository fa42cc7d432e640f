"""Debian's own nginx.conf, with the page's events block, or as on one core.

The Reverse Proxy page tells nginx readers to put a published fragment
(snippets/nginx/events.conf) in place of the `events` block of Debian's
nginx.conf; runs of the page's configs do the same. Everything else is
Debian's file, byte for byte.

Debian's nginx.conf says `worker_processes auto;`: one worker per core, each
with `worker_connections 768`. nginx counts the machine's cores, not the
container's CPU share, so to run as on a one-core server the harness writes
the `1` that `auto` means there.
"""

from __future__ import annotations

import re
from pathlib import Path

import docker

from harness.lab.containers import run_to_completion
from harness.proxies.images import ProxyImage
from harness.proxies.launch import relative

NGINX_CONF = "/etc/nginx/nginx.conf"
_WORKERS = re.compile(r"^worker_processes\s+auto;$", re.MULTILINE)
_ERROR_LOG = re.compile(r"^(error_log\s+\S+);$", re.MULTILINE)
_EVENTS_BLOCK = re.compile(r"^events\s*\{.*?^\}\n", re.MULTILINE | re.DOTALL)


class MainConfigError(ValueError):
    pass


def debian_nginx_conf(
    client: docker.DockerClient,
    image: ProxyImage,
    tag: str,
    workdir: Path,
    *,
    events: Path | None,
    one_core: bool,
    log_level: str | None = None,
) -> Path:
    """The image's nginx.conf with `events` in place of its events block, with
    one worker if `one_core`, and its error log at `log_level` if given."""
    code, debian = run_to_completion(client, tag, ["cat", NGINX_CONF], [], f"{image.key}-conf")
    if code != 0:
        raise MainConfigError(f"could not read {NGINX_CONF} from {tag}: {debian}")
    text = debian
    if one_core:
        text, found = _WORKERS.subn("worker_processes 1;", text)
        if found != 1:
            raise MainConfigError(
                f"{image.description}: {NGINX_CONF} has no `worker_processes auto;`"
            )
    if events is not None:
        try:
            text = with_events_block(text, events.read_text())
        except MainConfigError as error:
            raise MainConfigError(f"{image.description}: {error}") from None
    if log_level is not None:
        text, found = _ERROR_LOG.subn(rf"\1 {log_level};", text)
        if found != 1:
            raise MainConfigError(f"{image.description}: {NGINX_CONF} has no one error_log line")
    path = workdir / "nginx.conf"
    path.write_text(text)
    return path


def with_events_block(nginx_conf: str, events: str) -> str:
    """nginx.conf with `events` in place of its events block, as the page says."""
    if len(_EVENTS_BLOCK.findall(nginx_conf)) != 1:
        raise MainConfigError(f"{NGINX_CONF} has no one events block")
    return _EVENTS_BLOCK.sub(lambda _: events, nginx_conf)


def describe(events: Path | None, one_core: bool) -> str:
    parts = [f"{relative(events)} in place of its events block"] if events else []
    if one_core:
        parts.append("one worker, as on a one-core server")
    return "Debian's nginx.conf with " + " and ".join(parts)
