"""The variants of a published snippet that the measurements run.

Every directive its proxy's grammar measures, removed one at a time, and
the lines a reader might add that the page warns about (the kind's
`additions`). See harness.proxies.kind.Variant.
"""

from __future__ import annotations

from harness.proxies.kind import REPO_ROOT, Variant
from harness.proxies.registry import kind

AS_PUBLISHED = "as published"


def directives(text: str, proxy: str) -> list[str]:
    """The directives a measurement removes one at a time."""
    return kind(proxy).grammar.measured(text)


def variants_for(text: str, proxy: str) -> list[Variant]:
    """Every variant, each made once here so that one the snippet can't
    have (a line it holds twice) fails before any proxy is started."""
    variants = [
        Variant(AS_PUBLISHED),
        *(Variant(f"without {d}", removes=d) for d in directives(text, proxy)),
        *kind(proxy).additions,
    ]
    for variant in variants:
        variant.render(text, kind(proxy).grammar)
    return variants


def render(variant: Variant, text: str, proxy: str) -> str:
    """The snippet's text with the variant's change."""
    return variant.render(text, kind(proxy).grammar)


def recommended_variant(proxy: str, name: str) -> str:
    """The text of one named variant of a proxy's recommended snippet."""
    text = (REPO_ROOT / kind(proxy).recommended_snippet).read_text()
    (variant,) = [v for v in variants_for(text, proxy) if v.name == name]
    return render(variant, text, proxy)
