"""What each line of a published config is for, measured.

For every directive in a snippet, run the streaming contract with that one
directive removed (and with lines a reader might add), under the upstream
behaviours that matter, and record which checks fail. Every variant gets a
proxy container and a private network of its own, and all of them run at
once, so their minutes of silence overlap.

`python -m harness.tables.necessity --write` (make necessity) stores the results in
data/necessity.json and renders the tables the Reverse Proxy page includes;
a test fails when those files no longer match what the suite measures.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.checks import contract
from harness.checks import stream_checks as streams
from harness.lab.proxy_lab import ProxyLab
from harness.proxies.images import ProxyImage
from harness.proxies.kind import REPO_ROOT, Variant
from harness.proxies.registry import KINDS, RECOMMENDED_SNIPPETS
from harness.proxies.variants import AS_PUBLISHED, render, variants_for

DATA_FILE = REPO_ROOT / "data" / "necessity.json"
TABLE_FILES = {proxy: REPO_ROOT / "generated" / f"necessity-{proxy}.md" for proxy in KINDS}


@dataclass(frozen=True)
class Measure(contract.Property):
    # For checks of conditions DorkOS does not create by default: when the
    # failure would show up for a reader. None means it shows up always.
    shows_when: str | None = None


_IDLE = "on streams quiet for over 60 s (DorkOS's own send a heartbeat every 15 s)"

MEASURES = (
    Measure(
        "SSE real time (upstream sends X-Accel-Buffering: no)",
        functools.partial(streams.realtime, transport="sse", accel_header=True),
    ),
    Measure(
        "SSE real time (upstream omits X-Accel-Buffering)",
        functools.partial(streams.realtime, transport="sse", accel_header=False),
        shows_when="on DorkOS routes that omit X-Accel-Buffering: no",
    ),
    Measure(
        "SSE idle stream survives (15 s heartbeats)",
        functools.partial(streams.idle_stream_survives, transport="sse", heartbeat_interval=15.0),
        slow=True,
    ),
    Measure(
        "SSE idle stream survives (no heartbeats)",
        functools.partial(streams.idle_stream_survives, transport="sse", heartbeat_interval=None),
        slow=True,
        shows_when=_IDLE,
    ),
    Measure(
        "response that starts after 65 s",
        contract.check_slow_first_byte,
        slow=True,
        shows_when="for answers that take over 60 s to start",
    ),
    Measure("headers DorkOS reads", contract.check_headers_dorkos_reads),
    Measure("client address DorkOS counts", contract.check_client_address),
    Measure("https", contract.check_https),
    Measure(
        "SSE disconnect reaches upstream",
        functools.partial(streams.disconnect, transport="sse"),
        # Up to 30 s where the proxy never passes the close on.
        slow=True,
    ),
    Measure("SSE resume with Last-Event-ID", functools.partial(streams.resume, transport="sse")),
    Measure("not compressed or cached", contract.check_not_compressed_or_cached),
    Measure("ordinary traffic", contract.check_ordinary_traffic),
    Measure("WebSocket upgrade", streams.check_websocket_upgrade),
    Measure("WebSocket real time", functools.partial(streams.realtime, transport="websocket")),
    Measure(
        "WebSocket idle survives (15 s heartbeats)",
        functools.partial(
            streams.idle_stream_survives, transport="websocket", heartbeat_interval=15.0
        ),
        slow=True,
    ),
    Measure(
        "WebSocket idle survives (no heartbeats)",
        functools.partial(
            streams.idle_stream_survives, transport="websocket", heartbeat_interval=None
        ),
        slow=True,
        shows_when=_IDLE,
    ),
    Measure(
        "WebSocket disconnect reaches upstream",
        functools.partial(streams.disconnect, transport="websocket"),
        slow=True,
    ),
    Measure(
        "WebSocket resume with ?resume=", functools.partial(streams.resume, transport="websocket")
    ),
    Measure("WebSocket refusal reaches the browser", streams.check_websocket_refusal),
    Measure("terminal WebSocket", streams.check_terminal),
)


def measure_image(lab: ProxyLab, image: ProxyImage) -> dict[str, Any]:
    """Run every variant of the image's snippet; which measures each fails.

    Each variant gets a proxy of its own: in one shared nginx, a variant
    whose upstream timed out marked DorkOS down for every other variant too.
    """
    snippet = REPO_ROOT / RECOMMENDED_SNIPPETS[image.proxy]
    variants = variants_for(snippet.read_text(), image.proxy)
    with ThreadPoolExecutor(len(variants), thread_name_prefix=f"{image.key}-variant") as pool:
        outcomes = list(pool.map(lambda v: _measure_variant(lab, image, snippet, v), variants))
    return {
        "image": image.key,
        "description": image.description,
        "measured_on": datetime.date.today().isoformat(),
        "snippet": RECOMMENDED_SNIPPETS[image.proxy],
        "variants": [
            {"variant": variant.name, "change": _change(variant), "fails": fails}
            for variant, fails in zip(variants, outcomes, strict=True)
        ],
    }


def _measure_variant(
    lab: ProxyLab, image: ProxyImage, snippet: Path, variant: Variant
) -> dict[str, str]:
    """{measure: first line of why it failed} for one variant."""
    # The snippet's own file name, so the proxy's messages read as for it.
    path = lab.run_dir(f"{image.key}-variant") / snippet.name
    path.write_text(render(variant, snippet.read_text(), image.proxy))
    shown_as = f"{RECOMMENDED_SNIPPETS[image.proxy]} {variant.name}"
    # The published config's own runs check it; a variant is only served.
    with lab.run(image, path, shown_as=shown_as, check=False) as proxy:
        futures = contract.run_contract(proxy, lab.mock, MEASURES)
        return {
            name: _first_line(future.exception())
            for name, future in futures.items()
            if future.exception() is not None
        }


def _change(variant: Variant) -> str | None:
    if variant.table_label is not None:
        return ("^" if variant.takes_away else "~") + variant.table_label
    if variant.removes is not None:
        return f"-{variant.removes}"
    if variant.replaces is not None:
        old, new = variant.replaces
        added = [line.strip() for line in new if not line.startswith(old) and line != "}"]
        return "+" + " ".join(added)
    if variant.adds:
        return "+" + " ".join(variant.adds)
    return None


def _first_line(error: BaseException | None) -> str:
    text = str(error) if isinstance(error, AssertionError) else repr(error)
    return text.splitlines()[0] if text else type(error).__name__


def start(lab: ProxyLab) -> list[Future[dict[str, Any]]]:
    """Measure every image's snippet in the background, all at once."""
    return [
        lab.in_background(("necessity", image.key), functools.partial(measure_image, lab, image))
        for image in lab.images
    ]


def measure_all(lab: ProxyLab) -> dict[str, Any]:
    print(
        f"[necessity] measuring {', '.join(i.description for i in lab.images)} side by side ...",
        file=sys.stderr,
        flush=True,
    )
    runs = [run.result() for run in start(lab)]
    return {
        "measured_on": datetime.date.today().isoformat(),
        "silence_s": streams.SILENCE_S,
        "held_back_after_s": streams.HELD_BACK_AFTER_S,
        "runs": runs,
    }


def verdicts(results: dict[str, Any]) -> dict[str, dict[str, list[str]]]:
    """{image: {variant: sorted failing measures}}: what staleness compares."""
    return {
        run["image"]: {v["variant"]: sorted(v["fails"]) for v in run["variants"]}
        for run in results["runs"]
    }


def reasons(results: dict[str, Any]) -> dict[str, dict[str, dict[str, str]]]:
    """{image: {variant: {failing measure: the first line of why}}}."""
    return {
        run["image"]: {v["variant"]: dict(v["fails"]) for v in run["variants"]}
        for run in results["runs"]
    }


# -- rendering --------------------------------------------------------------

# What each line does, by the start of its text (proxy documentation, not a
# claim about need: the measured columns say that).
WHAT_IT_DOES = {
    "proxy_http_version 1.1": "Talks HTTP/1.1 to DorkOS (nginx's default is 1.0).",
    "proxy_set_header Host": "Forwards the host name the browser used.",
    "proxy_set_header Upgrade": "Passes the browser's `Upgrade: websocket` on to DorkOS.",
    "proxy_set_header Connection $connection_upgrade": "Asks DorkOS to upgrade when the "
    "browser did (`upgrade`), and sends `close` otherwise, as nginx does by default.",
    "Use `proxy_set_header Connection '';`": "Sends no `Connection` header, so no "
    "request ever asks DorkOS to upgrade.",
    "Map `''` to `''`": "Sends no `Connection` header on a plain request, instead of `close`.",
    "proxy_set_header X-Real-IP": "Sends the client's address in its own header.",
    "proxy_set_header X-Forwarded-For": "Appends the client's address to the forwarding chain.",
    "proxy_set_header X-Forwarded-Proto": "Tells DorkOS the scheme the browser used.",
    "proxy_buffering off": "Passes each piece of the response on as it arrives.",
    "proxy_cache off": "Never serves a response from a cache (off is nginx's default).",
    "proxy_read_timeout": "How long nginx waits between two reads from DorkOS (default 60 s).",
    "proxy_send_timeout": "How long nginx waits between two writes to DorkOS (default 60 s).",
    "chunked_transfer_encoding off": "Does not use chunked encoding towards the browser.",
    "flush_interval -1": "Writes each piece of the response to the client at once; on "
    "Caddy 2.6 to 2.8 it also keeps the request to DorkOS open after the client leaves.",
    "gzip on;": "Compresses responses of the listed types.",
    "encode gzip": "Compresses responses.",
    "mode http": "Reads the traffic as HTTP (Debian's `defaults` say so too).",
    "http-request redirect scheme https": "Sends plain-HTTP requests to the HTTPS site.",
    "option forwardfor": "Appends the client's address to `X-Forwarded-For`.",
    "http-request set-header X-Forwarded-Proto": "Tells DorkOS the scheme the browser used.",
    "timeout client": "How long HAProxy waits on a quiet browser (Debian's default 50 s).",
    "timeout server": "How long HAProxy waits on a quiet DorkOS (Debian's default 50 s).",
    "timeout tunnel": "How long an upgraded WebSocket may be quiet (without it, the two above).",
    "option abortonclose": "Closes DorkOS's side of a stream when the browser leaves.",
    "- scheme-https": "Runs the route's requests through the `scheme-https` middleware.",
    "X-Forwarded-Proto: https": "Tells DorkOS `https`, where Traefik would say `wss` for a "
    "WebSocket.",
    "balance first": "Sends every request to the first server, `::1`.",
    "option redispatch 1": "Tries a request `::1` refused on `127.0.0.1`. The measurements "
    "run DorkOS on `::1`, where it has nothing to do; the runs with DorkOS on `127.0.0.1` "
    "need it.",
    "SSLProtocol": "Allows TLS 1.2 and 1.3 only. Debian's OpenSSL refuses TLS 1.0 and 1.1 "
    "at its default security level; with this line the config does on any system.",
    "ProxyPreserveHost On": "Forwards the host name the browser used (Apache's default is "
    "the one in `ProxyPass`, `localhost:4242`).",
    "RequestHeader set X-Forwarded-Proto": "Tells DorkOS the scheme the browser used.",
    "Remove `upgrade=websocket`": "Without it, Apache passes a WebSocket upgrade on as an "
    "ordinary request.",
    "AddOutputFilterByType DEFLATE": "Compresses responses of the listed types (Debian's "
    "`deflate.conf` lists text types, not `text/event-stream`).",
    "option http-no-delay": "Sends each piece on at once; HAProxy 3.0 otherwise lets the "
    "kernel hold small writes back for more, up to 200 ms each.",
}


# What a reader would see when a measure fails, and where the page explains
# it: the table lists these, not the measures' names.
_SOCKETS = "[The app's sockets fail: replies never appear](#the-app-loads-but-replies-never-appear)"
_BATCHES = (
    "[SSE events arrive late or in batches](#events-arrive-in-batches-instead-of-in-real-time)"
)
_CUT = "[Quiet streams are cut](#the-connection-drops-after-60-seconds)"
_GONE = "DorkOS keeps streaming to tabs that closed"
_RESUME = "A reconnect loses or repeats events"
_LATE = "[Long answers end in `504`](#504-gateway-timeout-on-long-requests)"
_ONE_LIMIT = "[All visitors share one sign-in limit](#what-dorkos-needs-from-a-proxy)"
SYMPTOMS = {
    "SSE real time (upstream sends X-Accel-Buffering: no)": _BATCHES,
    "SSE real time (upstream omits X-Accel-Buffering)": _BATCHES,
    "SSE idle stream survives (15 s heartbeats)": _CUT,
    "SSE idle stream survives (no heartbeats)": _CUT,
    "response that starts after 65 s": _LATE,
    "headers DorkOS reads": "DorkOS gets the wrong host, scheme or visitor address",
    "client address DorkOS counts": _ONE_LIMIT,
    "https": "HTTPS requests fail",
    "SSE disconnect reaches upstream": _GONE,
    "SSE resume with Last-Event-ID": _RESUME,
    "not compressed or cached": "Streams are compressed or cached",
    "ordinary traffic": "Pages and API requests fail",
    "WebSocket upgrade": _SOCKETS,
    "WebSocket real time": _SOCKETS,
    "WebSocket idle survives (15 s heartbeats)": _CUT,
    "WebSocket idle survives (no heartbeats)": _CUT,
    "WebSocket disconnect reaches upstream": _GONE,
    "WebSocket resume with ?resume=": _RESUME,
    "WebSocket refusal reaches the browser": _SOCKETS,
    "terminal WebSocket": "The terminal does not open",
}


def symptoms(fails: list[str]) -> str:
    """What a reader would see, each once, in the order of the measures."""
    if "ordinary traffic" in fails and "https" in fails:
        return "Every request fails, pages and streams alike"  # the rest follows from it
    if "WebSocket upgrade" in fails:
        # No socket opens, so every other socket measure fails with it.
        fails = [f for f in fails if not f.startswith("WebSocket ") or f == "WebSocket upgrade"]
    seen = dict.fromkeys(SYMPTOMS[m.name] for m in MEASURES if m.name in fails)
    return "; ".join(seen) if seen else "nothing"


def what_it_does(change: str) -> str:
    for start, text in WHAT_IT_DOES.items():
        if change.startswith(start):
            return text
    return ""


_SHOWS_WHEN = {m.name: m.shows_when for m in MEASURES}


def verdict(fails: list[str], added: bool) -> str:
    if not fails:
        return "No measured effect" if not added else "No measured harm"
    if added:
        return "**Harmful**"
    if any(_SHOWS_WHEN[name] is None for name in fails):
        return "**Required**"
    conditions = sorted({_SHOWS_WHEN[name] or "" for name in fails})
    return "**Protects**: needed " + "; ".join(conditions)


def render_table(results: dict[str, Any], proxy: str) -> str:
    runs = [r for r in results["runs"] if r["snippet"] == RECOMMENDED_SNIPPETS[proxy]]
    if not runs:
        return f"No measurements of {RECOMMENDED_SNIPPETS[proxy]} are recorded.\n"
    # A run measured apart from the others (one proxy added later) has its own date.
    dates: dict[str, list[str]] = {}
    for run in runs:
        dates.setdefault(run.get("measured_on", results["measured_on"]), []).append(
            run["description"]
        )
    on = "; ".join(f"{', '.join(descs)}, {date}" for date, descs in sorted(dates.items()))
    # What the published config itself fails on a version (as the page
    # says): a row shows only what its change broke beyond that.
    published = {r["description"]: set(r["variants"][0]["fails"]) for r in runs}
    lines = [
        "<!-- Generated by `make necessity` from data/necessity.json; do not edit. -->",
        "",
        "| Change to the config | Verdict | What broke, measured | What the line does |",
        "|---|---|---|---|",
    ]
    for index, first in enumerate(runs[0]["variants"]):
        if first["variant"] == AS_PUBLISHED:
            continue
        per_run = {
            r["description"]: sorted(
                set(r["variants"][index]["fails"]) - published[r["description"]]
            )
            for r in runs
        }
        added = first["change"].startswith(("+", "~"))
        change = first["change"][1:]
        prefix = first["change"][0]
        label = {"+": f"Add `{change}`", "-": f"Remove `{change}`"}.get(prefix, change)
        if len({tuple(f) for f in per_run.values()}) == 1:
            fails = next(iter(per_run.values()))
            what = symptoms(fails)
            lines.append(f"| {label} | {verdict(fails, added)} | {what} | {what_it_does(change)} |")
        else:
            what = "<br>".join(f"{desc}: {symptoms(f)}" for desc, f in per_run.items())
            worst = max(per_run.values(), key=len)
            lines.append(f"| {label} | {verdict(worst, added)} | {what} | {what_it_does(change)} |")
    broken = {desc: sorted(f) for desc, f in published.items() if f}
    lines += [
        "",
        f"Measured on {on}: the published config with one "
        f"change at a time, through every check of the streaming contract "
        f"([how](how-it-is-tested.md#what-each-line-is-for)). "
        + (
            " ".join(
                f"On {desc} the published config itself fails: {symptoms(f)}; the rows "
                f"show what each change broke beyond that."
                for desc, f in broken.items()
            )
            if broken
            else "The published config itself passed every check."
        ),
        "",
    ]
    return "\n".join(lines)


def write(results: dict[str, Any]) -> None:
    DATA_FILE.parent.mkdir(parents=True, exist_ok=True)
    DATA_FILE.write_text(json.dumps(results, indent=2, sort_keys=False) + "\n")
    for proxy, path in TABLE_FILES.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render_table(results, proxy))


def load() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DATA_FILE.read_text())
    return data


def main() -> None:
    from harness.lab.proxy_lab import proxy_lab

    parser = argparse.ArgumentParser(description="Measure what each config line is for.")
    parser.add_argument("--write", action="store_true", help=f"update {DATA_FILE.name} and tables")
    args = parser.parse_args()
    import tempfile

    with tempfile.TemporaryDirectory(prefix="necessity-") as work, proxy_lab(Path(work)) as lab:
        results = measure_all(lab)
    for proxy in TABLE_FILES:
        print(render_table(results, proxy))
    if args.write:
        write(results)
        print(f"wrote {DATA_FILE.relative_to(REPO_ROOT)} and the tables in generated/")


if __name__ == "__main__":
    main()
