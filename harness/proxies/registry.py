"""Every proxy the site covers, and the images a run uses.

Adding a proxy: a module beside this one that fills in a ProxyKind, its
line in KINDS, a snippet under snippets/<name>/ and a tab on the page.

`python -m harness.proxies.registry` builds (or pulls) every image a run
needs; `make images` runs it.
"""

from __future__ import annotations

import os
import sys
from concurrent.futures import ThreadPoolExecutor

import docker

from harness.proxies import apache, caddy, haproxy, nginx, traefik
from harness.proxies.images import PEBBLE_IMAGE, ImageUnavailable, ProxyImage, image_source
from harness.proxies.kind import ProxyKind

# In the order the pages' tabs and tables put them.
KINDS: dict[str, ProxyKind] = {
    kind.name: kind for kind in (caddy.KIND, nginx.KIND, haproxy.KIND, traefik.KIND, apache.KIND)
}
# Each proxy's recommended HTTPS config: what the measurements and the
# benchmark run.
RECOMMENDED_SNIPPETS = {kind.name: kind.recommended_snippet for kind in KINDS.values()}
# Tools around the proxies, always built locally: the ACME server, and
# Debian's nginx with certbot (the page's nginx steps; "Let's Encrypt"'s front).
SUPPORT_IMAGES: tuple[ProxyImage, ...] = (PEBBLE_IMAGE, nginx.CERTBOT_NGINX_IMAGE)


# Every version of every proxy, as built on this machine.
LOCAL_IMAGES = tuple(image for kind in KINDS.values() for image in kind.local_images)


def kind(name: str) -> ProxyKind:
    try:
        return KINDS[name]
    except KeyError:
        raise KeyError(f"no proxy is called {name!r}: known are {', '.join(KINDS)}") from None


# Which proxies a run covers (comma-separated names; unset: all of them).
# CI runs one job per proxy with it; `make test` alone runs everything.
PROXIES_VARIABLE = "PROXIES"


class UnknownProxy(ValueError):
    pass


def selected_proxies() -> tuple[str, ...]:
    """The proxies PROXIES names, in KINDS' order; all of them when it is unset."""
    value = os.environ.get(PROXIES_VARIABLE, "").strip()
    if not value:
        return tuple(KINDS)
    names = [name.strip() for name in value.split(",") if name.strip()]
    unknown = [name for name in names if name not in KINDS]
    if unknown or not names:
        raise UnknownProxy(
            f"{PROXIES_VARIABLE}={value}: no proxy is called {', '.join(unknown) or '(none)'}; "
            f"known are {', '.join(KINDS)}"
        )
    return tuple(name for name in KINDS if name in names)


def is_selected(proxy: str) -> bool:
    return proxy in selected_proxies()


def selected_images() -> tuple[ProxyImage, ...]:
    """Every version of every selected proxy, as DORKOS_DOCS_IMAGES selects them."""
    official = image_source() == "official"
    return tuple(
        image
        for name in selected_proxies()
        for image in (KINDS[name].official_images if official else KINDS[name].local_images)
    )


def ensure_all(client: docker.DockerClient) -> dict[str, str]:
    """Every image, built side by side where missing: a build is mostly one
    process waiting on downloads or on dpkg, so on two cores five at once
    take about half as long as one after another."""
    images = (*selected_images(), *SUPPORT_IMAGES)
    with ThreadPoolExecutor(len(images), thread_name_prefix="image") as pool:
        tags = list(pool.map(lambda image: image.ensure(client), images))
    return {image.key: tag for image, tag in zip(images, tags, strict=True)}


def main() -> None:
    """Build (or pull) every selected image."""
    from harness.lab.containers import docker_client

    try:
        tags = ensure_all(docker_client())
    except (ImageUnavailable, UnknownProxy) as error:
        sys.exit(f"error: {error}")
    for key, tag in tags.items():
        print(f"{key}: {tag}")


if __name__ == "__main__":
    main()
