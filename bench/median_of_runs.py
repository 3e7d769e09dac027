"""Medians over several bench/sidecar_latency.py result files, as a Markdown table (prints it).

    .venv/bin/python bench/median_of_runs.py after-1.json after-2.json after-3.json

Each ratio is taken within its own run (sidecar / baseline of the same run), then the median of
those ratios is reported, so a slow machine in one run does not mix with a fast one in another.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from harness import median, ratio

COLUMNS = (
    ("p50 µs", "c1", "p50_us"),
    ("p99 µs", "c1", "p99_us"),
    ("req/s @32", "c32", "rps"),
    ("CPU µs/req @32", "c32", "server_cpu_us_per_request"),
)


def table(runs: list[dict[str, Any]]) -> str:
    lines = [
        "| scenario | p50 µs | p99 µs | req/s @32 | CPU µs/req | p50 x | p99 x | req/s x | CPU x | hit @32 |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for key in runs[0]["scenarios"]:
        entries = [run["scenarios"][key] for run in runs if key in run["scenarios"]]
        base = [e["baseline"] for e in entries]
        lines.append(server_row(key, [e["sidecar"] for e in entries], base))
        listened = [e for e in entries if "listener" in e]
        if listened:
            label = "(check listener, TIERGATE_CHECK_PORT)"
            lines.append(
                server_row(label, [e["listener"] for e in listened], [e["baseline"] for e in listened])
            )
        lines.append(plain_row("(baseline)", base))
        floors = [e["floor"] for e in entries if "floor" in e]
        if floors:
            lines.append(plain_row("(floor: uvloop + httptools)", floors))
    return "\n".join(lines)


def server_row(label: str, side: list[dict[str, Any]], base: list[dict[str, Any]]) -> str:
    """Medians of one server's figures and of its per-run ratios to the baseline."""
    cells = [median([s[run][name] for s in side]) for _, run, name in COLUMNS]
    ratios = [
        median([ratio(s[run][name], b[run][name]) for s, b in zip(side, base, strict=True)])
        for _, run, name in COLUMNS
    ]
    hit = median([s["c32"].get("cache_hit_ratio") for s in side])
    return (
        f"| {label} | "
        + " | ".join("-" if c is None else f"{c:,.0f}" for c in cells)
        + " | "
        + " | ".join("-" if r is None else f"{r:.2f}" for r in ratios)
        + f" | {'-' if hit is None else f'{hit:.0%}'} |"
    )


def plain_row(label: str, servers: list[dict[str, Any]]) -> str:
    cells = [median([f[run][name] for f in servers]) for _, run, name in COLUMNS]
    return f"| {label} | " + " | ".join("-" if c is None else f"{c:,.0f}" for c in cells) + " | | | | | |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path)
    args = parser.parse_args()
    runs = [json.loads(path.read_text()) for path in args.files]
    print(table(runs))
    versus: dict[str, list[float]] = {}
    for run in runs:
        for key, entry in run["scenarios"].items():
            for name, value in entry.get("ratios", {}).items():
                if "_vs_" in name and "floor" not in name and value is not None:
                    versus.setdefault(f"{key} {name}", []).append(value)
    for name, values in versus.items():  # e.g. reserve's p50 against the hot check's, in each run
        print(f"{name}: median {statistics.median(values):.2f} of {values}")
    loads = [run["meta"].get("load_average_before") for run in runs]
    print(f"\nload average before each run: {loads}")
    inproc = [run.get("in_process_us") for run in runs if run.get("in_process_us")]
    if inproc:
        print("\nin process, median of the runs' p50 (µs):")
        for name in inproc[0]:
            values = [
                r[name]["p50_us"] for r in inproc if isinstance(r.get(name), dict) and "p50_us" in r[name]
            ]
            if values:
                print(f"  {name}: {statistics.median(values):.2f}")
        pieces = [r["hit_path_pieces_us"] for r in inproc if "hit_path_pieces_us" in r]
        for name in pieces[0] if pieces else []:
            print(f"    {name}: {statistics.median(p[name] for p in pieces):.2f}")


if __name__ == "__main__":
    main()
