"""Sybil over docs/: each fenced block that includes a snippet is a test.

The examples themselves are found and run by harness.snippet_examples; the
fixtures here are what every example shares for the whole run.
"""

from collections.abc import Iterator

import pytest
from sybil.integration.pytest import SybilItem

from harness import tested_with
from harness.lab import ProxyLab
from harness.lab import proxy_lab as open_proxy_lab
from harness.snippet_examples import docs_sybil

pytest_collect_file = docs_sybil().pytest()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--write-tested-with",
        action="store_true",
        help="record every snippet example's outcome in data/tested-with.json, and "
        "rewrite the other files in generated/ that the run produces",
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Each snippet example runs real proxies, a minute of silence included.
    for item in items:
        if isinstance(item, SybilItem):
            item.add_marker(pytest.mark.docker)
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def proxy_lab(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[ProxyLab]:
    update = request.config.getoption("--write-tested-with")
    with open_proxy_lab(tmp_path_factory.mktemp("proxy-lab"), update_generated=update) as lab:
        yield lab
        if update:
            tested_with.write(lab.outcomes)
