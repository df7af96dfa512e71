"""``python -m bench``: run the scenarios against each system and write results.json, results.md, results.png.

Every system is started by this runner on loopback (its own redis-server and two nodes; three too in
the scale scenario), measured in the same run by the same load generator, and stopped again.
``--quick`` runs small sizes in about a minute per system, to prove the suite works rather than to
measure.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import platform
import signal
import sys
import time
from pathlib import Path
from typing import Any

import uvloop

from bench import bot_stream, report, scale, scenarios
from bench.loadgen import LoadGen
from bench.procs import raise_fd_limit
from bench.systems import SYSTEMS

DEFAULT_OUT = Path(__file__).resolve().parent / "results"
# The scale and bot_stream scenarios start their own topologies (2 nodes and 3; workers coalescing off and on),
# so they run apart from the others; bot_stream comes right after bot.
_BOT = [*scenarios.SCENARIOS].index("bot") + 1
SCENARIOS = [*[*scenarios.SCENARIOS][:_BOT], bot_stream.NAME, *[*scenarios.SCENARIOS][_BOT:], scale.NAME]


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, short steps (CI)")
    parser.add_argument("--systems", default=",".join(SYSTEMS), help=f"comma list of {', '.join(SYSTEMS)}")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma list of scenarios")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for the results files")
    parser.add_argument("--loadgen-procs", type=int, default=2, help="load-generator processes")
    parser.add_argument(
        "--storm-concurrency",
        type=int,
        help=f"storm handshakes in flight per load-generator process (default {scenarios.FULL.storm_concurrency})",
    )
    args = parser.parse_args(argv)
    for kind, chosen, known in (("system", args.systems, SYSTEMS), ("scenario", args.scenarios, SCENARIOS)):
        unknown = [name for name in chosen.split(",") if name not in known]
        if unknown:
            parser.error(f"unknown {kind} {', '.join(unknown)}")
    return args


def log(text: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def _brief(result: dict[str, Any]) -> str:
    if "summary" not in result:
        return str(result.get("error") or result.get("skipped"))
    s = result["summary"]
    if "connections_per_s" in s:
        text = (
            f"{s['joined']} of {s['connections']} joined, {s['connections_per_s']} connections/s, "
            f"{s['server_cpu_us_per_conn']} µs/connection (Redis {s['redis_cpu_us_per_conn']}), "
            f"joined p50 {s['join_p50_ms']} p99 {s['join_p99_ms']} max {s['join_max_ms']} ms, nearest its limit: "
            f"{s['nearest_limit']}"
        )
        return f"FAILED: {result['error']}; {text}" if "error" in result else text
    if "publishes_per_reply_ratio" in s:
        return "; ".join(
            f"{name} ({s[name]['delta_interval_ms']:g} ms): {s[name]['deltas_per_reply']} deltas, "
            f"{s[name]['publishes_per_reply']} publishes, {s[name]['server_cpu_us_per_reply']} server µs per reply, "
            f"{s[name]['server_cpu_us_per_delta']} µs/delta, reply p99 {s[name]['reply_p99_ms']} ms"
            for name, _ in bot_stream.SIDES
        ) + (f"; FAILED: {result['error']}" if "error" in result else f"; lost {s['lost']}, dup {s['duplicated']}")
    if "capacity_ratio" in s:
        a, b = scale.NODE_COUNTS
        return (
            f"max ok {s[f'max_ok_rate_{a}']} -> {s[f'max_ok_rate_{b}']} msg/s (x{s['capacity_ratio']}), "
            f"{s[f'server_cpu_us_per_delivery_{a}']} -> {s[f'server_cpu_us_per_delivery_{b}']} µs/delivery "
            f"(x{s['cpu_ratio']}), lost {s['lost']}, dup {s['duplicated']}"
        )
    return (
        f"{s['deliveries_per_s']} deliveries/s, {s['server_cpu_us_per_delivery']} µs/delivery, "
        f"p99 {s['p99_ms']} ms, lost {s['lost']}, dup {s['duplicated']}, {s['rss_per_conn_kb']} KB/conn"
    )


async def run(args: argparse.Namespace) -> dict[str, Any]:
    # SIGTERM cancels the run like Ctrl-C does, so every server and load generator is stopped on the way out.
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, asyncio.current_task().cancel)  # type: ignore[union-attr]
    sizes = scenarios.QUICK if args.quick else scenarios.FULL
    if args.storm_concurrency:
        sizes = dataclasses.replace(sizes, storm_concurrency=args.storm_concurrency)
    scale_sizes = scale.QUICK if args.quick else scale.FULL
    stream_sizes = bot_stream.QUICK if args.quick else bot_stream.FULL
    data: dict[str, Any] = {
        "meta": {
            "quick": args.quick,
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_before": os.getloadavg()[0],  # other work on the machine skews every figure
            "fd_limit": raise_fd_limit(),
            "loadgen_procs": args.loadgen_procs,
            "sizes": sizes.__dict__,
            "scale_sizes": scale_sizes.__dict__,
            "bot_stream_sizes": stream_sizes.__dict__,
        },
        "systems": {},
        "results": {},
    }
    for name in args.systems.split(","):
        note = SYSTEMS[name].unavailable()
        data["systems"][name] = note or "ok"
        if note:
            log(f"skipping {name}: {note}")
    ready = [SYSTEMS[name] for name, status in data["systems"].items() if status == "ok"]
    loadgens = [LoadGen(number) for number in range(args.loadgen_procs)]
    try:
        for scenario in args.scenarios.split(","):
            for system in ready:
                log(f"{scenario} on {system.name} ...")
                if scenario == scale.NAME:
                    result = await scale.run(system, loadgens, scale_sizes)
                elif scenario == bot_stream.NAME:
                    result = await bot_stream.run(system, loadgens, stream_sizes)
                else:
                    result = await scenarios.run(system, scenario, loadgens, sizes)
                data["results"].setdefault(scenario, {})[system.name] = result
                log(f"{scenario} on {system.name}: {_brief(result)}")
    finally:
        for loadgen in loadgens:
            loadgen.stop()
    data["meta"]["load_after"] = os.getloadavg()[0]
    return data


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    data = uvloop.run(run(args))
    for path in report.write(data, args.out):
        log(f"wrote {path}")
    failed = [f"{sc}/{sy}" for sc, by in data["results"].items() for sy, r in by.items() if "error" in r]
    if failed:
        log(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
