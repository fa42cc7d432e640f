"""What the reader copies is what ran: the built site, byte for byte and in a browser.

The suite runs the files under snippets/; a reader runs what the site's copy
button gives them. These tests build the site as `make serve` and the
published site do, then:

- take every code block that shows a snippet out of the built HTML, and
  require its text, byte for byte, to be the file the suite ran (tabs and
  all: Python-Markdown would turn them into spaces without SuperFences'
  `preserve_tabs`);
- open every page in Debian's Chromium, headless: no console errors, every
  internal link and anchor resolves, no table in any tab needs scrolling
  sideways at 1280 px or on a phone, every tab of every tab set shows its
  own content, each snippet's copy button puts exactly the snippet's bytes
  on the clipboard (Material's own trims the final newline, which a
  Caddyfile needs; docs/javascripts/exact-copy.js puts it back), and the
  search finds the Reverse Proxy page for "504" and for "WebSocket".
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import os
import re
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urldefrag, urljoin, urlsplit

import pytest

from harness.clients.browser import launch, require_chromium
from harness.lab.snippet_examples import SnippetInclude, docs_sybil
from harness.proxies.kind import REPO_ROOT

if TYPE_CHECKING:
    from playwright.sync_api import Page

MKDOCS = Path(sys.executable).parent / "mkdocs"
PAGES = sorted((REPO_ROOT / "docs").rglob("*.md"))
_TITLE = re.compile(r'title="([^"]+)"')


# `make test` builds the site before the tests and names it here, so what the
# tests check is the very folder that gets published.
BUILT_SITE_VARIABLE = "DORKOS_DOCS_SITE"


@pytest.fixture(scope="module")
def built_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if os.environ.get(BUILT_SITE_VARIABLE):
        return Path(os.environ[BUILT_SITE_VARIABLE]).resolve()
    site = tmp_path_factory.mktemp("site")
    subprocess.run(
        [str(MKDOCS), "build", "--strict", "--quiet", "--site-dir", str(site)],
        cwd=REPO_ROOT,
        check=True,
    )
    return site


def page_html(site: Path, page: Path) -> Path:
    relative = page.relative_to(REPO_ROOT / "docs").with_suffix("")
    return site / ("index.html" if relative.name == "index" else relative / "index.html")


def page_url(served: str, site: Path, page: Path) -> str:
    """Where the served site has the page built from `page`."""
    return urljoin(served, str(page_html(site, page).relative_to(site)))


def shown_snippets() -> list[tuple[Path, str, SnippetInclude]]:
    """(page, fence title, include) for every snippet a page shows."""
    found = []
    for page in PAGES:
        text = page.read_text().splitlines()
        for example in docs_sybil().parse(page).examples():
            include: SnippetInclude = example.parsed
            title = _TITLE.search(text[include.line - 1])
            assert title, f"{page.name}:{include.line}: a snippet's fence has no title"
            found.append((page, title.group(1), include))
    return found


class _CodeBlocks(HTMLParser):
    """The text of each titled code block, as the copy button would give it."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.blocks: dict[str, str] = {}
        self._title: str | None = None
        self._in_title = self._in_code = False
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "span" and ("class", "filename") in attrs:
            self._in_title, self._text = True, []
        elif tag == "code" and self._title is not None:
            self._in_code, self._text = True, []

    def handle_endtag(self, tag: str) -> None:
        if tag == "span" and self._in_title:
            self._in_title, self._title = False, "".join(self._text)
        elif tag == "code" and self._in_code:
            assert self._title is not None
            self.blocks[self._title] = "".join(self._text)
            self._in_code, self._title = False, None

    def handle_data(self, data: str) -> None:
        if self._in_title or self._in_code:
            self._text.append(data)


def test_every_page_shows_snippets_somewhere() -> None:
    assert len(shown_snippets()) == 11  # as tests/test_pages.py counts them


@pytest.mark.parametrize(
    ("page", "title", "include"),
    shown_snippets(),
    ids=[f"{i.snippet_name}" for _, _, i in shown_snippets()],
)
def test_rendered_block_is_the_snippet_byte_for_byte(
    built_site: Path, page: Path, title: str, include: SnippetInclude
) -> None:
    parser = _CodeBlocks()
    parser.feed(page_html(built_site, page).read_text())
    assert title in parser.blocks, f"{page.name}: no code block titled {title!r} in the build"
    rendered, ran = parser.blocks[title], include.snippet.read_text()
    assert rendered == ran, (
        f"{page.name}:{include.line}: the page shows {include.snippet_name} as "
        f"{rendered!r}; the suite ran {ran!r}"
    )


# -- the built site in Chromium ------------------------------------------------


@pytest.fixture(scope="module")
def served(built_site: Path) -> Iterator[str]:
    """The built site over HTTP on loopback, as `make serve` would show it."""
    handler = functools.partial(_QuietHandler, directory=str(built_site))
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}/"
        finally:
            server.shutdown()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def chromium() -> Iterator[object]:
    require_chromium()
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="chromium-home-") as home, sync_playwright() as p:
        browser = launch(p, Path(home))
        try:
            yield browser
        finally:
            browser.close()


# A reader's laptop: Material's three columns, the text's about 690 px wide.
DESKTOP_WIDTH = 1280
# A raw exception on a page, as a measurement's failure might publish one.
_EXCEPTION = re.compile(r"\b\w+(Error|Exception): |Traceback \(most recent call last\)")


PHONE_WIDTH = 390
# Most of a phone's screen (844 px tall at this width): a row taller than
# this can't be read without losing its first column from view.
TALLEST_ROW_ON_A_PHONE = 600


@dataclass
class Visit:
    """A page open in Chromium, and every console error it has shown so far."""

    page: Page
    errors: list[str]


@contextlib.contextmanager
def opened(
    chromium: object, url: str, width: int = DESKTOP_WIDTH, height: int = 900
) -> Iterator[Visit]:
    """`url` in a fresh browser context, `width` px wide, once it has loaded
    everything it asks for (the search index included)."""
    from playwright.sync_api import Browser

    assert isinstance(chromium, Browser)
    context = chromium.new_context(viewport={"width": width, "height": height})
    context.grant_permissions(["clipboard-read", "clipboard-write"])
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url, wait_until="networkidle")
    try:
        yield Visit(page, errors)
    finally:
        context.close()


@pytest.fixture(scope="module")
def visit(chromium: object) -> Iterator[Callable[[str, int], Visit]]:
    """One visit per page and screen width, shared by the tests that look at it.

    A page load (Material's search index is built on each) is most of a
    browser test's time; the tests that read a page, or click its tabs and
    copy buttons, each set up what they look at and so share one visit. Its
    errors are every error the page has shown since it loaded.
    """
    visits: dict[tuple[str, int], Visit] = {}
    with contextlib.ExitStack() as stack:

        def open_once(url: str, width: int) -> Visit:
            if (url, width) not in visits:
                height = 844 if width == PHONE_WIDTH else 900
                visits[url, width] = stack.enter_context(opened(chromium, url, width, height))
            return visits[url, width]

        yield open_once


# Measures every table (and row) as the reader can see it: Material hides all
# but the chosen tab of a tab set, and a hidden table has no size, so each
# tab is shown in turn. Returns the text column's width, each table's width
# (what it holds, scrolled or not) and first row, each row's height, and the
# text shown, tab by tab.
MEASURE_EVERY_TAB = """() => {
  const article = document.querySelector('article');
  const text = (e) => e.innerText.replace(/\\s+/g, ' ').trim().slice(0, 60);
  const tables = new Map(), rows = new Map(), shown = [article.innerText];
  const measure = (tab) => {
    for (const t of article.querySelectorAll('table')) {
      // Material lets a table scroll sideways within the column: its box
      // fits, and what it holds is as wide as its scrollWidth.
      const shownWidth = t.getBoundingClientRect().width;
      if (shownWidth > 0 && !tables.has(t)) {
        const width = Math.max(shownWidth, t.scrollWidth);
        tables.set(t, [Math.round(width), tab, text(t.rows[0] ?? t)]);
      }
    }
    for (const r of article.querySelectorAll('tr')) {
      const height = r.getBoundingClientRect().height;
      if (height > 0 && !rows.has(r)) rows.set(r, [Math.round(height), tab, text(r)]);
    }
  };
  measure('');
  for (const set of article.querySelectorAll('.tabbed-set')) {
    for (const label of set.querySelectorAll(':scope > .tabbed-labels > label')) {
      label.click();
      measure(label.textContent.trim());
      shown.push(set.querySelector(':scope > .tabbed-content').innerText);
    }
  }
  return [article.clientWidth, [...tables.values()], [...rows.values()], shown.join('\\n')];
}"""


def _where(tab: str) -> str:
    return f" (tab {tab})" if tab else ""


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_page_has_no_console_errors_and_its_links_resolve(
    visit: Callable[[str, int], Visit], served: str, built_site: Path, page: Path
) -> None:
    shown = visit(page_url(served, built_site, page), DESKTOP_WIDTH)
    links = shown.page.eval_on_selector_all("a[href]", "links => links.map(a => a.href)")
    assert shown.errors == [], f"{page.name}: console errors {shown.errors}"
    broken = []
    for link in links:
        target, anchor = urldefrag(link)
        if not target.startswith(served):
            continue  # outside the site: not ours to check here
        path = built_site / urlsplit(target).path.lstrip("/")
        html = path / "index.html" if path.is_dir() else path
        if not html.is_file():
            broken.append(f"{link} (no such page)")
        elif anchor and f'id="{anchor}"' not in html.read_text():
            broken.append(f"{link} (no such anchor)")
    assert broken == [], f"{page.name}: links that go nowhere: {sorted(set(broken))}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_page_fits_the_screen_and_shows_no_exception(
    visit: Callable[[str, int], Visit], served: str, built_site: Path, page: Path
) -> None:
    """At 1280 px no table, in any tab, is wider than the text column, and no
    tab of the page shows a raw exception."""
    shown = visit(page_url(served, built_site, page), DESKTOP_WIDTH)
    column, tables, _, text = shown.page.evaluate(MEASURE_EVERY_TAB)
    wide = [f"{width} px{_where(tab)}: {head!r}" for width, tab, head in tables if width > column]
    assert not wide, (
        f"{page.name}: tables wider than the {column} px column at {DESKTOP_WIDTH} px: {wide}"
    )
    found = _EXCEPTION.search(text)
    assert found is None, (
        f"{page.name} shows an exception: {text[found.start() : found.start() + 120]!r}"
    )


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_tables_fit_a_phone(
    visit: Callable[[str, int], Visit], served: str, built_site: Path, page: Path
) -> None:
    """Opened at 390 px, no table in any tab is wider than the text column,
    and no row is a screen tall."""
    shown = visit(page_url(served, built_site, page), PHONE_WIDTH)
    column, tables, rows, _ = shown.page.evaluate(MEASURE_EVERY_TAB)
    assert shown.errors == []
    wide = [f"{width} px{_where(tab)}: {head!r}" for width, tab, head in tables if width > column]
    assert not wide, (
        f"{page.name}: tables wider than the {column} px column at {PHONE_WIDTH} px: {wide}"
    )
    tall = [
        f"{height} px{_where(tab)}: {text!r}"
        for height, tab, text in rows
        if height > TALLEST_ROW_ON_A_PHONE
    ]
    assert not tall, (
        f"{page.name} at {PHONE_WIDTH} px: table rows taller than {TALLEST_ROW_ON_A_PHONE} px: "
        f"{tall}"
    )


REVERSE_PROXY = REPO_ROOT / "docs" / "reverse-proxy.md"


def test_every_tab_shows_its_own_content(
    visit: Callable[[str, int], Visit], served: str, built_site: Path
) -> None:
    shown = visit(page_url(served, built_site, REVERSE_PROXY), DESKTOP_WIDTH)
    results = shown.page.evaluate(
        """() => [...document.querySelectorAll('.tabbed-set')].map(set => {
             const labels = [...set.querySelectorAll(':scope > .tabbed-labels > label')];
             const blocks = [
               ...set.querySelectorAll(':scope > .tabbed-content > .tabbed-block')];
             return labels.map((label, i) => {
               label.click();
               return {label: label.textContent.trim(),
                       shown: blocks.map(b => b.offsetParent !== null).join(',')};
             });
           })"""
    )
    assert shown.errors == []
    assert len(results) >= 2, f"expected the page's tab sets, found {len(results)}"
    for tab_set in results:
        for index, tab in enumerate(tab_set):
            blocks = tab["shown"].split(",")
            assert blocks.count("true") == 1 and blocks[index] == "true", (
                f"clicking {tab['label']!r} showed blocks {blocks}"
            )


def test_tab_sets_follow_the_readers_choice(
    visit: Callable[[str, int], Visit], served: str, built_site: Path
) -> None:
    """Pick nginx once, and every tab set on the page shows nginx."""
    shown = visit(page_url(served, built_site, REVERSE_PROXY), DESKTOP_WIDTH)
    chosen = shown.page.evaluate(
        """() => {
             const sets = [...document.querySelectorAll('.tabbed-set')];
             const labels = set => [...set.querySelectorAll(
               ':scope > .tabbed-labels > label')];
             labels(sets[0]).find(l => l.textContent.trim() === 'nginx').click();
             return sets.map(set => {
               const inputs = [...set.querySelectorAll(':scope > input')];
               const i = inputs.findIndex(input => input.checked);
               return labels(set)[i].textContent.trim();
             });
           }"""
    )
    assert shown.errors == []
    assert len(chosen) >= 2 and chosen == ["nginx"] * len(chosen), chosen


@pytest.mark.parametrize(
    ("page", "title", "include"),
    shown_snippets(),
    ids=[f"{i.snippet_name}" for _, _, i in shown_snippets()],
)
def test_copy_button_copies_the_snippet(
    visit: Callable[[str, int], Visit],
    served: str,
    built_site: Path,
    page: Path,
    title: str,
    include: SnippetInclude,
) -> None:
    shown = visit(page_url(served, built_site, page), DESKTOP_WIDTH)
    # Tabs hide what they don't show: show the block's tab first.
    code_id = shown.page.evaluate(
        """(title) => {
             const name = [...document.querySelectorAll('span.filename')]
               .find(span => span.textContent === title);
             for (let el = name; el; el = el.parentElement) {
               if (el.classList && el.classList.contains('tabbed-block')) {
                 const set = el.closest('.tabbed-set');
                 const index = [...el.parentElement.children].indexOf(el);
                 set.querySelectorAll(':scope > .tabbed-labels > label')[index].click();
               }
             }
             return name.closest('.highlight').querySelector('pre').id;
           }""",
        title,
    )
    shown.page.evaluate("navigator.clipboard.writeText('')")
    # A real click, as a reader's: browsers copy only on a user's gesture.
    shown.page.click(f"pre#{code_id} button[data-md-type='copy']")
    shown.page.wait_for_function(
        "async () => (await navigator.clipboard.readText()) !== ''", timeout=10_000
    )
    copied = shown.page.evaluate("navigator.clipboard.readText()")
    assert shown.errors == []
    assert copied == include.snippet.read_text(), (
        f"{page.name}: the copy button of {title!r} copied {copied!r}, not {include.snippet_name}"
    )


# A reader's words for a symptom, and the Common Issue that explains it.
SYMPTOMS = {
    "WebSocket": "#the-app-loads-but-replies-never-appear",
    "replies never appear": "#the-app-loads-but-replies-never-appear",
    "502": "#502-bad-gateway",
    "504": "#504-gateway-timeout-on-long-requests",
    "batches": "#events-arrive-in-batches-instead-of-in-real-time",
}


@pytest.mark.parametrize("query", list(SYMPTOMS))
def test_search_finds_the_common_issue_first(chromium: object, served: str, query: str) -> None:
    # A visit of its own: what the search box shows depends on what was typed.
    with opened(chromium, served) as shown:
        shown.page.click("input.md-search__input")
        shown.page.keyboard.type(query)
        shown.page.wait_for_selector(".md-search-result__item a", state="attached", timeout=30_000)
        found = shown.page.eval_on_selector_all(
            ".md-search-result__item a", "links => links.map(a => a.href)"
        )
    assert shown.errors == []
    # Material lists a page, then its sections; the first section is what
    # the reader's eye lands on.
    assert found[0].endswith("/reverse-proxy/"), f"searching {query!r}: first page {found[0]}"
    sections = [link for link in found if "#" in link]
    assert sections and f"reverse-proxy/{SYMPTOMS[query]}" in sections[0], (
        f"searching {query!r}: first section {sections[:1]}, wanted {SYMPTOMS[query]}; "
        f"all: {found[:6]}"
    )
