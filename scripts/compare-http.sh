#!/usr/bin/env bash
# The `http` scenario of scripts/compare.sh: Squall's HTTP front-end (`squall seed --http`)
# against nginx (Debian package: sendfile on, tcp_nopush on, worker_processes 1, access log
# off, keep-alive unlimited) serving the same file, page cache warm, server on CPU 0, load
# generator (`squall-bench http`: one thread, 32 keep-alive connections, pipelined random
# ranges) on CPU 1. Interleaved rounds, medians, ratios from the same run. Beside them, the
# BitTorrent `hot` figure of the same run and file: a second squall (configs/bench.toml, on
# CPU 0 too, idle while the HTTP arms run) under `squall-bench run` with 32 peers x depth 64.
#
# Owns: the scenario only. Must never: leave a server running (trap), or listen beyond
# 127.0.0.1.
#
# Env: SQUALL_BENCH_DIR (default /tmp/squall-bench), SIZE_MIB (file size, 1024), ROUNDS (3),
# DURATION (seconds per measurement, 8), DEPTH (requests in flight per connection, 8),
# CONNECTIONS (32).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
WORK="${SQUALL_BENCH_DIR:-/tmp/squall-bench}/http"
SIZE_MIB=${SIZE_MIB:-1024}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-8}
DEPTH=${DEPTH:-8}
CONNECTIONS=${CONNECTIONS:-32}
die() { echo "compare-http: $*" >&2; exit 1; }
command -v nginx >/dev/null || die "nginx not installed (apt-get install -y --no-install-recommends nginx)"
command -v taskset >/dev/null || die "taskset not installed (util-linux)"

(cd "$ROOT" && cargo build --release -q -p squall -p squall-bench) || die "cargo build failed"
SQUALL="$ROOT/target/release/squall"
BENCH="$ROOT/target/release/squall-bench"

mkdir -p "$WORK/content" "$WORK/state"
DATA="$WORK/content/data.bin"
if [ ! -f "$DATA" ] || [ "$(stat -c %s "$DATA")" -ne $((SIZE_MIB * 1024 * 1024)) ]; then
    head -c $((SIZE_MIB * 1024 * 1024)) /dev/urandom >"$DATA"
fi
LEN=$(stat -c %s "$DATA")
cat "$DATA" >/dev/null # page cache warm

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

SQ_PORT=$(free_port)
taskset -c 0 "$SQUALL" seed "$WORK/content" --state "$WORK/state" --listen 127.0.0.1:0 \
    --http "127.0.0.1:$SQ_PORT" --shards 1 --admin off --no-dht >"$WORK/squall.out" 2>"$WORK/squall.err" &
SQ_PID=$!
pids+=("$SQ_PID")

# The BitTorrent arm: the same file as a 1 MiB-piece torrent, seeded with the bench config
# (per-IP limits raised for the bench's peers, which all come from 127.0.0.1).
mkdir -p "$WORK/torrents"
[ -f "$WORK/torrents/data.torrent" ] ||
    "$SQUALL" make "$DATA" -o "$WORK/torrents/data.torrent" --piece-length 1M >/dev/null
taskset -c 0 "$SQUALL" seed --config "$ROOT/configs/bench.toml" --torrents "$WORK/torrents" \
    --data "$WORK/content" --listen 127.0.0.1:0 --state "$WORK/state-bt" --shards 1 \
    --summary-secs 0 --admin off >"$WORK/squall-bt.out" 2>"$WORK/squall-bt.err" &
BT_PID=$!
pids+=("$BT_PID")

NG_PORT=$(free_port)
cat >"$WORK/nginx.conf" <<EOF
worker_processes 1;
daemon off;
master_process off;
user root;
pid $WORK/nginx.pid;
error_log $WORK/nginx.err;
events { worker_connections 1024; }
http {
    sendfile on;
    tcp_nopush on;
    access_log off;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    server {
        listen 127.0.0.1:$NG_PORT;
        root $WORK/content;
    }
}
EOF
taskset -c 0 nginx -c "$WORK/nginx.conf" -p "$WORK" &
NG_PID=$!
pids+=("$NG_PID")

for _ in $(seq 1 600); do
    grep -q '^ready' "$WORK/squall.out" 2>/dev/null && curl -sf -o /dev/null -r 0-0 "http://127.0.0.1:$NG_PORT/data.bin" && break
    sleep 0.1
done
grep -q '^ready' "$WORK/squall.out" || die "squall did not start: $(cat "$WORK/squall.err")"
for _ in $(seq 1 600); do grep -q '^ready' "$WORK/squall-bt.out" 2>/dev/null && break; sleep 0.1; done
grep -q '^ready' "$WORK/squall-bt.out" || die "squall (BitTorrent arm) did not start: $(cat "$WORK/squall-bt.err")"
BT_PORT=$(grep -o '127.0.0.1:[0-9]*' "$WORK/squall-bt.out" | head -1)

RESULTS="$WORK/results.jsonl"
: >"$RESULTS"
for round in $(seq 1 "$ROUNDS"); do
    for range in 16384 1048576; do
        for server in squall nginx; do
            if [ "$server" = squall ]; then port=$SQ_PORT pid=$SQ_PID; else port=$NG_PORT pid=$NG_PID; fi
            line=$(taskset -c 1 "$BENCH" http --target "127.0.0.1:$port" --path /data.bin \
                --file-len "$LEN" --connections "$CONNECTIONS" --depth "$DEPTH" \
                --range-bytes "$range" --duration "$DURATION" --target-pid "$pid" --seed "$round")
            echo "{\"server\": \"$server\", \"range\": $range, \"round\": $round, \"r\": $line}" >>"$RESULTS"
            echo "round $round range $range $server: $line"
        done
    done
    taskset -c 1 "$BENCH" run --target "$BT_PORT" --torrents "$WORK/torrents" --peers 32 --depth 64 \
        --duration "$DURATION" --warmup 1 --verify sample --target-pid "$BT_PID" \
        --json "$WORK/bt-$round.json" >/dev/null
    line=$(python3 -c 'import json,sys; print(json.dumps(json.load(open(sys.argv[1]))))' "$WORK/bt-$round.json")
    echo "{\"server\": \"squall-bittorrent\", \"range\": 0, \"round\": $round, \"r\": $line}" >>"$RESULTS"
    echo "round $round bittorrent hot: $(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(round(d["gbps"], 2), "Gb/s", round(d["cpu_secs_per_gb"], 3), "CPU-s/GB")' "$WORK/bt-$round.json")"
done

python3 - "$RESULTS" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
def med(server, rng, key):
    return statistics.median(r["r"][key] for r in rows if r["server"] == server and r["range"] == rng)
print("\n| range | server | req/s | Gb/s | server CPU-s/GB | generator CPU % |")
print("|---|---|---|---|---|---|")
for rng in (16384, 1048576):
    for s in ("squall", "nginx"):
        cpu = statistics.median(r["r"]["bench_cpu_secs"] / r["r"]["secs"] * 100 for r in rows if r["server"] == s and r["range"] == rng)
        print(f"| {rng // 1024} KiB | {s} | {med(s, rng, 'requests_per_sec'):,.0f} | {med(s, rng, 'gbps'):.2f} | {med(s, rng, 'target_cpu_secs_per_gb'):.3f} | {cpu:.0f} |")
    rq = med("squall", rng, "requests_per_sec") / med("nginx", rng, "requests_per_sec")
    cp = med("squall", rng, "target_cpu_secs_per_gb") / med("nginx", rng, "target_cpu_secs_per_gb")
    print(f"| {rng // 1024} KiB | squall / nginx | {rq:.2f}x | {rq:.2f}x | {cp:.2f}x | |")
bt = [r["r"] for r in rows if r["server"] == "squall-bittorrent"]
if bt:
    g = statistics.median(r["gbps"] for r in bt)
    c = statistics.median(r["cpu_secs_per_gb"] for r in bt)
    print(f"| BitTorrent `hot` (same run, same file) | squall | | {g:.2f} | {c:.3f} | |")
PY
