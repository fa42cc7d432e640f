"""Measurement variants follow the snippets, and fail loudly when they can't."""

from __future__ import annotations

import pytest

from harness.proxies.kind import REPO_ROOT, Variant, VariantError
from harness.proxies.variants import directives, render, variants_for

NGINX = (REPO_ROOT / "snippets/nginx/dorkos.conf").read_text()
CADDY = (REPO_ROOT / "snippets/caddy/Caddyfile").read_text()


def test_every_location_directive_but_proxy_pass_is_measured() -> None:
    found = directives(NGINX, "nginx")
    assert "proxy_buffering off" in found
    assert "proxy_set_header Connection $connection_upgrade" in found
    assert not [d for d in found if d.startswith(("proxy_pass", "listen", "ssl_", "default"))]


def test_the_old_sse_recipe_is_measured_in_place_of_the_upgrade_header() -> None:
    (old,) = [v for v in variants_for(NGINX, "nginx") if v.name == "with Connection ''"]
    text = render(old, NGINX, "nginx")
    assert "proxy_set_header Connection '';" in text
    assert "$connection_upgrade;" not in text.split("location", 1)[1]


def test_removal_drops_exactly_that_line() -> None:
    text = render(Variant("x", removes="proxy_buffering off"), NGINX, "nginx")
    assert "proxy_buffering" not in text
    kept = [line for line in NGINX.splitlines() if "proxy_buffering off" not in line]
    assert text.splitlines() == kept


def test_caddy_variant_gets_a_reverse_proxy_block() -> None:
    (flush,) = [v for v in variants_for(CADDY, "caddy") if v.name == "with flush_interval -1"]
    text = render(flush, CADDY, "caddy")
    assert text.startswith("dorkos.example.com {")
    assert "\treverse_proxy localhost:4242 {\n\t\tflush_interval -1\n\t}\n" in text


def test_a_directive_the_snippet_lacks_is_an_error() -> None:
    with pytest.raises(VariantError, match="expected one line 'proxy_bufering off'"):
        render(Variant("typo", removes="proxy_bufering off"), NGINX, "nginx")


HAPROXY = (REPO_ROOT / "snippets" / "haproxy" / "dorkos.cfg").read_text()


def test_haproxy_measures_every_line_but_the_ones_that_make_the_site() -> None:
    found = directives(HAPROXY, "haproxy")
    assert "timeout tunnel 24h" in found and "option forwardfor" in found
    assert not [d for d in found if d.startswith(("bind ", "server ", "default_backend "))]
    assert not [d for d in found if d.startswith(("frontend", "backend"))]


def test_a_line_the_snippet_holds_twice_fails_before_anything_runs() -> None:
    with pytest.raises(VariantError, match=r"expected one line 'option forwardfor' .* found 2"):
        variants_for(HAPROXY + "\nbackend other\n    option forwardfor\n", "haproxy")


def test_traefik_measures_the_routes_middlewares_only() -> None:
    route = (REPO_ROOT / "snippets" / "traefik" / "dorkos.yml").read_text()
    assert directives(route, "traefik") == ["- scheme-https"]
    (without,) = [v for v in variants_for(route, "traefik") if v.name == "without - scheme-https"]
    assert "- scheme-https" not in render(without, route, "traefik")
