"""DorkOS's side of the proxy: the systemd drop-in the page gives readers.

systemd itself reads the drop-in beside a unit shaped like the one in
DorkOS's deployment guide (`systemd-analyze verify`, which names any line
it ignores); then the values it sets must be the ones the proxy configs
need: the name they serve as DorkOS's trusted host, and their HTTPS origin
as its public URL.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from harness.lab.tls import SERVER_NAME
from harness.proxies.kind import relative

# The unit of DorkOS's deployment guide, with a command that exists here:
# verify checks that ExecStart can run.
_UNIT = """\
[Unit]
Description=DorkOS
After=network.target

[Service]
Type=simple
ExecStart=/bin/true
Restart=on-failure
RestartSec=5

[Install]
WantedBy=multi-user.target
"""
EXPECTED = {
    "DORKOS_TRUSTED_HOSTS": SERVER_NAME,
    "DORKOS_PUBLIC_URL": f"https://{SERVER_NAME}",
}
_ENVIRONMENT = re.compile(r"^Environment=(?P<name>[A-Z_]+)=(?P<value>\S+)$", re.MULTILINE)


def check_drop_in(drop_in: Path, place: str) -> str:
    """systemd accepts the drop-in at `place`, and it sets what the proxies need."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        raise RuntimeError(
            "systemd-analyze is not installed: `apt-get install systemd` (make test's "
            "host step does it as root on Debian)"
        )
    unit_dir = Path(place).parent  # .../dorkos.service.d
    if unit_dir.suffix != ".d" or not unit_dir.name.endswith(".service.d"):
        raise AssertionError(f"{place}: a drop-in goes in <unit>.service.d/, not {unit_dir}")
    unit = unit_dir.name.removesuffix(".d")
    with tempfile.TemporaryDirectory(prefix="dorkos-unit-") as work:
        (Path(work) / unit).write_text(_UNIT)
        (Path(work) / unit_dir.name).mkdir()
        shutil.copy(drop_in, Path(work) / unit_dir.name / Path(place).name)
        # The trailing colon keeps systemd's own directories after ours.
        environment = {**os.environ, "SYSTEMD_UNIT_PATH": f"{work}:"}
        result = subprocess.run(
            [analyze, "verify", unit],
            capture_output=True,
            text=True,
            env=environment,
            timeout=60,
            check=False,
        )
    said = (result.stdout + result.stderr).strip()
    if result.returncode != 0 or Path(place).name in said:
        raise AssertionError(
            f"systemd-analyze verify {unit} with {relative(drop_in)} as {place}: "
            f"exit {result.returncode}\n{said}"
        )
    found = {m.group("name"): m.group("value") for m in _ENVIRONMENT.finditer(drop_in.read_text())}
    if found != EXPECTED:
        raise AssertionError(f"{relative(drop_in)} sets {found}; the proxy configs need {EXPECTED}")
    return f"systemd-analyze verify accepts it as {place}; sets {', '.join(found)}"
