"""The Tested-with table describes the snippets the pages show today."""

from __future__ import annotations

import pytest

from harness.checks.contract import PROPERTIES
from harness.lab.flows import DISRUPTIONS, RENEWS, disruptions_for, proxy_for
from harness.lab.proxy_lab import ProxyLab
from harness.lab.snippet_examples import SNIPPETS
from harness.proxies.caddy import PATH_IMAGE as CADDY_PATH_IMAGE
from harness.proxies.kind import REPO_ROOT
from harness.proxies.nginx import CERTBOT_NGINX_IMAGE
from harness.proxies.registry import LOCAL_IMAGES
from harness.tables import tested_with
from harness.tables.tested_with import steps_column

REGENERATE = "run `make tested-with` and commit data/tested-with.json and generated/"


def test_table_was_made_from_the_current_snippets() -> None:
    recorded = tested_with.load()["snippets"]
    # The configs a proxy runs; DorkOS's own side and the compose file have
    # no proxy version.
    on_disk = {
        str(p.relative_to(REPO_ROOT))
        for p in SNIPPETS.rglob("*")
        if p.is_file() and proxy_for(p) is not None
    }
    assert set(recorded) == on_disk, f"snippets added or removed since the table; {REGENERATE}"
    changed = [s for s, digest in recorded.items() if tested_with.snippet_hash(s) != digest]
    assert changed == [], f"changed since the table was made: {changed}; {REGENERATE}"


def test_table_covers_every_version_and_property() -> None:
    outcomes = tested_with.load()["outcomes"]
    assert {i.key for i in LOCAL_IMAGES} <= {o["image"] for o in outcomes}, REGENERATE
    expected = {"accepts-config-and-starts", *(p.name for p in PROPERTIES)}
    # What each version is disrupted by: Traefik has no reload.
    disrupted = {i.key: {name for name, _ in disruptions_for(i)} for i in LOCAL_IMAGES}
    # Each tab's steps, run whole, have a column of their own.
    paths = {steps_column(i.key) for i in (CERTBOT_NGINX_IMAGE, CADDY_PATH_IMAGE)}
    assert paths <= {o["image"] for o in outcomes}, REGENERATE
    # The steps run the contract (and the nginx ones a renewal); the
    # disruptions run through the same configs on the same versions.
    steps = {"accepts-config-and-starts", *(p.name for p in PROPERTIES)}
    for snippet in tested_with.load()["snippets"]:
        for image in {o["image"] for o in outcomes if o["snippet"] == snippet}:
            props = {o["prop"] for o in outcomes if (o["snippet"], o["image"]) == (snippet, image)}
            if not image.endswith(tested_with.STEPS_SUFFIX):
                wanted = expected | disrupted.get(image, {n for n, _ in DISRUPTIONS})
            else:  # certbot renews for nginx; Caddy renews by itself
                wanted = steps | ({RENEWS} if "nginx" in image else set())
            assert wanted <= props, f"{snippet} on {image}: {wanted - props}; {REGENERATE}"


@pytest.mark.docker
def test_proxies_this_run_are_the_versions_the_page_names(proxy_lab: ProxyLab) -> None:
    """A new Caddy in the lock, or a Debian point release in the archive,
    changes what the suite runs; the page must not keep naming the old one."""
    named: dict[str, set[str]] = {}
    for o in tested_with.load()["outcomes"]:
        named.setdefault(o["image"].removesuffix(tested_with.STEPS_SUFFIX), set()).add(o["version"])
    # Official images (DORKOS_DOCS_IMAGES=official) are not on the page.
    images = [i for i in (*proxy_lab.images, CERTBOT_NGINX_IMAGE) if i.key in named]
    assert images, f"none of {[i.key for i in proxy_lab.images]} is on the page; {REGENERATE}"
    differ = [
        f"{image.key} runs {image.proxy} {proxy_lab.version(image)}, the page names "
        + " and ".join(sorted(named[image.key]))
        for image in images
        if {proxy_lab.version(image)} != named[image.key]
    ]
    assert differ == [], "; ".join(differ) + f"; {REGENERATE}"


def test_rendered_table_matches_its_data() -> None:
    assert tested_with.TABLE_FILE.read_text() == tested_with.render(tested_with.load()), (
        f"{tested_with.TABLE_FILE.name} was edited by hand; {REGENERATE}"
    )
    page = (REPO_ROOT / "docs" / "tested-with.md").read_text()
    assert '--8<-- "generated/tested-with.md"' in page


def test_every_property_reads_as_words_on_the_page() -> None:
    from harness.lab.flows import RENEWS, SITE_PROPERTIES

    names = {"accepts-config-and-starts", RENEWS, *(p.name for p in PROPERTIES)}
    names |= {p.name for p in SITE_PROPERTIES}
    names |= {name for name, _ in DISRUPTIONS}
    assert names <= tested_with.PROPERTY_WORDS.keys(), names - tested_with.PROPERTY_WORDS.keys()
