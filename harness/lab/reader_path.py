"""The reader's path on the Reverse Proxy page, read and run step by step.

The page's "Set up the proxy" section has a tab per proxy, and each tab is
the reader's steps in order: commands in `bash` blocks, and files in blocks
that include a snippet under a title saying where the file goes. `steps()`
reads them as the page gives them.

`nginx_path()` runs the nginx tab in one container of Debian's packages, in
the page's order: from Debian's own nginx.conf and default site, certbot
gets the certificate, the published files go where the page puts them, and
`nginx -t` and the reload run. What it hands back is the proxy the reader
ends with, for the contract; `renew()` then renews the certificate as
certbot's timer does and checks that nginx serves the new one.

`caddy_path()` runs the Caddy tab the same way: Debian's Caddy started as
caddy.service starts it, on the package's own Caddyfile; the published one
in its place; the unit's reload. Caddy then asks Let's Encrypt for its
certificate, which the run's network answers (harness.lab.acme.lets_encrypt).

Every command on a path is matched to what the container runs for it; a
command no runner knows is an error naming the page and line, so the page
cannot gain a step the suite does not run.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import io
import re
import shlex
import socket
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors
from docker.models.containers import Container

from harness.clients.sse_client import Target, tls_handshake
from harness.lab.acme import AcmeDirectory, AcmeStepFailed
from harness.lab.containers import (
    READY_WITHIN_S,
    Mount,
    log_tail,
    run_to_completion,
    running_container,
)
from harness.lab.netns import PrivateNetwork
from harness.lab.snippet_examples import INCLUDE, TITLE
from harness.lab.tls import SERVER_NAME
from harness.proxies.images import DebianImage
from harness.proxies.kind import REPO_ROOT, relative
from harness.proxies.launch import RunningProxy, https_target
from harness.proxies.nginx import CERTBOT_NGINX_IMAGE, NGINX_CONF, with_events_block
from harness.tables import margins

REVERSE_PROXY_PAGE = REPO_ROOT / "docs" / "reverse-proxy.md"
SETUP_HEADING = "## Set up the proxy"
ACCOUNT_EMAIL = f"admin@{SERVER_NAME}"
# A file's title says where it goes; this suffix says it replaces one block.
EVENTS_BLOCK_SUFFIX = " (the events block)"

_HEADING = re.compile(r"^## ", re.MULTILINE)
_TAB = re.compile(r'^=== "(?P<label>[^"]+)"\s*$')
_FENCE = re.compile(r"^(?P<indent>\s*)```(?P<info>.*)$")


class PathError(ValueError):
    """The page's path is not one the suite can run; the message names the line."""


@dataclass(frozen=True)
class Step:
    """One thing the reader does: run a command, or put a file in place."""

    page: Path
    line: int
    command: str | None = None  # as the page shows it, less `sudo`
    snippet: Path | None = None  # the file, for a file step
    place: str | None = None  # where the page says it goes

    @property
    def where(self) -> str:
        return f"{relative(self.page)}:{self.line}"

    def __str__(self) -> str:
        if self.command is not None:
            return f"`{self.command}`"
        return f"{relative(self.snippet) if self.snippet else '?'} as {self.place}"


def _section(page: Path, heading: str) -> tuple[list[str], int, int]:
    """The page's lines, and where the `## ` section under `heading` starts and ends."""
    lines = page.read_text().splitlines()
    try:
        start = lines.index(heading)
    except ValueError:
        raise PathError(f"{relative(page)}: no `{heading}` section") from None
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    return lines, start + 1, end


def steps(page: Path, tab: str, heading: str = SETUP_HEADING) -> list[Step]:
    """The steps of one tab of the page's set-up section, in page order."""
    lines, start, end = _section(page, heading)
    opened = None
    for i in range(start, end):
        found = _TAB.match(lines[i])
        if found and opened is not None:
            end = i
            break
        if found and found.group("label") == tab:
            opened = i + 1
    if opened is None:
        raise PathError(f'{relative(page)}: `{heading}` has no tab "{tab}"')
    return list(_steps_in(page, lines, opened, end))


def section_steps(page: Path, heading: str) -> list[Step]:
    """The steps of a section that has no tabs, in page order."""
    lines, start, end = _section(page, heading)
    return list(_steps_in(page, lines, start, end))


def _steps_in(page: Path, lines: list[str], start: int, end: int) -> Iterator[Step]:
    i = start
    while i < end:
        fence = _FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        indent, info = fence.group("indent"), fence.group("info").strip()
        close = next(
            (j for j in range(i + 1, end) if lines[j].strip() == "```"),
            None,
        )
        if close is None:
            raise PathError(f"{relative(page)}:{i + 1}: a code block that never closes")
        body = [line[len(indent) :] for line in lines[i + 1 : close]]
        language = info.split(maxsplit=1)[0] if info else ""
        if language == "bash":
            for offset, command in _commands(body):
                yield Step(page, i + 2 + offset, command=command)
        else:
            include = next((m for line in body if (m := INCLUDE.match(line))), None)
            title = TITLE.search(info)
            if include and include.group("path").startswith("snippets/"):
                if title is None:
                    raise PathError(
                        f"{relative(page)}:{i + 1}: a file on the reader's path needs a "
                        f'title="..." saying where it goes'
                    )
                snippet = REPO_ROOT / include.group("path")
                yield Step(page, i + 1, snippet=snippet, place=title.group("title"))
        i = close + 1


def _commands(body: list[str]) -> Iterator[tuple[int, str]]:
    """Each command of a bash block (joined at trailing backslashes), less sudo."""
    pending: list[str] = []
    first = 0
    for offset, raw in enumerate(body):
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if not pending:
            first = offset
        pending.append(line.removesuffix("\\").strip())
        if not line.endswith("\\"):
            yield first, _without_sudo(" ".join(pending))
            pending = []


def _without_sudo(command: str) -> str:
    return " && ".join(part.strip().removeprefix("sudo ") for part in command.split("&&"))


# --- the nginx path --------------------------------------------------------


_OUTPUT = "/run/dorkos-docs-step.out"


def _output(container: Container, command: list[str]) -> tuple[int | None, str]:
    """Run a command in the container: its exit code and output.

    The output goes to a file in the container, read back as Docker copies
    it out: a check that reads what a command printed must not depend on an
    exec's output stream (see _read_file).
    """
    code, _ = container.exec_run(
        ["sh", "-c", f'"$@" > {_OUTPUT} 2>&1', "sh", *command],
        # certbot trusts the ACME server's own CA, as it trusts Let's Encrypt's.
        environment={"REQUESTS_CA_BUNDLE": "/etc/dorkos-docs/acme-directory-ca.pem"},
    )
    return code, _read_file(container, _OUTPUT)


def _exec(container: Container, command: list[str], step: Step, acme: AcmeDirectory) -> str:
    code, text = _output(container, command)
    if code != 0:
        raise AcmeStepFailed(
            f"{step.where}: {step} failed (ran `{shlex.join(command)}`, exit {code}):\n"
            f"{text.rstrip()}\n--- ACME server log (last lines) ---\n{acme.log_tail()}\n"
            f"--- container log (last lines) ---\n{log_tail(container)}"
        )
    return text


def non_interactive(command: list[str], acme: AcmeDirectory) -> list[str]:
    """What a reader answers at certbot's prompts, and where the CA is."""
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


def _unit_line(text: str, unit: str, key: str) -> list[str]:
    found = re.findall(rf"^{key}=-?(.+)$", text, re.MULTILINE)
    if len(found) != 1:
        raise PathError(f"{unit} in the image has no one {key}= line: {text[:300]!r}")
    return shlex.split(found[0])


def unit_command(container: Container, service: str, key: str) -> list[str]:
    """What systemd runs for the package's unit: `systemctl reload` runs ExecReload."""
    unit = f"/lib/systemd/system/{service}.service"
    return _unit_line(_read_file(container, unit), unit, key)


def unit_command_in_image(
    client: docker.DockerClient, tag: str, service: str, key: str
) -> list[str]:
    """As unit_command, read from the image before the path's container starts."""
    unit = f"/lib/systemd/system/{service}.service"
    code, text = run_to_completion(client, tag, ["cat", unit], [], role=f"{service}-unit")
    if code != 0:
        raise PathError(f"the image {tag} has no {unit}: {text[:300]}")
    return _unit_line(text, unit, key)


@dataclass
class NginxPath:
    """Where the nginx tab's steps left the reader."""

    proxy: RunningProxy
    acme: AcmeDirectory
    steps: list[Step]

    def renew(self) -> str:
        """Force a renewal as certbot's timer would; nginx must serve the new certificate."""
        container = self.proxy.container
        before = self.proxy.network.call(_served_certificate, self.proxy.target)
        command = [
            "certbot",
            "renew",
            "--force-renewal",
            "--no-random-sleep-on-renew",
            "--server",
            self.acme.url,
        ]
        step = Step(self.steps[0].page, 0, command="certbot renew (certbot's timer)")
        _exec(container, command, step, self.acme)
        after = self.proxy.network.call(_certificate_other_than, self.proxy.target, before)
        if after == before:
            raise AssertionError(
                f"{RENEWED_WITHIN_S:.0f} s after `certbot renew --force-renewal`, nginx still "
                f"serves the old certificate (sha256 {before}…): renewals would not reach "
                f"readers until nginx reloads"
            )
        return (
            f"certbot renew: nginx serves the renewed certificate (sha256 {before}… then {after}…)"
        )


# certbot reloads nginx and waits a second; new workers may take longer on a
# busy machine, so the check waits for the new certificate itself.
RENEWED_WITHIN_S = 30.0


def _certificate_other_than(target: Target, before: str) -> str:
    """The served certificate once it is not `before`, or `before` after the bound."""
    started = time.monotonic()
    while True:
        served = _served_certificate(target)
        waited = time.monotonic() - started
        if served != before:
            margins.observe("renewed certificate served", waited, RENEWED_WITHIN_S, "nginx path")
            return served
        if waited > RENEWED_WITHIN_S:
            return served
        time.sleep(0.1)  # poll interval of the handshake above


def _served_certificate(target: Target) -> str:
    """A fingerprint of the certificate the proxy serves."""
    connection = tls_handshake(target)
    with connection:
        der = connection.getpeercert(binary_form=True)
    if der is None:
        raise AssertionError(f"{target.base_url} sent no certificate")
    return hashlib.sha256(der).hexdigest()[:16]


def _put_file(container: Container, path: str, data: bytes) -> None:
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        info = tarfile.TarInfo(Path(path).name)
        info.size, info.mode = len(data), 0o644
        tar.addfile(info, io.BytesIO(data))
    if not container.put_archive(str(Path(path).parent), archive.getvalue()):
        raise PathError(f"could not write {path} in {container.name}")


def _read_file(container: Container, path: str) -> str:
    """A file of the container, as Docker copies it out (not through a command's output)."""
    try:
        stream, _ = container.get_archive(path)
    except docker.errors.NotFound:
        raise PathError(f"{path} does not exist in {container.name}") from None
    with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
        member = tar.extractfile(Path(path).name)
        if member is None:
            raise PathError(f"{path} in {container.name} is not a file")
        return member.read().decode()


def _http_answers() -> None:
    with socket.create_connection(("127.0.0.1", 80), timeout=2) as sock:
        sock.sendall(
            f"HEAD / HTTP/1.1\r\nHost: {SERVER_NAME}\r\nConnection: close\r\n\r\n".encode()
        )
        if not sock.recv(12).startswith(b"HTTP/1.1"):
            raise ConnectionError("port 80 did not answer HTTP")


# What each command of a path is, as the container runs it: a pattern and
# the runner's method for it, per proxy.
PATH_COMMANDS: dict[str, tuple[tuple[re.Pattern[str], str], ...]] = {
    "nginx": (
        (re.compile(r"^apt(-get)? install\b"), "_installed"),
        (re.compile(r"^certbot certonly --nginx\b"), "_certbot"),
        (re.compile(r"^nginx -t$"), "_check_config"),
        (re.compile(r"^systemctl reload nginx$"), "_reload"),
    ),
    "caddy": (
        (re.compile(r"^apt(-get)? install\b"), "_installed"),
        (re.compile(r"^systemctl reload caddy$"), "_reload"),
    ),
}


def path_commands(step: Step, proxy: str) -> list[tuple[str, list[str]]]:
    """Each command of a step (split at `&&`), with what runs it; an unknown one is an error."""
    assert step.command is not None
    found = []
    for part in step.command.split(" && "):
        known = PATH_COMMANDS[proxy]
        runner = next((name for pattern, name in known if pattern.match(part)), None)
        if runner is None:
            raise PathError(
                f"{step.where}: no test runs `{part}` on the {proxy} path; "
                f"teach harness/lab/reader_path.py what it does, or take it off the page"
            )
        found.append((runner, shlex.split(part)))
    return found


class _Runner:
    """Runs each step of a path in the container, as the reader's shell would."""

    proxy = ""

    def __init__(self, container: Container, image: DebianImage, acme: AcmeDirectory) -> None:
        self.container, self.image, self.acme = container, image, acme

    def run(self, step: Step) -> None:
        if step.snippet is not None:
            self._place(step)
            return
        for runner, words in path_commands(step, self.proxy):
            getattr(self, runner)(step, words)

    def _installed(self, step: Step, words: list[str]) -> None:
        packages = tuple(w for w in words[2:] if not w.startswith("-"))
        if set(packages) != set(self.image.packages):
            raise PathError(
                f"{step.where}: the page installs {', '.join(packages)}; the image the path "
                f"runs in ({self.image.key}) is built with {', '.join(self.image.packages)}"
            )

    def _reload(self, step: Step, words: list[str]) -> None:
        command = unit_command(self.container, self.proxy, "ExecReload")
        _exec(self.container, command, step, self.acme)

    def _place(self, step: Step) -> None:
        assert step.snippet is not None and step.place is not None
        if not step.place.startswith(f"/etc/{self.proxy}/"):
            raise PathError(f"{step.where}: {self.proxy} does not read {step.place}")
        _put_file(self.container, step.place, step.snippet.read_bytes())


class _NginxRunner(_Runner):
    proxy = "nginx"

    def _certbot(self, step: Step, words: list[str]) -> None:
        # The page says certonly changes none of nginx's files.
        before = self._nginx_files()
        _exec(self.container, non_interactive(words, self.acme), step, self.acme)
        changed = sorted(set(self._nginx_files().splitlines()) ^ set(before.splitlines()))
        if changed:
            raise PathError(f"{step.where}: {step} changed files of nginx's: {changed}")

    def _nginx_files(self) -> str:
        return _exec(
            self.container,
            ["sh", "-c", "find /etc/nginx -type f | sort | xargs sha256sum"],
            Step(Path(), 0, command="checksums of /etc/nginx"),
            self.acme,
        )

    def _check_config(self, step: Step, words: list[str]) -> None:
        said = _exec(self.container, words, step, self.acme)
        # What the page tells the reader to look for.
        if "test is successful" not in said:
            raise PathError(f"{step.where}: {step} did not say `test is successful`:\n{said}")

    def _place(self, step: Step) -> None:
        assert step.snippet is not None and step.place is not None
        if not step.place.endswith(EVENTS_BLOCK_SUFFIX):
            super()._place(step)
            return
        place = step.place.removesuffix(EVENTS_BLOCK_SUFFIX)
        if place != NGINX_CONF:
            raise PathError(f"{step.where}: an events block goes in {NGINX_CONF}, not {place}")
        merged = with_events_block(_read_file(self.container, place), step.snippet.read_text())
        _put_file(self.container, place, merged.encode())


class _CaddyRunner(_Runner):
    proxy = "caddy"


@contextlib.contextmanager
def nginx_path(
    client: docker.DockerClient,
    tag: str,
    path: list[Step],
    acme: AcmeDirectory,
    network: PrivateNetwork,
) -> Iterator[NginxPath]:
    """Run the nginx tab's steps in order, from a fresh install of the packages."""
    image = CERTBOT_NGINX_IMAGE
    for step in path:  # before any container starts: every command is known
        if step.command is not None:
            path_commands(step, "nginx")
    with running_container(
        client,
        tag,
        ["nginx", "-g", "daemon off;"],
        [Mount(str(acme.directory_ca), "/etc/dorkos-docs/acme-directory-ca.pem")],
        role=image.key,
        network=network,
        ready=_http_answers,
        **image.container_options(),
        waiting_for="Debian's nginx answering HTTP on 127.0.0.1:80, as installed",
    ) as container:
        runner = _NginxRunner(container, image, acme)
        for step in path:
            runner.run(step)
        target = https_target(acme)
        network.call(_wait_for_tls, target, container, "nginx")
        _check_files(container, path)
        _check_only_placed_files(container, path, "/etc/nginx/conf.d")
        label = f"the nginx path of {relative(path[0].page)}"
        proxy = RunningProxy(image, label, container, target, network)
        yield NginxPath(proxy, acme, path)


# Debian's caddy.service, as the package installs it, and the trust store a
# server has: there, Let's Encrypt's certificate chains to a root in it.
CADDY_UNIT = "/lib/systemd/system/caddy.service"
TRUST_STORE = "/etc/ssl/certs/ca-certificates.crt"


@contextlib.contextmanager
def caddy_path(
    client: docker.DockerClient,
    image: DebianImage,
    tag: str,
    path: list[Step],
    acme: AcmeDirectory,
    network: PrivateNetwork,
) -> Iterator[RunningProxy]:
    """Run the Caddy tab's steps in order, from Debian's package as installed.

    Caddy starts as caddy.service starts it, on the package's own Caddyfile;
    the page's Caddyfile replaces it and the unit's reload loads it. Nothing
    names the ACME server: Caddy asks Let's Encrypt, which the run's network
    serves (harness.lab.acme.lets_encrypt).
    """
    for step in path:  # before any container starts: every command is known
        if step.command is not None:
            path_commands(step, "caddy")
    start = unit_command_in_image(client, tag, "caddy", "ExecStart")
    with running_container(
        client,
        tag,
        start,
        [Mount(str(acme.directory_ca), TRUST_STORE)],
        role=f"{image.key}-path",
        network=network,
        ready=_http_answers,
        waiting_for="Debian's Caddy serving its welcome page on 127.0.0.1:80, as installed",
    ) as container:
        runner = _CaddyRunner(container, image, acme)
        for step in path:
            runner.run(step)
        target = https_target(acme)
        network.call(_wait_for_tls, target, container, "Caddy")
        _check_files(container, path)
        label = f"the Caddy path of {relative(path[0].page)}"
        yield RunningProxy(image, label, container, target, network)


def _check_files(container: Container, path: list[Step]) -> None:
    """The reader ends with exactly the published files, byte for byte."""
    for step in path:
        if step.snippet is None or step.place is None:
            continue
        place = step.place.removesuffix(EVENTS_BLOCK_SUFFIX)
        held = _read_file(container, place)
        if step.place.endswith(EVENTS_BLOCK_SUFFIX):
            if step.snippet.read_text() not in held:
                raise AssertionError(f"{place} at the end does not hold {relative(step.snippet)}")
        elif held != step.snippet.read_text():
            diff = "".join(
                difflib.unified_diff(
                    step.snippet.read_text().splitlines(keepends=True),
                    held.splitlines(keepends=True),
                    fromfile=relative(step.snippet),
                    tofile=f"{place}, at the end",
                )
            )
            raise AssertionError(
                f"{place} at the end of the path is not {relative(step.snippet)} byte for "
                f"byte:\n{diff[:3000]}"
            )


def _check_only_placed_files(container: Container, path: list[Step], folder: str) -> None:
    """A folder the proxy reads whole holds only what the page put there."""
    code, output = _output(container, ["ls", folder])
    listed = output.split()
    placed = {Path(s.place).name for s in path if s.place and s.place.startswith(f"{folder}/")}
    if code != 0 or set(listed) != placed:
        raise AssertionError(f"{folder} holds {listed}; the page put {sorted(placed)}")


def _wait_for_tls(target: Target, container: Container, proxy: str) -> None:
    give_up = time.monotonic() + READY_WITHIN_S
    while True:
        try:
            tls_handshake(target).close()
            return
        except OSError as error:
            if time.monotonic() > give_up:
                raise AcmeStepFailed(
                    f"after the {proxy} path's steps, {proxy} did not serve a certificate from "
                    f"the ACME server on port 443: {error}\n--- {proxy} log ---\n"
                    f"{log_tail(container)}"
                ) from error
            time.sleep(0.1)  # poll interval of the handshake above
