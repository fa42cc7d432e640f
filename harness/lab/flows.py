"""How each kind of published snippet is brought up before the contract runs.

- A Caddyfile: Caddy gets its certificate by itself from the ACME server on
  loopback, exactly as it would from Let's Encrypt; the contract then also
  checks its HTTP-to-HTTPS redirect.
- An nginx config that serves HTTPS: nginx with certificate files from the
  test CA at the paths the config names, and, as the page tells readers,
  the published events block in place of Debian's in nginx.conf.
- A fragment of nginx.conf (the events block): Debian's nginx.conf as a
  one-core server runs it, with the fragment in place of its own events
  block, serving the published nginx site config.
- The page's nginx steps as a whole (`run_nginx_path`): Debian's packages,
  certbot's certificate, the published files where the page puts them,
  the reload; then the contract, and a renewal nginx must pick up.
- The page's Caddy steps as a whole (`run_caddy_path`): Debian's package
  as installed, the published Caddyfile in its place, the unit's reload,
  and a certificate from "Let's Encrypt"; then the contract.

Every site config is also checked for its plain-HTTP redirect and for
answering on IPv6.
"""

from __future__ import annotations

import contextlib
import functools
import re
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sybil import Example
from sybil.example import SybilFailure

from harness.checks.contract import (
    PROPERTIES,
    Property,
    check_forwarded_headers,
    check_http_redirects_to_https,
    check_https_over_ipv6,
    check_realtime,
    run_contract,
)
from harness.checks.disruptions import check_dorkos_restart, check_proxy_reload
from harness.checks.endpoints import Endpoint, run_check
from harness.checks.stream_checks import check_websocket_upgrade
from harness.lab import compose_deployment, reader_path
from harness.lab.proxy_lab import ProxyLab
from harness.lab.snippet_examples import SnippetInclude
from harness.proxies.caddy import PATH_IMAGE as CADDY_PATH_IMAGE
from harness.proxies.images import ProxyImage
from harness.proxies.kind import REPO_ROOT, KnownFailure
from harness.proxies.launch import RunningProxy
from harness.proxies.nginx import CERTBOT_NGINX_IMAGE
from harness.proxies.registry import KINDS, RECOMMENDED_SNIPPETS, kind
from harness.upstream.mock_dorkos import Listening, MockDorkOS, MockSettings

REDIRECT = Property("http-redirects-to-https", check_http_redirects_to_https)
IPV6 = Property("https-over-ipv6", check_https_over_ipv6)
# What every site config adds to the contract.
SITE_PROPERTIES = (REDIRECT, IPV6)


_EVENTS_BLOCK = re.compile(r"^events\s*\{", re.MULTILINE)


def is_events_block(include: SnippetInclude) -> bool:
    """A fragment of nginx.conf (its events block), not a site config."""
    return include.proxy == "nginx" and bool(_EVENTS_BLOCK.search(include.snippet.read_text()))


# Reported first, before every property of the contract.
STARTS = "accepts-config-and-starts"


@dataclass
class RunOutcome:
    """One snippet on one image: whether it started, then every property."""

    image: ProxyImage
    start_error: BaseException | None
    # Property name to its one-line summary, or to why it failed; in the
    # order the properties are reported.
    results: dict[str, str | BaseException]


def start_runs(lab: ProxyLab, include: SnippetInclude) -> list[Future[RunOutcome]]:
    """The example's contract runs, started in the background (once per run).

    Each image gets two runs side by side: the contract, with DorkOS where
    it listens by default; and the disruptions (start_disruptions), with a
    DorkOS of the run's own (it gets stopped) on the other loopback address.
    """
    if proxy_for(include.snippet) is None:
        return []  # not a proxy's config: checked on its own
    return [
        lab.in_background(
            ("example", run_snippet(include), image.key),
            functools.partial(run_example, lab, include, image),
        )
        for image in images_for(lab, include)
    ]


def start_disruptions(
    lab: ProxyLab, include: SnippetInclude
) -> list[Future[dict[str, str | BaseException]]]:
    """The example's disruption runs, in the background (once per run).

    They wait out no silence, so they can start after the longer runs;
    each contract run asks for its own if none has started yet.
    """
    if proxy_for(include.snippet) is None:
        return []
    return [_disruptions(lab, include, image) for image in images_for(lab, include)]


def _disruptions(
    lab: ProxyLab, include: SnippetInclude, image: ProxyImage
) -> Future[dict[str, str | BaseException]]:
    return lab.in_background(
        ("disruptions", run_snippet(include), image.key),
        functools.partial(run_disruptions, lab, include, image),
    )


def run_example(lab: ProxyLab, include: SnippetInclude, image: ProxyImage) -> RunOutcome:
    """Bring the snippet up on the image and run the whole contract on it."""
    disrupted = _disruptions(lab, include, image)
    with contextlib.ExitStack() as stack:
        try:
            proxy, extra = stack.enter_context(started(lab, include, image))
        except Exception as error:
            not_checked = AssertionError("not checked: the proxy did not start (see above)")
            names = [p.name for p in PROPERTIES] + [name for name, _ in disruptions_for(image)]
            return RunOutcome(image, error, dict.fromkeys(names, not_checked))
        results = contract_results(proxy, lab.mock, (*PROPERTIES, *extra))
    return RunOutcome(image, None, {**results, **disrupted.result()})


def contract_results(
    proxy: RunningProxy, mock: MockDorkOS, properties: tuple[Property, ...]
) -> dict[str, str | BaseException]:
    """Every property's summary, or why it failed, once all have finished.

    The caller stops the proxy only after this returns.
    """
    futures = run_contract(proxy, mock, properties)
    results: dict[str, str | BaseException] = {}
    for prop in properties:
        failure = futures[prop.name].exception()
        results[prop.name] = failure if failure is not None else futures[prop.name].result()
    return results


# Where the disruption runs' DorkOS listens: the loopback address the
# contract's runs don't use, so every config is run against both.
DISRUPTION_DORKOS_ON = ("127.0.0.1",)


def _on_ipv4_loopback(endpoint: Endpoint, mock: MockDorkOS) -> str:
    """The core of the contract, with DorkOS on 127.0.0.1 alone."""
    checks = (check_websocket_upgrade, check_realtime, check_forwarded_headers)
    return "; ".join(check(endpoint, mock) for check in checks)


# Checked in order, each with the run's own DorkOS to stop and start.
DISRUPTIONS: tuple[tuple[str, Callable[[Endpoint, MockDorkOS, Listening], str]], ...] = (
    ("dorkos-on-127.0.0.1", lambda endpoint, mock, dorkos: _on_ipv4_loopback(endpoint, mock)),
    ("dorkos-restart", check_dorkos_restart),
    ("proxy-reload", check_proxy_reload),
)


def disruptions_for(image: ProxyImage) -> tuple[tuple[str, Any], ...]:
    """The disruptions its proxy has: Traefik has no reload to check."""
    reloads = bool(kind(image.proxy).reload_command)
    return tuple((name, check) for name, check in DISRUPTIONS if reloads or name != "proxy-reload")


def run_snippet(include: SnippetInclude) -> Path:
    """The config a run of the example serves: its own, or, for a file that
    only ever runs beside its proxy's recommended config (Traefik's route),
    that config, so both examples report the one run they share."""
    proxy = proxy_for(include.snippet)
    if proxy is None:
        return include.snippet
    companion = kind(proxy).companion
    if companion is not None and include.snippet.resolve() == companion.resolve():
        return REPO_ROOT / kind(proxy).recommended_snippet
    return include.snippet


def run_disruptions(
    lab: ProxyLab, include: SnippetInclude, image: ProxyImage
) -> dict[str, str | BaseException]:
    """The snippet on the image, through DorkOS restarting and the proxy reloading."""
    results: dict[str, str | BaseException] = {}
    with contextlib.ExitStack() as stack:
        mock = stack.enter_context(MockDorkOS(MockSettings(), listen=False))
        try:
            proxy, _ = stack.enter_context(
                started(lab, include, image, mock=mock, dorkos_on=DISRUPTION_DORKOS_ON)
            )
        except Exception as error:
            return {name: error for name, _ in disruptions_for(image)}
        dorkos = proxy.dorkos
        assert dorkos is not None
        for name, check in disruptions_for(image):

            def with_dorkos(endpoint: Endpoint, mock: MockDorkOS, check: Any = check) -> str:
                return str(check(endpoint, mock, dorkos))

            try:
                results[name] = run_check(with_dorkos, proxy, mock)
            except Exception as error:
                results[name] = error
    return results


def proxy_for(snippet: Path) -> str | None:
    """Which proxy runs a snippet: its folder's, or Caddy for the Compose Caddyfile."""
    folder = snippet.resolve().relative_to(REPO_ROOT / "snippets").parts[0]
    if folder in KINDS:
        return folder
    if folder == "compose" and snippet.name == "Caddyfile":
        return "caddy"
    return None  # DorkOS's side, or the compose file: checked on their own


def images_for(lab: ProxyLab, include: SnippetInclude) -> list[ProxyImage]:
    proxy = proxy_for(include.snippet)
    assert proxy is not None
    return lab.images_for(proxy)


@contextlib.contextmanager
def started(
    lab: ProxyLab, include: SnippetInclude, image: ProxyImage, **dorkos: Any
) -> Iterator[tuple[RunningProxy, tuple[Property, ...]]]:
    """The running proxy, and the properties this kind of snippet adds.

    `dorkos` (`mock`, `dorkos_on`) says which DorkOS the run has, and where.
    """
    if include.proxy == "compose":
        # The mock answers as the compose file's DorkOS service, by its name.
        compose = include.snippet.parent / "compose.yml"
        on_ipv4 = {**dorkos, "dorkos_on": compose_deployment.DORKOS_ON}
        hosts = compose_deployment.hosts(compose)
        with lab.run(image, include.snippet, acme=True, hosts=hosts, **on_ipv4) as proxy:
            yield proxy, SITE_PROPERTIES
    elif is_events_block(include):
        # The fragment is for a one-core server; it runs with the published
        # site config, and the contract (500 streams included) runs on both.
        site = REPO_ROOT / RECOMMENDED_SNIPPETS["nginx"]
        with lab.run(image, site, events=include.snippet, one_core=True, **dorkos) as proxy:
            yield proxy, ()
    else:
        proxy_kind = kind(include.proxy)
        options = {"acme": proxy_kind.acme, **proxy_kind.run_options, **dorkos}
        with lab.run(image, run_snippet(include), **options) as proxy:
            yield proxy, SITE_PROPERTIES


def _steps_did_not_complete(image: ProxyImage, error: Exception, *extra: str) -> RunOutcome:
    not_checked = AssertionError("not checked: the steps did not complete (see above)")
    names = [p.name for p in (*PROPERTIES, *SITE_PROPERTIES)]
    return RunOutcome(image, error, dict.fromkeys([*names, *extra], not_checked))


def run_nginx_path(lab: ProxyLab) -> RunOutcome:
    """The page's nginx steps in order, then the contract on where they end."""
    path = reader_path.steps(reader_path.REVERSE_PROXY_PAGE, "nginx")
    with contextlib.ExitStack() as stack:
        try:
            result = stack.enter_context(lab.nginx_path(path))
        except Exception as error:
            return _steps_did_not_complete(CERTBOT_NGINX_IMAGE, error, RENEWS)
        results = contract_results(result.proxy, lab.mock, (*PROPERTIES, *SITE_PROPERTIES))
        # After the contract: it swaps the certificate under the other checks.
        try:
            results[RENEWS] = run_check(lambda e, m: result.renew(), result.proxy, lab.mock)
        except Exception as error:
            results[RENEWS] = error
    return RunOutcome(CERTBOT_NGINX_IMAGE, None, results)


def run_caddy_path(lab: ProxyLab) -> RunOutcome:
    """The page's Caddy steps in order, then the contract on where they end."""
    path = reader_path.steps(reader_path.REVERSE_PROXY_PAGE, "Caddy")
    with contextlib.ExitStack() as stack:
        try:
            proxy = stack.enter_context(lab.caddy_path(path))
        except Exception as error:
            return _steps_did_not_complete(CADDY_PATH_IMAGE, error)
        results = contract_results(proxy, lab.mock, (*PROPERTIES, *SITE_PROPERTIES))
    return RunOutcome(CADDY_PATH_IMAGE, None, results)


RENEWS = "certbot-renewal-reaches-nginx"


# -- a page's snippet example, run by Sybil ---------------------------------


@contextlib.contextmanager
def reported_as(
    subtests: Any, example: Example, name: str, outcome: Callable[[bool], None]
) -> Iterator[None]:
    """Report one property as its own result, and pass its outcome on.

    Failures are re-raised as SybilFailure so pytest shows our message as it
    is (Sybil's traceback filter can't handle a subtest's traceback).
    """
    with subtests.test(msg=name):
        try:
            yield
        except AssertionError as error:
            outcome(False)
            raise SybilFailure(example, str(error)) from error
        except Exception as error:
            outcome(False)
            raise SybilFailure(example, "".join(traceback.format_exception(error))) from error
        outcome(True)


def evaluate_snippet(example: Example) -> None:
    """Run one snippet example of a page: its runs, one result a property."""
    include: SnippetInclude = example.parsed
    lab = example.namespace["proxy_lab"]
    subtests = example.namespace["subtests"]
    if include.proxy == "dorkos":
        from harness.lab.dorkos_side import check_drop_in

        with reported_as(subtests, example, "systemd-accepts-it", lambda passed: None):
            assert include.title is not None
            check_drop_in(include.snippet, include.title)
        return
    if include.proxy == "compose" and include.snippet.suffix in (".yml", ".yaml"):
        from harness.lab import compose_deployment

        with reported_as(subtests, example, "compose-file", lambda passed: None):
            compose_deployment.check(include.snippet)
        return
    # Usually started when the lab opened, beside every other run.
    for run in start_runs(lab, include):
        outcome = run.result()
        image = outcome.image

        def record(prop: str, image: ProxyImage = image) -> Callable[[bool], None]:
            return lambda passed: lab.record(include.snippet_name, image, prop, passed)

        starts = STARTS
        with reported_as(subtests, example, f"{image.key}: {starts}", record(starts)):
            if outcome.start_error is not None:
                raise outcome.start_error
        for name, result in outcome.results.items():
            known = kind(image.proxy).known_failure(image.key, name)
            if known is not None:
                # Recorded as the failure it is; the test is that it is the one stated.
                stated = f"{image.key}: {name} fails, as the page says"
                with reported_as(subtests, example, stated, lambda passed: None):
                    record(name)(False)
                    fails_as_stated(result, known, image)
                continue
            with reported_as(subtests, example, f"{image.key}: {name}", record(name)):
                if isinstance(result, BaseException):
                    raise result


def fails_as_stated(result: str | BaseException, known: KnownFailure, image: ProxyImage) -> None:
    """A known failure must still happen, and for the reason the page gives."""
    where = f"the Reverse Proxy page (#{known.page_section})"
    if not isinstance(result, BaseException):
        raise AssertionError(
            f"{image.description}: {known.prop} passed ({result}), but {where} says it fails "
            f"here ({known.symptom!r}): take that off the page and off the proxy's known_failures"
        )
    if known.symptom not in str(result):
        raise AssertionError(
            f"{image.description}: {known.prop} fails, but not as {where} says "
            f"({known.symptom!r} is not in the failure):\n{result}"
        ) from result
