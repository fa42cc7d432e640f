"""Run a published snippet, byte for byte, in the proxy it is written for.

What a test needs beyond the snippet goes around it, never into it:
certificate files at the paths the snippet names, and (for Caddy) a wrapper
config whose global options point certificate issuance at the test CA and
then imports the unmodified snippet.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Union

import docker
from docker.models.containers import Container

from harness.clients.sse_client import Target, tls_handshake
from harness.lab.containers import Mount, log_tail, run_to_completion, running_container
from harness.lab.netns import PrivateNetwork
from harness.lab.tls import SERVER_NAME, TestCA
from harness.proxies.images import ProxyImage

if TYPE_CHECKING:
    from harness.lab.acme import AcmeDirectory
    from harness.upstream.mock_dorkos import Listening

# Where a proxy's certificates come from: files made by the test CA, or an
# ACME server the proxy asks itself.
Certificates = Union[TestCA, "AcmeDirectory"]

REPO_ROOT = Path(__file__).resolve().parents[2]
# Each proxy's recommended HTTPS config: what the measurements and the
# benchmark run.
RECOMMENDED_SNIPPETS = {"nginx": "snippets/nginx/dorkos.conf", "caddy": "snippets/caddy/Caddyfile"}
# What the page tells nginx readers to put in place of Debian's events block.
NGINX_EVENTS_SNIPPET = REPO_ROOT / "snippets" / "nginx" / "events.conf"
HTTPS_PORT = 443


class ConfigRejected(RuntimeError):
    """The proxy refused the snippet; the message names the file and line."""


@dataclass(frozen=True)
class ProxyLaunch:
    """How one proxy runs its config files: what is mounted, what is run."""

    mounts: list[Mount]
    check_command: list[str]
    run_command: list[str]
    # Where each config sits in the container, so the proxy's messages can be
    # translated back to the file a contributor edits.
    configs_in_container: dict[str, Path]

    def explain(self, output: str) -> str:
        for in_container, config in self.configs_in_container.items():
            output = output.replace(in_container, relative(config))
        return output.rstrip()


def relative(snippet: Path) -> str:
    """The path a contributor knows the file by."""
    resolved = snippet.resolve()
    return (
        str(resolved.relative_to(REPO_ROOT))
        if resolved.is_relative_to(REPO_ROOT)
        else str(resolved)
    )


# `ssl_certificate /path/to/cert.pem;` and `ssl_certificate_key ...;`
_NGINX_CERT_DIRECTIVE = re.compile(r"^\s*(ssl_certificate(?:_key)?)\s+([^;\s]+)\s*;", re.MULTILINE)


def nginx_launch(
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
        for directive, path in _NGINX_CERT_DIRECTIVE.findall(config.read_text())
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


CADDY_CONFIG_ARGS = ["--config", "/etc/dorkos-docs/harness.Caddyfile", "--adapter", "caddyfile"]
_CADDY_WRAPPER = """\
# Written by the test harness; the published snippet is imported unchanged.
{{
{global_options}
}}

{imports}
"""
# Issue certificates from the test CA instead of a public ACME CA.
_CADDY_LOCAL_CA = """\
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
_CADDY_ACME = """\
	acme_ca {url}
	acme_ca_root {dir}/acme-directory-ca.pem
	email {email}"""


def caddy_launch(
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
        global_options = _CADDY_LOCAL_CA.format(dir=harness_dir)
        ca_mounts = [
            Mount(str(ca.root_cert), f"{harness_dir}/test-ca.pem"),
            Mount(str(ca.root_key), f"{harness_dir}/test-ca.key"),
        ]
    else:
        global_options = _CADDY_ACME.format(
            url=ca.url, dir=harness_dir, email=f"admin@{SERVER_NAME}"
        )
        ca_mounts = [Mount(str(ca.directory_ca), f"{harness_dir}/acme-directory-ca.pem")]
    wrapper.write_text(
        _CADDY_WRAPPER.format(
            global_options=global_options,
            imports="\n".join(f"import {path}" for path in in_container),
        )
    )
    config = CADDY_CONFIG_ARGS
    return ProxyLaunch(
        mounts=[
            *(Mount(str(c.resolve()), path) for path, c in in_container.items()),
            Mount(str(wrapper), f"{harness_dir}/harness.Caddyfile"),
            *ca_mounts,
        ],
        check_command=["caddy", "validate", *config],
        run_command=["caddy", "run", *config],
        configs_in_container=in_container,
    )


LAUNCHERS = {"nginx": nginx_launch, "caddy": caddy_launch}

# What each proxy prints its exact version with, and how to find it there.
VERSION_COMMANDS = {"nginx": ["nginx", "-v"], "caddy": ["caddy", "version"]}
_VERSION = re.compile(r"(?:nginx/|^v?)(\d+\.\d+\.\d+)", re.MULTILINE)


def proxy_version(client: docker.DockerClient, image: ProxyImage, tag: str) -> str:
    code, output = run_to_completion(
        client, tag, VERSION_COMMANDS[image.proxy], [], role=f"{image.key}-version"
    )
    found = _VERSION.search(output)
    if code != 0 or found is None:
        raise RuntimeError(f"could not read the version of {tag}: exit {code}, {output!r}")
    return found.group(1)


def https_target(ca: Certificates, port: int = HTTPS_PORT) -> Target:
    """Where clients connect, trusting only the root that `ca` issues under."""
    root = ca.root_cert if isinstance(ca, TestCA) else ca.issuing_root
    return Target(f"https://127.0.0.1:{port}", SERVER_NAME, str(root))


@dataclass
class RunningProxy:
    image: ProxyImage
    snippet: str  # path relative to the repository
    container: Container
    target: Target
    network: PrivateNetwork
    # Where the run's DorkOS listens, to stop and start it (None: the caller's own).
    dorkos: Listening | None = None

    @property
    def reload_command(self) -> list[str]:
        """What a reader runs to reload the config (certbot's renewal hook does too)."""
        if self.proxy == "nginx":
            return ["nginx", "-s", "reload"]
        # --force: Caddy skips a reload whose config has not changed.
        return ["caddy", "reload", "--force", *CADDY_CONFIG_ARGS]

    @property
    def proxy(self) -> str:
        return self.image.proxy

    @property
    def label(self) -> str:
        return f"{self.snippet} on {self.image.description}"

    def log_tail(self, lines: int = 30) -> str:
        return log_tail(self.container, lines)

    def stopped_log(self) -> str:
        """The proxy's whole log once it has stopped, so none of it is still on its way."""
        self.container.stop(timeout=10)
        self.container.wait(timeout=60)
        return bytes(self.container.logs()).decode(errors="replace")


@contextlib.contextmanager
def serving(
    client: docker.DockerClient,
    image: ProxyImage,
    tag: str,
    configs: list[Path],
    ca: Certificates,
    workdir: Path,
    ports: list[int],
    network: PrivateNetwork | None,
    main_config: Path | None = None,
) -> Iterator[Container]:
    """Check config files with the proxy's own validator, then serve them.

    Yields once every port in `ports` completes a verified TLS handshake
    (inside `network`; None is the machine's own network).
    """
    launch = LAUNCHERS[image.proxy](configs, ca, workdir, main_config)
    code, output = run_to_completion(
        client, tag, launch.check_command, launch.mounts, role=f"{image.key}-check"
    )
    if code != 0:
        raise ConfigRejected(
            f"{', '.join(relative(c) for c in configs)}: {image.description} rejects "
            f"this config ({' '.join(launch.check_command)} exited {code}):\n"
            + launch.explain(output)
        )

    def handshakes_succeed() -> None:
        for port in ports:
            tls_handshake(https_target(ca, port)).close()

    with running_container(
        client,
        tag,
        launch.run_command,
        launch.mounts,
        role=image.key,
        network=network,
        **image.container_options(),
        ready=handshakes_succeed,
        waiting_for=f"a TLS handshake for {SERVER_NAME} on 127.0.0.1 port(s) "
        f"{', '.join(map(str, ports))} that verifies against "
        + ("the test CA" if isinstance(ca, TestCA) else "the ACME server's issuing root"),
    ) as container:
        yield container


@contextlib.contextmanager
def run_proxy(
    client: docker.DockerClient,
    image: ProxyImage,
    tag: str,
    snippet: Path,
    ca: Certificates,
    workdir: Path,
    network: PrivateNetwork,
    main_config: Path | None = None,
    label: str | None = None,
    port: int = HTTPS_PORT,
) -> Iterator[RunningProxy]:
    """Serve one snippet, byte for byte, on `port` (443) of `network`."""
    with serving(
        client, image, tag, [snippet], ca, workdir, [port], network, main_config
    ) as container:
        target = https_target(ca, port)
        yield RunningProxy(image, label or relative(snippet), container, target, network)
