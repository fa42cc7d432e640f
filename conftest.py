"""Sybil over docs/: each fenced block that includes a snippet is a test.

The examples themselves are found and run by harness.snippet_examples; the
fixtures here are what every example shares for the whole run.
"""

from collections.abc import Iterator

import pytest

from harness.lab import ProxyLab
from harness.lab import proxy_lab as open_proxy_lab
from harness.snippet_examples import docs_sybil

pytest_collect_file = docs_sybil().pytest()


@pytest.fixture(scope="session")
def proxy_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyLab]:
    with open_proxy_lab(tmp_path_factory.mktemp("proxy-lab")) as lab:
        yield lab
