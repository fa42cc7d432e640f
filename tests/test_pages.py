"""The docs yield the examples we think they do, and break loudly when wrong."""

import subprocess
import sys
from pathlib import Path

import pytest

from harness.lab.snippet_examples import SNIPPETS, DocsError, SnippetInclude, docs_sybil
from harness.proxies.kind import REPO_ROOT

# How many snippet examples each page yields. A parser that silently matched
# nothing would make every proxy test vanish; this makes it fail instead.
EXPECTED_EXAMPLES = {
    "docs/index.md": 0,
    "docs/check-your-proxy.md": 0,
    "docs/how-it-is-tested.md": 0,
    # Caddy, nginx (2), HAProxy, Traefik (2), Apache httpd (2), Compose (2), the drop-in
    "docs/reverse-proxy.md": 11,
    "docs/tested-with.md": 0,
    "docs/what-it-costs.md": 0,
}


def includes_on(page: Path) -> list[SnippetInclude]:
    document = docs_sybil().parse(page)
    return [example.parsed for example in document.examples()]


def test_every_page_is_counted() -> None:
    pages = {str(p.relative_to(REPO_ROOT)) for p in (REPO_ROOT / "docs").rglob("*.md")}
    assert pages == set(EXPECTED_EXAMPLES)


@pytest.mark.parametrize(("page", "expected"), EXPECTED_EXAMPLES.items())
def test_examples_per_page(page: str, expected: int) -> None:
    assert len(includes_on(REPO_ROOT / page)) == expected


def test_every_snippet_is_shown_and_run() -> None:
    shown = {i.snippet for page in EXPECTED_EXAMPLES for i in includes_on(REPO_ROOT / page)}
    on_disk = {p.resolve() for p in SNIPPETS.rglob("*") if p.is_file()}
    assert on_disk - shown == set(), "snippets no page shows (so no test runs them)"


def test_reverse_proxy_page_runs_each_proxy() -> None:
    found = [(i.proxy, i.snippet_name) for i in includes_on(REPO_ROOT / "docs/reverse-proxy.md")]
    assert found == [
        ("caddy", "snippets/caddy/Caddyfile"),
        ("nginx", "snippets/nginx/dorkos.conf"),
        ("nginx", "snippets/nginx/events.conf"),
        ("haproxy", "snippets/haproxy/dorkos.cfg"),
        ("traefik", "snippets/traefik/traefik.yml"),
        ("traefik", "snippets/traefik/dorkos.yml"),
        ("apache", "snippets/apache/dorkos.conf"),
        ("apache", "snippets/apache/dorkos-workers.conf"),
        ("compose", "snippets/compose/compose.yml"),
        ("compose", "snippets/compose/Caddyfile"),
        ("dorkos", "snippets/dorkos/proxy.conf"),
    ]


def write_page(tmp_path: Path, body: str) -> Path:
    page = tmp_path / "page.md"
    page.write_text(body)
    return page


def test_inline_config_is_an_error_naming_page_and_line(tmp_path: Path) -> None:
    page = write_page(tmp_path, "# Title\n\ntext\n\n```nginx\nserver {}\n```\n")
    with pytest.raises(DocsError, match=r"page\.md:5: a nginx block is pasted inline"):
        includes_on(page)


def test_indented_inline_config_in_a_tab_is_caught(tmp_path: Path) -> None:
    page = write_page(tmp_path, '=== "Caddy"\n\n    ```caddy title="x"\n    a {\n    }\n    ```\n')
    with pytest.raises(DocsError, match=r"page\.md:3: a caddy block is pasted inline"):
        includes_on(page)


def test_missing_snippet_is_an_error_naming_page_and_line(tmp_path: Path) -> None:
    page = write_page(tmp_path, 'x\n\n```nginx\n--8<-- "snippets/nginx/nope.conf"\n```\n')
    with pytest.raises(
        DocsError,
        match=r"page\.md:3: includes snippets/nginx/nope\.conf, "
        r"which does not exist",
    ):
        includes_on(page)


def test_include_with_extra_lines_is_an_error(tmp_path: Path) -> None:
    page = write_page(tmp_path, 'x\n\n```nginx\n--8<-- "snippets/nginx/dorkos.conf"\n# more\n```\n')
    with pytest.raises(DocsError, match=r"page\.md:3: .* only that one --8<-- line"):
        includes_on(page)


def test_shell_commands_may_be_inline(tmp_path: Path) -> None:
    page = write_page(tmp_path, "```bash\nsudo certbot --nginx -d dorkos.example.com\n```\n")
    assert includes_on(page) == []


def test_a_verdict_for_a_snippet_no_page_shows_names_the_ones_they_do() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "docs", "--snippet", "snippets/x"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == pytest.ExitCode.USAGE_ERROR, done.stdout + done.stderr
    assert "--snippet snippets/x: no page example shows it" in done.stderr
    assert "snippets/haproxy/dorkos.cfg" in done.stderr
