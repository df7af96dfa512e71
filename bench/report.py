"""Writing a run's results: results.json (everything), results.md (tables) and results.png (chart)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench import bot_stream
from bench.drive import limit_label
from bench.scale import NAME as SCALE
from bench.scale import NODE_COUNTS

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
STORM = "storm"
# Scenarios whose table has only their own columns: the storm sends no messages, so delivery figures do not apply.
OWN_COLUMNS = {STORM}
EXTRA_COLUMNS = {
    "fanout": [("max_ok_rate", "max ok msg/s")],
    "idle": [("idle_cpu_pct", "idle server CPU %")],
    "bot": [
        ("reply_p50_ms", "reply p50 ms"),
        ("reply_p99_ms", "reply p99 ms"),
        ("reply_max_ms", "reply max ms"),
        ("worker_cpu_us_per_reply", "worker µs/reply"),
    ],
    STORM: [
        ("connections", "connections"),
        ("errors", "errors"),
        ("dropped", "dropped"),
        ("connections_per_s", "connections/s"),
        ("server_cpu_us_per_conn", "server µs/conn"),
        ("redis_cpu_us_per_conn", "Redis µs/conn"),
        ("join_p50_ms", "joined p50 ms"),
        ("join_p99_ms", "joined p99 ms"),
        ("join_max_ms", "joined max ms"),
        ("rss_per_conn_kb", "RSS KB/conn"),
        ("listen_overflows", "accept queue full"),
        ("loadgen_cpu_pct_max", "busiest loadgen CPU %"),
        ("other_cpu_pct", "other CPU %"),
        ("nearest_limit", "nearest its limit"),
    ],
}
INTRO = {
    STORM: "Every client connects, authenticates and joins its two-member room at once, spread over both nodes "
    "(ours joins with `since`, the id of the room's last message, as a client resuming after a reconnect). "
    "*connections/s*: joined connections per second from the first connect to the last `joined`; *µs/conn*: CPU "
    "of the nodes (or Redis) from the first connect until the nodes are quiet again, per joined connection; "
    "*joined*: per connection, from its TCP connect to its `joined`; *accept queue full*: connections the kernel "
    "held back because a node's listen backlog was full (each waits a second or more); *nearest its limit*: which "
    "of server (busiest node), load generator and Redis used the largest share of what it can use.",
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
# Ratios of ours to each peer: for costs and latencies lower is better, for max_ok_rate and connections_per_s higher is.
RATIO_KEYS = [
    "server_cpu_us_per_delivery",
    "redis_cpu_us_per_delivery",
    "rss_per_conn_kb",
    "p99_ms",
    "max_ok_rate",
    "server_cpu_us_per_conn",
    "redis_cpu_us_per_conn",
    "join_p99_ms",
    "connections_per_s",
]


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
            row: dict[str, float | None] = {}
            for key in RATIO_KEYS:
                a, b = mine.get(key), theirs.get(key)
                if isinstance(a, int | float) and isinstance(b, int | float) and b:
                    row[key] = round(a / b, 2)
            if row:  # the scale scenario has figures of its own, compared in its own table
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
        f"{meta['python']}; each system on its own redis-server with 2 nodes (and 3 in `scale`), all on loopback. "
        f"Load average {meta['load_before']:.1f} before the run (other work on the machine skews the figures).",
        "",
    ]
    for name, status in data["systems"].items():
        if status != "ok":
            lines.append(f"- `{name}` skipped: {status}")
    for scenario, by_system in data["results"].items():
        lines += [f"## {scenario}"]
        own_table = {SCALE: scale_markdown, bot_stream.NAME: stream_markdown}.get(scenario)
        if own_table is not None:  # figures of their own, in tables of their own
            lines += own_table(by_system)
            continue
        if scenario in INTRO:
            lines += ["", INTRO[scenario]]
        columns = ([] if scenario in OWN_COLUMNS else COLUMNS) + EXTRA_COLUMNS.get(scenario, [])
        rows = []
        for system, result in by_system.items():
            if "summary" in result:
                rows.append([f"`{system}`"] + [result["summary"].get(key) for key, _ in columns])
                if "error" in result:  # measured, but failed: say so above the table
                    lines.append(f"- **`{system}` failed**: {result['error']}")
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
        lines += [
            "## ours / peer",
            "",
            "Below 1 means ours costs less (or, for max_ok_rate and connections_per_s, sustains less).",
            "",
        ]
        keys = [
            key for key in RATIO_KEYS if any(key in row for peers in data["ratios"].values() for row in peers.values())
        ]
        rows = [
            [scenario, f"`{peer}`"] + [row.get(key) for key in keys]
            for scenario, peers in data["ratios"].items()
            for peer, row in peers.items()
        ]
        lines += _table(["scenario", "peer", *keys], rows)
    return "\n".join(lines)


# (side figure, column title) of the bot_stream table; the after / before row has the ratios of bot_stream.RATIO_KEYS.
STREAM_COLUMNS = [
    ("delta_interval_ms", "delta interval ms"),
    ("replies", "replies"),
    ("deltas_per_reply", "deltas/reply"),
    ("publishes_per_reply", "Redis publishes/reply"),
    ("scripts_per_reply", "Redis scripts/reply"),
    ("redis_commands_per_reply", "Redis commands/reply"),
    ("server_cpu_us_per_delta", "server µs/delta"),
    ("server_cpu_us_per_reply", "server µs/reply"),
    ("worker_cpu_us_per_reply", "worker µs/reply"),
    ("redis_cpu_us_per_reply", "Redis µs/reply"),
    ("first_delta_p50_ms", "first delta p50 ms"),
    ("first_delta_p99_ms", "first delta p99 ms"),
    ("reply_p50_ms", "reply p50 ms"),
    ("reply_p99_ms", "reply p99 ms"),
    ("lost", "lost"),
    ("duplicated", "dup"),
    ("faults", "faults"),
    ("other_cpu_pct", "other CPU %"),
]


def stream_markdown(by_system: dict[str, Any]) -> list[str]:
    """The bot_stream table: per system a row before coalescing, one after, and their ratio."""
    lines = [
        "",
        "Users talk to their own echo bots, which stream each reply word by word (the message's words, "
        "`pace` seconds apart, as a language model streams tokens); the workers run with "
        "`CHAT_DELTA_INTERVAL_MS=0` (*before*: one delta per piece), then with 50 ms (*after*: the default, pieces "
        "within 50 ms go out as one delta), each on a fresh topology. Per reply: the deltas a client received, the "
        "Redis publishes (PUBLISH/SPUBLISH, also those run inside scripts) and scripts and all commands "
        "(`INFO commandstats` over the step), the gateway nodes' CPU (per delivered delta and per reply), the "
        "workers' and Redis's. *first delta* and *reply*: from the send to the reply's first delta and to its final "
        "message. *faults*: replies whose final text is not the sent text or not what their deltas spelled, or "
        "whose deltas skipped or repeated a seq. *after / before*: below 1, coalescing saves.",
        "",
    ]
    rows, saved = [], []
    for system, result in by_system.items():
        if "summary" not in result:
            lines.append(f"- `{system}`: {result.get('error') or result.get('skipped')}")
            continue
        if "error" in result:
            lines.append(f"- **`{system}` failed**: {result['error']}")
        s = result["summary"]
        for name, _ in bot_stream.SIDES:
            rows.append([f"`{system}`", name] + [s[name].get(key) for key, _ in STREAM_COLUMNS])
        ratios = {key: s.get(f"{key}_ratio") for key in bot_stream.RATIO_KEYS}
        rows.append([f"`{system}`", "after / before"] + [ratios.get(key, "") for key, _ in STREAM_COLUMNS])
        saved.append(
            f"- `{system}`: each delta fewer per reply saved "
            + ", ".join(
                f"{_cell(s.get(f'{part}_cpu_us_per_delta_saved'))} µs of {title}"
                for part, title in (("server", "the gateway nodes"), ("worker", "the workers"), ("redis", "Redis"))
            )
            + " (the drop in CPU per reply over the drop in deltas per reply)."
        )
    if rows:
        lines += _table(["system", "coalescing"] + [title for _, title in STREAM_COLUMNS], rows)
        lines += [*saved, ""]
    return lines


def _nodes_cell(value: Any, capped: bool) -> str:
    return ("≥ " if capped else "") + _cell(value)


def scale_markdown(by_system: dict[str, Any]) -> list[str]:
    """The scale scenario's table (each figure with 2 and 3 nodes, and their ratio) and its steps."""
    a, b = NODE_COUNTS
    lines = [
        "",
        f"The rooms workload on {a} nodes and on {b} (connection i on node i mod N, so a room's two members are "
        f"always on two different nodes), at the same offered rates. *max ok*: the highest rate with p99 ≤ 100 ms "
        f"and no loss (≥: every offered rate passed). *µs/delivery*: all the nodes' CPU from the first `cost` round "
        f"to the last (idle turns included) per delivery; *node CPU*: each node's share of it, as % of one core per "
        f"second of its own rounds; *cost p99*: the worse round's. Both topologies run side by side and take turns, "
        f"so outside work weighs on both alike. A µs/delivery ratio near 1.00 means a node does no work for rooms it "
        f"does not hold, so capacity grows with the cores added; above 1, every node pays for every message. On a "
        f"machine whose cores already run the load generator, Redis and every node, a third node adds no CPU: the "
        f"max ok ratio there is bounded by the cores, not by the system.",
        "",
    ]
    header = ["system"]
    for title in ("max ok msg/s", "server µs/delivery"):
        header += [f"{title} {a} nodes", f"{b} nodes", f"{b}/{a}"]
    header += [f"node CPU % {a} nodes", f"{b} nodes", f"Redis µs/delivery {a} nodes", f"{b} nodes"]
    header += [f"cost p99 ms {a} nodes", f"{b} nodes", "lost", "dup", f"nearest its limit {a} / {b} nodes"]
    rows = []
    for system, result in by_system.items():
        if "summary" not in result:
            lines.append(f"- `{system}`: {result.get('error') or result.get('skipped')}")
            continue
        s = result["summary"]
        rows.append(
            [
                f"`{system}`",
                *(_nodes_cell(s[f"max_ok_rate_{n}"], s[f"top_rate_passed_{n}"]) for n in (a, b)),
                s["capacity_ratio"],
                s[f"server_cpu_us_per_delivery_{a}"],
                s[f"server_cpu_us_per_delivery_{b}"],
                s["cpu_ratio"],
                *(" / ".join(_cell(v) for v in s[f"node_cpu_pct_{n}"]) for n in (a, b)),
                s[f"redis_cpu_us_per_delivery_{a}"],
                s[f"redis_cpu_us_per_delivery_{b}"],
                s[f"p99_ms_{a}"],
                s[f"p99_ms_{b}"],
                s["lost"],
                s["duplicated"],
                " / ".join(limit_label(s.get(f"limits_{n}")) for n in (a, b)),
            ]
        )
    if rows:
        lines += _table(header, rows)
    lines += _limits_markdown(by_system)
    steps = [
        [f"`{system}`", run["nodes"], kind] + [step.get(key) for key, _ in STEP_COLUMNS]
        for system, result in by_system.items()
        for run in result.get("runs", [])
        for kind, step in [
            *(("cost", s) for s in run["cost_steps"]),
            *(("retry" if s["retry"] else "search", s) for s in run["steps"]),
        ]
    ]
    if steps:
        lines += ["Steps:", "", *_table(["system", "nodes", "step"] + [t for _, t in STEP_COLUMNS], steps)]
    return lines


def _limits_markdown(by_system: dict[str, Any]) -> list[str]:
    """Per system and node count, how near each part of the machine was to its limit at the top passing rate."""
    rows = []
    for system, result in by_system.items():
        for run in result.get("runs", []):
            for when, limits in (("top passing", run.get("limits")), ("failed", run.get("limits_at_failure"))):
                if not limits:
                    continue
                if when == "top passing" and not limits["passed"]:
                    when = "first (none passed)"
                rows.append(
                    [
                        f"`{system}`",
                        run["nodes"],
                        f"{when}: {_cell(limits['rate'])}",
                        limits["server_pct"],
                        limits["loadgen_pct"],
                        limits["redis_pct"],
                        limits["machine_pct"],
                        limit_label(limits),
                    ]
                )
    if not rows:
        return []
    header = ["system", "nodes", "rate msg/s", "busiest node CPU %", "loadgen CPU %", "Redis CPU %"]
    header += ["all cores busy %", "nearest its limit"]
    return [
        "What bounded the capacity on this machine, at the top passing rate and at the rate that ended the search. "
        "A node, Redis and each load-generator process run on one thread, so each is shown as % of one core "
        "(the load generator: its busiest process, or all of them against the cores they can have, whichever is "
        "higher); *all cores busy*: the whole machine. A capacity reached with the server nearest its limit is the "
        "system's; with the load generator or Redis nearest, or with all cores busy, it is this machine's.",
        "",
        *_table(header, rows),
    ]


def _scale_panels(results: dict[str, Any], systems: list[str], axes: Any) -> None:
    """Bars of max ok msg/s and of server µs/delivery per system, one bar per node count."""
    measured = [s for s in systems if "summary" in results.get(s, {})]
    width = 0.8 / len(NODE_COUNTS)
    for i, n in enumerate(NODE_COUNTS):
        xs = [x + i * width for x in range(len(measured))]
        summaries = [results[s]["summary"] for s in measured]
        axes[0].bar(xs, [v[f"max_ok_rate_{n}"] for v in summaries], width, label=f"{n} nodes")
        axes[1].bar(xs, [v[f"server_cpu_us_per_delivery_{n}"] or 0 for v in summaries], width, label=f"{n} nodes")
    for ax in axes:
        ax.set_xticks([x + width * (len(NODE_COUNTS) - 1) / 2 for x in range(len(measured))], measured)
        ax.legend()
    axes[0].set(title="scale: highest rate with p99 ≤ 100 ms, no loss", ylabel="messages/s")
    axes[1].set(title="scale: server CPU per delivery (all nodes)", ylabel="µs")


def _storm_panels(results: dict[str, Any], systems: list[str], axes: Any) -> None:
    """Bars of server and Redis CPU per connection, and of p50 / p99 time to joined, per system."""
    measured = [s for s in systems if "summary" in results.get(s, {})]
    summaries = [results[s]["summary"] for s in measured]
    for ax, keys, labels in (
        (axes[0], ("server_cpu_us_per_conn", "redis_cpu_us_per_conn"), ("server", "Redis")),
        (axes[1], ("join_p50_ms", "join_p99_ms"), ("p50", "p99")),
    ):
        width = 0.8 / len(keys)
        for i, (key, label) in enumerate(zip(keys, labels, strict=True)):
            xs = [x + i * width for x in range(len(measured))]
            ax.bar(xs, [v.get(key) or 0 for v in summaries], width, label=label)
        ax.set_xticks([x + width * (len(keys) - 1) / 2 for x in range(len(measured))], measured)
        ax.legend()
    axes[0].set(title="storm: CPU per connection (connect, authenticate, join)", ylabel="µs")
    axes[1].set(title="storm: time from connect to joined", ylabel="ms")


def _panels(results: dict[str, Any], systems: list[str], axes: Any) -> None:
    """Fan-out p99 and server CPU against rate, CPU per delivery per scenario, RSS per connection."""
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
    # Scale's figures are per node count: they get panels of their own.
    # The storm's costs are per connection: it has panels of its own too. bot_stream's are per reply and delta.
    own = ("idle", SCALE, STORM, bot_stream.NAME)
    scenarios = [s for s in results if s not in own and any("summary" in r for r in results[s].values())]
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


def chart(data: dict[str, Any], path: Path) -> None:
    """The four panels of the other scenarios (when any ran), then the storm's two and the scale scenario's two."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = data["results"]
    systems = [name for name, status in data["systems"].items() if status == "ok"]
    scaled = any("summary" in r for r in results.get(SCALE, {}).values())
    stormed = any("summary" in r for r in results.get(STORM, {}).values())
    main_rows = 2 if not (scaled or stormed) or any(s not in (SCALE, STORM) for s in results) else 0
    rows = main_rows + stormed + scaled
    fig, axes = plt.subplots(rows, 2, figsize=(13, 4.5 * rows), squeeze=False)
    if main_rows:
        _panels(results, systems, axes[:2])
    if stormed:
        _storm_panels(results[STORM], systems, axes[main_rows])
    if scaled:
        _scale_panels(results[SCALE], systems, axes[-1])
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
