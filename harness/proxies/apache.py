"""Apache httpd: its images, how it runs a config, and how its language reads.

Readers of the page install Debian's apache2, switch on the modules the
site needs (`a2enmod`), save DorkOS's site in sites-available and its
worker settings in conf-available, and enable both (`a2ensite`,
`a2enconf`). The images are Debian's package after the page's `a2enmod`
line; every run enables the two published files with Debian's own tools
and starts Apache as Debian's unit does, through apache2ctl (which also
raises the open-files limit to 8192). Everything else is Debian's
configuration, byte for byte.
"""

from __future__ import annotations

import re
from pathlib import Path

from harness.lab.containers import Mount
from harness.lab.tls import TestCA
from harness.proxies.images import (
    SLIM,
    SYSTEMD_DEFAULT_NOFILE,
    DebianImage,
    ProxyImage,
)
from harness.proxies.kind import (
    REPO_ROOT,
    Certificates,
    Grammar,
    KnownFailure,
    ProxyKind,
    ProxyLaunch,
    Variant,
)

# What the page's first step runs after installing the package.
ENABLE_MODULES = "a2enmod ssl proxy_http headers"
SITE = "/etc/apache2/sites-available/dorkos.conf"
WORKERS = "/etc/apache2/conf-available/dorkos-workers.conf"
WORKERS_SNIPPET = REPO_ROOT / "snippets" / "apache" / "dorkos-workers.conf"
# Debian's apache2 logs to files; send them to the container's output, so
# a failing test can show them.
FINISH = (
    f"{ENABLE_MODULES} >/dev/null && "
    "ln -sf /dev/stderr /var/log/apache2/error.log && "
    "ln -sf /dev/stdout /var/log/apache2/access.log && "
    "ln -sf /dev/stdout /var/log/apache2/other_vhosts_access.log && "
    f"{SLIM}"
)
CHANGES = ('CMD ["apache2ctl", "-D", "FOREGROUND"]',)

LOCAL_IMAGES: tuple[ProxyImage, ...] = tuple(
    DebianImage(
        f"apache-debian{release}",
        "apache",
        f"Apache httpd 2.4 (Debian {release} package)",
        suite=suite,
        packages=("apache2",),
        finish=FINISH,
        changes=CHANGES,
        # Debian's apache2.service sets no LimitNOFILE; apache2ctl raises it.
        service_open_files=SYSTEMD_DEFAULT_NOFILE,
    )
    for release, suite in (("12", "bookworm"), ("13", "trixie"))
)
# The official httpd image has none of Debian's layout (sites-available,
# a2ensite, apache2ctl) that the page's steps use, so Debian's packages are
# run either way.
OFFICIAL_IMAGES = LOCAL_IMAGES

# `SSLCertificateFile /path` and `SSLCertificateKeyFile /path`
_CERT_DIRECTIVE = re.compile(r"^\s*(SSLCertificate(?:Key)?File)\s+(\S+)\s*$", re.MULTILINE)


def _enabled_then(command: str, workers: bool) -> list[str]:
    """Enable the published files as the page does, then run `command`."""
    enable = "a2ensite -q dorkos >/dev/null"
    if workers:
        enable += " && a2enconf -q dorkos-workers >/dev/null"
    return ["sh", "-c", f"{enable} && exec {command}"]


def launch(
    configs: list[Path], ca: Certificates, workdir: Path, main_config: Path | None = None
) -> ProxyLaunch:
    if not isinstance(ca, TestCA) or len(configs) != 1:
        raise TypeError("Apache runs one site, with the test CA's files")
    in_container = {SITE: configs[0]}
    if main_config is not None:
        in_container[WORKERS] = main_config
    mounts = [Mount(str(c.resolve()), path) for path, c in in_container.items()]
    certificate_paths = {
        path: directive for directive, path in _CERT_DIRECTIVE.findall(configs[0].read_text())
    }
    for path, directive in certificate_paths.items():
        source = ca.server_key if directive == "SSLCertificateKeyFile" else ca.server_chain
        mounts.append(Mount(str(source), path))
    workers = main_config is not None
    return ProxyLaunch(
        mounts=mounts,
        check_command=_enabled_then("apache2ctl configtest", workers),
        run_command=_enabled_then("apache2ctl -D FOREGROUND", workers),
        configs_in_container=in_container,
    )


def directive(line: str) -> str | None:
    """A directive line as written; None for comments and <Section> lines."""
    stripped = line.strip()
    if not stripped or stripped.startswith(("#", "<")):
        return None
    return stripped


_HTTPS_SITE = re.compile(r"^<VirtualHost\s+\*:443>", re.IGNORECASE)
# Lines that make the site itself, not how it passes DorkOS's traffic on:
# without them there is nothing left to measure. ProxyPass's parameters
# are measured one at a time instead (PROXY_PASS_PARAMETERS).
_STRUCTURE = ("ServerName ", "SSLEngine ", "SSLCertificateFile ", "SSLCertificateKeyFile ")


def measured(text: str) -> list[str]:
    """Every directive of the HTTPS site but the ones that make it."""
    found: list[str] = []
    inside = False
    for line in text.splitlines():
        if _HTTPS_SITE.match(line.strip()):
            inside = True
        elif line.strip().lower() == "</virtualhost>":
            inside = False
        elif inside and (d := directive(line)) and not d.startswith((*_STRUCTURE, "ProxyPass ")):
            found.append(d)
    return found


# The published ProxyPass line; each of its parameters is measured by a
# variant without it.
PROXY_PASS = "ProxyPass / http://localhost:4242/ upgrade=websocket"
PROXY_PASS_PARAMETERS = ("upgrade=websocket",)


def _without_parameter(parameter: str) -> Variant:
    line = " ".join(word for word in PROXY_PASS.split() if word != parameter)
    return Variant(
        f"without {parameter}",
        replaces=(PROXY_PASS, (line,)),
        table_label=f"Remove `{parameter}` from the `ProxyPass` line",
        takes_away=True,
    )


KIND = ProxyKind(
    name="apache",
    title="Apache httpd",
    recommended_snippet="snippets/apache/dorkos.conf",
    local_images=LOCAL_IMAGES,
    official_images=OFFICIAL_IMAGES,
    launch=launch,
    version_command=("apache2", "-v"),
    version_pattern=r"Apache/(\d+\.\d+\.\d+)",
    # What `systemctl reload apache2` runs.
    reload_command=("apache2ctl", "graceful"),
    http2=False,
    # mod_proxy's own, besides X-Forwarded-For: the host the browser asked
    # for, and the ServerName of the site that answered (the same here).
    more_forwarded_headers={"X-Forwarded-Host": "host", "X-Forwarded-Server": "server_name"},
    grammar=Grammar(directive=directive, measured=measured, opening=r"^<VirtualHost\s+\*:443>"),
    additions=(
        *(_without_parameter(p) for p in PROXY_PASS_PARAMETERS),
        # What compressing "text" types by mod_deflate does to event streams.
        Variant(
            "with DEFLATE for text/event-stream",
            adds=("AddOutputFilterByType DEFLATE text/event-stream",),
        ),
    ),
    companion=WORKERS_SNIPPET,
    # mod_proxy_http passes a browser's leaving on to DorkOS only when it
    # next writes to the stream: Apache reads the client again only then.
    known_failures={
        image.key: (
            KnownFailure(
                "disconnect-reaches-upstream",
                "over SSE, while the stream is idle: the client left",
                "apache-keeps-quiet-streams-open",
                command_check="disconnect-reaches-dorkos",
            ),
        )
        for image in LOCAL_IMAGES
    },
)
