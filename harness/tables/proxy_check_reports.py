"""The reports the "Check your proxy" page shows, from a run in the lab.

`make tested-with` runs tests/test_proxy_check.py with --write-tested-with:
the command's own JSON for two of its runs goes to data/proxy-check.json,
and each is rendered as the command prints it to generated/, which the page
includes. A test holds the files to the command as it is today.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

from harness.proxies.kind import REPO_ROOT
from harness.proxies.variants import AS_PUBLISHED
from harness.proxy_check import Report, Result, render

DATA_FILE = REPO_ROOT / "data" / "proxy-check.json"
# What the page shows: a published config passing live, and a broken one
# failing with --stand-in what live checks can't see.
SHOWN = {
    "live": ("nginx", AS_PUBLISHED, "live"),
    "stand-in": ("nginx", "without proxy_read_timeout 86400s", "stand-in"),
}


def report_file(name: str) -> Path:
    return REPO_ROOT / "generated" / f"proxy-check-{name}.txt"


def as_report(found: dict[str, Any]) -> Report:
    return Report(found["url"], found["mode"], [Result(**c) for c in found["checks"]])


def write(reports: dict[str, dict[str, Any]]) -> None:
    data = {"run_on": datetime.date.today().isoformat(), "reports": reports}
    DATA_FILE.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    for name, found in reports.items():
        report_file(name).write_text(render(as_report(found)) + "\n")


def load() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DATA_FILE.read_text())
    return data
