"""nginx: its images, how it runs a config, and how its language reads.

Runs of the page's site configs put the published events block
(snippets/nginx/events.conf) in place of the `events` block of Debian's own
nginx.conf, as the page tells readers to; everything else is Debian's file,
byte for byte. Debian's nginx.conf says `worker_processes auto;`: one
worker per core, each with `worker_connections 768`. nginx counts the
machine's cores, not the container's CPU share, so to run as on a one-core
server the harness writes the `1` that `auto` means there.
"""

from __future__ import annotations

import re
from pathlib import Path

import docker

from harness.lab.containers import Mount, run_to_completion
from harness.lab.tls import TestCA
from harness.proxies.images import (
    SLIM,
    SYSTEMD_DEFAULT_NOFILE,
    DebianImage,
    OfficialImage,
    ProxyImage,
)
from harness.proxies.kind import (
    REPO_ROOT,
    Certificates,
    Grammar,
    ProxyKind,
    ProxyLaunch,
    Variant,
    relative,
)

# Debian's nginx logs to files; send them to the container's output as the
# official image does, so a failing test can show them.
FINISH = (
    "ln -sf /dev/stdout /var/log/nginx/access.log && "
    "ln -sf /dev/stderr /var/log/nginx/error.log && "
    f"{SLIM}"
)
CHANGES = ('CMD ["nginx", "-g", "daemon off;"]',)
# Debian's nginx.service sets no LimitNOFILE, so nginx gets systemd's
# default, 1024 soft; Docker would give it far more.
SERVICE_OPEN_FILES = SYSTEMD_DEFAULT_NOFILE

LOCAL_IMAGES: tuple[ProxyImage, ...] = (
    DebianImage(
        "nginx-debian12",
        "nginx",
        "nginx 1.22 (Debian 12 package)",
        suite="bookworm",
        packages=("nginx-light",),
        finish=FINISH,
        changes=CHANGES,
        service_open_files=SERVICE_OPEN_FILES,
    ),
    DebianImage(
        "nginx-debian13",
        "nginx",
        "nginx 1.26 (Debian 13 package)",
        suite="trixie",
        packages=("nginx",),  # trixie has no nginx-light; nginx is the same build
        finish=FINISH,
        changes=CHANGES,
        service_open_files=SERVICE_OPEN_FILES,
    ),
)
OFFICIAL_IMAGES: tuple[ProxyImage, ...] = (
    OfficialImage("nginx-official", "nginx", "nginx (official image)", reference="nginx:stable"),
)
# Debian's nginx with certbot and its nginx plugin, the way readers following
# the page's nginx steps have it; also the "Let's Encrypt" front.
CERTBOT_NGINX_IMAGE = DebianImage(
    "nginx-certbot-debian12",
    "nginx",
    "nginx 1.22 with certbot 2.1 (Debian 12 packages)",
    suite="bookworm",
    # As the page's nginx path installs them.
    packages=("nginx", "certbot", "python3-certbot-nginx"),
    finish=FINISH,
    changes=CHANGES,
    service_open_files=SERVICE_OPEN_FILES,
)

# What the page tells nginx readers to put in place of Debian's events block.
EVENTS_SNIPPET = REPO_ROOT / "snippets" / "nginx" / "events.conf"

# `ssl_certificate /path/to/cert.pem;` and `ssl_certificate_key ...;`
_CERT_DIRECTIVE = re.compile(r"^\s*(ssl_certificate(?:_key)?)\s+([^;\s]+)\s*;", re.MULTILINE)


def launch(
    configs: list[Path], ca: Certificates, workdir: Path, main_config: Path | None = None
) -> ProxyLaunch:
    if not isinstance(ca, TestCA):
        raise TypeError("nginx gets ACME certificates through certbot (harness.lab.reader_path)")
    in_container = {f"/etc/nginx/conf.d/{c.name}": c for c in configs}
    if main_config is not None:
        in_container["/etc/nginx/nginx.conf"] = main_config
    mounts = [Mount(str(c.resolve()), path) for path, c in in_container.items()]
    certificate_paths = {
        path: directive
        for config in configs
        for directive, path in _CERT_DIRECTIVE.findall(config.read_text())
    }
    for path, directive in certificate_paths.items():
        source = ca.server_key if directive == "ssl_certificate_key" else ca.server_chain
        mounts.append(Mount(str(source), path))
    return ProxyLaunch(
        mounts=mounts,
        check_command=["nginx", "-t"],
        run_command=["nginx", "-g", "daemon off;"],
        configs_in_container=in_container,
    )


def directive(line: str) -> str | None:
    """A directive as written, without its `;`."""
    stripped = line.split("#", 1)[0].strip()
    if not stripped or stripped.endswith(("{", "}")):
        return None
    return stripped[:-1].strip() if stripped.endswith(";") else None


def measured(text: str) -> list[str]:
    """Every directive inside the `location` block that proxies to DorkOS
    (not the plain-HTTP redirect's), but proxy_pass: without it there is no
    proxy left to measure."""
    found: list[str] = []
    block: list[str] = []
    depth, inside, inside_depth, proxies = 0, False, 0, False
    for line in text.splitlines():
        stripped = line.split("#", 1)[0].strip()
        if stripped.endswith("{"):
            depth += 1
            if stripped.startswith("location"):
                inside, inside_depth, block, proxies = True, depth, [], False
            continue
        if stripped == "}":
            if inside and depth == inside_depth:
                inside = False
                if proxies:
                    found.extend(block)
            depth -= 1
            continue
        found_directive = directive(line)
        if inside and found_directive:
            if found_directive.startswith("proxy_pass "):
                proxies = True
            else:
                block.append(found_directive)
    return found


KIND = ProxyKind(
    name="nginx",
    title="nginx",
    recommended_snippet="snippets/nginx/dorkos.conf",
    local_images=LOCAL_IMAGES,
    official_images=OFFICIAL_IMAGES,
    launch=launch,
    version_command=("nginx", "-v"),
    version_pattern=r"nginx/(\d+\.\d+\.\d+)",
    reload_command=("nginx", "-s", "reload"),
    http2=False,
    # The snippet also sets X-Real-IP (for other tools' logs).
    more_forwarded_headers={"X-Real-IP": "client"},
    grammar=Grammar(directive=directive, measured=measured, opening=r"^\s*location\b.*\{\s*$"),
    additions=(
        Variant(
            "with gzip for text/event-stream", adds=("gzip on;", "gzip_types text/event-stream;")
        ),
        # The SSE-only recipe of older guides (and of this page, once).
        Variant(
            "with Connection ''",
            replaces=(
                "proxy_set_header Connection $connection_upgrade",
                ("proxy_set_header Connection '';",),
            ),
            table_label="Use `proxy_set_header Connection '';` (older guides' SSE recipe) "
            "in place of `$connection_upgrade`",
        ),
        # What a plain request sends DorkOS: nginx's own `close`, or nothing.
        Variant(
            "with '' mapped to ''",
            replaces=("''      close", ("''      '';",)),
            table_label="Map `''` to `''` (no `Connection` header) in place of `close`",
        ),
    ),
    run_options={"events": EVENTS_SNIPPET},
    old_worker_marker="worker process is shutting down",
)


# -- Debian's nginx.conf, as the page has readers change it ----------------

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
