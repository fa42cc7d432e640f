"""Sybil's view of the docs: every fenced block that includes a snippet.

Sybil reads the raw Markdown, so it sees `--8<-- "snippets/x"` and not the
file. Each such block becomes one example; evaluating it runs the file's
bytes in the proxy it is written for, through every contract property.

A proxy config pasted inline (a fence in a config language that is not an
include) is an error at collection time: the page would show bytes that no
test ran.
"""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from sybil import Document, Example, Region, Sybil
from sybil.parsers.markdown.lexers import RawFencedCodeBlockLexer

from harness.proxies.kind import REPO_ROOT
from harness.proxies.registry import KINDS

SNIPPETS = REPO_ROOT / "snippets"

# Languages whose fenced blocks are proxy configs and so must be includes.
CONFIG_LANGUAGES = frozenset(
    {"nginx", "caddy", "caddyfile", "apache", "apacheconf", "haproxy", "conf"}
)

# pymdownx.snippets' block form: --8<-- "path" or --8<-- "path:first:last"
INCLUDE = re.compile(r'^\s*-{1,}8<-{1,}\s+"(?P<path>[^":]+)(?::[0-9:,-]*)?"\s*$')


# What runs the files under each folder of snippets/: a proxy; for
# DorkOS's own side, systemd; for the Compose deployment, Caddy (its
# Caddyfile) and the Compose specification (its compose file).
RUN_UNDER = (*KINDS, "dorkos", "compose")
TITLE = re.compile(r'title="(?P<title>[^"]+)"')


class DocsError(ValueError):
    """A page breaks the docs' conventions; the message names file and line."""


@dataclass(frozen=True)
class SnippetInclude:
    """A fenced block on a page that shows a file from snippets/."""

    page: Path
    line: int
    language: str
    snippet: Path  # absolute
    title: str | None = None  # the fence's title: where the page says the file goes

    @property
    def snippet_name(self) -> str:
        return str(self.snippet.relative_to(REPO_ROOT))

    @property
    def proxy(self) -> str:
        return self.snippet.relative_to(SNIPPETS).parts[0]


def _fences(document: Document) -> Iterable[Region]:
    lexer = RawFencedCodeBlockLexer(
        info_pattern=re.compile(r"(?P<info>[^\n]*)$\n", re.MULTILINE),
        mapping={"info": "info", "source": "source"},
    )
    return lexer(document)


def parse_snippet_includes(
    document: Document, evaluate: Callable[[Example], None]
) -> Iterator[Region]:
    page = Path(document.path)
    for region in _fences(document):
        line = document.text.count("\n", 0, region.start) + 1
        where = f"{_display(page)}:{line}"
        info = str(region.lexemes["info"]).strip()
        language = info.split(maxsplit=1)[0].lower() if info else ""
        source_lines = [s for s in str(region.lexemes["source"]).splitlines() if s.strip()]
        includes = [m.group("path") for s in source_lines if (m := INCLUDE.match(s))]
        if not includes:
            if language in CONFIG_LANGUAGES:
                raise DocsError(
                    f"{where}: a {language} block is pasted inline; configs must be files "
                    f'under snippets/ shown with --8<-- "snippets/..." so the page shows '
                    f"exactly what the tests ran"
                )
            continue
        if len(source_lines) != 1:
            raise DocsError(
                f"{where}: a block that includes a snippet must hold only that "
                f"one --8<-- line, so the page shows the file and nothing else"
            )
        snippet = (REPO_ROOT / includes[0]).resolve()
        if not snippet.is_relative_to(SNIPPETS):
            continue
        if not snippet.is_file():
            raise DocsError(f"{where}: includes {includes[0]}, which does not exist")
        title = TITLE.search(info)
        include = SnippetInclude(page, line, language, snippet, title and title.group("title"))
        if include.proxy not in RUN_UNDER:
            raise DocsError(
                f"{where}: {includes[0]} is not under "
                f"{', '.join(f'snippets/{d}/' for d in RUN_UNDER)}, so nothing is known to run it"
            )
        if include.proxy == "dorkos" and include.title is None:
            raise DocsError(f'{where}: {includes[0]} needs a title="..." saying where it goes')
        yield Region(region.start, region.end, include, evaluate)


def _display(path: Path) -> str:
    with contextlib.suppress(ValueError):
        return str(path.resolve().relative_to(REPO_ROOT))
    return str(path)


class DocsSybil(Sybil):
    """Sybil whose test ids name the page line and the snippet it shows."""

    def identify(self, example: Example) -> str:
        include: SnippetInclude = example.parsed
        return f"line:{example.line},{include.snippet_name}"


def _not_run(example: Example) -> None:
    raise RuntimeError("docs_sybil() without an evaluator only parses; conftest.py runs examples")


def docs_sybil(evaluate: Callable[[Example], None] = _not_run) -> DocsSybil:
    """The pages' snippet examples; `evaluate` runs one (harness.lab.flows)."""
    return DocsSybil(
        parsers=[functools.partial(parse_snippet_includes, evaluate=evaluate)],
        path=str(REPO_ROOT / "docs"),
        patterns=["*.md"],
        fixtures=["subtests", "proxy_lab"],
    )
