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
- An nginx config that serves plain HTTP only: the starting point the page
  gives certbot. The page's own certbot command turns it into an HTTPS
  config, and that is what the contract runs (with the published events
  block, as above); renewal and the page's diff of what certbot changed are
  checked too.
"""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import certbot_flow
from harness.contract import (
    PROPERTIES,
    Property,
    check_forwarded_headers,
    check_http_redirects_to_https,
    check_realtime,
    run_contract,
)
from harness.disruptions import check_dorkos_restart, check_proxy_reload
from harness.endpoints import Endpoint, run_check
from harness.images import CERTBOT_NGINX_IMAGE, ProxyImage
from harness.lab import ProxyLab
from harness.mock_dorkos import Listening, MockDorkOS, MockSettings
from harness.proxies import NGINX_EVENTS_SNIPPET, RECOMMENDED_SNIPPETS, REPO_ROOT, RunningProxy
from harness.snippet_examples import SnippetInclude
from harness.stream_checks import check_websocket_upgrade

REDIRECT = Property("http-redirects-to-https", check_http_redirects_to_https)
_LISTENS_WITH_TLS = re.compile(r"^\s*listen\s+[^;]*\bssl\b", re.MULTILINE)


_EVENTS_BLOCK = re.compile(r"^events\s*\{", re.MULTILINE)


def is_events_block(include: SnippetInclude) -> bool:
    """A fragment of nginx.conf (its events block), not a site config."""
    return include.proxy == "nginx" and bool(_EVENTS_BLOCK.search(include.snippet.read_text()))


def is_certbot_start(include: SnippetInclude) -> bool:
    return (
        include.proxy == "nginx"
        and not is_events_block(include)
        and not _LISTENS_WITH_TLS.search(include.snippet.read_text())
    )


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
    """Every run of one example, started in the background (once per run).

    Each image gets two runs side by side: the contract, with DorkOS where
    it listens by default; and the disruptions, with a DorkOS of the run's
    own (it gets stopped) on the other loopback address.
    """
    for image in images_for(lab, include):
        lab.in_background(
            ("disruptions", include.snippet, image.key),
            functools.partial(run_disruptions, lab, include, image),
        )
    return [
        lab.in_background(
            ("example", include.snippet, image.key),
            functools.partial(run_example, lab, include, image),
        )
        for image in images_for(lab, include)
    ]


def run_example(lab: ProxyLab, include: SnippetInclude, image: ProxyImage) -> RunOutcome:
    """Bring the snippet up on the image and run the whole contract on it."""
    disrupted = lab.in_background(
        ("disruptions", include.snippet, image.key),
        functools.partial(run_disruptions, lab, include, image),
    )
    with contextlib.ExitStack() as stack:
        try:
            proxy, extra = stack.enter_context(started(lab, include, image))
        except Exception as error:
            not_checked = AssertionError("not checked: the proxy did not start (see above)")
            names = [p.name for p in PROPERTIES] + [name for name, _ in DISRUPTIONS]
            return RunOutcome(image, error, dict.fromkeys(names, not_checked))
        properties = (*PROPERTIES, *extra)
        futures = run_contract(proxy, lab.mock, properties)
        # Wait for every property before the proxy is stopped.
        results: dict[str, str | BaseException] = {}
        for prop in properties:
            failure = futures[prop.name].exception()
            results[prop.name] = failure if failure is not None else futures[prop.name].result()
    return RunOutcome(image, None, {**results, **disrupted.result()})


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
            return {name: error for name, _ in DISRUPTIONS}
        dorkos = proxy.dorkos
        assert dorkos is not None
        for name, check in DISRUPTIONS:

            def with_dorkos(endpoint: Endpoint, mock: MockDorkOS, check: Any = check) -> str:
                return str(check(endpoint, mock, dorkos))

            try:
                results[name] = run_check(with_dorkos, proxy, mock)
            except Exception as error:
                results[name] = error
    return results


def images_for(lab: ProxyLab, include: SnippetInclude) -> list[ProxyImage]:
    if is_certbot_start(include):
        return [CERTBOT_NGINX_IMAGE]  # certbot --nginx as Debian packages it
    return lab.images_for(include.proxy)


@contextlib.contextmanager
def started(
    lab: ProxyLab, include: SnippetInclude, image: ProxyImage, **dorkos: Any
) -> Iterator[tuple[RunningProxy, tuple[Property, ...]]]:
    """The running proxy, and the properties this kind of snippet adds.

    `dorkos` (`mock`, `dorkos_on`) says which DorkOS the run has, and where.
    """
    if include.proxy == "caddy":
        with lab.run(image, include.snippet, acme=True, **dorkos) as proxy:
            yield proxy, (REDIRECT,)
    elif is_events_block(include):
        # The fragment is for a one-core server; it runs with the published
        # site config, and the contract (500 streams included) runs on both.
        site = REPO_ROOT / RECOMMENDED_SNIPPETS["nginx"]
        with lab.run(image, site, events=include.snippet, one_core=True, **dorkos) as proxy:
            yield proxy, ()
    elif is_certbot_start(include):
        command = certbot_flow.page_command(include.page)
        with lab.certbot(include.snippet, command, events=NGINX_EVENTS_SNIPPET, **dorkos) as result:
            yield (
                result.proxy,
                (
                    REDIRECT,
                    Property("certbot-renew-dry-run", lambda e, m: _renews(result)),
                    Property("certbot-diff-on-page", lambda e, m: _diff_is_current(result, lab)),
                ),
            )
    elif include.proxy == "nginx":
        with lab.run(image, include.snippet, events=NGINX_EVENTS_SNIPPET, **dorkos) as proxy:
            yield proxy, ()
    else:
        raise ValueError(f"{include.snippet_name}: no proxy runs {include.proxy} configs")


def _renews(result: certbot_flow.CertbotResult) -> str:
    output = result.renew_dry_run()
    if "all simulated renewals succeeded" not in output.lower():
        raise AssertionError(f"certbot renew --dry-run did not report success:\n{output}")
    return "certbot renew --dry-run: all simulated renewals succeeded"


def _diff_is_current(result: certbot_flow.CertbotResult, lab: ProxyLab) -> str:
    path: Path = certbot_flow.DIFF_FILE
    if lab.update_generated:
        path.write_text(result.diff)
    if not path.is_file() or path.read_text() != result.diff:
        raise AssertionError(
            f"{path.name}, shown on the page, is not what certbot changed in this run; "
            f"run `make tested-with` and commit it. This run's diff:\n{result.diff}"
        )
    return f"{path.name} matches this run"
