#!/usr/bin/python3
"""Medians over rounds -> the Markdown table of scripts/compare.sh.

Usage: summarize.py RESULTS_DIR SCENARIO "SEEDER ..."; reads RESULTS_DIR/SEEDER/round*/result.json
(and round*/why for seeders that could not run). "peak RSS" is VmHWM, which counts file pages
a seeder maps (squall's page_cache_sends, rtorrent's mmap); "own RSS" is RssAnon + RssShmem at
the end of the run: the seeder's own memory."""
import glob
import json
import os
import statistics
import sys

out, scenario, seeders = sys.argv[1], sys.argv[2], sys.argv[3].split()


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


rows = {}
for s in seeders:
    res = [json.load(open(f)) for f in sorted(glob.glob(os.path.join(out, s, "round*", "result.json")))]
    whys = [open(f).read().strip() for f in sorted(glob.glob(os.path.join(out, s, "round*", "why")))]
    rows[s] = {
        "rounds": len(res),
        "gbps": med([r.get("gbps") for r in res]),
        "p50": med([r.get("latency_us", {}).get("p50") for r in res]),
        "p99": med([r.get("latency_us", {}).get("p99") for r in res]),
        "cpu": med([r.get("cpu_secs_per_gb") for r in res]),
        # The bench's own threads' busy share: near 100% the bench sets the pace, not the seeder.
        "bench_busy": med([r.get("bench_busy") for r in res]),
        "bad": sum(r.get("bad_pieces", 0) for r in res),
        "verified": sum(r.get("pieces_verified", 0) for r in res),
        "why": whys[0] if whys else "",
        "rss_kib": med([int(open(f).read() or 0) or None for f in glob.glob(os.path.join(out, s, "round*", "rss_kib"))]),
        "own_rss_kib": med([int(open(f).read().strip() or 0) or None for f in glob.glob(os.path.join(out, s, "round*", "own_rss_kib"))]),
    }
base = rows.get("squall-copy", {}).get("gbps")
# The ceiling: the disk's (fio, the cold scenario) where it ran, else loopback's (iperf3).
ceil_name = "fio" if rows.get("fio", {}).get("gbps") else "iperf3"
ceil = rows.get(ceil_name, {}).get("gbps")
# The best real client (not Squall, not a ceiling, not the null seeder).
PEERS = ("libtorrent", "aria2", "transmission", "rtorrent", "qbittorrent", "rqbit")
best_peer = max([rows[s]["gbps"] for s in rows if s in PEERS and rows[s]["gbps"]] or [0]) or None
fmt = lambda v, f: "-" if v is None else f % v
print("| seeder | Gb/s | p50 us | p99 us | CPU-s/GB | x squall-copy | x %s | x best peer | rounds | verified / bad | peak RSS MiB | own RSS MiB | bench busy |" % ceil_name)
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for s in seeders:
    r = rows[s]
    if r["gbps"] is None:
        print("| %s | not available: %s | | | | | | | 0 | | | | |" % (s, r["why"] or "no result"))
        continue
    print("| %s | %.2f | %s | %s | %s | %s | %s | %s | %d | %d / %d | %s | %s | %s |" % (
        s, r["gbps"], fmt(r["p50"], "%d"), fmt(r["p99"], "%d"), fmt(r["cpu"], "%.3f"),
        fmt(r["gbps"] / base if base else None, "%.2f"), fmt(r["gbps"] / ceil if ceil else None, "%.2f"),
        fmt(r["gbps"] / best_peer if best_peer else None, "%.2f"),
        r["rounds"], r["verified"], r["bad"], fmt(r["rss_kib"] / 1024 if r["rss_kib"] else None, "%.0f"),
        fmt(r["own_rss_kib"] / 1024 if r["own_rss_kib"] else None, "%.0f"),
        fmt(r["bench_busy"] * 100 if r["bench_busy"] is not None else None, "%.0f%%")))
json.dump(rows, open(os.path.join(out, "summary.json"), "w"), indent=1)
