"""PROXIES=<name> runs one proxy's tests, as each CI job does, and no test passes empty.

A test that runs a proxy says which (`@pytest.mark.proxies`, its example's
snippet, or a parameter naming it); PROXIES deselects the ones of other
proxies and keeps those of none. A test that asks the lab for a proxy the
run leaves out fails naming the marker it lacks.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.lab.proxy_lab import ProxyLab, ProxyNotSelected
from harness.proxies.kind import REPO_ROOT
from harness.proxies.registry import KINDS, selected_images

WORKFLOW = REPO_ROOT / ".github" / "workflows" / "site.yml"


def collected(proxies: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"],
        cwd=REPO_ROOT,
        env={**os.environ, "PROXIES": proxies},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_one_proxy_keeps_its_tests_and_those_of_none() -> None:
    done = collected("traefik")
    assert done.returncode == 0, done.stdout + done.stderr
    ids = done.stdout.splitlines()
    # Its page examples, by their snippet.
    examples = [i for i in ids if i.startswith("docs/")]
    assert any("snippets/traefik/dorkos.yml" in i for i in examples), done.stdout
    assert not any("snippets/nginx/" in i or "snippets/apache/" in i for i in examples)
    # Another proxy's tests, by marker and by parameter.
    assert not any("test_events_held_back_by_nginx_buffering" in i for i in ids)
    assert not any("test_published_configs_pass_every_measure[nginx]" in i for i in ids)
    # Tests of no proxy in particular run in every job.
    assert any("test_mock_dorkos.py::" in i for i in ids)
    assert any("test_site.py::" in i for i in ids)


def test_an_unknown_proxy_is_a_usage_error_naming_the_known_ones() -> None:
    done = collected("trafik")
    assert done.returncode == 4, done.stdout + done.stderr
    assert "PROXIES=trafik: no proxy is called trafik; known are " + ", ".join(KINDS) in (
        done.stderr
    )


def test_the_lab_refuses_a_proxy_the_run_leaves_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROXIES", "haproxy")
    none: Any = None
    lab = ProxyLab(none, none, none, Path("/nonexistent"), selected_images())
    assert {i.proxy for i in lab.images_for("haproxy")} == {"haproxy"}
    with pytest.raises(ProxyNotSelected, match=r"needs @pytest.mark.proxies\('nginx'\)"):
        lab.images_for("nginx")


def test_ci_runs_one_job_per_proxy_and_publishes_only_when_all_pass() -> None:
    jobs = yaml.safe_load(WORKFLOW.read_text())["jobs"]
    test = jobs["test"]
    assert test["strategy"]["matrix"]["proxy"] == list(KINDS)
    assert test["strategy"]["fail-fast"] is False
    assert test["env"]["PROXIES"] == "${{ matrix.proxy }}"
    (make_test,) = [step for step in test["steps"] if step.get("name") == "make test"]
    assert "PROXIES" in make_test["run"] and make_test["run"].endswith("make test")
    uploads = [step for step in test["steps"] if "upload-pages-artifact" in step.get("uses", "")]
    assert len(uploads) == 1 and "matrix.proxy ==" in uploads[0]["if"]
    assert jobs["publish"]["needs"] == "test"
