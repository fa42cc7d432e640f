"""Changed copies of a published snippet, for measuring what each line does.

A variant removes one directive, or adds lines a reader might add (gzip for
everything, say). Variants are made from the snippet's own text every run,
so they follow the snippet as it changes; a variant that names a directive
the snippet no longer has is an error, not a silent no-op.

Variants are only ever measured, never published: the page shows the
snippet itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

AS_PUBLISHED = "as published"


class VariantError(ValueError):
    pass


@dataclass(frozen=True)
class Variant:
    name: str
    removes: str | None = None  # one directive, as written without its ';'
    adds: tuple[str, ...] = field(default=())  # lines for the top of the block
    # One directive (as for `removes`) and the lines that take its place,
    # e.g. to give Caddy's one-line reverse_proxy a block of subdirectives.
    replaces: tuple[str, tuple[str, ...]] | None = None
    # How the measurements' table words the change, when "Add" or "Remove"
    # would not say it (a line used in place of another).
    table_label: str | None = None

    def _line_of(self, directive: str, lines: list[str], proxy: str) -> int:
        matching = [i for i, line in enumerate(lines) if _directive(line, proxy) == directive]
        if len(matching) != 1:
            raise VariantError(
                f"variant {self.name!r}: expected one line {directive!r} in the "
                f"snippet, found {len(matching)}"
            )
        return matching[0]

    def render(self, text: str, proxy: str) -> str:
        """The snippet with this change, and nothing else changed."""
        lines = text.splitlines(keepends=True)
        if self.removes is not None:
            del lines[self._line_of(self.removes, lines, proxy)]
        if self.replaces is not None:
            old, new = self.replaces
            at = self._line_of(old, lines, proxy)
            indent = re.match(r"\s*", lines[at]).group(0)  # type: ignore[union-attr]
            lines[at : at + 1] = [f"{indent}{line}\n" for line in new]
        if self.adds:
            anchor = _block_opening(lines, proxy)
            indent = re.match(r"\s*", lines[anchor + 1]).group(0)  # type: ignore[union-attr]
            lines[anchor + 1 : anchor + 1] = [f"{indent}{add}\n" for add in self.adds]
        return "".join(lines)


def directives(text: str, proxy: str) -> list[str]:
    """The directives a measurement removes one at a time.

    nginx: every directive inside the `location` block that proxies to
    DorkOS (not the plain-HTTP redirect's). Caddy: every subdirective of
    `reverse_proxy`.
    """
    found: list[str] = []
    block: list[str] = []
    depth, inside, proxies = 0, False, False
    for line in text.splitlines():
        stripped = line.split("#", 1)[0].strip()
        if stripped.endswith("{"):
            depth += 1
            if stripped.startswith("location" if proxy == "nginx" else "reverse_proxy"):
                inside, inside_depth, block, proxies = True, depth, [], proxy == "caddy"
            continue
        if stripped == "}":
            if inside and depth == inside_depth:
                inside = False
                if proxies:
                    found.extend(block)
            depth -= 1
            continue
        directive = _directive(line, proxy)
        if inside and directive:
            # Without proxy_pass there is no proxy left to measure.
            if directive.startswith("proxy_pass "):
                proxies = True
            else:
                block.append(directive)
    return found


def _directive(line: str, proxy: str) -> str | None:
    stripped = line.split("#", 1)[0].strip()
    if not stripped or stripped.endswith(("{", "}")):
        return None
    if proxy == "nginx":
        return stripped[:-1].strip() if stripped.endswith(";") else None
    return stripped


def _block_opening(lines: list[str], proxy: str) -> int:
    """Where added lines go: the top of nginx's location, or of Caddy's site."""
    pattern = r"^\s*location\b.*\{\s*$" if proxy == "nginx" else r"^\S.*\{\s*$"
    for i, line in enumerate(lines):
        if re.match(pattern, line):
            return i
    raise VariantError(f"no block to add lines to (looked for {pattern!r})")


# Lines a reader might add that the page warns about, measured like removals.
ADDITIONS = {
    "nginx": (
        Variant(
            "with gzip for text/event-stream", adds=("gzip on;", "gzip_types text/event-stream;")
        ),
        # The SSE-only recipe of older guides (and of this page, once).
        Variant(
            "with Connection ''",
            replaces=(
                "proxy_set_header Connection $connection_upgrade",
                ("proxy_set_header Connection '';",),
            ),
            table_label="Use `proxy_set_header Connection '';` (older guides' SSE recipe) "
            "in place of `$connection_upgrade`",
        ),
        # What a plain request sends DorkOS: nginx's own `close`, or nothing.
        Variant(
            "with '' mapped to ''",
            replaces=("''      close", ("''      '';",)),
            table_label="Map `''` to `''` (no `Connection` header) in place of `close`",
        ),
    ),
    "caddy": (
        # What other guides (and this page, once) recommend for event streams.
        Variant(
            "with flush_interval -1",
            replaces=(
                "reverse_proxy localhost:4242",
                ("reverse_proxy localhost:4242 {", "\tflush_interval -1", "}"),
            ),
        ),
        Variant("with encode gzip", adds=("encode gzip",)),
    ),
}


def variants_for(text: str, proxy: str) -> list[Variant]:
    return [
        Variant(AS_PUBLISHED),
        *(Variant(f"without {d}", removes=d) for d in directives(text, proxy)),
        *ADDITIONS[proxy],
    ]


def recommended_variant(proxy: str, name: str) -> str:
    """The text of one named variant of a proxy's recommended snippet."""
    from harness.proxies.launch import RECOMMENDED_SNIPPETS, REPO_ROOT

    text = (REPO_ROOT / RECOMMENDED_SNIPPETS[proxy]).read_text()
    (variant,) = [v for v in variants_for(text, proxy) if v.name == name]
    return variant.render(text, proxy)
