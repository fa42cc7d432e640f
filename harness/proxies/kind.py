"""What the harness knows of one proxy, in one place: `ProxyKind`.

Each proxy has a module of its own beside this one (nginx.py, caddy.py,
haproxy.py) that fills one in: the images it is run on, how its config is
checked and served, how its version is read and its config reloaded, what
it forwards, and how its config language reads to the measurements. Every
other part of the harness asks the proxy's kind (harness.proxies.registry)
instead of naming a proxy.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

if TYPE_CHECKING:
    from harness.lab.acme import AcmeDirectory
    from harness.lab.containers import Mount
    from harness.lab.tls import TestCA
    from harness.proxies.images import ProxyImage

# Where a proxy's certificates come from: files made by the test CA, or an
# ACME server the proxy asks itself.
Certificates = Union["TestCA", "AcmeDirectory"]

REPO_ROOT = Path(__file__).resolve().parents[2]


def relative(snippet: Path) -> str:
    """The path a contributor knows the file by."""
    resolved = snippet.resolve()
    return (
        str(resolved.relative_to(REPO_ROOT))
        if resolved.is_relative_to(REPO_ROOT)
        else str(resolved)
    )


class ConfigRejected(RuntimeError):
    """The proxy refused the snippet; the message names the file and line."""


class VariantError(ValueError):
    pass


@dataclass(frozen=True)
class ProxyLaunch:
    """How one proxy runs its config files: what is mounted, what is run."""

    mounts: list[Mount]
    # The proxy's own check of its config (None: it has none, and the
    # launch read the files itself).
    check_command: list[str] | None
    run_command: list[str]
    # Where each config sits in the container, so the proxy's messages can be
    # translated back to the file a contributor edits.
    configs_in_container: dict[str, Path]
    environment: dict[str, str] = field(default_factory=dict)

    def explain(self, output: str) -> str:
        for in_container, config in self.configs_in_container.items():
            output = output.replace(in_container, relative(config))
        return output.rstrip()


# launch(configs, certificates, workdir, main_config): the first config is
# the published one, the others variants beside it.
Launcher = Callable[[list[Path], Certificates, Path, "Path | None"], ProxyLaunch]


@dataclass(frozen=True)
class Variant:
    """A changed copy of a published snippet, made to measure what a line does.

    A variant removes one directive, or adds lines a reader might add (gzip
    for everything, say). Variants are made from the snippet's own text
    every run, so they follow the snippet as it changes; a variant that
    names a directive the snippet no longer has is an error, not a silent
    no-op. Variants are only ever measured, never published.
    """

    name: str
    removes: str | None = None  # one directive, as the kind's grammar reads it
    adds: tuple[str, ...] = field(default=())  # lines for the top of the block
    # One directive (as for `removes`) and the lines that take its place,
    # e.g. to give Caddy's one-line reverse_proxy a block of subdirectives.
    replaces: tuple[str, tuple[str, ...]] | None = None
    # How the measurements' table words the change, when "Add" or "Remove"
    # would not say it (a line used in place of another).
    table_label: str | None = None
    # Whether that change takes part of a line away (a parameter of
    # Apache's ProxyPass), so the table reads it as a removal.
    takes_away: bool = False

    def _line_of(self, directive: str, lines: list[str], grammar: Grammar) -> int:
        matching = [i for i, line in enumerate(lines) if grammar.directive(line) == directive]
        if len(matching) != 1:
            raise VariantError(
                f"variant {self.name!r}: expected one line {directive!r} in the "
                f"snippet, found {len(matching)}"
            )
        return matching[0]

    def render(self, text: str, grammar: Grammar) -> str:
        """The snippet with this change, and nothing else changed."""
        lines = text.splitlines(keepends=True)
        if self.removes is not None:
            del lines[self._line_of(self.removes, lines, grammar)]
        if self.replaces is not None:
            old, new = self.replaces
            at = self._line_of(old, lines, grammar)
            indent = re.match(r"\s*", lines[at]).group(0)  # type: ignore[union-attr]
            lines[at : at + 1] = [f"{indent}{line}\n" for line in new]
        if self.adds:
            anchor = grammar.block_for_additions(lines)
            indent = re.match(r"\s*", lines[anchor + 1]).group(0)  # type: ignore[union-attr]
            lines[anchor + 1 : anchor + 1] = [f"{indent}{add}\n" for add in self.adds]
        return "".join(lines)


@dataclass(frozen=True)
class Grammar:
    """How the measurements read a proxy's config language."""

    # A line's directive as variants name it, or None (a comment, a brace).
    directive: Callable[[str], str | None]
    # The directives a measurement removes one at a time: those that shape
    # how requests reach DorkOS.
    measured: Callable[[str], list[str]]
    # Where added lines go: the line that opens their block.
    opening: str  # a regular expression, matched line by line

    def block_for_additions(self, lines: list[str]) -> int:
        for i, line in enumerate(lines):
            if re.match(self.opening, line):
                return i
        raise VariantError(f"no block to add lines to (looked for {self.opening!r})")


@dataclass(frozen=True)
class KnownFailure:
    """A property a version of a proxy fails with the published config, as
    the page says: the suite checks that it still fails, and just so."""

    prop: str  # the property's name
    symptom: str  # a part of the failure's message
    page_section: str  # the Reverse Proxy page's section that says so (its id)
    # The same failure as dorkos-proxy-check names it, where it checks it.
    command_check: str | None = None


@dataclass(frozen=True)
class ProxyKind:
    """One proxy, as the harness runs, checks and measures it."""

    name: str  # its folder under snippets/, and its images' `proxy`
    title: str  # as the pages write it: "Caddy", "nginx"
    # Its recommended HTTPS config: what the measurements and the benchmark run.
    recommended_snippet: str
    local_images: tuple[ProxyImage, ...]
    official_images: tuple[ProxyImage, ...]
    launch: Launcher
    version_command: tuple[str, ...]
    version_pattern: str  # its first group is the version
    # What a reader runs to reload the config, run inside its container.
    reload_command: tuple[str, ...]
    # What the Reverse Proxy page says about HTTP/2 for its configs.
    http2: bool
    # What it sends DorkOS besides Host, X-Forwarded-For and
    # X-Forwarded-Proto: header to "client" (the visitor's address) or "host".
    more_forwarded_headers: dict[str, str]
    grammar: Grammar
    # Lines a reader might add that the page warns about, measured like removals.
    additions: tuple[Variant, ...]
    # What a run of one of its site configs needs besides the config
    # (ProxyLab.run's options): the page's main config, for nginx.
    run_options: dict[str, Any] = field(default_factory=dict)
    # Whether its published configs get their certificate themselves, from
    # an ACME server (Caddy's automatic HTTPS); otherwise the test CA's
    # files sit where the config names them.
    acme: bool = False
    # Whether that ACME server must answer as Let's Encrypt, as no config
    # of the proxy's can name another without changing its bytes (Traefik).
    acme_as_lets_encrypt: bool = False
    # A published file every run of its recommended config has beside it
    # (Traefik's route, beside its own settings), also shown on the page.
    companion: Path | None = None
    # A piece of an old process's command line that a reload leaves serving
    # its open streams, if it does (nginx's old workers); None: none is counted.
    old_worker_marker: str | None = None
    # Image key to what its version fails, as the page says.
    known_failures: dict[str, tuple[KnownFailure, ...]] = field(default_factory=dict)

    def known_failure(self, image_key: str, prop: str) -> KnownFailure | None:
        return next((f for f in self.known_failures.get(image_key, ()) if f.prop == prop), None)
