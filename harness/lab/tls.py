"""A certificate authority made afresh for each test run."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SERVER_NAME = "dorkos.example.com"


@dataclass(frozen=True)
class TestCA:
    """Files of a throwaway CA and of a certificate it issued for SERVER_NAME.

    Clients trust `root_cert` and nothing else, so a proxy that serves any
    other certificate fails the HTTPS check.
    """

    root_cert: Path
    root_key: Path
    server_chain: Path
    server_key: Path

    @classmethod
    def create(cls, directory: Path) -> TestCA:
        import trustme  # the lab's: the clients only need SERVER_NAME

        directory.mkdir(parents=True, exist_ok=True)
        ca = trustme.CA(organization_name="DorkOS docs test CA")
        server = ca.issue_cert(SERVER_NAME)
        paths = cls(
            root_cert=directory / "test-ca.pem",
            root_key=directory / "test-ca.key",
            server_chain=directory / "server-chain.pem",
            server_key=directory / "server.key",
        )
        ca.cert_pem.write_to_path(str(paths.root_cert))
        ca.private_key_pem.write_to_path(str(paths.root_key))
        server.private_key_pem.write_to_path(str(paths.server_key))
        paths.server_chain.write_bytes(b"".join(blob.bytes() for blob in server.cert_chain_pems))
        for path in (paths.root_key, paths.server_key):
            path.chmod(0o644)  # read by the proxy's worker user in the container
        return paths
