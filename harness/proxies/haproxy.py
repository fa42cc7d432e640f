"""HAProxy: its images, how it runs a config, and how its language reads.

The page has readers add the published config at the end of Debian's
/etc/haproxy/haproxy.cfg, after Debian's `global` and `defaults` sections.
Runs load Debian's file untouched and the snippet after it (`-f` twice):
HAProxy reads several files as one, in order, so this is the reader's file,
and its messages still name the snippet's own lines. An official image has
no haproxy.cfg of its own, and runs the snippet alone.
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
    OfficialImage,
    ProxyImage,
)
from harness.proxies.kind import (
    Certificates,
    Grammar,
    KnownFailure,
    ProxyKind,
    ProxyLaunch,
)

DEBIAN_CONFIG = "/etc/haproxy/haproxy.cfg"
# Debian's haproxy.cfg puts its admin socket in /run/haproxy, which a
# fresh container does not have.
FINISH = f"mkdir -p /run/haproxy && {SLIM}"
CHANGES = (f'CMD ["haproxy", "-W", "-db", "-f", "{DEBIAN_CONFIG}"]',)

LOCAL_IMAGES: tuple[ProxyImage, ...] = (
    DebianImage(
        "haproxy-debian12",
        "haproxy",
        "HAProxy 2.6 (Debian 12 package)",
        suite="bookworm",
        packages=("haproxy",),
        finish=FINISH,
        changes=CHANGES,
        # Debian's haproxy.service sets no LimitNOFILE.
        service_open_files=SYSTEMD_DEFAULT_NOFILE,
    ),
    DebianImage(
        "haproxy-debian13",
        "haproxy",
        "HAProxy 3.0 (Debian 13 package)",
        suite="trixie",
        packages=("haproxy",),
        finish=FINISH,
        changes=CHANGES,
        service_open_files=SYSTEMD_DEFAULT_NOFILE,
    ),
)
OFFICIAL_IMAGES: tuple[ProxyImage, ...] = (
    OfficialImage(
        "haproxy-official",
        "haproxy",
        "HAProxy (official image)",
        reference="haproxy:lts",
        user="root",
    ),
)

# `crt /path/to/combined.pem` on a bind line: the certificate chain and its
# key in one file.
_CRT = re.compile(r"\bcrt\s+(\S+)")
# Debian's file first where the image has one; then the given files.
_WITH_DEBIANS = f'if [ -f {DEBIAN_CONFIG} ]; then set -- -f {DEBIAN_CONFIG} "$@"; fi; '


def _haproxy(script: str, files: list[str]) -> list[str]:
    return ["sh", "-c", _WITH_DEBIANS + script, "sh", *(a for f in files for a in ("-f", f))]


def launch(
    configs: list[Path], ca: Certificates, workdir: Path, main_config: Path | None = None
) -> ProxyLaunch:
    if not isinstance(ca, TestCA) or main_config is not None:
        raise TypeError("HAProxy runs its configs after Debian's, with the test CA's files")
    in_container = {
        ("/etc/haproxy/dorkos.cfg" if i == 0 else f"/etc/dorkos-docs/{i}-{c.name}"): c
        for i, c in enumerate(configs)
    }
    combined = workdir / "haproxy-certificate.pem"
    combined.write_text(ca.server_chain.read_text() + ca.server_key.read_text())
    crt_paths = {path for c in configs for path in _CRT.findall(c.read_text())}
    return ProxyLaunch(
        mounts=[
            *(Mount(str(c.resolve()), path) for path, c in in_container.items()),
            *(Mount(str(combined), path) for path in sorted(crt_paths)),
        ],
        check_command=_haproxy('exec haproxy -c "$@"', list(in_container)),
        # -W: master and worker, as Debian's unit runs it (-Ws); -db: in the
        # foreground.
        run_command=_haproxy('exec haproxy -W -db "$@"', list(in_container)),
        configs_in_container=in_container,
    )


_SECTION = re.compile(r"^(global|defaults|frontend|backend|listen)\b")


def directive(line: str) -> str | None:
    """A keyword line inside a section, as written; None for section headers."""
    if _SECTION.match(line):
        return None
    stripped = line.split("#", 1)[0].strip()
    return stripped or None


# Lines that make the site itself, not how it passes DorkOS's traffic on:
# without them there is nothing left to measure (`mode http` is in each
# section, and in Debian's defaults too).
# The plain-HTTP redirect is the site's own, checked with it.
_STRUCTURE = ("bind ", "default_backend ", "server ", "mode ", "http-request redirect ")


def measured(text: str) -> list[str]:
    """Every line of every section but the ones that make the site."""
    return [
        found
        for line in text.splitlines()
        if (found := directive(line)) is not None and not found.startswith(_STRUCTURE)
    ]


KIND = ProxyKind(
    name="haproxy",
    title="HAProxy",
    recommended_snippet="snippets/haproxy/dorkos.cfg",
    local_images=LOCAL_IMAGES,
    official_images=OFFICIAL_IMAGES,
    launch=launch,
    version_command=("haproxy", "-v"),
    version_pattern=r"HA-?Proxy version (\d+\.\d+\.\d+)",
    # What `systemctl reload haproxy` runs: check the config, then ask the
    # master process to load it.
    reload_command=tuple(
        _haproxy('haproxy -c -q "$@" && kill -USR2 1', ["/etc/haproxy/dorkos.cfg"])
    ),
    http2=True,
    more_forwarded_headers={},
    grammar=Grammar(directive=directive, measured=measured, opening=r"^backend\b"),
    # HAProxy 2.6 passes a browser's leaving on to DorkOS only when DorkOS
    # next writes to the stream; `option abortonclose` makes 3.0 pass it on.
    known_failures={
        "haproxy-debian12": (
            KnownFailure(
                "disconnect-reaches-upstream",
                "over SSE, while the stream is idle: the client left",
                "haproxy-26-keeps-quiet-streams-open",
                command_check="disconnect-reaches-dorkos",
            ),
        )
    },
    # Not measured: HAProxy 2.6's compression of event streams holds events
    # back or not depending on how DorkOS's writes fall, so one run's table
    # would not be the next one's.
    additions=(),
)
