"""The "What it costs" page shows the committed benchmark, whole.

The numbers themselves come from `make bench`, never from a test: these
only check that the page's table is the one the data says, and that the
data covers what the page claims to measure.
"""

from __future__ import annotations

import json
from typing import Any

from harness.clients.sse_client import Dechunker
from harness.proxies.kind import REPO_ROOT
from harness.proxies.registry import LOCAL_IMAGES, kind
from harness.tables import bench, bench_chart, soak


def committed() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(bench.DATA_FILE.read_text())
    return data


def test_page_table_is_rendered_from_the_data() -> None:
    assert bench.TABLE_FILE.read_text() == bench.render(committed()), (
        "generated/bench.md was edited by hand; run `make bench`"
    )
    page = (REPO_ROOT / "docs" / "what-it-costs.md").read_text()
    for table in (bench.TABLE_FILE, soak.TABLE_FILE):
        assert f'--8<-- "generated/{table.name}"' in page, f"the page does not show {table.name}"


def test_page_chart_is_drawn_from_the_data() -> None:
    assert bench_chart.CHART_FILE.read_text() == bench_chart.render_svg(committed()), (
        f"{bench_chart.CHART_FILE.name} was edited by hand or not redrawn; run `make bench`"
    )
    page = (REPO_ROOT / "docs" / "what-it-costs.md").read_text()
    assert f"(assets/{bench_chart.CHART_FILE.name})" in page


def test_data_covers_every_proxy_version_level_and_transport() -> None:
    data = committed()
    measured = {(row["path"], row["streams"], row["transport"]) for row in data["rows"]}
    paths = {bench.DIRECT}
    for image in LOCAL_IMAGES:
        assert image.key in data["versions"], f"{image.key} is not in the benchmark"
        paths.add(f"{kind(image.proxy).title} {data['versions'][image.key]}")
    for path in paths:
        for count in bench.LEVELS:
            for transport in bench.TRANSPORT_NAMES.values():
                assert (path, count, transport) in measured, f"{path}, {count}, {transport}"
    assert {(row["path"], row["transport"]) for row in data["capacity"]} == {
        (path, transport) for path in paths for transport in bench.TRANSPORT_NAMES.values()
    }


def test_every_row_is_a_median_over_the_rounds() -> None:
    data = committed()
    assert data["rounds"] >= 3, "a spread needs three rounds or more"
    for row in data["rows"]:
        assert row["rounds"] == data["rounds"], row
        for figure in ("p50_ms", "p99_ms"):
            spread = row[figure]
            assert spread["min"] <= spread["median"] <= spread["max"], (row["path"], figure)


def test_published_comparisons_are_the_ones_the_data_supports() -> None:
    data = committed()
    assert data["comparisons"] == bench.comparisons(data["rows"])


def test_summary_pairs_each_round_with_the_direct_path_beside_it() -> None:
    # Two rounds: the proxy was twice as slow as direct in the first, three
    # times in the second; its ratio is taken round by round.
    def sample(path: str, p99: float) -> bench.Sample:
        return bench.Sample(path, "SSE", 100, 1000, 0, None, True, p99 / 2, p99, 1.0, 10.0, 2.0)

    rows = bench.summarise(
        [
            sample(bench.DIRECT, 1.0),
            sample("nginx", 2.0),
            sample(bench.DIRECT, 2.0),
            sample("nginx", 6.0),
        ]
    )
    (proxy,) = [row for row in rows if row["path"] == "nginx"]
    assert proxy["p99_ratio_to_direct"] == {"median": 2.5, "min": 2.0, "max": 3.0}


def test_a_comparison_needs_ranges_that_do_not_overlap() -> None:
    def row(path: str, low: float, high: float) -> dict[str, Any]:
        spread = {"median": (low + high) / 2, "min": low, "max": high}
        return {
            "path": path,
            "transport": "SSE",
            "streams": 500,
            **dict.fromkeys(bench.COMPARED, spread),
        }

    assert bench.comparisons([row("a", 1, 2), row("b", 1.5, 3)]) == []
    assert len(bench.comparisons([row("a", 1, 2), row("b", 2.5, 3)])) == len(bench.COMPARED)


def test_one_worker_rows_back_the_limits_section() -> None:
    """What it costs, Limits: Debian's events block fails at 500 streams, the page's holds."""
    rows = committed()["one_worker"]
    stock = [r for r in rows if "Debian's events block" in r["path"]]
    fixed = [r for r in rows if bench.ONE_CORE_FIX in r["path"]]
    nginx_versions = sum(1 for image in LOCAL_IMAGES if image.proxy == "nginx")
    assert len(stock) == len(fixed) == nginx_versions, "no one-worker rows; run `make bench`"
    assert all(r["failed_streams"] > 0 for r in stock), stock
    assert all(r["failed_streams"] == 0 and r["every_event_once"] for r in fixed), fixed


def test_bench_client_undoes_chunking_across_any_split() -> None:
    raw = b"5\r\nhello\r\n3\r\nabc\r\n0\r\n\r\n"
    for size in (1, 2, 3, 7, len(raw)):
        dechunker = Dechunker()
        pieces = [raw[i : i + size] for i in range(0, len(raw), size)]
        assert b"".join(dechunker.feed(piece) for piece in pieces) == b"helloabc"


def test_soak_table_is_rendered_from_its_data_and_lost_nothing() -> None:
    data = json.loads(soak.DATA_FILE.read_text())
    assert soak.TABLE_FILE.read_text() == soak.render(data), "run `make soak`"
    assert {row["path"].split()[0] for row in data["rows"]} == {"nginx", "Caddy"}
    assert data["minutes"] >= 10
    for row in data["rows"]:
        assert row["failed_streams"] == row["lost_or_repeated"] == 0, row
