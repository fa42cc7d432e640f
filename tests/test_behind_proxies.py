"""The checks `make conformance` runs in front of a real DorkOS, held to account.

harness.checks.behind_proxies checks the published configs with a DorkOS that can't
be scripted. Here the same checks run through the same configs in front of
the mock: every one must pass, and each must fail, for its own reason, on a
config broken the way the page warns about. Otherwise a pass in front of
DorkOS would mean nothing.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from harness.checks import behind_proxies
from harness.checks.behind_proxies import Outcome
from harness.lab.proxy_lab import ProxyLab
from harness.proxies.kind import REPO_ROOT, Variant
from harness.proxies.registry import RECOMMENDED_SNIPPETS, selected_proxies
from harness.proxies.variants import recommended_variant, render
from harness.upstream import conformance

# Each broken config, and the checks it must fail with words of their failure.
BROKEN = {
    ("nginx", "without proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for"): {
        "client-address": "does not tell visitors apart",
    },
    ("nginx", "without proxy_set_header X-Forwarded-Proto $scheme"): {
        "forwarded": "with the page's Origin: 500",
        "reply": "answered 500",
        "socket-heartbeats": "closed with 4403",
        "quiet-streams-survive": "4403",
        "in-chromium": "answered 500",
        "check-it-works": "then `Origin not trusted`",
    },
    ("nginx", "without proxy_set_header Upgrade $http_upgrade"): {
        "socket-heartbeats": "answered 200, not 101",
        "reply": "answered 200, not 101",
        "quiet-streams-survive": "answered 200, not 101",
        "in-chromium": "the app's own socket to /api/events",
        "check-it-works": "dropped the upgrade",
    },
    # Older guides' SSE recipe: the same failure, by another line.
    ("nginx", "with Connection ''"): {
        "socket-heartbeats": "answered 200, not 101",
        "reply": "answered 200, not 101",
        "quiet-streams-survive": "answered 200, not 101",
        "in-chromium": "the app's own socket to /api/events",
        "check-it-works": "dropped the upgrade",
    },
    # On Caddy 2.6 the compressor holds a session's SSE frames back (its
    # snapshot, then the reply); the global stream's heartbeats and every
    # socket still pass.
    ("caddy", "with encode gzip"): {
        "reply": "SSE: no reply",
    },
    # A read timeout under DorkOS's 15 s heartbeat period, on both transports.
    ("nginx", "with proxy_read_timeout 10s"): {
        "socket-heartbeats": "then closed",
        "sse-heartbeats": "came",
        "quiet-streams-survive": "a quiet /api/events stream stopped",
        "check-it-works": "no `event: heartbeat`",
    },
}
# Broken configs the necessity tables don't build: a line a reader might change.
CHANGED = {
    "with proxy_read_timeout 10s": Variant(
        "with proxy_read_timeout 10s",
        replaces=("proxy_read_timeout 86400s", ("proxy_read_timeout 10s;",)),
    ),
}
Runs = dict[tuple[str, str], dict[str, Outcome]]


def measure_behind_proxies(lab: ProxyLab) -> Runs:
    """Each published config, and each broken one, on its proxy's first version."""

    def one(proxy: str, name: str) -> dict[str, Outcome]:
        image = lab.images_for(proxy)[0]
        snippet = REPO_ROOT / RECOMMENDED_SNIPPETS[proxy]
        if name == "as published":
            return behind_proxies.through(lab, image, snippet)
        config = lab.run_dir("behind") / snippet.name
        changed = CHANGED.get(name)
        text = render(changed, snippet.read_text(), proxy) if changed else None
        config.write_text(text or recommended_variant(proxy, name))
        return behind_proxies.through(lab, image, config, shown_as=f"{snippet.name} {name}")

    # The proxies this run covers (PROXIES), and their broken configs.
    proxies = selected_proxies()
    runs = [
        *((proxy, "as published") for proxy in proxies),
        *(run for run in BROKEN if run[0] in proxies),
    ]
    with ThreadPoolExecutor(len(runs), thread_name_prefix="behind") as pool:
        futures = {run: pool.submit(one, *run) for run in runs}
        return {run: future.result() for run, future in futures.items()}


@pytest.mark.measured_by(measure=measure_behind_proxies)
def test_published_configs_pass_every_check(measured: Runs) -> None:
    for proxy in selected_proxies():
        found = measured[(proxy, "as published")]
        assert list(found) == [c.name for c in behind_proxies.CHECKS]
        failed = {name: o.summary for name, o in found.items() if not o.passed}
        assert not failed, f"{RECOMMENDED_SNIPPETS[proxy]} in front of the mock: {failed}"


@pytest.mark.measured_by(measure=measure_behind_proxies)
@pytest.mark.parametrize("broken", list(BROKEN), ids=[f"{p}-{n}" for p, n in BROKEN])
def test_each_check_fails_on_a_broken_config(measured: Runs, broken: tuple[str, str]) -> None:
    found = measured[broken]
    wanted = BROKEN[broken]
    failed = {name: o.summary for name, o in found.items() if not o.passed}
    assert set(failed) == set(wanted), (
        f"{broken[1]}: expected {sorted(wanted)} to fail, these failed: {failed}; "
        f"passed: { {n: o.summary for n, o in found.items() if o.passed} }"
    )
    wrong = {name: failed[name] for name, words in wanted.items() if words not in failed[name]}
    assert not wrong, f"{broken[1]}: failed for another reason than expected: {wrong}"


def test_every_check_is_broken_by_some_config() -> None:
    broken_checks = {name for wanted in BROKEN.values() for name in wanted}
    assert broken_checks == {c.name for c in behind_proxies.CHECKS}


def test_committed_table_and_summary_match_the_data() -> None:
    data = behind_proxies.load()
    assert behind_proxies.TABLE_FILE.read_text() == behind_proxies.render(data), (
        f"{behind_proxies.TABLE_FILE} is stale: "
        "run `python -m harness.upstream.conformance --render`"
    )
    assert behind_proxies.summary(data) in conformance.SUMMARY_FILE.read_text()
