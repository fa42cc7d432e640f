"""A real ACME server on loopback, so "Let's Encrypt" can be tested offline.

pebble (Debian's package) is a small ACME server built for exactly this.
It validates challenges for real: it resolves dorkos.example.com (the run's
private network points it at 127.0.0.1) and fetches the HTTP-01 token from
port 80, or does the TLS-ALPN-01 handshake on port 443, where the proxy
under test listens. Each run gets its own pebble, started first, in its own
private network.
"""

from __future__ import annotations

import contextlib
import json
import ssl
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import trustme
from docker.models.containers import Container

from harness.containers import Mount, log_tail, running_container
from harness.netns import PrivateNetwork

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
    directory_cert = directory_ca.issue_cert("127.0.0.1", "localhost")
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
        yield AcmeDirectory(DIRECTORY_URL, directory_ca_file, issuing_root, container)
