"""The reader's path on the Reverse Proxy page: each tab's steps, run in order.

The nginx tab runs whole in one container (harness.lab.reader_path): from
Debian's packages to certbot's certificate, the published files, the reload,
the contract on what the reader ends with, and a renewal nginx picks up.
The Caddy tab runs whole the same way, from Debian's package as installed
to the reload, with "Let's Encrypt" served in the run's own network.
"""

from pathlib import Path

import pytest

from harness.lab import compose_deployment, flows, reader_path, tls
from harness.lab.proxy_lab import ProxyLab
from harness.lab.reader_path import PathError, Step, steps
from harness.proxies.caddy import launch as caddy_launch
from harness.proxies.images import DebianImage
from harness.proxies.kind import REPO_ROOT
from harness.proxies.registry import LOCAL_IMAGES, RECOMMENDED_SNIPPETS

PAGE = reader_path.REVERSE_PROXY_PAGE


def shown(path: list[Step]) -> list[str]:
    return [str(step) for step in path]


def test_nginx_tab_is_install_certificate_files_reload() -> None:
    assert shown(steps(PAGE, "nginx")) == [
        "`apt install nginx certbot python3-certbot-nginx`",
        "`certbot certonly --nginx -d dorkos.example.com`",
        "snippets/nginx/dorkos.conf as /etc/nginx/conf.d/dorkos.conf",
        "snippets/nginx/events.conf as /etc/nginx/nginx.conf (the events block)",
        "`nginx -t && systemctl reload nginx`",
    ]


def test_caddy_tab_is_install_file_reload() -> None:
    assert shown(steps(PAGE, "Caddy")) == [
        "`apt install caddy`",
        "snippets/caddy/Caddyfile as /etc/caddy/Caddyfile",
        "`systemctl reload caddy`",
    ]


def test_compose_tab_is_two_files_side_by_side_then_up() -> None:
    path = steps(PAGE, "Docker Compose")
    assert shown(path) == [
        "snippets/compose/compose.yml as /opt/dorkos/compose.yml",
        "snippets/compose/Caddyfile as /opt/dorkos/Caddyfile",
        "`docker compose up -d`",
    ]
    compose, caddyfile, _ = path
    assert compose.place and caddyfile.place and compose.snippet
    # The Caddyfile goes where the compose file mounts it from.
    placed = Path(compose.place).parent / caddyfile.snippet.name  # type: ignore[union-attr]
    assert str(placed) == caddyfile.place
    assert compose_deployment.mounted_caddyfile(compose.snippet) == caddyfile.snippet


def write_compose(tmp_path: Path, text: str) -> Path:
    (tmp_path / "Caddyfile").write_text("dorkos.example.com {\n\treverse_proxy dorkos:4242\n}\n")
    compose = tmp_path / "compose.yml"
    compose.write_text(text)
    return compose


PUBLISHED_COMPOSE = (REPO_ROOT / "snippets" / "compose" / "compose.yml").read_text()


@pytest.mark.parametrize(
    ("change", "error"),
    [
        (("    image: caddy:2", "    imag: caddy:2"), r"(?s)not valid.*'imag' was unexpected"),
        (("      DORKOS_TRUSTED_HOSTS: dorkos.example.com\n", ""), "does not set DORKOS_TRUSTED"),
        (
            (
                "    restart: unless-stopped\n    environment",
                '    ports: ["4242:4242"]\n    restart: unless-stopped\n    environment',
            ),
            "publishes",
        ),
        (('      - "443:443"\n', ""), "does not publish 80 and 443"),
    ],
    ids=["schema", "trusted-hosts", "dorkos-published", "no-443"],
)
def test_a_broken_compose_file_is_named_with_what_is_wrong(
    tmp_path: Path, change: tuple[str, str], error: str
) -> None:
    assert change[0] in PUBLISHED_COMPOSE
    compose = write_compose(tmp_path, PUBLISHED_COMPOSE.replace(*change))
    with pytest.raises(compose_deployment.ComposeError, match=error):
        compose_deployment.check(compose)


def test_caddy_tab_installs_the_package_the_suite_runs(tmp_path: Path) -> None:
    debian = [i for i in LOCAL_IMAGES if isinstance(i, DebianImage) and i.proxy == "caddy"]
    (install, placed, _) = steps(PAGE, "Caddy")
    assert install.command is not None
    assert {tuple(install.command.split()[2:])} == {i.packages for i in debian}
    # Runs put the published Caddyfile where Debian's caddy.service reads it.
    assert placed.place == "/etc/caddy/Caddyfile"
    assert placed.snippet == REPO_ROOT / RECOMMENDED_SNIPPETS["caddy"]
    launch = caddy_launch([placed.snippet], tls.TestCA.create(tmp_path / "ca"), tmp_path)
    assert launch.configs_in_container[placed.place] == placed.snippet


def test_nginx_tab_ends_in_the_published_config() -> None:
    placed = [s for s in steps(PAGE, "nginx") if s.snippet is not None]
    assert placed[0].snippet == REPO_ROOT / RECOMMENDED_SNIPPETS["nginx"]
    # The certificate lines name where the page's certbot command saves it.
    text = placed[0].snippet.read_text()
    assert "/etc/letsencrypt/live/dorkos.example.com/fullchain.pem;" in text
    assert "/etc/letsencrypt/live/dorkos.example.com/privkey.pem;" in text


def write_page(tmp_path: Path, tab: str) -> Path:
    page = tmp_path / "page.md"
    page.write_text(f'# T\n\n## Set up the proxy\n\n=== "nginx"\n\n{tab}\n## Next\n')
    return page


def test_a_command_no_test_runs_is_an_error_naming_its_line(tmp_path: Path) -> None:
    page = write_page(
        tmp_path, "    ```bash\n    sudo nginx -t && sudo rm -rf /etc/nginx\n    ```\n"
    )
    (step,) = steps(page, "nginx")
    with pytest.raises(PathError, match=r"page\.md:8: no test runs `rm -rf /etc/nginx`"):
        reader_path.path_commands(step, "nginx")


def test_a_file_without_a_place_is_an_error(tmp_path: Path) -> None:
    page = write_page(tmp_path, '    ```nginx\n    --8<-- "snippets/nginx/dorkos.conf"\n    ```\n')
    with pytest.raises(PathError, match=r"page\.md:7: a file on the reader's path needs a title"):
        steps(page, "nginx")


def test_a_missing_tab_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(PathError, match=r'has no tab "Caddy"'):
        steps(write_page(tmp_path, ""), "Caddy")


def test_continued_lines_are_one_command(tmp_path: Path) -> None:
    page = write_page(
        tmp_path, "    ```bash\n    sudo certbot certonly \\\n      --nginx\n    ```\n"
    )
    assert shown(steps(page, "nginx")) == ["`certbot certonly --nginx`"]


def record_steps(
    lab: ProxyLab, snippet: str, measured: flows.RunOutcome, subtests: pytest.Subtests
) -> None:
    """Each outcome of a tab's steps, in the Tested-with column of those steps."""
    lab.record(snippet, measured.image, flows.STARTS, measured.start_error is None, steps=True)
    if measured.start_error is not None:
        raise measured.start_error
    for name, result in measured.results.items():
        with subtests.test(msg=name):
            passed = not isinstance(result, BaseException)
            lab.record(snippet, measured.image, name, passed, steps=True)
            if isinstance(result, BaseException):
                raise result


@pytest.mark.proxies("nginx")
@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.measured_by(measure=flows.run_nginx_path)
def test_nginx_path_ends_in_the_published_files_and_passes_the_contract(
    measured: flows.RunOutcome, proxy_lab: ProxyLab, subtests: pytest.Subtests
) -> None:
    record_steps(proxy_lab, RECOMMENDED_SNIPPETS["nginx"], measured, subtests)


@pytest.mark.proxies("caddy")
@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.measured_by(measure=flows.run_caddy_path)
def test_caddy_path_ends_in_the_published_file_and_passes_the_contract(
    measured: flows.RunOutcome, proxy_lab: ProxyLab, subtests: pytest.Subtests
) -> None:
    record_steps(proxy_lab, RECOMMENDED_SNIPPETS["caddy"], measured, subtests)


@pytest.mark.proxies("caddy")
@pytest.mark.docker
def test_debians_caddy_warns_of_zerossl_as_the_page_says(proxy_lab: ProxyLab) -> None:
    """The page tells Debian 12 readers to expect this warning when Caddy starts."""
    from harness.lab.containers import Mount, running_container
    from harness.lab.netns import private_network

    (image,) = [i for i in LOCAL_IMAGES if i.key == "caddy-debian12"]
    caddyfile = REPO_ROOT / RECOMMENDED_SNIPPETS["caddy"]
    warning = "missing email address for ZeroSSL"
    logged: list[str] = []

    def warned() -> None:
        assert network.owner is not None
        logged[:] = [bytes(network.owner.logs()).decode(errors="replace")]
        if warning not in logged[0]:
            raise AssertionError(f"not logged yet: {warning!r}")

    # As caddy.service starts it, in a network of its own with nothing to
    # reach: it warns as it starts, before it tries for a certificate.
    with (
        private_network("the network of Caddy's ZeroSSL warning") as network,
        running_container(
            proxy_lab.client,
            proxy_lab.tag(image),
            ["caddy", "run", "--environ", "--config", "/etc/caddy/Caddyfile"],
            [Mount(str(caddyfile), "/etc/caddy/Caddyfile")],
            role="caddy-zerossl-warning",
            network=network,
            ready=warned,
            waiting_for=f"Caddy on {image.description} to log {warning!r}",
            deadline=60.0,
        ),
    ):
        pass
    assert warning in logged[0]
    assert f"`{warning}`" in " ".join(PAGE.read_text().split())


@pytest.mark.proxies("haproxy")
def test_haproxys_config_check_says_what_the_page_says(proxy_lab: ProxyLab, tmp_path: Path) -> None:
    """The HAProxy tab's `haproxy -c`: no alert, and 2.6's line of success."""
    from harness.lab.containers import run_to_completion
    from harness.proxies.registry import kind

    snippet = REPO_ROOT / RECOMMENDED_SNIPPETS["haproxy"]
    page = " ".join(PAGE.read_text().split())
    assert "2.6 also prints `Configuration file is valid`; 3.0 prints nothing" in page
    for image in proxy_lab.images_for("haproxy"):
        launch = kind("haproxy").launch([snippet], proxy_lab.ca, tmp_path, None)
        assert launch.check_command is not None
        code, output = run_to_completion(
            proxy_lab.client,
            proxy_lab.tag(image),
            launch.check_command,
            launch.mounts,
            role="haproxy-config-check",
        )
        assert code == 0 and "[ALERT]" not in output, f"{image.description}: {output}"
        says_valid = "Configuration file is valid" in output
        assert says_valid == image.key.endswith("debian12"), f"{image.description}: {output!r}"
