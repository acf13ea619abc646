#!/usr/bin/env bash
# latency.sh — issue 9's latency target, rerunnable: request latency in open loop at a
# fraction (default half) of Squall's own closed-loop maximum, Squall and the null seeder
# (the bench's floor: zeros from memory, no disk) interleaved, same pinning, medians.
#
#   1. Squall's maximum: MAX_ROUNDS (default 1) closed-loop `hot` runs (32 peers x depth 64);
#      the median blocks/s x FRACTION (default 0.5) is the open-loop rate. RATE=N skips this.
#   2. ROUNDS (default 5) rounds, each: squall, then the null seeder, at that rate (each peer
#      on its own evenly spaced schedule; latency from each request's intended send time).
#      The bench polls instead of sleeping within SPIN_US (1000) of a due request, so its own
#      timer and wake-up costs stay out of the latency (they were ~50 us of every p50 here).
#   3. Prints a Markdown table of medians and writes, under OUT (default
#      bench/results/<date>-latency/): {squall,null}/roundN/result.json, max/roundN/result.json,
#      summary.md, summary.json and report.html (latency curves of every run). A rerun on
#      the same day replaces that directory (set SQUALL_BENCH_OUT to keep both).
#
# Columns: the bench's p50/p99/p99.9; Squall's own p99 (request parsed -> its send completed,
# from /stats; includes the 1 s warm-up); the seeder's CPU-s per GB; "bench busy", the share
# of the bench's threads' time spent working (polling idle not counted). A bench over 80%
# busy measures its own queueing as much as the seeder: give it more cores (BENCH_CPUS,
# BENCH_THREADS). On a 2-core machine both sides share the loopback's TCP work, so read the
# squall/null ratio, not the absolute figure.
#
# Env: SQUALL_BENCH_DIR (data, default /tmp/squall-bench, shared with compare.sh), SQUALL_BENCH_OUT,
#   ROUNDS, MAX_ROUNDS, DURATION (secs, 8), FRACTION, RATE, SPIN_US (0 = sleep), PEERS (32),
#   DEPTH (64), SEEDER_CPUS (0), BENCH_CPUS (1), BENCH_THREADS (default: how many BENCH_CPUS),
#   SQUALL_CONFIG (configs/bench.toml), SQUALL_BIN_DIR (use these binaries; default: build
#   release), BENCH_SIZE_BYTES (smoke: smaller data; results go to a -smoke directory).
# Loopback only.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${SQUALL_BENCH_DIR:-/tmp/squall-bench}
DATE=$(date -u +%Y-%m-%d)
ROUNDS=${ROUNDS:-5}
MAX_ROUNDS=${MAX_ROUNDS:-1}
DURATION=${DURATION:-8}
FRACTION=${FRACTION:-0.5}
SPIN_US=${SPIN_US:-1000}
PEERS=${PEERS:-32}
DEPTH=${DEPTH:-64}
SEEDER_CPUS=${SEEDER_CPUS:-0}
BENCH_CPUS=${BENCH_CPUS:-1}
SQUALL_CONFIG=${SQUALL_CONFIG:-$ROOT/configs/bench.toml}
SIZE_BYTES=${BENCH_SIZE_BYTES:-1073741824}
PIECE_BYTES=1048576
PY=/usr/bin/python3
[ -x "$PY" ] || PY=python3
BLOCK_BYTES=16384

die() { echo "latency.sh: $*" >&2; exit 1; }
# Number of CPUs in a taskset list such as "1" or "2-9" or "1,3".
cpu_count() { $PY -c '
import sys
n = 0
for part in sys.argv[1].split(","):
    a, _, b = part.partition("-")
    n += (int(b) - int(a) + 1) if b else 1
print(n)' "$1"; }
BENCH_THREADS=${BENCH_THREADS:-$(cpu_count "$BENCH_CPUS")}

OUT=${SQUALL_BENCH_OUT:-"$ROOT/bench/results/$DATE-latency"}
DATA_KEY=hot
if [ -n "${BENCH_SIZE_BYTES:-}" ]; then
    OUT="$OUT-smoke"
    DATA_KEY="hot-1x$SIZE_BYTES"
    echo "== smoke: BENCH_SIZE_BYTES=$SIZE_BYTES, not a published measurement"
fi
if [ -n "${SQUALL_BIN_DIR:-}" ]; then
    BIN=$SQUALL_BIN_DIR
else
    echo "== building release binaries"
    (cd "$ROOT" && cargo build --release -q -p squall -p squall-bench) || die "cargo build failed"
    BIN=$ROOT/target/release
fi
SQUALL=$BIN/squall
BENCH=$BIN/squall-bench
[ -x "$SQUALL" ] && [ -x "$BENCH" ] || die "no squall / squall-bench in $BIN"

# compare.sh's `hot` layout, so both scripts share the generated data and torrent.
DATA="$WORK/$DATA_KEY/data"
TORRENTS="$WORK/$DATA_KEY/torrents-$PIECE_BYTES"
# free_port, wait_port, wait_until, gen_bench_data (shared with compare.sh).
. "$ROOT/scripts/bench-lib.sh"
gen_bench_data "$DATA" "$TORRENTS" 1 "$SIZE_BYTES" "$PIECE_BYTES"
rm -rf "$OUT"
mkdir -p "$OUT"
STATE=$(mktemp -d /tmp/squall-latency.XXXXXX)
PID=""
cleanup() {
    [ -n "$PID" ] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null
    rm -rf "$STATE"
}
trap cleanup EXIT
# start SEEDER RUN_DIR: sets PID, PORT and ADMIN (squall only); returns 1 if it did not start.
start() {
    PORT=$(free_port)
    if [ "$1" = squall ]; then
        ADMIN=$(free_port)
        rm -rf "$STATE/state"
        taskset -c "$SEEDER_CPUS" "$SQUALL" seed --config "$SQUALL_CONFIG" --torrents "$TORRENTS" \
            --data "$DATA" --listen "127.0.0.1:$PORT" --state "$STATE/state" --summary-secs 0 \
            --admin "127.0.0.1:$ADMIN" >"$2/seeder.log" 2>&1 &
        PID=$!
        wait_until 120 grep -q '^ready' "$2/seeder.log" && return 0
    else
        taskset -c "$SEEDER_CPUS" "$BENCH" null-seeder --listen "127.0.0.1:$PORT" \
            --torrents "$TORRENTS" >"$2/seeder.log" 2>&1 &
        PID=$!
        wait_port "$PORT" 20 && return 0
    fi
    echo "latency.sh: $1 did not start: $(tail -1 "$2/seeder.log")" >&2
    return 1
}

stop() {
    kill "$PID" 2>/dev/null || true
    wait "$PID" 2>/dev/null || true
    PID=""
}

# run SEEDER LABEL ROUND [--rate R ...]: one bench run against a fresh seeder.
run() {
    local seeder=$1 label=$2 round=$3; shift 3
    local dir="$OUT/$label/round$round"
    mkdir -p "$dir"
    start "$seeder" "$dir" || { echo "did not start" >"$dir/why"; return 0; }
    # Page cache warm before every run: a seeder must not pay for another's evictions.
    cat "$DATA/t0000.bin" >/dev/null
    taskset -c "$BENCH_CPUS" "$BENCH" run --target "127.0.0.1:$PORT" --torrents "$TORRENTS" \
        --peers "$PEERS" --depth "$DEPTH" --duration "$DURATION" --warmup 1 --verify sample \
        --threads "$BENCH_THREADS" --target-pid "$PID" --source-ips 127.0.0.2-127.0.0.250 \
        --json "$dir/result.json" "$@" >"$dir/bench.txt" 2>&1 || true
    if [ "$seeder" = squall ]; then
        $PY -c 'import sys, urllib.request
sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())' \
            "http://127.0.0.1:$ADMIN/stats" >"$dir/stats.json" 2>/dev/null || true
    fi
    stop
    [ -s "$dir/result.json" ] || { tail -3 "$dir/bench.txt" >"$dir/why"; return 0; }
    $PY - "$dir" "$label" "$round" <<'PY'
import json, os, sys
d, label, rnd = sys.argv[1:]
r = json.load(open(os.path.join(d, "result.json")))
l = r["latency_us"]
own = ""
try:
    s = json.load(open(os.path.join(d, "stats.json")))["total"]["request_latency_us"]
    own = "  own p99 %d" % s["p99"]
except (OSError, ValueError, KeyError):
    pass
print("  %-7s round %s  %6.2f Gb/s  p50 %5d  p99 %6d  p99.9 %6d us%s  bench busy %.0f%%" % (
    label, rnd, r["gbps"], l["p50"], l["p99"], l["p999"], own, 100 * r.get("bench_busy", 0)))
PY
}

if [ -z "${RATE:-}" ]; then
    echo "== Squall's closed-loop maximum ($MAX_ROUNDS run(s), $PEERS peers x depth $DEPTH)"
    for r in $(seq "$MAX_ROUNDS"); do run squall max "$r"; done
    RATE=$($PY - "$OUT/max" "$FRACTION" "$BLOCK_BYTES" <<'PY'
import glob, json, statistics, sys
runs = [json.load(open(f)) for f in glob.glob(sys.argv[1] + "/round*/result.json")]
if not runs:
    sys.exit("no closed-loop result")
blocks = statistics.median(r["bytes"] / int(sys.argv[3]) / r["duration_secs"] for r in runs)
print(int(blocks * float(sys.argv[2])))
PY
) || die "no closed-loop maximum (see $OUT/max)"
    echo "== open loop at $FRACTION x that = $RATE req/s"
fi

echo "== $ROUNDS interleaved rounds at $RATE req/s (seeder on CPU $SEEDER_CPUS, bench on CPU $BENCH_CPUS x $BENCH_THREADS thread(s), spin $SPIN_US us)"
for r in $(seq "$ROUNDS"); do
    run squall squall "$r" --rate "$RATE" --spin-us "$SPIN_US"
    run null null "$r" --rate "$RATE" --spin-us "$SPIN_US"
done

$PY "$ROOT/bench/scripts/latency_summary.py" "$OUT" "$RATE" | tee "$OUT/summary.md"
reports=()
for f in "$OUT"/{squall,null}/round*/result.json; do
    [ -f "$f" ] || continue
    reports+=("$(basename "$(dirname "$(dirname "$f")")")-$(basename "$(dirname "$f")")=$f")
done
"$BENCH" report --title "Open-loop latency at $RATE req/s" --out "$OUT/report.html" "${reports[@]}" >/dev/null
echo "== results in $OUT"
