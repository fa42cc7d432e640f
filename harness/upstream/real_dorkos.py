"""A real DorkOS server on loopback, for `make conformance`.

DorkOS comes from one of two places, in this order:

- a DorkOS source checkout named by DORKOS_SOURCE, built (its server's
  `apps/server/dist/index.js` and its web app's `apps/client/dist/`);
- the npm package `dorkos`, which is how DorkOS's users install it,
  installed into .cache/dorkos-npm where the registry serves it.

It needs Node.js 22 or later: DORKOS_NODE names the `node` to use, else the
first on PATH. Each start gets a throwaway DORK_HOME, login off, the reader's
name in DORKOS_TRUSTED_HOSTS, and DorkOS's own scripted test runtime
(DORKOS_TEST_RUNTIME), so no agent or account is needed.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx

from harness.lab.netns import PrivateNetwork
from harness.proxies.kind import REPO_ROOT
from harness.upstream.conformance import TRUSTED, Upstream

NODE_MAJOR_NEEDED = 22
NPM_PREFIX = REPO_ROOT / ".cache" / "dorkos-npm"
# DorkOS answers about 9 s after it starts on two cores; far from this.
READY_WITHIN_S = 120.0
STOP_WITHIN_S = 15.0
START_ATTEMPTS = 5
T = TypeVar("T")


class DorkosUnavailable(RuntimeError):
    """No DorkOS to run, or no Node.js to run it with: says which and how to fix it."""


class DorkosCrashed(DorkosUnavailable):
    """DorkOS started and exited before it answered."""


@dataclass(frozen=True)
class DorkosBuild:
    entry: Path  # the script `node` runs
    client_dist: Path | None  # the built web app, when it is not beside the entry
    version: str
    commit: str
    source: str  # what the table says it came from

    @property
    def label(self) -> str:
        return f"DorkOS {self.version}"


def find_node() -> Path:
    named = os.environ.get("DORKOS_NODE")
    node = Path(named) if named else (Path(p) if (p := shutil.which("node")) else None)
    if node is None or not node.exists():
        raise DorkosUnavailable(
            f"no Node.js found ({'DORKOS_NODE=' + named if named else 'none on PATH'}); "
            f"DorkOS needs Node.js {NODE_MAJOR_NEEDED} or later: set DORKOS_NODE to its `node`"
        )
    version = subprocess.run([node, "--version"], capture_output=True, text=True).stdout.strip()
    found = re.match(r"v(\d+)\.", version)
    if not found or int(found[1]) < NODE_MAJOR_NEEDED:
        raise DorkosUnavailable(
            f"{node} is Node.js {version or '(no version)'}; DorkOS needs "
            f"{NODE_MAJOR_NEEDED} or later: set DORKOS_NODE to a newer `node` (the npm "
            f"package `node@24` carries one: npm install --prefix DIR node@24)"
        )
    return node


def node_version() -> str:
    node = find_node()
    return subprocess.run([node, "--version"], capture_output=True, text=True).stdout.strip()


def find_build() -> DorkosBuild:
    source = os.environ.get("DORKOS_SOURCE")
    if source:
        return _from_source(Path(source))
    installed = _from_npm()
    if installed is not None:
        return installed
    raise DorkosUnavailable(
        "no DorkOS to run: the npm registry does not serve the package `dorkos` here, and "
        "DORKOS_SOURCE is not set. Set DORKOS_SOURCE to a built DorkOS checkout "
        "(pnpm install && pnpm build in it), e.g. DORKOS_SOURCE=~/src/dorkos make conformance"
    )


def _from_source(checkout: Path) -> DorkosBuild:
    if not (checkout / "apps" / "server" / "package.json").exists():
        raise DorkosUnavailable(f"DORKOS_SOURCE={checkout} is not a DorkOS checkout")
    # The bundle the npm package ships (`pnpm --filter=dorkos run build`),
    # else the server and web app as the monorepo builds them.
    bundle = checkout / "packages" / "cli" / "dist" / "server" / "index.js"
    entry, client = bundle, bundle.parent.parent / "client"
    if not bundle.exists():
        entry = checkout / "apps" / "server" / "dist" / "index.js"
        client = checkout / "apps" / "client" / "dist"
    missing = [p for p in (entry, client / "index.html") if not p.exists()]
    if missing:
        raise DorkosUnavailable(
            f"DORKOS_SOURCE={checkout} is not built: {', '.join(map(str, missing))} missing "
            f"(run `pnpm install && pnpm --filter=dorkos run build` there)"
        )
    version_file = checkout / "VERSION"
    version = (
        version_file.read_text().strip()
        if version_file.exists()
        else json.loads((checkout / "apps" / "server" / "package.json").read_text())["version"]
    )
    commit = subprocess.run(
        ["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    return DorkosBuild(entry, client, version, commit or "unknown", "built from its source")


def _from_npm() -> DorkosBuild | None:
    package = NPM_PREFIX / "node_modules" / "dorkos"
    if not package.exists():
        npm = shutil.which("npm")
        if npm is None:
            return None
        served = subprocess.run(
            [npm, "view", "dorkos", "version"], capture_output=True, text=True, timeout=120
        )
        if served.returncode != 0 or not served.stdout.strip():
            return None
        subprocess.run(
            [npm, "install", "--prefix", str(NPM_PREFIX), f"dorkos@{served.stdout.strip()}"],
            check=True,
        )
    manifest = json.loads((package / "package.json").read_text())
    bins = manifest.get("bin", {})
    entry = package / str(bins.get("dorkos") if isinstance(bins, dict) else bins)
    return DorkosBuild(entry, None, manifest["version"], "npm", "the npm package `dorkos`")


@contextlib.contextmanager
def running(
    build: DorkosBuild, *, port: int, network: PrivateNetwork | None = None
) -> Iterator[Upstream]:
    """DorkOS serving `localhost:port` until the block ends; its Upstream.

    In `network`, if given: a proxy run's private network, where the
    published configs find it as localhost:4242.
    """
    inside: Callable[..., Any] = network.call if network else (lambda f, *a, **k: f(*a, **k))
    node = find_node()
    home = Path(tempfile.mkdtemp(prefix="dork-home-"))
    (home / "work").mkdir()
    log_path = home / f"dorkos-{port}.log"
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "NODE_ENV": "production",
        "DORK_HOME": str(home / ".dork"),
        "DORKOS_PORT": str(port),
        "DORKOS_TRUSTED_HOSTS": TRUSTED,
        "DORKOS_TEST_RUNTIME": "true",
        # Sessions stream only for a working directory inside DorkOS's
        # boundary (the home directory); its default is beside its own code.
        "DORKOS_DEFAULT_CWD": str(home),
        "DORKOS_TELEMETRY_DISABLED": "1",
        "DO_NOT_TRACK": "1",
    }
    if build.client_dist is not None:
        env["CLIENT_DIST_PATH"] = str(build.client_dist)
    with open(log_path, "wb") as log:
        # Started from a thread inside `network`: the process lives there.
        process = inside(
            subprocess.Popen,
            [str(node), str(build.entry)],
            cwd=home,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        host = inside(_wait_until_ready, process, port, log_path)
        yield Upstream(build.label, host, port)
    finally:
        _stop(process)
        shutil.rmtree(home, ignore_errors=True)


def with_dorkos(
    build: DorkosBuild,
    port: int,
    work: Callable[[Upstream], T],
    network: PrivateNetwork | None = None,
) -> T:
    """`work` done against a DorkOS started for it, started again if it crashes at start.

    DorkOS 0.62 built on Node 24 here aborts during start-up about half the
    time (better-sqlite3's `Assertion failed: (env) != nullptr` in
    RemoveEnvironmentCleanupHook, after "AdapterManager initialized"). That
    is DorkOS's own crash, before it answers anything; it is reported, and
    a later start is used.
    """
    crashes = []
    for _ in range(START_ATTEMPTS):
        try:
            with running(build, port=port, network=network) as upstream:
                print(f"{build.label} ({build.source}) answers on {upstream.base_url}", flush=True)
                return work(upstream)
        except DorkosCrashed as crash:
            crashes.append(str(crash))
            print(f"DorkOS crashed before it answered; starting it again:\n{crash}", flush=True)
    raise DorkosUnavailable(f"DorkOS crashed at all {START_ATTEMPTS} starts:\n" + crashes[-1])


def _wait_until_ready(process: subprocess.Popen[bytes], port: int, log_path: Path) -> str:
    """The loopback address DorkOS answers /api/health on, once it does."""
    deadline = time.monotonic() + READY_WITHIN_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise DorkosCrashed(
                f"DorkOS exited with {process.returncode} before it answered:\n{_tail(log_path)}"
            )
        for host in ("::1", "127.0.0.1"):
            shown = f"[{host}]" if ":" in host else host
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://{shown}:{port}/api/health", timeout=2).status_code == 200:
                    return host
        time.sleep(0.25)  # polling a real signal: the health route answering
    raise DorkosUnavailable(
        f"DorkOS did not answer GET /api/health on localhost:{port} within "
        f"{READY_WITHIN_S:.0f} s:\n{_tail(log_path)}"
    )


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=STOP_WITHIN_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _tail(log_path: Path, lines: int = 30) -> str:
    text = log_path.read_text(errors="replace") if log_path.exists() else "(no log)"
    return "\n".join(text.splitlines()[-lines:])
