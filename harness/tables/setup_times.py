"""Where `make test` spent its time before the tests: the set-up steps.

Each step (pip, Debian's packages, the engine's start, each image build)
notes its start and end in a file that `make test` empties when it begins
(scripts/timed, harness.proxies.images). The test run prints them at its end, so a
slow cold start says where its minutes went.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

MAKE_TEST = "make test"


# Set by `make test` for the test run it starts; a run started by hand has
# no set-up of its own to report.
VARIABLE = "DORKOS_DOCS_SETUP_TIMES"


def _duration(seconds: float) -> str:
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s" if minutes else f"{rest} s"


def report() -> list[str]:
    """Lines to print; none when the tests were not started by `make test`."""
    times_file = os.environ.get(VARIABLE)
    if not times_file:
        return []
    try:
        rows = [line.split("\t") for line in Path(times_file).read_text().splitlines()]
    except FileNotFoundError:
        return []
    if not rows or rows[0][0] != MAKE_TEST:
        return []
    began = float(rows[0][1])
    steps = [(label, float(start), float(end)) for label, start, end in rows[1:]]
    lines = [
        f"{label}: {_duration(end - start)} (from {_duration(start - began)} to "
        f"{_duration(end - began)})"
        for label, start, end in sorted(steps, key=lambda step: step[1])
    ]
    if not steps:
        lines.append("nothing to set up: the venv, the engine and the images were ready")
    lines.append(f"make test so far: {_duration(time.time() - began)}")
    return lines
