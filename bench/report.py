"""Writing a run's results: results.json (everything), results.md (tables) and results.png (chart)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# (summary key, column title) of the table every scenario gets.
COLUMNS = [
    ("deliveries_per_s", "deliveries/s"),
    ("server_cpu_us_per_delivery", "server µs/delivery"),
    ("redis_cpu_us_per_delivery", "Redis µs/delivery"),
    ("p50_ms", "p50 ms"),
    ("p99_ms", "p99 ms"),
    ("max_ms", "max ms"),
    ("lost", "lost"),
    ("duplicated", "dup"),
    ("rss_per_conn_kb", "RSS KB/conn"),
    ("loadgen_cpu_pct", "loadgen CPU %"),
    ("frames_per_delivery", "frames/delivery"),
    ("other_cpu_pct", "other CPU %"),
]
EXTRA_COLUMNS = {
    "fanout": [("max_ok_rate", "max ok msg/s")],
    "idle": [("idle_cpu_pct", "idle server CPU %")],
    "bot": [
        ("reply_p50_ms", "reply p50 ms"),
        ("reply_p99_ms", "reply p99 ms"),
        ("reply_max_ms", "reply max ms"),
        ("worker_cpu_us_per_reply", "worker µs/reply"),
    ],
}
STEP_COLUMNS = [
    ("rate", "msg/s"),
    ("delivered", "delivered"),
    ("lost", "lost"),
    ("duplicated", "dup"),
    ("p50_ms", "p50 ms"),
    ("p99_ms", "p99 ms"),
    ("max_ms", "max ms"),
    ("server_cpu_us_per_delivery", "server µs/delivery"),
    ("server_cpu_pct", "server CPU %"),
    ("loadgen_cpu_pct_max", "busiest loadgen CPU %"),
    ("other_cpu_pct", "other CPU %"),
]
# Ratios of ours to each peer: for costs and latencies lower is better, for max_ok_rate higher is.
RATIO_KEYS = ["server_cpu_us_per_delivery", "redis_cpu_us_per_delivery", "rss_per_conn_kb", "p99_ms", "max_ok_rate"]


def ratios(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, dict[str, float | None]]]:
    """scenario -> peer -> figure -> ours / peer, where both have the figure."""
    out: dict[str, dict[str, dict[str, float | None]]] = {}
    for scenario, by_system in results.items():
        mine = by_system.get("ours", {}).get("summary")
        if not mine:
            continue
        for peer, result in by_system.items():
            theirs = result.get("summary")
            if peer == "ours" or not theirs:
                continue
            row = {}
            for key in RATIO_KEYS:
                a, b = mine.get(key), theirs.get(key)
                if isinstance(a, int | float) and isinstance(b, int | float) and b:
                    row[key] = round(a / b, 2)
            out.setdefault(scenario, {})[peer] = row
    return out


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.2f}" if abs(value) < 100 else f"{value:,.0f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return [*lines, ""]


def markdown(data: dict[str, Any]) -> str:
    meta = data["meta"]
    lines = [
        "# Benchmark results",
        "",
        f"{'Quick' if meta['quick'] else 'Full'} run of {meta['started']} on {meta['cpus']} CPUs, Python "
        f"{meta['python']}; each system on its own redis-server with 2 nodes, all on loopback. Load average "
        f"{meta['load_before']:.1f} before the run (other work on the machine skews the figures).",
        "",
    ]
    for name, status in data["systems"].items():
        if status != "ok":
            lines.append(f"- `{name}` skipped: {status}")
    for scenario, by_system in data["results"].items():
        lines += [f"## {scenario}"]
        columns = COLUMNS + EXTRA_COLUMNS.get(scenario, [])
        rows = []
        for system, result in by_system.items():
            if "summary" in result:
                rows.append([f"`{system}`"] + [result["summary"].get(key) for key, _ in columns])
            else:
                lines.append(f"- `{system}`: {result.get('error') or result.get('skipped')}")
        if rows:
            lines += ["", *_table(["system"] + [title for _, title in columns], rows)]
        if scenario == "fanout":
            steps = [
                [f"`{system}`"] + [step.get(key) for key, _ in STEP_COLUMNS]
                for system, result in by_system.items()
                for step in result.get("steps", [])
            ]
            lines += ["Steps:", "", *_table(["system"] + [title for _, title in STEP_COLUMNS], steps)]
    if data["ratios"]:
        lines += ["## ours / peer", "", "Below 1 means ours costs less (or, for max ok msg/s, sustains less).", ""]
        rows = [
            [scenario, f"`{peer}`"] + [row.get(key) for key in RATIO_KEYS]
            for scenario, peers in data["ratios"].items()
            for peer, row in peers.items()
        ]
        lines += _table(["scenario", "peer", *RATIO_KEYS], rows)
    return "\n".join(lines)


def chart(data: dict[str, Any], path: Path) -> None:
    """Four panels: fan-out p99 and server CPU against rate, CPU per delivery per scenario, RSS per connection."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = data["results"]
    systems = [name for name, status in data["systems"].items() if status == "ok"]
    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    fanout = results.get("fanout", {})
    for system in systems:
        steps = fanout.get(system, {}).get("steps", [])
        if steps:
            rates = [s["rate"] for s in steps]
            axes[0][0].plot(rates, [max(s["p99_ms"], 0.01) for s in steps], marker="o", label=system)
            axes[0][1].plot(rates, [s["server_cpu_pct"] for s in steps], marker="o", label=system)
    axes[0][0].axhline(100, color="grey", linestyle="--", linewidth=1)
    axes[0][0].set(title="fanout: p99 latency", ylabel="ms", yscale="log")
    axes[0][1].set(title="fanout: server CPU (both nodes)", ylabel="% of one core")
    rates = sorted({s["rate"] for r in fanout.values() for s in r.get("steps", [])})
    for ax in axes[0]:
        ax.set(xlabel="messages/s into the room", xscale="log")
        if rates:
            ax.set_xticks(rates, [f"{r:g}" for r in rates])
            ax.minorticks_off()
    # The idle scenario's one message per room checks liveness; its CPU per delivery is not a throughput figure.
    scenarios = [s for s in results if s != "idle" and any("summary" in r for r in results[s].values())]
    width = 0.8 / max(len(systems), 1)
    for i, system in enumerate(systems):
        summaries = [results[s].get(system, {}).get("summary", {}) for s in scenarios]
        values = [summary.get("server_cpu_us_per_delivery") or 0 for summary in summaries]
        axes[1][0].bar([x + i * width for x in range(len(scenarios))], values, width, label=system)
    axes[1][0].set_xticks([x + width * (len(systems) - 1) / 2 for x in range(len(scenarios))], scenarios)
    axes[1][0].set(title="server CPU per delivered message", ylabel="µs", yscale="log")
    rss = [results.get("idle", {}).get(s, {}).get("summary", {}).get("rss_per_conn_kb") or 0 for s in systems]
    axes[1][1].bar(systems, rss, color=[f"C{i}" for i in range(len(systems))])
    axes[1][1].set(title="idle: server memory per connection", ylabel="KB (RSS)")
    for ax in (axes[0][0], axes[0][1], axes[1][0]):
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.suptitle(f"chat servers on one machine ({'quick' if data['meta']['quick'] else 'full'} run)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write(data: dict[str, Any], out: Path) -> list[Path]:
    """Write the three files into ``out``; return their paths."""
    out.mkdir(parents=True, exist_ok=True)
    data["ratios"] = ratios(data["results"])
    paths = [out / "results.json", out / "results.md", out / "results.png"]
    paths[0].write_text(json.dumps(data, indent=2, default=str) + "\n")
    paths[1].write_text(markdown(data) + "\n")
    chart(data, paths[2])
    return paths
