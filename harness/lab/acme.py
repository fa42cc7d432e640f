"""A real ACME server on loopback, so "Let's Encrypt" can be tested offline.

pebble (Debian's package) is a small ACME server built for exactly this.
It validates challenges for real: it resolves dorkos.example.com (the run's
private network points it at 127.0.0.1) and fetches the HTTP-01 token from
port 80, or does the TLS-ALPN-01 handshake on port 443, where the proxy
under test listens. Each run gets its own pebble, started first, in its own
private network.

`lets_encrypt()` puts pebble behind Let's Encrypt's own name and directory
URL, for a run whose config names no ACME server: Caddy then gets its
certificate from where it would on a reader's server, with the reader's
Caddyfile exactly as published.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import ssl
import subprocess
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import trustme
from docker.models.containers import Container

from harness.lab.containers import Mount, log_tail, running_container
from harness.lab.netns import PrivateNetwork

DIRECTORY_PORT = 14000
MANAGEMENT_PORT = 15000
DIRECTORY_URL = f"https://127.0.0.1:{DIRECTORY_PORT}/dir"
PEBBLE_ENVIRONMENT = {
    # No random 0-15 s pause before each validation.
    "PEBBLE_VA_NOSLEEP": "1",
    # pebble rejects 5 % of nonces by default to exercise client retries;
    # clients here retry, but a quiet run is easier to read.
    "PEBBLE_WFE_NONCEREJECT": "0",
}


class AcmeStepFailed(RuntimeError):
    """An ACME step failed; the message names the step and shows the logs."""


@dataclass
class AcmeDirectory:
    """A running ACME server and the files a client needs to trust it."""

    url: str
    directory_ca: Path  # signs the ACME server's own HTTPS certificate
    issuing_root: Path  # signs the certificates it issues; clients trust only it
    container: Container
    server_cert: Path  # the ACME server's own HTTPS certificate and key
    server_key: Path

    def log_tail(self, lines: int = 30) -> str:
        return log_tail(self.container, lines)


def _https_get(url: str, ca_file: Path) -> bytes:
    context = ssl.create_default_context(cafile=str(ca_file))
    with urllib.request.urlopen(url, context=context, timeout=5) as response:
        body: bytes = response.read()
        return body


@contextlib.contextmanager
def pebble(
    client: docker.DockerClient, tag: str, workdir: Path, network: PrivateNetwork
) -> Iterator[AcmeDirectory]:
    workdir.mkdir(parents=True, exist_ok=True)
    # pebble serves its directory over HTTPS; Debian's package ships no
    # certificate for that, so make one with a CA of its own.
    directory_ca = trustme.CA(organization_name="ACME directory test CA")
    # Also valid for Let's Encrypt's name, which lets_encrypt() serves it as.
    directory_cert = directory_ca.issue_cert("127.0.0.1", "localhost", LETS_ENCRYPT_NAME)
    directory_ca_file = workdir / "acme-directory-ca.pem"
    directory_ca.cert_pem.write_to_path(str(directory_ca_file))
    directory_cert.private_key_pem.write_to_path(str(workdir / "pebble-key.pem"))
    (workdir / "pebble-key.pem").chmod(0o644)
    (workdir / "pebble-cert.pem").write_bytes(
        b"".join(blob.bytes() for blob in directory_cert.cert_chain_pems)
    )
    config = {
        "pebble": {
            "listenAddress": f"127.0.0.1:{DIRECTORY_PORT}",
            "managementListenAddress": f"127.0.0.1:{MANAGEMENT_PORT}",
            "certificate": "/etc/pebble/cert.pem",
            "privateKey": "/etc/pebble/key.pem",
            # Where it validates challenges: the proxy's own ports.
            "httpPort": 80,
            "tlsPort": 443,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": False,
        }
    }
    (workdir / "pebble-config.json").write_text(json.dumps(config))
    mounts = [
        Mount(str(workdir / "pebble-config.json"), "/etc/pebble/config.json"),
        Mount(str(workdir / "pebble-cert.pem"), "/etc/pebble/cert.pem"),
        Mount(str(workdir / "pebble-key.pem"), "/etc/pebble/key.pem"),
    ]

    def directory_answers() -> None:
        _https_get(DIRECTORY_URL, directory_ca_file)

    with running_container(
        client,
        tag,
        ["pebble", "-config", "/etc/pebble/config.json"],
        mounts,
        role="pebble",
        network=network,
        ready=directory_answers,
        waiting_for=f"the ACME directory at {DIRECTORY_URL}",
        environment=PEBBLE_ENVIRONMENT,
    ) as container:
        # The issuing root is made afresh at every start: fetch it now.
        issuing_root = workdir / "acme-issuing-root.pem"
        issuing_root.write_bytes(
            network.call(
                _https_get, f"https://127.0.0.1:{MANAGEMENT_PORT}/roots/0", directory_ca_file
            )
        )
        yield AcmeDirectory(
            DIRECTORY_URL,
            directory_ca_file,
            issuing_root,
            container,
            workdir / "pebble-cert.pem",
            workdir / "pebble-key.pem",
        )


# --- Let's Encrypt, as a config that names no ACME server reaches it --------

LETS_ENCRYPT_NAME = "acme-v02.api.letsencrypt.org"
LETS_ENCRYPT_DIRECTORY = f"https://{LETS_ENCRYPT_NAME}/directory"
# The name resolves here in the run's private network. Port 443 there is
# the proxy's, on every address, so the kernel sends this address's port
# 443 on to the front's own port.
LETS_ENCRYPT_ADDRESS = "127.0.0.2"
FRONT_PORT = 14443
LETS_ENCRYPT_HOSTS = {LETS_ENCRYPT_NAME: LETS_ENCRYPT_ADDRESS}

# pebble answers on /dir, not Let's Encrypt's /directory: a small nginx in
# front maps the one path and passes the name on, so every URL pebble hands
# out names Let's Encrypt's host too.
_FRONT_CONFIG = """\
error_log stderr;
pid /run/lets-encrypt-front.pid;
events {{}}
http {{
    access_log off;
    server {{
        listen 127.0.0.1:{front_port} ssl;
        ssl_certificate /etc/dorkos-docs/front-cert.pem;
        ssl_certificate_key /etc/dorkos-docs/front-key.pem;
        proxy_set_header Host $host;
        location = /directory {{
            proxy_pass https://127.0.0.1:{directory_port}/dir;
        }}
        location / {{
            proxy_pass https://127.0.0.1:{directory_port};
        }}
    }}
}}
"""


def _redirect_lets_encrypts_port() -> None:
    """In the run's network: LETS_ENCRYPT_ADDRESS:443 goes to the front's port."""
    if shutil.which("iptables") is None:
        raise AcmeStepFailed(
            "iptables is not installed: the run's stand-in for Let's Encrypt needs it "
            "(apt-get install iptables; Docker's own package depends on it)"
        )
    rule = [
        "iptables", "-t", "nat", "-A", "OUTPUT", "-p", "tcp",
        "-d", f"{LETS_ENCRYPT_ADDRESS}/32", "--dport", "443",
        "-j", "DNAT", "--to-destination", f"127.0.0.1:{FRONT_PORT}",
    ]  # fmt: skip
    done = subprocess.run(rule, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise AcmeStepFailed(f"`{' '.join(rule)}` failed: {done.stderr.strip()}")


def _directory_answers_as_lets_encrypt(directory_ca: Path) -> None:
    context = ssl.create_default_context(cafile=str(directory_ca))
    with (
        socket.create_connection((LETS_ENCRYPT_ADDRESS, 443), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=LETS_ENCRYPT_NAME) as sock,
    ):
        sock.sendall(
            f"GET /directory HTTP/1.1\r\nHost: {LETS_ENCRYPT_NAME}\r\n"
            f"Connection: close\r\n\r\n".encode()
        )
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    if f'"newOrder": "https://{LETS_ENCRYPT_NAME}/'.encode() not in answer:
        raise ConnectionError(f"{LETS_ENCRYPT_DIRECTORY} answered {answer[:300]!r}")


@contextlib.contextmanager
def lets_encrypt(
    client: docker.DockerClient,
    nginx_tag: str,
    workdir: Path,
    network: PrivateNetwork,
    acme: AcmeDirectory,
) -> Iterator[None]:
    """Serve `acme` as Let's Encrypt, in a network made with LETS_ENCRYPT_HOSTS.

    Whatever trusts acme.directory_ca then reaches it at LETS_ENCRYPT_DIRECTORY,
    as a server on the internet reaches Let's Encrypt.
    """
    if network.hosts.get(LETS_ENCRYPT_NAME) != LETS_ENCRYPT_ADDRESS:
        raise ValueError(f"{network.name} does not resolve {LETS_ENCRYPT_NAME}")
    network.call(_redirect_lets_encrypts_port)
    config = workdir / "lets-encrypt-front.conf"
    config.write_text(_FRONT_CONFIG.format(front_port=FRONT_PORT, directory_port=DIRECTORY_PORT))
    with running_container(
        client,
        nginx_tag,
        ["nginx", "-c", "/etc/dorkos-docs/front.conf", "-g", "daemon off;"],
        [
            Mount(str(config), "/etc/dorkos-docs/front.conf"),
            Mount(str(acme.server_cert), "/etc/dorkos-docs/front-cert.pem"),
            Mount(str(acme.server_key), "/etc/dorkos-docs/front-key.pem"),
        ],
        role="lets-encrypt-front",
        network=network,
        ready=lambda: _directory_answers_as_lets_encrypt(acme.directory_ca),
        waiting_for=f"the ACME directory at {LETS_ENCRYPT_DIRECTORY}",
    ):
        yield
