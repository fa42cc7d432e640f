"""What one test run shares: the engine, images, test CA and mock upstream."""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
import time
from collections.abc import Callable, Hashable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import docker

from harness.lab.acme import LETS_ENCRYPT_HOSTS, AcmeDirectory, AcmeStepFailed, lets_encrypt, pebble
from harness.lab.containers import (
    ContainerFailed,
    docker_client,
    remove_this_runs_containers,
    sweep_leftovers,
)
from harness.lab.netns import private_network
from harness.lab.reader_path import NginxPath, Step, caddy_path, nginx_path
from harness.lab.tls import SERVER_NAME, TestCA
from harness.proxies import nginx as nginx_main
from harness.proxies.caddy import PATH_IMAGE as CADDY_PATH_IMAGE
from harness.proxies.images import PEBBLE_IMAGE, ProxyImage
from harness.proxies.kind import Certificates, relative
from harness.proxies.launch import HTTPS_PORT, RunningProxy, proxy_version, run_proxy
from harness.proxies.nginx import CERTBOT_NGINX_IMAGE
from harness.proxies.registry import (
    PROXIES_VARIABLE,
    kind,
    selected_images,
    selected_proxies,
)
from harness.tables.tested_with import Outcome, steps_column
from harness.upstream.mock_dorkos import MockDorkOS, MockSettings

T = TypeVar("T")
# Where DorkOS listens by default on Debian: its default DORKOS_HOST is
# `localhost`, and Node 20 (measured in a Debian 12 container) binds that to
# ::1 alone. Runs model it there; the disruption runs put it on 127.0.0.1,
# so every config is run against both.
DORKOS_LISTENS_ON = ("::1",)
# Work at once: every snippet's contract and disruptions on every version,
# each version's measurement of its lines and each test's measure (these two
# have threads of their own for their runs): 47 in a whole run. With them
# all under way at once, the start-ups end together, sooner than when some
# wait for a thread (conftest.py queues the longest first for when they do).
BACKGROUND_RUNS = 48


@dataclass(frozen=True)
class RunTiming:
    """Where one run's time went: getting the proxy up, then the checks."""

    label: str
    startup_s: float  # config check, container start, certificates, ready
    total_s: float


class ProxyNotSelected(LookupError):
    """A test asked for a proxy the run does not cover."""


@dataclass
class ProxyLab:
    client: docker.DockerClient
    mock: MockDorkOS
    ca: TestCA
    workdir: Path
    images: tuple[ProxyImage, ...]
    # Every property's outcome, for the Tested-with table.
    outcomes: list[Outcome] = field(default_factory=list)
    # Rewrite generated files from this run instead of checking them.
    update_generated: bool = False
    _tags: dict[str, str] = field(default_factory=dict)
    _versions: dict[str, str] = field(default_factory=dict)
    _run_numbers: Iterator[int] = field(default_factory=itertools.count)
    # Runs happen on many threads at once; image builds and version queries
    # happen once each, under this lock.
    _lock: threading.RLock = field(default_factory=threading.RLock)
    _pool: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(BACKGROUND_RUNS, thread_name_prefix="run")
    )
    _background: dict[Hashable, Future[Any]] = field(default_factory=dict)
    timings: list[RunTiming] = field(default_factory=list)
    # Runs starting up, and background work waiting for a thread.
    _starting: int = 0
    _queued: int = 0

    def images_for(self, proxy: str) -> list[ProxyImage]:
        """Every version of the proxy this run covers.

        A proxy PROXIES leaves out is an error, not an empty list: a test
        that found no version to run would pass without running anything.
        """
        self._require_selected(proxy)
        return [image for image in self.images if image.proxy == proxy]

    @staticmethod
    def _require_selected(proxy: str) -> None:
        if proxy not in selected_proxies():
            raise ProxyNotSelected(
                f"this run covers {', '.join(selected_proxies())} ({PROXIES_VARIABLE}), "
                f"not {proxy}: a test that runs {proxy} needs @pytest.mark.proxies({proxy!r})"
            )

    def tag(self, image: ProxyImage) -> str:
        with self._lock:
            if image.key not in self._tags:
                self._tags[image.key] = image.ensure(self.client)
            return self._tags[image.key]

    def version(self, image: ProxyImage) -> str:
        with self._lock:
            if image.key not in self._versions:
                self._versions[image.key] = proxy_version(self.client, image, self.tag(image))
            return self._versions[image.key]

    def in_background(self, key: Hashable, work: Callable[[], T]) -> Future[T]:
        """Start `work` once per key, beside every other run; its future.

        Each run spends most of its time waiting out a minute of silence,
        so the suite starts them all early and the tests collect results.
        """
        with self._lock:
            if key not in self._background:
                self._queued += 1

                def when_its_turn_comes() -> T:
                    with self._lock:
                        self._queued -= 1
                    return work()

                self._background[key] = self._pool.submit(when_its_turn_comes)
            return self._background[key]

    @contextlib.contextmanager
    def queued_together(self) -> Iterator[None]:
        """Background work started inside the block is queued in the order
        it was started: runs already going that start work of their own wait
        until the block ends to add it."""
        with self._lock:
            yield

    def close(self) -> None:
        """Wait for runs under way (each removes its containers); drop the rest."""
        self._pool.shutdown(wait=True, cancel_futures=True)

    def interrupt(self) -> list[str]:
        """Stop every run now (Ctrl-C): its proxies go, so no check waits on.

        Checks that were waiting on a proxy then fail at once, and each run's
        own clean-up finds its containers gone. What was removed is returned.
        """
        self._pool.shutdown(wait=False, cancel_futures=True)
        return remove_this_runs_containers(self.client)

    def record(
        self, snippet: str, image: ProxyImage, prop: str, passed: bool, *, steps: bool = False
    ) -> None:
        """One outcome for the Tested-with table; `steps`: of a tab's steps run whole."""
        column = steps_column(image.key) if steps else image.key
        version = self.version(image)
        self.outcomes.append(
            Outcome(snippet, column, image.proxy, version, image.source, prop, passed)
        )

    @contextlib.contextmanager
    def _timed(self, label: str) -> Iterator[Callable[[], None]]:
        """Times a run; the caller calls the yielded function once it is up."""
        began = time.monotonic()
        ready_at: list[float] = []
        self._count_starting(+1)

        def up() -> None:
            ready_at.append(time.monotonic())
            self._count_starting(-1)

        try:
            yield up
        finally:
            if ready_at:
                self.timings.append(RunTiming(label, ready_at[0] - began, time.monotonic() - began))
            else:
                self._count_starting(-1)

    def _count_starting(self, change: int) -> None:
        with self._lock:
            self._starting += change

    def wait_for_start_ups(self, limit_s: float = 300.0) -> None:
        """Until no work waits for a thread and no more runs are starting up
        than the machine has cores, or `limit_s`.

        Start-ups keep both cores busy; what runs then slows every run's.
        Tests that need no engine wait here, and run while the runs wait out
        their silence; the last start-up or two (a run's second proxy, a
        start-up the burst made slow) need not hold them up. Only the order
        of work depends on this, never a result.
        """
        cores = os.cpu_count() or 2
        deadline = time.monotonic() + limit_s
        quiet_polls = 0
        while quiet_polls < 3 and time.monotonic() < deadline:
            with self._lock:
                busy = self._starting > cores or self._queued > 0
            quiet_polls = 0 if busy else quiet_polls + 1
            time.sleep(1.0)

    def _main_config(
        self,
        image: ProxyImage,
        workdir: Path,
        one_core: bool,
        events: Path | None,
        log_level: str | None = None,
    ) -> Path | None:
        if not one_core and events is None and log_level is None:
            return None
        return nginx_main.debian_nginx_conf(
            self.client,
            image,
            self.tag(image),
            workdir,
            events=events,
            one_core=one_core,
            log_level=log_level,
        )

    def run_dir(self, role: str) -> Path:
        """A folder of the run's own: runs overlap, and each writes files."""
        with self._lock:
            number = next(self._run_numbers)
        folder = self.workdir / f"run-{number:03d}-{role}"
        folder.mkdir(parents=True)
        return folder

    @contextlib.contextmanager
    def run(
        self,
        image: ProxyImage,
        snippet: Path,
        *,
        acme: bool = False,
        events: Path | None = None,
        one_core: bool = False,
        shown_as: str | None = None,
        port: int = HTTPS_PORT,
        nginx_log_level: str | None = None,
        with_mock: bool = True,
        mock: MockDorkOS | None = None,
        dorkos_on: tuple[str, ...] = DORKOS_LISTENS_ON,
        hosts: dict[str, str] | None = None,
        companion: bool = True,
        check: bool = True,
    ) -> Iterator[RunningProxy]:
        """Serve one published snippet on port 443 of a private network.

        With `acme`, the proxy gets its certificate from an ACME server of
        its own, started first (Caddy's automatic HTTPS); otherwise from the
        test CA. The mock upstream listens on that network's port 4242.
        nginx runs Debian's nginx.conf with `events` (a published fragment)
        in place of its events block if given, and as on a one-core server
        with `one_core`. `shown_as` is what messages call the snippet, when
        it is not a file of the repository (a variant). `port` is where the
        config serves HTTPS, if not 443. `nginx_log_level` sets the level of
        Debian's error log, to see what it leaves out by default. `hosts`
        are names the proxy resolves, as a Compose service's name. Without
        `companion`, the proxy's published companion file (Apache's worker
        settings) is left out, to show what it is for. Without `check`, the
        proxy's own config check is not run first (see launch.serving).
        """
        workdir = self.run_dir(image.key)
        proxy_kind = kind(image.proxy)
        self._require_selected(image.proxy)
        main_config = self._main_config(image, workdir, one_core, events, nginx_log_level)
        served = shown_as or relative(snippet)
        if main_config is not None:
            served += f", {nginx_main.describe(events, one_core)}"
        elif proxy_kind.companion is not None and companion:
            main_config = proxy_kind.companion
            served += f", with {relative(main_config)}"
        # A proxy whose config can't name an ACME server asks "Let's Encrypt".
        as_lets_encrypt = proxy_kind.acme_as_lets_encrypt
        if as_lets_encrypt:
            acme, hosts = True, {**LETS_ENCRYPT_HOSTS, **(hosts or {})}
        label = f"{served} on {image.description}"
        with contextlib.ExitStack() as stack:
            up = stack.enter_context(self._timed(label))
            network = stack.enter_context(private_network(f"the private network of {label}", hosts))
            certificates: Certificates = self.ca
            if acme:
                certificates = stack.enter_context(
                    pebble(self.client, self.tag(PEBBLE_IMAGE), workdir / "acme", network)
                )
            if as_lets_encrypt:
                assert isinstance(certificates, AcmeDirectory)
                stack.enter_context(
                    lets_encrypt(
                        self.client, self.tag(CERTBOT_NGINX_IMAGE), workdir, network, certificates
                    )
                )
            try:
                proxy = stack.enter_context(
                    run_proxy(
                        self.client,
                        image,
                        self.tag(image),
                        snippet,
                        certificates,
                        workdir,
                        network,
                        main_config,
                        served,
                        port,
                        check,
                    )
                )
            except ContainerFailed as error:
                if not isinstance(certificates, AcmeDirectory):
                    raise
                # Most likely the certificate never came: show the CA's side too.
                raise AcmeStepFailed(
                    f"ACME step `obtain a certificate for {SERVER_NAME}` did not complete:\n"
                    f"{error}\n--- ACME server log (last lines) ---\n{certificates.log_tail()}"
                ) from error
            if with_mock:
                dorkos = mock or self.mock
                proxy.dorkos = stack.enter_context(dorkos.listening_in(network, dorkos_on))
            up()
            yield proxy

    @contextlib.contextmanager
    def nginx_path(
        self,
        path: list[Step],
        *,
        mock: MockDorkOS | None = None,
        dorkos_on: tuple[str, ...] = DORKOS_LISTENS_ON,
    ) -> Iterator[NginxPath]:
        """Run the page's nginx steps in order, from Debian's packages on.

        `mock` and `dorkos_on` are as for run().
        """
        image = CERTBOT_NGINX_IMAGE
        workdir = self.run_dir(image.key)
        label = f"the nginx path of the Reverse Proxy page on {image.description}"
        with (
            self._timed(label) as up,
            private_network(f"the private network of {label}") as network,
            pebble(self.client, self.tag(PEBBLE_IMAGE), workdir / "acme", network) as acme,
            nginx_path(self.client, self.tag(image), path, acme, network) as result,
            (mock or self.mock).listening_in(network, dorkos_on) as dorkos,
        ):
            result.proxy.dorkos = dorkos
            up()
            yield result

    @contextlib.contextmanager
    def caddy_path(
        self,
        path: list[Step],
        *,
        mock: MockDorkOS | None = None,
        dorkos_on: tuple[str, ...] = DORKOS_LISTENS_ON,
    ) -> Iterator[RunningProxy]:
        """Run the page's Caddy steps in order, from Debian's package on.

        The Caddyfile names no ACME server, so the run's network serves the
        ACME server as Let's Encrypt. `mock` and `dorkos_on` are as for run().
        """
        image = CADDY_PATH_IMAGE
        workdir = self.run_dir(f"{image.key}-path")
        label = f"the Caddy path of the Reverse Proxy page on {image.description}"
        with (
            self._timed(label) as up,
            private_network(f"the private network of {label}", LETS_ENCRYPT_HOSTS) as network,
            pebble(self.client, self.tag(PEBBLE_IMAGE), workdir / "acme", network) as acme,
            lets_encrypt(self.client, self.tag(CERTBOT_NGINX_IMAGE), workdir, network, acme),
            caddy_path(self.client, image, self.tag(image), path, acme, network) as proxy,
            (mock or self.mock).listening_in(network, dorkos_on) as dorkos,
        ):
            proxy.dorkos = dorkos
            up()
            yield proxy


@contextlib.contextmanager
def proxy_lab(workdir: Path, *, update_generated: bool = False) -> Iterator[ProxyLab]:
    with contextlib.closing(docker_client()) as client:
        removed = sweep_leftovers(client)
        if removed:
            print(f"removed containers left by an earlier run: {', '.join(removed)}")
        ca = TestCA.create(workdir / "ca")
        # The mock listens only inside each run's private network.
        with (
            MockDorkOS(MockSettings(), listen=False) as mock,
            contextlib.closing(
                ProxyLab(
                    client, mock, ca, workdir, selected_images(), update_generated=update_generated
                )
            ) as lab,
        ):
            yield lab
