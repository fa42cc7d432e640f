"""`certbot --nginx` run for real on a reader's starting config.

The page shows the nginx config a reader has before HTTPS (a snippet that
listens on port 80 only) and the certbot command. The test serves that
snippet with Debian's nginx, runs the page's own command in the same
container against the ACME server on loopback (adding only what makes it
non-interactive and points it there), and hands back what certbot made of
the config, for the streaming contract and for the page's diff.
"""

from __future__ import annotations

import contextlib
import difflib
import re
import shlex
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
from docker.models.containers import Container

from harness.acme import AcmeDirectory, AcmeStepFailed
from harness.containers import READY_WITHIN_S, Mount, log_tail, running_container
from harness.images import ProxyImage
from harness.netns import PrivateNetwork
from harness.proxies import REPO_ROOT, RunningProxy, https_target, tls_handshake
from harness.sse_client import Target
from harness.tls import SERVER_NAME

DIFF_FILE = REPO_ROOT / "generated" / "certbot-nginx.diff"
ACCOUNT_EMAIL = f"admin@{SERVER_NAME}"
_CERTBOT_LINE = re.compile(r"^\s*(?:sudo\s+)?(certbot\s+--nginx\b.*)$", re.MULTILINE)


def page_command(page: Path) -> list[str]:
    """The certbot command exactly as the page shows it, less `sudo`."""
    found = _CERTBOT_LINE.findall(page.read_text())
    if len(found) != 1:
        raise AcmeStepFailed(f"{page}: expected one `certbot --nginx` command, found {found}")
    return shlex.split(found[0])


def non_interactive(command: list[str], acme: AcmeDirectory) -> list[str]:
    # What a reader answers at certbot's prompts, and where the CA is.
    return [
        *command,
        "--non-interactive",
        "--agree-tos",
        "-m",
        ACCOUNT_EMAIL,
        "--no-eff-email",
        "--server",
        acme.url,
    ]


@dataclass
class CertbotResult:
    proxy: RunningProxy
    config_after: str
    diff: str
    acme: AcmeDirectory

    def renew_dry_run(self) -> str:
        # renew --dry-run would ask Let's Encrypt's staging CA unless told
        # otherwise; the random sleep is for cron jobs.
        command = [
            "certbot",
            "renew",
            "--dry-run",
            "--no-random-sleep-on-renew",
            "--server",
            self.acme.url,
        ]
        return _exec_step(self.proxy.container, command, "certbot renew --dry-run", self.acme)


def _exec_step(container: Container, command: list[str], step: str, acme: AcmeDirectory) -> str:
    code, output = container.exec_run(
        command,
        environment={"REQUESTS_CA_BUNDLE": "/etc/dorkos-docs/acme-directory-ca.pem"},
    )
    # Not streamed, so the output is bytes (the stubs allow an iterator).
    text = bytes(output).decode(errors="replace")  # type: ignore[arg-type]
    if code != 0:
        raise AcmeStepFailed(
            f"ACME step `{step}` failed (exit {code}):\n{text.rstrip()}\n"
            f"--- ACME server log (last lines) ---\n{acme.log_tail()}\n"
            f"--- nginx log (last lines) ---\n{log_tail(container)}"
        )
    return text


def _http_answers() -> None:
    with socket.create_connection(("127.0.0.1", 80), timeout=2) as sock:
        sock.sendall(
            f"HEAD / HTTP/1.1\r\nHost: {SERVER_NAME}\r\nConnection: close\r\n\r\n".encode()
        )
        if not sock.recv(12).startswith(b"HTTP/1.1"):
            raise ConnectionError("port 80 did not answer HTTP")


@contextlib.contextmanager
def certbot_nginx(
    client: docker.DockerClient,
    image: ProxyImage,
    tag: str,
    snippet: Path,
    acme: AcmeDirectory,
    command: list[str],
    network: PrivateNetwork,
    main_config: Path | None = None,
) -> Iterator[CertbotResult]:
    relative = str(snippet.relative_to(REPO_ROOT))
    in_nginx = f"/etc/nginx/conf.d/{snippet.name}"
    mounts = [
        Mount(str(snippet.resolve()), f"/etc/dorkos-docs/{snippet.name}"),
        Mount(str(acme.directory_ca), "/etc/dorkos-docs/acme-directory-ca.pem"),
    ]
    # certbot edits the configs in place (nginx.conf too, for its
    # checkpoints), so nginx reads copies rather than the read-only mounts.
    copies = [f"cp /etc/dorkos-docs/{snippet.name} {in_nginx}"]
    if main_config is not None:
        mounts.append(Mount(str(main_config), "/etc/dorkos-docs/nginx.conf"))
        copies.append("cp /etc/dorkos-docs/nginx.conf /etc/nginx/nginx.conf")
    start = " && ".join([*copies, "exec nginx -g 'daemon off;'"])
    with running_container(
        client,
        tag,
        ["sh", "-c", start],
        mounts,
        role=image.key,
        network=network,
        ready=_http_answers,
        **image.container_options(),
        waiting_for="nginx answering HTTP on 127.0.0.1:80 with the starting config",
    ) as container:
        _exec_step(container, non_interactive(command, acme), "certbot --nginx", acme)
        config_after = _exec_step(container, ["cat", in_nginx], "read the edited config", acme)
        target = https_target(acme)
        network.call(_wait_for_tls, target, container)
        diff = "".join(
            difflib.unified_diff(
                snippet.read_text().splitlines(keepends=True),
                config_after.splitlines(keepends=True),
                fromfile=relative,
                tofile=f"{relative}, after certbot --nginx",
            )
        )
        label = f"{relative} after `certbot --nginx`"
        proxy = RunningProxy(image, label, container, target, network)
        yield CertbotResult(proxy, config_after, diff, acme)


def _wait_for_tls(target: Target, container: Container) -> None:
    give_up = time.monotonic() + READY_WITHIN_S
    while True:
        try:
            tls_handshake(target).close()
            return
        except OSError as error:
            if time.monotonic() > give_up:
                raise AcmeStepFailed(
                    f"after certbot, nginx did not serve a certificate from the ACME server "
                    f"on port 443: {error}\n--- nginx log ---\n{log_tail(container)}"
                ) from error
            time.sleep(0.1)  # poll interval of the handshake above
