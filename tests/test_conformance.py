"""The mock answers as the real DorkOS did, behaviour by behaviour.

`make conformance` ran harness.upstream.conformance's black-box checks against a real
DorkOS and against the mock, and data/conformance.json holds both answers.
Here the same checks run against the mock again: each answer must be what
DorkOS answered, unless harness.upstream.conformance.DIFFERENCES explains why not.
"""

from __future__ import annotations

from typing import Any

import pytest

from harness.lab.proxy_lab import ProxyLab
from harness.proxies.kind import REPO_ROOT
from harness.upstream import conformance


def mock_answers(lab: ProxyLab) -> dict[str, str]:
    # Run as a lab measure only so that its two heartbeat periods overlap
    # with the proxy runs' minutes of silence; it needs nothing of the lab.
    with conformance.mock_upstream() as upstream:
        return conformance.observe_all(upstream)


@pytest.fixture(scope="module")
def recorded() -> dict[str, Any]:
    return conformance.load()


@pytest.mark.measured_by(measure=mock_answers)
def test_mock_answers_as_dorkos_did(measured: dict[str, str], recorded: dict[str, Any]) -> None:
    rows = {row["name"]: row for row in recorded["behaviours"]}
    unrecorded = sorted(set(measured) - set(rows))
    assert not unrecorded, (
        f"{unrecorded} were never run against DorkOS: run `make conformance` and commit "
        f"data/conformance.json and generated/conformance.md"
    )
    wrong = []
    for name, answer in measured.items():
        row = rows[name]
        expected, whose = (
            (row["mock"], "the mock's recorded answer (a difference explained in DIFFERENCES)")
            if name in conformance.DIFFERENCES
            else (row["dorkos"], f"DorkOS {recorded['dorkos']['version']}'s answer")
        )
        if answer != expected:
            wrong.append(
                f"- {name}: the mock now answers\n    {answer}\n  expected {whose}\n    {expected}"
            )
    assert not wrong, "the mock no longer answers as recorded:\n" + "\n".join(wrong)


def test_every_difference_from_dorkos_is_explained(recorded: dict[str, Any]) -> None:
    differing = {row["name"] for row in recorded["behaviours"] if row["mock"] != row["dorkos"]}
    unexplained = sorted(differing - set(conformance.DIFFERENCES))
    stale = sorted(set(conformance.DIFFERENCES) - differing)
    assert not unexplained, f"the mock differs from DorkOS, unexplained, in {unexplained}"
    assert not stale, f"DIFFERENCES explains {stale}, where the mock and DorkOS now agree"


def test_every_behaviour_was_run_against_dorkos(recorded: dict[str, Any]) -> None:
    names = [row["name"] for row in recorded["behaviours"]]
    assert names == [b.name for b in conformance.BEHAVIOURS]
    failed = [row["name"] for row in recorded["behaviours"] if "check failed" in row["dorkos"]]
    assert not failed, f"against DorkOS these checks failed to run: {failed}"


def test_committed_table_matches_the_data(recorded: dict[str, Any]) -> None:
    assert conformance.TABLE_FILE.read_text() == conformance.render(recorded), (
        f"{conformance.TABLE_FILE} is stale: run `python -m harness.upstream.conformance --render`"
    )


def test_tested_with_names_the_dorkos_the_mock_answers_as(recorded: dict[str, Any]) -> None:
    assert conformance.SUMMARY_FILE.read_text() == conformance.render_summary(recorded)
    page = REPO_ROOT / "docs" / "tested-with.md"
    include = f'--8<-- "{conformance.SUMMARY_FILE.relative_to(REPO_ROOT)}"'
    assert include in page.read_text(), f"{page.name} does not include the summary"
