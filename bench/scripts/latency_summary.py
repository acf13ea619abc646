#!/usr/bin/python3
"""Medians over rounds -> the Markdown table of scripts/latency.sh, and summary.json.

Usage: latency_summary.py OUT RATE; reads OUT/{squall,null}/round*/result.json (and
stats.json, Squall's /stats after the run, for its own request latency). Prints one row per
seeder with the per-round p99s, then the squall / null ratio of the medians: both ran on the
same machine, pinning and bench, so the ratio is what a noisy shared machine can compare."""
import glob
import json
import os
import statistics
import sys

BUSY_WARN = 0.8  # squall-bench's BENCH_BUSY_WARN

out, rate = sys.argv[1], float(sys.argv[2])


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def own_p99(run_dir):
    try:
        with open(os.path.join(run_dir, "stats.json")) as f:
            return json.load(f)["total"]["request_latency_us"]["p99"]
    except (OSError, ValueError, KeyError):
        return None


rows = {}
for seeder in ("squall", "null"):
    dirs = sorted(glob.glob(os.path.join(out, seeder, "round*")))
    runs = []
    for d in dirs:
        f = os.path.join(d, "result.json")
        if os.path.exists(f):
            with open(f) as fh:
                runs.append((d, json.load(fh)))
    rows[seeder] = {
        "rounds": len(runs),
        "rounds_failed": len(dirs) - len(runs),
        "gbps": med([r["gbps"] for _, r in runs]),
        "p50_us": med([r["latency_us"]["p50"] for _, r in runs]),
        "p99_us": med([r["latency_us"]["p99"] for _, r in runs]),
        "p999_us": med([r["latency_us"]["p999"] for _, r in runs]),
        "p99_us_per_round": [r["latency_us"]["p99"] for _, r in runs],
        "own_p99_us": med([own_p99(d) for d, _ in runs]),
        "cpu_secs_per_gb": med([r.get("cpu_secs_per_gb") for _, r in runs]),
        "bench_busy": med([r.get("bench_busy") for _, r in runs]),
    }

fmt = lambda v, f: "-" if v is None else f % v
print("Open loop at %.0f req/s (medians over rounds)\n" % rate)
print("| seeder | rounds | Gb/s | p50 us | p99 us | p99.9 us | p99 per round | own p99 us | CPU-s/GB | bench busy |")
print("|---|---|---|---|---|---|---|---|---|---|")
for seeder, r in rows.items():
    if not r["rounds"]:
        print("| %s | 0 (%d failed) | | | | | | | | |" % (seeder, r["rounds_failed"]))
        continue
    print("| %s | %d | %s | %s | %s | %s | %s | %s | %s | %s |" % (
        seeder, r["rounds"], fmt(r["gbps"], "%.2f"), fmt(r["p50_us"], "%d"),
        fmt(r["p99_us"], "%d"), fmt(r["p999_us"], "%d"),
        ", ".join(str(v) for v in r["p99_us_per_round"]), fmt(r["own_p99_us"], "%d"),
        fmt(r["cpu_secs_per_gb"], "%.3f"),
        fmt(None if r["bench_busy"] is None else 100 * r["bench_busy"], "%.0f%%")))
sq, nu = rows["squall"], rows["null"]
ratio = None
if sq["p99_us"] and nu["p99_us"]:
    ratio = sq["p99_us"] / nu["p99_us"]
    print("\np99 squall / null: %.2f" % ratio)
busy = [r["bench_busy"] for r in rows.values() if r["bench_busy"] is not None]
if busy and max(busy) >= BUSY_WARN:
    print("warning: the bench was %.0f%% busy: these latencies include its own queueing "
          "(give it more cores: BENCH_CPUS, BENCH_THREADS)" % (100 * max(busy)))
summary = {"rate_per_sec": rate, "seeders": rows, "p99_ratio_squall_over_null": ratio}
with open(os.path.join(out, "summary.json"), "w") as f:
    json.dump(summary, f, indent=1)
