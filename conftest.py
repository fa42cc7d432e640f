"""Sybil over docs/: each fenced block that includes a snippet is a test.

The examples themselves are found and run by harness.lab.snippet_examples; the
fixtures here are what every example shares for the whole run.
"""

import functools
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sybil.integration.pytest import SybilItem

from harness.lab import flows
from harness.lab.proxy_lab import ProxyLab, RunTiming
from harness.lab.proxy_lab import proxy_lab as open_proxy_lab
from harness.lab.snippet_examples import docs_sybil
from harness.proxies.images import ProxyImage
from harness.proxies.registry import KINDS, UnknownProxy, selected_proxies
from harness.tables import margins, necessity, setup_times, tested_with

pytest_collect_file = docs_sybil(flows.evaluate_snippet).pytest()
# Filled when the lab closes, for the summary at the end of the run.
LAB_TIMINGS: list[RunTiming] = []
# The lab while it is open, so Ctrl-C can stop its runs.
OPEN_LABS: list[ProxyLab] = []


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--write-tested-with",
        action="store_true",
        help="record every snippet example's outcome in data/tested-with.json, and "
        "rewrite the other files in generated/ that the run produces",
    )
    parser.addoption(
        "--snippet",
        metavar="PATH",
        help="run only the page examples that show this snippet (e.g. "
        "snippets/haproxy/dorkos.cfg): its verdict on every version, alone",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    only = config.getoption("--snippet")
    if only is not None:
        keep = [i for i in items if isinstance(i, SybilItem) and _shows(i, only)]
        if not keep:
            shown = sorted(
                {i.example.parsed.snippet_name for i in items if isinstance(i, SybilItem)}
            )
            raise pytest.UsageError(
                f"--snippet {only}: no page example shows it; the pages show {', '.join(shown)}"
            )
        config.hook.pytest_deselected(items=[i for i in items if i not in keep])
        items[:] = keep
    _deselect_proxies_not_selected(config, items)
    # The tests that need no engine first: they run while the lab's runs,
    # started with the session, wait out their minutes of silence, instead
    # of after them (see _lab_opens_with_the_session). Those that start
    # containers of their own come after, with the lab's.
    items[:] = sorted(items, key=_needs_the_engine)
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
        OPEN_LABS.append(lab)
        try:
            # Start every run the collected tests will wait for, so that their
            # minutes of silence overlap instead of adding up. Where there is
            # more work than threads for it, the longest goes first:
            # the tests' measures (a minute and a quarter of quiet streams
            # after a browser's turn, two minutes of the readers' command),
            # the examples' contracts and each version's measurement of its
            # lines (a minute of silence after their start-ups), and last
            # the examples' disruptions (no silence), which start as the
            # first runs end.
            items = request.session.items
            examples = [item.example.parsed for item in items if isinstance(item, SybilItem)]
            with lab.queued_together():
                for item in items:
                    for marker in item.iter_markers("measured_by"):
                        _start_measure(lab, marker.kwargs["measure"])
                for example in examples:
                    flows.start_runs(lab, example)
                if any("necessity_measured" in getattr(i, "fixturenames", ()) for i in items):
                    necessity.start(lab)
                for example in examples:
                    flows.start_disruptions(lab, example)
        except KeyboardInterrupt:
            # Ctrl-C while runs are starting comes before pytest's hook, and
            # leaving the lab would wait out every run already started.
            pytest_keyboard_interrupt()
            raise
        yield lab
        if lab in OPEN_LABS:  # not when Ctrl-C stopped it
            OPEN_LABS.remove(lab)
        if update and lab.outcomes:  # not when only other tests ran
            tested_with.write(lab.outcomes)
    LAB_TIMINGS.extend(lab.timings)


def _proxies_of(item: pytest.Item) -> set[str]:
    """The proxies a test runs: its example's, its `proxies` marker's, or
    those its parameters name. None: it runs in every selection."""
    if isinstance(item, SybilItem):
        snippet = getattr(item.example.parsed, "snippet", None)
        proxy = flows.proxy_for(snippet) if snippet is not None else None
        return {proxy} if proxy else set()
    found = {name for marker in item.iter_markers("proxies") for name in marker.args}
    callspec = getattr(item, "callspec", None)
    for value in callspec.params.values() if callspec else ():
        for part in value if isinstance(value, tuple) else (value,):
            if isinstance(part, ProxyImage):
                found.add(part.proxy)
            elif isinstance(part, str) and part in KINDS:
                found.add(part)
    unknown = found - set(KINDS)
    if unknown:
        raise pytest.UsageError(f"{item.nodeid}: no proxy is called {', '.join(sorted(unknown))}")
    return found


def _deselect_proxies_not_selected(config: pytest.Config, items: list[pytest.Item]) -> None:
    """PROXIES=traefik: only the tests of the proxies it names, and those of none."""
    try:
        selected = set(selected_proxies())
    except UnknownProxy as error:
        raise pytest.UsageError(str(error)) from None
    if selected == set(KINDS):
        return
    keep = [i for i in items if not (proxies := _proxies_of(i)) or proxies & selected]
    config.hook.pytest_deselected(items=[i for i in items if i not in keep])
    items[:] = keep


def _uses_the_lab(item: pytest.Item) -> bool:
    return "proxy_lab" in getattr(item, "fixturenames", ())


def _needs_the_engine(item: pytest.Item) -> bool:
    return _uses_the_lab(item) or item.get_closest_marker("docker") is not None


@pytest.fixture(scope="session", autouse=True)
def _lab_opens_with_the_session(request: pytest.FixtureRequest) -> None:
    """Open the lab (and start every run) at the first test, if any test
    needs it; the tests that need no engine then wait for the runs'
    start-ups, and run while the runs wait out their silence."""
    if any(_uses_the_lab(item) for item in request.session.items):
        lab: ProxyLab = request.getfixturevalue("proxy_lab")
        lab.wait_for_start_ups()


def _shows(item: SybilItem, snippet: str) -> bool:
    parsed = item.example.parsed
    return getattr(parsed, "snippet_name", None) == snippet.removeprefix("./")


def pytest_keyboard_interrupt() -> None:
    """Ctrl-C: remove the runs' proxies before pytest tears the lab down.

    Otherwise tearing down waits for every run under way, a minute of
    silence included, and a second Ctrl-C would leave containers behind.
    """
    while OPEN_LABS:
        removed = OPEN_LABS.pop().interrupt()
        print(f"\ninterrupted: removed {len(removed)} containers of this run", flush=True)


def _start_measure(lab: ProxyLab, measure: Callable[[ProxyLab], Any]) -> Any:
    return lab.in_background(measure, functools.partial(measure, lab))


@pytest.fixture
def measured(proxy_lab: ProxyLab, request: pytest.FixtureRequest) -> Any:
    """What the test's `measured_by` measure found: its proxy runs start with
    every other run when the lab opens, instead of after them, one test at a
    time."""
    marker = request.node.get_closest_marker("measured_by")
    if marker is None:
        raise pytest.UsageError(f"{request.node.nodeid} uses `measured` without measured_by")
    return _start_measure(proxy_lab, marker.kwargs["measure"]).result()


@pytest.fixture(scope="session")
def necessity_measured(proxy_lab: ProxyLab) -> dict[str, Any]:
    """What each line of the published configs is for, measured this run."""
    return necessity.measure_all(proxy_lab)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """How far from its bounds this run was, and where the time went."""
    if setup_times.report():
        terminalreporter.write_sep("-", "set-up before the tests")
        for line in setup_times.report():
            terminalreporter.write_line(line)
    if margins.worst():
        terminalreporter.write_sep("-", "waits against their bounds")
        for margin in margins.worst():
            terminalreporter.write_line(margin.line())
    if not LAB_TIMINGS:
        return
    startups = sorted(t.startup_s for t in LAB_TIMINGS)
    slowest = max(LAB_TIMINGS, key=lambda t: t.startup_s)
    longest = max(LAB_TIMINGS, key=lambda t: t.total_s)
    terminalreporter.write_sep("-", "proxy runs")
    terminalreporter.write_line(
        f"{len(LAB_TIMINGS)} runs, side by side. Start-up (config check, container start, "
        f"certificates, readiness): median {startups[len(startups) // 2]:.1f} s, "
        f"slowest {slowest.startup_s:.1f} s ({slowest.label}). "
        f"Longest run {longest.total_s:.0f} s ({longest.label})."
    )
