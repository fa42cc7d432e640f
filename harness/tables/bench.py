"""What a config costs, in figures that mean the same thing on the next run.

`python -m harness.tables.bench` (make bench) serves each published HTTPS config
on each proxy version, in containers and private networks like the tests',
each with a mock DorkOS of its own in a process of its own, and measures:

- **Delay and its cost.** Rounds of 100 and 500 streams, over each of
  DorkOS's transports, through every path in turn (A, B, A, B ...: a busy
  moment of the machine falls on all paths alike, not on one), repeated.
  Each event is stamped with its send time; the client notes its arrival.
  The direct path, the same client talking to a mock with no proxy, is
  measured beside each proxy, and a proxy's cost is given as its ratio to
  that: the machine's noise moves both.
- **CPU and memory**, from the proxy container's cgroup: CPU time spent
  per thousand events delivered, and memory per open stream (with all
  streams open, less the proxy's memory at rest). Both depend on the
  machine far less than delays do.
- **Capacity.** Streams, doubling from 1,000, until events are lost or the
  p99 delay passes CAPACITY_P99_S: a second late is what a reader notices.
  (A bound on the ratio to the direct path was tried first: at these loads
  the direct path's own p99 moves several times over between runs, and the
  ratio with it.) The direct path is stepped up too: where it gives out
  first, the harness did, not the proxy.

Every figure is a median with its range over the rounds. A difference
between two proxies is published only where their ranges do not overlap.
Results go to data/bench.json and generated/bench.md (the "What it costs"
page); a short summary is printed. Numbers live here, never in the tests.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import itertools
import json
import os
import platform
import re
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from docker.models.containers import Container

from harness.clients.load_clients import Transport, load_stream
from harness.lab.netns import PrivateNetwork
from harness.lab.proxy_lab import ProxyLab, proxy_lab
from harness.proxies.images import ProxyImage
from harness.proxies.kind import REPO_ROOT, relative
from harness.proxies.launch import HTTPS_PORT
from harness.proxies.nginx import EVENTS_SNIPPET as NGINX_EVENTS_SNIPPET
from harness.proxies.registry import RECOMMENDED_SNIPPETS, kind
from harness.tables import bench_chart

DATA_FILE = REPO_ROOT / "data" / "bench.json"
TABLE_FILE = REPO_ROOT / "generated" / "bench.md"
LEVELS = (100, 500)
ROUNDS = 3
TRANSPORTS: tuple[Transport, ...] = ("websocket", "sse")
TRANSPORT_NAMES = {"sse": "SSE", "websocket": "WebSocket"}
# What the Reverse Proxy page gives nginx (and so a one-core server).
ONE_CORE_FIX = relative(NGINX_EVENTS_SNIPPET)
EVENTS_PER_STREAM = 10
EVENT_INTERVAL_S = 0.25
# Streams open over this many seconds, as tabs reconnecting would, not in
# one burst of handshakes.
RAMP_S = 2.0
CAPACITY_STEPS = (1000, 2000, 4000)
# A path "holds" a count while every event arrives once and 99 in 100
# arrive within this many seconds of being sent.
CAPACITY_P99_S = 1.0
DIRECT = "direct to the mock"
DIRECT_PORT = 4243
# A stream that has not opened by then is counted as failed, not waited on.
OPEN_WITHIN_S = 120.0


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


# -- one measurement -------------------------------------------------------------


@dataclass
class Sample:
    """One round of `streams` streams through one path."""

    path: str
    transport: str
    streams: int
    events: int
    failed_streams: int
    first_error: str | None
    exactly_once: bool
    p50_ms: float
    p99_ms: float
    seconds: float
    cpu_ms: float | None = None  # the proxy's CPU time over the round
    memory_per_stream_kib: float | None = None

    @property
    def held(self) -> bool:
        return self.failed_streams == 0 and self.exactly_once

    @property
    def cpu_ms_per_1000_events(self) -> float | None:
        if self.cpu_ms is None or not self.events:
            return None
        return 1000 * self.cpu_ms / self.events


class Meter:
    """A container's CPU time and memory, from its cgroup (v1, v2, or the API)."""

    def __init__(self, container: Container) -> None:
        self.container = container
        cid = str(container.id)
        v1 = Path("/sys/fs/cgroup")
        candidates = [
            (v1 / "cpuacct/docker" / cid / "cpuacct.usage", 1e-6, "ns"),
            (v1 / f"system.slice/docker-{cid}.scope/cpu.stat", 1e-3, "usage_usec"),
        ]
        self.cpu_file = next(((p, s, k) for p, s, k in candidates if p.is_file()), None)
        # Resident memory only: the page cache the cgroup also counts comes
        # and goes with the machine, not with the streams.
        memory = [
            (v1 / "memory/docker" / cid / "memory.stat", "total_rss"),
            (v1 / f"system.slice/docker-{cid}.scope/memory.stat", "anon"),
        ]
        self.memory_file = next(((p, k) for p, k in memory if p.is_file()), None)

    def cpu_ms(self) -> float:
        if self.cpu_file is None:
            stats: Any = self.container.stats(stream=False)
            return float(stats["cpu_stats"]["cpu_usage"]["total_usage"]) / 1e6
        path, scale, key = self.cpu_file
        text = path.read_text()
        if key == "ns":
            return float(text) * scale
        usage = next(line.split()[1] for line in text.splitlines() if line.startswith(key))
        return float(usage) * scale

    def memory_kib(self) -> float:
        if self.memory_file is None:
            stats: Any = self.container.stats(stream=False)
            return float(stats["memory_stats"].get("usage", 0)) / 1024
        path, key = self.memory_file
        lines = (line.split() for line in path.read_text().splitlines())
        return next(float(value) for name, value in lines if name == key) / 1024


@dataclass
class _Stream:
    delays_ms: list[float] = field(default_factory=list)
    seqs: list[int] = field(default_factory=list)
    error: str | None = None


async def _streams(
    port: int,
    context: ssl.SSLContext | None,
    count: int,
    transport: Transport,
    all_open: Callable[[], None],
) -> list[_Stream]:
    opened = 0

    async def one(index: int) -> _Stream:
        nonlocal opened
        result = _Stream()
        await asyncio.sleep(RAMP_S * index / count)
        stream = load_stream(transport)
        try:
            path = f"/api/sessions/{uuid.uuid4()}/events"
            await asyncio.wait_for(stream.open("127.0.0.1", port, context, path), OPEN_WITHIN_S)
            counted = False
            while len(result.seqs) < EVENTS_PER_STREAM:
                frame = await asyncio.wait_for(stream.next_frame(), EVENT_INTERVAL_S * 4 + 10)
                if not counted:  # the snapshot: this stream is open
                    counted, opened = True, opened + 1
                    if opened == count:
                        all_open()
                if frame.event_id is None:
                    continue
                result.seqs.append(json.loads(frame.data or "{}")["seq"])
                result.delays_ms.append(frame.delay_ms or 0.0)
        except Exception as error:  # reported per stream, counted in the results
            result.error = f"{type(error).__name__}: {error}"
        finally:
            await stream.close()
        return result

    return list(await asyncio.gather(*(one(i) for i in range(count))))


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


@dataclass
class BenchPath:
    """Where one path's load goes: a port in a private network, through a proxy or not."""

    name: str
    network: PrivateNetwork
    port: int
    context: ssl.SSLContext | None
    meter: Meter | None = None

    def measure(self, transport: Transport, count: int) -> Sample:
        rest_kib = self.meter.memory_kib() if self.meter else None
        cpu_before = self.meter.cpu_ms() if self.meter else None
        open_kib: list[float] = []

        def all_open() -> None:
            if self.meter is not None:
                open_kib.append(self.meter.memory_kib())

        started = time.monotonic()
        # The client's sockets are made inside the path's private network.
        results = self.network.call(
            asyncio.run, _streams(self.port, self.context, count, transport, all_open)
        )
        seconds = time.monotonic() - started
        delays = [d for r in results for d in r.delays_ms]
        errors = [r.error for r in results if r.error]
        sample = Sample(
            path=self.name,
            transport=TRANSPORT_NAMES[transport],
            streams=count,
            events=len(delays),
            failed_streams=len(errors),
            first_error=errors[0] if errors else None,
            exactly_once=all(
                r.seqs == list(range(1, EVENTS_PER_STREAM + 1)) for r in results if not r.error
            ),
            p50_ms=round(statistics.median(delays), 3) if delays else float("nan"),
            p99_ms=round(_percentile(delays, 0.99), 3),
            seconds=round(seconds, 2),
        )
        if self.meter is not None and cpu_before is not None and rest_kib is not None:
            sample.cpu_ms = round(self.meter.cpu_ms() - cpu_before, 2)
            if open_kib:
                sample.memory_per_stream_kib = round((open_kib[0] - rest_kib) / count, 2)
        log(
            f"{self.name}, {count} {sample.transport}: p50 {sample.p50_ms} ms, "
            f"p99 {sample.p99_ms} ms, {sample.failed_streams} failed"
            + (f", {sample.cpu_ms_per_1000_events:.0f} ms CPU/1k events" if sample.cpu_ms else "")
        )
        return sample


# -- the paths -------------------------------------------------------------------


@dataclass(frozen=True)
class Load:
    """What each stream carries: events, how often, and heartbeats (0: none)."""

    events: int = EVENTS_PER_STREAM
    interval_s: float = EVENT_INTERVAL_S
    heartbeat_s: float = 0.0


@contextlib.contextmanager
def mock_process(network: PrivateNetwork, port: int, load: Load = Load()) -> Iterator[None]:
    """A mock DorkOS in a process of its own, inside `network` on `port`.

    Started from a thread that entered the network, so the process lives in
    it; in a process of its own, it doesn't share the client's CPU time.
    """
    command = [
        sys.executable,
        "-m",
        "harness.upstream.mock_dorkos",
        "--port",
        str(port),
        "--events-per-stream",
        str(load.events),
        "--event-interval",
        str(load.interval_s),
        "--snapshot-bytes",
        "1024",
        "--heartbeat-interval",
        str(load.heartbeat_s),
        # Every stream ends when its events are done; past that is a leak.
        "--max-stream-seconds",
        str(load.events * load.interval_s + 120),
    ]
    process: subprocess.Popen[str] = network.call(
        subprocess.Popen, command, stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT
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


def _name(lab: ProxyLab, image: ProxyImage) -> str:
    return f"{kind(image.proxy).title} {lab.version(image)}"


@contextlib.contextmanager
def paths(
    lab: ProxyLab, images: list[ProxyImage], load: Load = Load()
) -> Iterator[list[BenchPath]]:
    """Every path at once: the direct one, then each proxy, each with its own mock."""
    with contextlib.ExitStack() as stack:
        found: list[BenchPath] = []
        for image in images:
            proxy_kind = kind(image.proxy)
            snippet = REPO_ROOT / proxy_kind.recommended_snippet
            # As the page sets it up (nginx with its events block).
            proxy = stack.enter_context(
                lab.run(image, snippet, **proxy_kind.run_options, with_mock=False)
            )
            stack.enter_context(mock_process(proxy.network, 4242, load))
            context = _client_context(proxy.target.ca_file or "")
            meter = Meter(proxy.container)
            found.append(BenchPath(_name(lab, image), proxy.network, HTTPS_PORT, context, meter))
        # The direct path: the same client and mock, in the first proxy's
        # network, on a port of its own, with no proxy between.
        network = found[0].network
        stack.enter_context(mock_process(network, DIRECT_PORT, load))
        yield [BenchPath(DIRECT, network, DIRECT_PORT, None), *found]


# -- summarising -----------------------------------------------------------------


def _spread(values: list[float]) -> dict[str, float]:
    return {
        "median": round(statistics.median(values), 3),
        "min": round(min(values), 3),
        "max": round(max(values), 3),
    }


def summarise(samples: list[Sample]) -> list[dict[str, Any]]:
    """Per path, transport and count: medians with their range over the rounds."""
    rows = []

    def key(s: Sample) -> tuple[str, str, int]:
        return (s.path, s.transport, s.streams)

    direct = {
        (s.transport, s.streams, i): s
        for (path, _, _), group in itertools.groupby(sorted(samples, key=key), key)
        if path == DIRECT
        for i, s in enumerate(group)
    }
    for (path, transport, streams), group_iter in itertools.groupby(sorted(samples, key=key), key):
        group = list(group_iter)
        row: dict[str, Any] = {
            "path": path,
            "transport": transport,
            "streams": streams,
            "rounds": len(group),
            "every_event_once": all(s.held for s in group),
            "failed_streams": sum(s.failed_streams for s in group),
            "p50_ms": _spread([s.p50_ms for s in group]),
            "p99_ms": _spread([s.p99_ms for s in group]),
        }
        if path != DIRECT:
            # Each round's p99 against the direct path's in the same round.
            ratios = [
                s.p99_ms / direct[(transport, streams, i)].p99_ms
                for i, s in enumerate(group)
                if (transport, streams, i) in direct and direct[(transport, streams, i)].p99_ms
            ]
            row["p99_ratio_to_direct"] = _spread(ratios) if ratios else None
            cpu = [c for s in group if (c := s.cpu_ms_per_1000_events) is not None]
            memory = [m for s in group if (m := s.memory_per_stream_kib) is not None]
            row["cpu_ms_per_1000_events"] = _spread(cpu) if cpu else None
            row["memory_kib_per_stream"] = _spread(memory) if memory else None
        rows.append(row)
    return rows


# What the page compares between proxies, and how each figure is worded.
# Only CPU: the delays' ratio and the memory per stream moved too much from
# run to run on this machine (Caddy's memory with Go's garbage collector),
# and a comparison of them held in one run and not the next.
COMPARED = {"cpu_ms_per_1000_events": "CPU per 1,000 events"}
# A difference is published when the ranges don't overlap and the medians
# differ by this much: three rounds can leave narrow ranges apart by chance.
COMPARED_AT_LEAST = 1.2


def comparisons(rows: list[dict[str, Any]]) -> list[str]:
    """Differences between proxies that held in every round, and are large enough to matter."""
    found = []
    proxies = [r for r in rows if r["path"] != DIRECT]
    for metric, words in COMPARED.items():
        for a, b in itertools.permutations(proxies, 2):
            if (a["transport"], a["streams"]) != (b["transport"], b["streams"]):
                continue
            if a[metric] is None or b[metric] is None:
                continue
            apart = a[metric]["max"] < b[metric]["min"]
            if apart and b[metric]["median"] >= COMPARED_AT_LEAST * a[metric]["median"]:
                found.append(
                    f"At {a['streams']} {a['transport']} streams, {a['path']} had a lower "
                    f"{words} than {b['path']} in every round "
                    f"({_range(a[metric])} against {_range(b[metric])})."
                )
    return found


def _range(spread: dict[str, float]) -> str:
    return f"{spread['min']:.3g} to {spread['max']:.3g}"


# -- capacity and the one-worker rows ---------------------------------------------


def capacity(
    path: BenchPath, transport: Transport, direct: dict[int, Sample] | None
) -> tuple[dict[str, Any], list[Sample]]:
    """Step the streams up until the path gives out.

    `direct` is the direct path's samples at each step (None: this is the
    direct path); a count the direct path didn't hold is the harness giving
    out, not the proxy.
    """
    samples: list[Sample] = []
    held_at = 0
    reason = f"held every step up to {CAPACITY_STEPS[-1]:,}"
    for count in CAPACITY_STEPS:
        if direct is not None and (count not in direct or not direct[count].held):
            reason = f"not measured past {held_at:,}: the harness gave out there (see direct)"
            break
        sample = path.measure(transport, count)
        samples.append(sample)
        if not sample.held:
            reason = (
                f"at {count:,}, {sample.failed_streams} streams failed"
                + (f": {sample.first_error}" if sample.first_error else "")
                + (", and events were lost" if not sample.exactly_once else "")
            )
            break
        if sample.p99_ms > CAPACITY_P99_S * 1000:
            reason = (
                f"at {count:,}, p99 delay {sample.p99_ms / 1000:.1f} s "
                f"(bound {CAPACITY_P99_S:.0f} s)"
            )
            break
        held_at = count
    cycle = RAMP_S + EVENTS_PER_STREAM * EVENT_INTERVAL_S
    return {
        "path": path.name,
        "transport": TRANSPORT_NAMES[transport],
        "held_streams": held_at,
        "events_per_s": round(held_at * EVENTS_PER_STREAM / cycle),
        "gave_out": reason,
    }, samples


def one_worker_rows(lab: ProxyLab, image: ProxyImage) -> list[dict[str, Any]]:
    """Debian's events block and the page's, on nginx's one worker: 500 sockets."""
    rows = []
    snippet = REPO_ROOT / RECOMMENDED_SNIPPETS["nginx"]
    for events in (None, NGINX_EVENTS_SNIPPET):
        block = ONE_CORE_FIX if events else "Debian's events block"
        with (
            lab.run(image, snippet, events=events, one_core=True, with_mock=False) as proxy,
            mock_process(proxy.network, 4242),
        ):
            path = BenchPath(
                f"{_name(lab, image)}, one worker, {block}",
                proxy.network,
                HTTPS_PORT,
                _client_context(proxy.target.ca_file or ""),
            )
            sample = path.measure("websocket", 500)
        rows.append(
            {
                "path": path.name,
                "streams": 500,
                "failed_streams": sample.failed_streams,
                "every_event_once": sample.held,
            }
        )
    return rows


# -- the run -----------------------------------------------------------------------


def run(lab: ProxyLab, images: list[ProxyImage], rounds: int) -> dict[str, Any]:
    samples: list[Sample] = []
    capacities = []
    with paths(lab, images) as every:
        direct = every[0]
        for round_number in range(1, rounds + 1):
            log(f"round {round_number} of {rounds}")
            for count, transport in itertools.product(LEVELS, TRANSPORTS):
                # A, B, A, B: the same moment's noise falls on every path.
                samples += [path.measure(transport, count) for path in every]
        for transport in TRANSPORTS:
            row, stepped = capacity(direct, transport, None)
            capacities.append(row)
            baseline = {s.streams: s for s in stepped}
            for path in every[1:]:
                row, _ = capacity(path, transport, baseline)
                capacities.append(row)
        for row in capacities:
            log(f"capacity of {row['path']} over {row['transport']}: {row['gave_out']}")
    one_worker = [
        row for image in images if image.proxy == "nginx" for row in one_worker_rows(lab, image)
    ]
    rows = summarise(samples)
    return {
        "run_on": datetime.date.today().isoformat(),
        "machine": machine(),
        "rounds": rounds,
        "events_per_stream": EVENTS_PER_STREAM,
        "event_interval_s": EVENT_INTERVAL_S,
        "capacity_p99_s": CAPACITY_P99_S,
        "versions": {image.key: lab.version(image) for image in images},
        "rows": rows,
        "comparisons": comparisons(rows),
        "capacity": capacities,
        "one_worker": one_worker,
    }


def machine() -> str:
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores ({model}), {memory_gib:.0f} GiB, {platform.system()}"


# -- rendering -----------------------------------------------------------------------


def _cell(spread: dict[str, float] | None, unit: str = "", digits: int = 1) -> str:
    if spread is None:
        return ""
    return (
        f"{spread['median']:.{digits}f}{unit} "
        f"<small>({spread['min']:.{digits}f} to {spread['max']:.{digits}f})</small>"
    )


def render(data: dict[str, Any]) -> str:
    lines = [
        "<!-- Generated by `make bench` from data/bench.json; do not edit. -->",
        "",
        f"Run on {data['run_on']}, on {data['machine']}: {data['rounds']} rounds, every "
        f"path in turn within each round. Each stream carried {data['events_per_stream']} "
        f"events, one every {data['event_interval_s']} s. Each cell is the median over "
        f"the rounds, with the lowest and highest in brackets.",
        "",
        # Two tables of the same rows: one would be wider than the page.
        "**Delay** each event gets on its way through:",
        "",
        "| Path | Transport | Streams | Added delay, p50 | p99 | p99 against direct |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for row in data["rows"]:
        lines.append(
            f"| {row['path']} | {row['transport']} | {row['streams']} | "
            f"{_cell(row['p50_ms'], ' ms', 2)} | {_cell(row['p99_ms'], ' ms', 1)} | "
            f"{_cell(row.get('p99_ratio_to_direct'), ' times', 1)} |"
        )
    lines += [
        "",
        "**What it takes** of the machine, and whether every event arrived once:",
        "",
        "| Path | Transport | Streams | CPU per 1,000 events | Memory per stream | "
        "Every event once |",
        "|---|---|---:|---:|---:|---|",
    ]
    for row in data["rows"]:
        once = "yes" if row["every_event_once"] else f"**no** ({row['failed_streams']} failed)"
        lines.append(
            f"| {row['path']} | {row['transport']} | {row['streams']} | "
            f"{_cell(row.get('cpu_ms_per_1000_events'), ' ms', 0)} | "
            f"{_cell(row.get('memory_kib_per_stream'), ' KiB', 0)} | {once} |"
        )
    lines += [
        "",
        "Differences that held in every round (ranges that do not overlap, medians at "
        f"least {COMPARED_AT_LEAST:g} times apart):",
        "",
    ]
    lines += [f"- {c}" for c in data["comparisons"]] or ["- none"]
    lines += [
        "",
        f"**Capacity.** Streams doubled from {CAPACITY_STEPS[0]:,} until events were lost or "
        f"the p99 delay passed {data['capacity_p99_s']:.0f} s:",
        "",
        "| Path | Transport | Held | Events/s offered there | Where it gave out |",
        "|---|---|---:|---:|---|",
    ]
    for row in data["capacity"]:
        lines.append(
            f"| {row['path']} | {row['transport']} | {row['held_streams']:,} | "
            f"{row['events_per_s']:,} | {_gave_out_in_words(row['gave_out'])} |"
        )
    lines += [
        "",
        "**One worker** (nginx as on a one-core server), 500 WebSocket streams:",
        "",
        "| Path | Failed streams | Every event once |",
        "|---|---:|---|",
    ]
    for row in data["one_worker"]:
        once = "yes" if row["every_event_once"] else "**no**"
        lines.append(f"| {row['path']} | {row['failed_streams']} | {once} |")
    return "\n".join(lines) + "\n"


# The client's error, as the data keeps it, is for contributors (`make bench`
# prints it); the page says what it means.
_ERROR_WORDS = {"IncompleteReadError": "the connection closed part-way through"}
_ERROR = re.compile(r": (\w+(?:Error|Exception))\b.*$")


def _gave_out_in_words(gave_out: str) -> str:
    found = _ERROR.search(gave_out)
    if found is None:
        return gave_out
    words = _ERROR_WORDS.get(found[1], "an error `make bench` prints")
    return gave_out[: found.start()] + f" ({words})"


def summary(data: dict[str, Any]) -> str:
    """What `make bench` prints: a few lines to hold against the page."""
    lines = [f"make bench, {data['run_on']}, {data['machine']}, {data['rounds']} rounds"]
    for row in data["rows"]:
        if row["streams"] != max(LEVELS) or row["path"] == DIRECT:
            continue
        lines.append(
            f"  {row['path']:<12} {row['transport']:<9} {row['streams']} streams: "
            f"p99 {_plain(row['p99_ratio_to_direct'], 'x direct')}, "
            f"CPU {_plain(row['cpu_ms_per_1000_events'], ' ms/1k events')}, "
            f"memory {_plain(row['memory_kib_per_stream'], ' KiB/stream')}"
        )
    for row in data["capacity"]:
        lines.append(
            f"  capacity {row['path']:<12} {row['transport']:<9} {row['held_streams']:,}: "
            f"{row['gave_out']}"
        )
    return "\n".join(lines)


def _plain(spread: dict[str, float] | None, unit: str) -> str:
    if spread is None:
        return "n/a"
    return f"{spread['median']:.3g}{unit} ({spread['min']:.3g}-{spread['max']:.3g})"


def main() -> None:
    parser = argparse.ArgumentParser(description="Measure what each config costs.")
    parser.add_argument("--write", action="store_true", help="update data/bench.json")
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    args = parser.parse_args()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-") as work, proxy_lab(Path(work)) as lab:
        images = [i for i in lab.images if i.proxy in RECOMMENDED_SNIPPETS]
        data = run(lab, images, args.rounds)
    print(summary(data))
    if args.write:
        DATA_FILE.parent.mkdir(parents=True, exist_ok=True)
        DATA_FILE.write_text(json.dumps(data, indent=2) + "\n")
        TABLE_FILE.parent.mkdir(parents=True, exist_ok=True)
        TABLE_FILE.write_text(render(data))
        bench_chart.write(data)
        log(
            f"wrote {DATA_FILE.relative_to(REPO_ROOT)}, {TABLE_FILE.relative_to(REPO_ROOT)} "
            f"and {bench_chart.CHART_FILE.relative_to(REPO_ROOT)}"
        )
    log(f"done in {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
