"""A version's known failure passes only while it fails just as the page says."""

import pytest

from harness.lab.flows import fails_as_stated
from harness.proxies.kind import REPO_ROOT, KnownFailure
from harness.proxies.registry import KINDS, LOCAL_IMAGES

KNOWN = KnownFailure("disconnect-reaches-upstream", "the client left", "a-section")
(IMAGE, *_) = LOCAL_IMAGES


def test_the_stated_failure_passes() -> None:
    fails_as_stated(AssertionError("over SSE: the client left, and 30 s later ..."), KNOWN, IMAGE)


def test_a_pass_fails_and_says_to_update_the_page() -> None:
    with pytest.raises(AssertionError, match=r"passed \(ok\), but the Reverse Proxy page"):
        fails_as_stated("ok", KNOWN, IMAGE)


def test_another_failure_fails_showing_it() -> None:
    with pytest.raises(AssertionError, match=r"not as the Reverse Proxy page(.|\n)*got 502"):
        fails_as_stated(AssertionError("got 502"), KNOWN, IMAGE)


def test_every_known_failure_has_its_section_on_the_page() -> None:
    page = (REPO_ROOT / "docs" / "reverse-proxy.md").read_text()
    images = {image.key for image in LOCAL_IMAGES}
    for kind in KINDS.values():
        for key, failures in kind.known_failures.items():
            assert key in images, f"{kind.name}: no image {key}"
            for failure in failures:
                assert f"{{#{failure.page_section}}}" in page, failure
