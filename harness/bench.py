"""What a config costs: added latency per event and concurrent streams.

`python -m harness.bench` (make bench) serves each published HTTPS snippet on
each proxy version, with the same containers as the tests, and opens 1, 100
and 500 event streams through it at once (500 is DorkOS's own cap on its
global stream). The mock DorkOS runs in a process of its own and stamps each
event with its send time; the client notes the arrival time, so the added
delay per event is arrival minus send. The same client connected to the
mock directly gives the baseline: what the harness itself costs.

It also checks that every event arrived exactly once, in order, and samples
the proxy container's memory and CPU. Results go to data/bench.json and
generated/bench.md, which the "What it costs" page shows. Numbers live here,
never in the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import platform
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from docker.models.containers import Container

from harness.images import ProxyImage
from harness.lab import ProxyLab, proxy_lab
from harness.load_clients import Transport, load_stream
from harness.mock_dorkos import MockSettings
from harness.proxies import HTTPS_PORT, RECOMMENDED_SNIPPETS, REPO_ROOT, https_target

DATA_FILE = REPO_ROOT / "data" / "bench.json"
TABLE_FILE = REPO_ROOT / "generated" / "bench.md"
LEVELS = (1, 100, 500)
# What the Reverse Proxy page gives a one-core nginx server.
ONE_CORE_FIX = "snippets/nginx/events.conf"
EVENTS_PER_STREAM = 20
EVENT_INTERVAL_S = 0.5
# Streams open over this many seconds, as tabs reconnecting would, not in
# one burst of handshakes.
RAMP_S = 2.0
TRANSPORTS: tuple[Transport, ...] = ("sse", "websocket")
TRANSPORT_NAMES = {"sse": "SSE", "websocket": "WebSocket"}


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


# -- the load client ----------------------------------------------------------


@dataclass
class StreamResult:
    delays_ms: list[float] = field(default_factory=list)
    seqs: list[int] = field(default_factory=list)
    error: str | None = None


async def _one_stream(
    host: str, port: int, context: ssl.SSLContext | None, expected: int, transport: Transport
) -> StreamResult:
    result = StreamResult()
    stream = load_stream(transport)
    try:
        await stream.open(host, port, context, f"/api/sessions/{uuid.uuid4()}/events")
        while len(result.seqs) < expected:
            frame = await asyncio.wait_for(stream.next_frame(), EVENT_INTERVAL_S * 4 + 5)
            if frame.event_id is None:
                continue  # the snapshot
            result.seqs.append(json.loads(frame.data or "{}")["seq"])
            result.delays_ms.append(frame.delay_ms or 0.0)
    except Exception as error:  # reported per stream, counted in the results
        result.error = f"{type(error).__name__}: {error}"
    finally:
        await stream.close()
    return result


async def _many_streams(
    host: str, port: int, context: ssl.SSLContext | None, count: int, transport: Transport
) -> list[StreamResult]:
    async def delayed(index: int) -> StreamResult:
        await asyncio.sleep(RAMP_S * index / count)
        return await _one_stream(host, port, context, EVENTS_PER_STREAM, transport)

    return list(await asyncio.gather(*(delayed(i) for i in range(count))))


# -- measuring ---------------------------------------------------------------


@dataclass
class LevelResult:
    target: str
    transport: str
    streams: int
    events: int
    failed_streams: int
    first_error: str | None
    exactly_once: bool
    p50_ms: float
    p99_ms: float
    max_ms: float
    events_per_s: float
    memory_mib: float | None
    cpu_percent: float | None


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _stats(container: Container) -> dict[str, Any]:
    stats: dict[str, Any] = container.stats(stream=False)  # type: ignore[assignment]
    return stats


def _cpu_seconds(container: Container | None) -> float | None:
    if container is None:
        return None
    return float(_stats(container)["cpu_stats"]["cpu_usage"]["total_usage"]) / 1e9


def _memory_mib(container: Container | None) -> float | None:
    if container is None:
        return None
    return float(_stats(container)["memory_stats"].get("usage", 0)) / (1024 * 1024)


def measure_level(
    label: str,
    host: str,
    port: int,
    context: ssl.SSLContext | None,
    count: int,
    container: Container | None,
    transport: Transport,
) -> LevelResult:
    cpu_before = _cpu_seconds(container)
    started = time.monotonic()
    results = asyncio.run(_many_streams(host, port, context, count, transport))
    took = time.monotonic() - started
    cpu_after = _cpu_seconds(container)
    memory = _memory_mib(container)
    delays = [d for r in results for d in r.delays_ms]
    errors = [r.error for r in results if r.error]
    exactly_once = all(
        r.seqs == list(range(1, EVENTS_PER_STREAM + 1)) for r in results if not r.error
    )
    cpu = None if cpu_before is None or cpu_after is None else 100 * (cpu_after - cpu_before) / took
    level = LevelResult(
        target=label,
        transport=TRANSPORT_NAMES[transport],
        streams=count,
        events=len(delays),
        failed_streams=len(errors),
        first_error=errors[0] if errors else None,
        exactly_once=exactly_once,
        p50_ms=round(statistics.median(delays), 2) if delays else float("nan"),
        p99_ms=round(_percentile(delays, 0.99), 2),
        max_ms=round(max(delays), 2) if delays else float("nan"),
        events_per_s=round(len(delays) / took, 1),
        memory_mib=None if memory is None else round(memory, 1),
        cpu_percent=None if cpu is None else round(cpu, 1),
    )
    log(
        f"{label}, {count} {TRANSPORT_NAMES[transport]} streams: p50 {level.p50_ms} ms, "
        f"p99 {level.p99_ms} ms, "
        f"max {level.max_ms} ms, {level.events_per_s} events/s, "
        f"{level.failed_streams} failed, exactly once: {level.exactly_once}"
    )
    return level


@contextlib.contextmanager
def mock_process() -> Iterator[None]:
    """The mock in a process of its own, so the client does not share its CPU time."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "harness.mock_dorkos",
            "--port",
            str(MockSettings.port),
            "--events-per-stream",
            str(EVENTS_PER_STREAM),
            "--event-interval",
            str(EVENT_INTERVAL_S),
            "--snapshot-bytes",
            "1024",
            "--heartbeat-interval",
            "0",
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
    )
    try:
        assert process.stdout is not None
        ready = process.stdout.readline()  # its own "listening" line
        if "listening" not in ready:
            raise RuntimeError(f"the mock did not start (exit {process.poll()}): {ready!r}")
        yield
    finally:
        process.terminate()
        process.wait(timeout=10)


def _client_context(ca_file: str) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=ca_file)
    context.set_alpn_protocols(["http/1.1"])
    return context


def run(lab: ProxyLab, images: list[ProxyImage]) -> dict[str, Any]:
    levels: list[LevelResult] = []
    versions = {}
    with mock_process():
        for count in LEVELS:
            for transport in TRANSPORTS:
                levels.append(
                    measure_level(
                        "direct to the mock (baseline)",
                        "127.0.0.1",
                        MockSettings.port,
                        None,
                        count,
                        None,
                        transport,
                    )
                )
        for image in images:
            snippet = REPO_ROOT / RECOMMENDED_SNIPPETS[image.proxy]
            versions[image.key] = lab.version(image)
            where = f"on {image.proxy} {versions[image.key]}"
            shown = RECOMMENDED_SNIPPETS[image.proxy]
            context = _client_context(https_target(lab.ca).ca_file or "")
            # nginx as the page sets it up: with its events block.
            events = REPO_ROOT / ONE_CORE_FIX if image.proxy == "nginx" else None
            label = f"{shown} + {ONE_CORE_FIX} {where}" if events else f"{shown} {where}"
            # On the machine's own network: the bench's mock runs in a
            # process of its own there, so the client doesn't share its CPU.
            with lab.serving(
                image, [snippet], [HTTPS_PORT], label=label, events=events
            ) as container:
                for count in LEVELS:
                    for transport in TRANSPORTS:
                        levels.append(
                            measure_level(
                                label, "127.0.0.1", HTTPS_PORT, context, count, container, transport
                            )
                        )
            if image.proxy != "nginx":
                continue
            # A one-core server: Debian's own events block, then the page's.
            for one_core_events in (None, REPO_ROOT / ONE_CORE_FIX):
                block = ONE_CORE_FIX if one_core_events else "Debian's events block"
                one_core = f"{shown} + {block} {where}, one worker"
                with lab.serving(
                    image,
                    [snippet],
                    [HTTPS_PORT],
                    label=one_core,
                    one_core=True,
                    events=one_core_events,
                ) as container:
                    levels.append(
                        measure_level(
                            one_core,
                            "127.0.0.1",
                            HTTPS_PORT,
                            context,
                            max(LEVELS),
                            container,
                            "websocket",
                        )
                    )
    return {
        "run_on": datetime.date.today().isoformat(),
        "machine": _machine(),
        "events_per_stream": EVENTS_PER_STREAM,
        "event_interval_s": EVENT_INTERVAL_S,
        "versions": versions,
        "levels": [asdict(level) for level in levels],
    }


def _machine() -> str:
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores ({model}), {memory_gib:.0f} GiB, {platform.system()}"


def render(data: dict[str, Any]) -> str:
    lines = [
        "<!-- Generated by `make bench` from data/bench.json; do not edit. -->",
        "",
        f"Run on {data['run_on']}, on {data['machine']}. Each stream carried "
        f"{data['events_per_stream']} events, one every {data['event_interval_s']} s; "
        f"latency is the delay each event gained between DorkOS and the browser.",
        "",
        "| Path | Transport | Streams | p50 | p99 | max | Events/s | Every event once | "
        "Proxy memory | Proxy CPU |",
        "|---|---|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for level in data["levels"]:
        failed = level["failed_streams"]
        once = "yes" if level["exactly_once"] and not failed else f"**no** ({failed} failed)"
        memory = "" if level["memory_mib"] is None else f"{level['memory_mib']:.0f} MiB"
        cpu = "" if level["cpu_percent"] is None else f"{level['cpu_percent']:.0f} %"
        lines.append(
            f"| {level['target']} | {level.get('transport', 'SSE')} | {level['streams']} | "
            f"{level['p50_ms']:.1f} ms | "
            f"{level['p99_ms']:.1f} ms | {level['max_ms']:.1f} ms | "
            f"{level['events_per_s']:.0f} | {once} | {memory} | {cpu} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description="Measure what each config costs.")
    parser.add_argument("--write", action="store_true", help="update data/bench.json")
    args = parser.parse_args()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-") as work, proxy_lab(Path(work)) as lab:
        images = [i for i in lab.images if i.proxy in RECOMMENDED_SNIPPETS]
        data = run(lab, images)
    print(render(data))
    if args.write:
        DATA_FILE.parent.mkdir(parents=True, exist_ok=True)
        DATA_FILE.write_text(json.dumps(data, indent=2) + "\n")
        TABLE_FILE.parent.mkdir(parents=True, exist_ok=True)
        TABLE_FILE.write_text(render(data))
        log(f"wrote {DATA_FILE.relative_to(REPO_ROOT)} and {TABLE_FILE.relative_to(REPO_ROOT)}")
    log(f"done in {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
