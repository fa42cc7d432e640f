"""The page's "Check it works" step, run as the reader runs it.

The Reverse Proxy page ends its path with two `curl` commands a reader runs
by hand: a WebSocket upgrade to /api/events with the browser's Origin, and
the same stream over SSE. Here they run as the page shows them, from inside
the run's network, with only what points curl at the lab added: the
domain resolved to the proxy (`--resolve`) and the test CA trusted
(`--cacert`). What they print is read the way the page tells the reader to
read it, and a failure says which of the page's diagnoses it is.

It is one of harness.checks.behind_proxies' checks, so it runs through every
published config and every broken one in `make test`, and in front of a
real DorkOS in `make conformance`.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor

from harness.checks.endpoints import Endpoint, violation
from harness.lab.reader_path import REVERSE_PROXY_PAGE, PathError, Step, section_steps
from harness.lab.tls import SERVER_NAME

HEADING = "## Check it works"
# The page's commands end by themselves (--max-time); this is for a curl
# that would not.
_HUNG_S = 60


def page_commands() -> tuple[Step, Step]:
    """The page's two commands: the socket's, then the SSE stream's."""
    found = section_steps(REVERSE_PROXY_PAGE, HEADING)
    socket = [s for s in found if s.command and "Upgrade: websocket" in s.command]
    sse = [s for s in found if s.command and s.command.startswith("curl -sN")]
    if len(found) != 2 or len(socket) != 1 or len(sse) != 1:
        raise PathError(
            f"{REVERSE_PROXY_PAGE.name}: `{HEADING}` should give one socket and one SSE "
            f"curl command; found {[str(s) for s in found]}"
        )
    return socket[0], sse[0]


def _as_run(endpoint: Endpoint, step: Step) -> list[str]:
    assert step.command is not None
    words = shlex.split(step.command)
    if words[0] != "curl" or words[-1] != f"https://{SERVER_NAME}/api/events":
        raise PathError(
            f"{step.where}: expected a curl command for https://{SERVER_NAME}/api/events"
        )
    host, port = endpoint.target.address
    lab = ["--resolve", f"{SERVER_NAME}:{port}:{host}"]
    if endpoint.target.ca_file:
        lab += ["--cacert", endpoint.target.ca_file]
    return [words[0], *lab, *words[1:]]


def _run(endpoint: Endpoint, step: Step) -> tuple[int, str]:
    curl = shutil.which("curl")
    if curl is None:
        raise RuntimeError("curl is not installed: `apt-get install curl`")
    command = _as_run(endpoint, step)
    command[0] = curl

    def run() -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(command, capture_output=True, timeout=_HUNG_S, check=False)

    done = endpoint.network.call(run) if endpoint.network else run()
    return done.returncode, done.stdout.decode(errors="replace")


def _first_line(output: str) -> str:
    return output.split("\r\n", 1)[0].strip() or "nothing"


def check(endpoint: Endpoint) -> str:
    """Both of the page's commands, side by side, read as the page reads them."""
    socket_step, sse_step = page_commands()
    with ThreadPoolExecutor(2, thread_name_prefix="check-it-works") as pool:
        socket_run = pool.submit(_run, endpoint, socket_step)
        sse_run = pool.submit(_run, endpoint, sse_step)
        (_, socket_out), (sse_code, sse_out) = socket_run.result(), sse_run.result()
    problems = []
    head = socket_out.lower()
    if not socket_out.startswith("HTTP/1.1 101 Switching Protocols"):
        if "content-type: text/event-stream" in head:
            why = "the proxy dropped the upgrade: replies never appear"
        elif "host_not_allowed" in head:
            why = "DorkOS does not trust the name"
        else:
            why = "not the page's 101"
        problems.append(f"socket command printed {_first_line(socket_out)!r} ({why})")
    elif "Origin not trusted" in socket_out:
        problems.append("socket command: 101, then `Origin not trusted` (the page is blank)")
    elif '{"event":"__heartbeat"' not in socket_out:
        problems.append(
            f"socket command: 101, then no heartbeat frame in 20 s: {socket_out[-200:]!r}"
        )
    if "event: heartbeat" not in sse_out:
        ended = f"curl ended with exit {sse_code}" + ("" if sse_code == 28 else " before its 20 s")
        problems.append(f"SSE command printed no `event: heartbeat` ({ended}): {sse_out[:200]!r}")
    if problems:
        raise violation(endpoint, "the page's Check it works: " + "; ".join(problems))
    return "socket: 101 and a heartbeat frame; SSE: event: heartbeat"
