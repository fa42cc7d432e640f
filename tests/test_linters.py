"""The configs pass the linters their users run, or the page says why not.

- Gixy-Next on every nginx config the site shows, inside Debian's own
  nginx.conf with the page's events block, as a reader's server has it;
  every finding must be one the Reverse Proxy page explains under "What
  nginx linters say", and every one explained must still be found.
- `caddy fmt` on every Caddyfile: the file must be what it writes, or Caddy
  warns at every start that its input is not formatted.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from harness.lab.containers import run_to_completion
from harness.lab.proxy_lab import ProxyLab
from harness.lab.snippet_examples import SNIPPETS
from harness.lab.tls import SERVER_NAME
from harness.proxies.kind import REPO_ROOT
from harness.proxies.nginx import EVENTS_SNIPPET as NGINX_EVENTS_SNIPPET
from harness.proxies.nginx import NGINX_CONF

PAGE = REPO_ROOT / "docs" / "reverse-proxy.md"
GIXY = Path(sys.executable).parent / "gixy"
NGINX_SITE_CONFIGS = sorted(
    p for p in (SNIPPETS / "nginx").glob("*.conf") if p != NGINX_EVENTS_SNIPPET
)
CADDYFILES = sorted(SNIPPETS.glob("*/Caddyfile*"))


def explained_findings() -> set[str]:
    """The Gixy-Next plugins the page's section names, as `- **`plugin`**`."""
    text = PAGE.read_text()
    heading = re.search(r"^#+ What nginx linters say$", text, re.MULTILINE)
    assert heading is not None, f"{PAGE.name} has no 'What nginx linters say' section"
    section = text[heading.end() :].split("\n#", 1)[0]
    return set(re.findall(r"^- \*\*`([a-z_]+)`\*\*", section, re.MULTILINE))


def debian_tree(lab: ProxyLab, site: Path, into: Path) -> Path:
    """Debian's nginx.conf as the page has readers set it up, with only `site` in it."""
    image = lab.images_for("nginx")[0]
    files = {}
    for name in ("nginx.conf", "mime.types"):
        code, text = run_to_completion(
            lab.client, lab.tag(image), ["cat", f"/etc/nginx/{name}"], [], role="gixy-read"
        )
        assert code == 0, text
        files[name] = text
    main = re.sub(
        r"^events\s*\{.*?^\}\n",
        lambda _: NGINX_EVENTS_SNIPPET.read_text(),
        files["nginx.conf"],
        flags=re.MULTILINE | re.DOTALL,
    )
    # Debian's default site and its dynamic modules are not what is checked.
    main = re.sub(r"^\s*include /etc/nginx/(modules|sites)-enabled/\S+;\n", "", main, flags=re.M)
    (into / "conf.d").mkdir(parents=True)
    (into / "conf.d" / site.name).write_text(site.read_text())
    (into / "mime.types").write_text(files["mime.types"])
    (into / "nginx.conf").write_text(main.replace("/etc/nginx/", f"{into}/"))
    return into / "nginx.conf"


@pytest.mark.proxies("nginx")
@pytest.mark.docker
@pytest.mark.parametrize("site", NGINX_SITE_CONFIGS, ids=lambda p: p.name)
def test_gixy_finds_only_what_the_page_explains(
    proxy_lab: ProxyLab, tmp_path: Path, site: Path
) -> None:
    assert NGINX_CONF == "/etc/nginx/nginx.conf"
    main = debian_tree(proxy_lab, site, tmp_path / "etc-nginx")
    report = tmp_path / "gixy.json"
    run = subprocess.run(
        [str(GIXY), "--format", "json", "--output", str(report), str(main)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert report.is_file(), f"gixy did not run: {run.stdout}{run.stderr}"
    findings = json.loads(report.read_text())
    found = {f["plugin"] for f in findings}
    details = [f"{f['plugin']} ({f['severity']}): {f['reason']}" for f in findings]
    assert found == explained_findings(), (
        f"{site.relative_to(REPO_ROOT)}: Gixy-Next found {details}; the page explains "
        f"{sorted(explained_findings())} under 'What nginx linters say'"
    )


def test_page_explains_at_least_one_finding() -> None:
    # A parser that matched nothing would make the check above vacuous.
    assert "proxy_buffering_off" in explained_findings()


@pytest.mark.parametrize("caddyfile", CADDYFILES, ids=lambda p: str(p.relative_to(SNIPPETS)))
def test_caddyfile_is_what_caddy_fmt_writes(caddyfile: Path) -> None:
    formatted = subprocess.run(
        [str(Path(sys.executable).parent / "caddy"), "fmt", str(caddyfile)],
        capture_output=True,
        check=True,
    ).stdout
    assert formatted == caddyfile.read_bytes(), (
        f"{caddyfile.relative_to(REPO_ROOT)} is not what `caddy fmt` writes:\n"
        f"{formatted.decode()!r}"
    )


def test_every_config_is_linted() -> None:
    assert NGINX_SITE_CONFIGS and CADDYFILES
    assert all(SERVER_NAME in p.read_text() for p in (*NGINX_SITE_CONFIGS, *CADDYFILES))
