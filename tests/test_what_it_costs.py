"""The "What it costs" page shows the committed benchmark, whole.

The numbers themselves come from `make bench`, never from a test: these
only check that the page's table is the one the data says, and that the
data covers what the page claims to measure.
"""

from __future__ import annotations

import json

from harness import bench
from harness.images import LOCAL_IMAGES
from harness.proxies import RECOMMENDED_SNIPPETS
from harness.sse_client import Dechunker


def committed() -> dict[str, object]:
    data: dict[str, object] = json.loads(bench.DATA_FILE.read_text())
    return data


def test_page_table_is_rendered_from_the_data() -> None:
    assert bench.TABLE_FILE.read_text() == bench.render(committed()), (
        "generated/bench.md was edited by hand; run `make bench`"
    )


def test_data_covers_every_proxy_version_and_level() -> None:
    data = committed()
    levels = data["levels"]
    assert isinstance(levels, list)
    measured = {
        (level["target"].split(" on ")[-1], level["streams"], level["transport"])
        for level in levels
    }
    versions = data["versions"]
    assert isinstance(versions, dict)
    for image in LOCAL_IMAGES:
        assert image.key in versions, f"{image.key} is not in the benchmark; run `make bench`"
        for count in bench.LEVELS:
            for transport in bench.TRANSPORT_NAMES.values():
                assert (f"{image.proxy} {versions[image.key]}", count, transport) in measured
    baseline = {level["streams"] for level in levels if "baseline" in level["target"]}
    assert baseline == set(bench.LEVELS)


def test_bench_client_undoes_chunking_across_any_split() -> None:
    raw = b"5\r\nhello\r\n3\r\nabc\r\n0\r\n\r\n"
    for size in (1, 2, 3, 7, len(raw)):
        dechunker = Dechunker()
        pieces = [raw[i : i + size] for i in range(0, len(raw), size)]
        assert b"".join(dechunker.feed(piece) for piece in pieces) == b"helloabc"


def test_one_worker_rows_back_the_limits_section() -> None:
    """What it costs, Limits: Debian's events block fails at 500 streams, the fix holds."""
    data = committed()
    levels, versions = data["levels"], data["versions"]
    assert isinstance(levels, list) and isinstance(versions, dict)
    for image in LOCAL_IMAGES:
        if image.proxy != "nginx":
            continue
        one_worker = [
            level
            for level in levels
            if level["target"].startswith(f"{RECOMMENDED_SNIPPETS['nginx']} + ")
            and f"nginx {versions[image.key]}, one worker" in level["target"]
        ]
        stock = [level for level in one_worker if bench.ONE_CORE_FIX not in level["target"]]
        fixed = [level for level in one_worker if bench.ONE_CORE_FIX in level["target"]]
        assert len(stock) == len(fixed) == 1, f"{image.key}: no one-worker rows; run `make bench`"
        assert stock[0]["failed_streams"] > 0, f"{image.key}: Debian's events block held them all"
        assert fixed[0]["failed_streams"] == 0 and fixed[0]["exactly_once"], fixed[0]
