#!/usr/bin/env bash
# Lean peers (issue 24): as many connected peers as one process may hold, every one served,
# with connection churn in the same run, and the seeder's own memory per connected peer.
#
#   scripts/bench-peers.sh LABEL=SQUALL_BINARY [LABEL=SQUALL_BINARY ...]
#
# Each round starts every given seeder in turn (interleaved: before, after, before, after ...)
# on CPU 0 with configs/bench.toml (peers_max 20,000; per-IP/prefix limits off), waits for
# `ready`, and reads its own memory (RssAnon + RssShmem of /proc/PID/status) at idle: the
# baseline. Then, on CPU 1:
#   - steady: `squall-bench run` with PEERS connections (from 127.0.0.2-127.0.0.250), open loop
#     at RATE requests/s in all, depth 4, every piece verified (streaming SHA-1); WARMUP s for
#     all of them to connect, then DURATION s measured;
#   - churn: a second squall-bench process (its own RLIMIT_NOFILE) in which new peers arrive
#     at CHURN_RATE/s, each fetches one 16 KiB block and leaves (at most CHURN_MAX at once),
#     for the whole measured window.
# Halfway through the window the seeder's own memory and its `peers_connected` (/stats) are
# sampled: bytes per peer = (own - baseline) / peers_connected. Results: one line per run in
# $OUT/runs.tsv, the JSON reports beside it, and per-label medians on stdout.
#
# Env: PEERS (19000), RATE (9500: 0.5 requests/s per peer), WARMUP (15), DURATION (20),
# CHURN_RATE (1000), CHURN_MAX (800), ROUNDS (3), SIZE_BYTES (268435456), PIECE_BYTES (65536:
# a peer at 0.5 requests/s completes a 4-block piece every 8 s, so pieces verify in the window),
# BENCH (squall-bench binary; default target/release), WORK (data; /tmp/squall-bench-peers),
# OUT (results; $WORK/results-DATE). The bench and the seeder each need RLIMIT_NOFILE above
# PEERS (+ CHURN_MAX for the seeder): the hard limit here is 20,000.
# Take the shared lock when others measure on this machine: flock /tmp/squall-bench.lock ...
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PEERS=${PEERS:-19000}
RATE=${RATE:-9500}
WARMUP=${WARMUP:-15}
DURATION=${DURATION:-20}
CHURN_RATE=${CHURN_RATE:-1000}
CHURN_MAX=${CHURN_MAX:-800}
ROUNDS=${ROUNDS:-3}
SIZE_BYTES=${SIZE_BYTES:-268435456}
PIECE_BYTES=${PIECE_BYTES:-65536}
BENCH=${BENCH:-$ROOT/target/release/squall-bench}
WORK=${WORK:-/tmp/squall-bench-peers}
OUT=${OUT:-$WORK/results-$(date -u +%Y%m%d-%H%M)}
CONFIG=${CONFIG:-$ROOT/configs/bench.toml}
SOURCE_IPS=127.0.0.2-127.0.0.250
PY=/usr/bin/python3

die() { echo "bench-peers.sh: $*" >&2; exit 1; }
[ $# -ge 1 ] || die "usage: $0 LABEL=SQUALL_BINARY [LABEL=SQUALL_BINARY ...]"
[ "$(nproc)" -ge 2 ] || die "needs 2 CPUs (seeder on CPU 0, bench on CPU 1)"
[ -x "$BENCH" ] || die "no squall-bench at $BENCH (cargo build --release -p squall-bench)"
ulimit -n "$(ulimit -Hn)" || die "cannot raise RLIMIT_NOFILE"
[ "$(ulimit -n)" -gt $((PEERS + CHURN_MAX + 100)) ] ||
    die "RLIMIT_NOFILE $(ulimit -n) is too low for $PEERS + $CHURN_MAX peers"

SQUALL=$(echo "$1" | cut -d= -f2-) # for gen_bench_data's `squall make`
PID=0
. "$ROOT/scripts/bench-lib.sh"
DATA="$WORK/data"
TORRENTS="$WORK/torrents-$PIECE_BYTES"
mkdir -p "$OUT"
gen_bench_data "$DATA" "$TORRENTS" 1 "$SIZE_BYTES" "$PIECE_BYTES"
cat "$DATA"/* >/dev/null

own_kib() { awk '/^RssAnon:|^RssShmem:/ {own += $2} END {print own}' "/proc/$1/status"; }
stat_peers() { # ADMIN_PORT: the seeder's peers_connected
    curl -s --max-time 5 "http://127.0.0.1:$1/stats" |
        $PY -c 'import json,sys; print(json.load(sys.stdin)["total"]["peers_connected"])' 2>/dev/null || echo 0
}

printf 'label\tround\tbase_kib\town_kib\tpeers_connected\tbytes_per_peer\tconnected\thandshaken\tserved\toffered_reqs\tserved_blocks\tserved_ratio\tverified\tbad\terrors\tchurn_joins\tchurn_joins_per_sec\tchurn_sessions\tchurn_errors\n' >"$OUT/runs.tsv"

run_one() { # LABEL BINARY ROUND
    local label=$1 bin=$2 round=$3 dir="$OUT/$1-$3" port admin
    mkdir -p "$dir"
    port=$(free_port); admin=$(free_port)
    rm -rf "$dir/state"
    taskset -c 0 "$bin" seed --config "$CONFIG" --torrents "$TORRENTS" --data "$DATA" \
        --listen "127.0.0.1:$port" --state "$dir/state" --shards 1 --serve copy --summary-secs 0 \
        --admin "127.0.0.1:$admin" >"$dir/seeder.log" 2>&1 &
    PID=$!
    wait_until 120 grep -q '^ready' "$dir/seeder.log" || die "$label did not become ready: $(tail -1 "$dir/seeder.log")"
    sleep 2
    local base; base=$(own_kib $PID)
    taskset -c 1 "$BENCH" run --target "127.0.0.1:$port" --torrents "$TORRENTS" \
        --peers "$PEERS" --depth 4 --rate "$RATE" --warmup "$WARMUP" --duration "$DURATION" \
        --verify full --source-ips "$SOURCE_IPS" --target-pid $PID --json "$dir/steady.json" \
        >"$dir/steady.txt" 2>&1 &
    local steady=$!
    sleep "$WARMUP"
    taskset -c 1 "$BENCH" run --target "127.0.0.1:$port" --torrents "$TORRENTS" \
        --peers "$CHURN_MAX" --depth 1 --join-rate "$CHURN_RATE" --leave-after-bytes 16384 \
        --duration "$DURATION" --verify sample --source-ips "$SOURCE_IPS" \
        --json "$dir/churn.json" >"$dir/churn.txt" 2>&1 &
    local churn=$!
    sleep $((DURATION / 2))
    local own peers
    own=$(own_kib $PID); peers=$(stat_peers "$admin")
    grep -E '^(VmHWM|RssAnon|RssShmem|RssFile)' "/proc/$PID/status" >"$dir/status-mid.txt" || true
    wait $steady || echo "$label round $round: steady bench exited $?" >&2
    wait $churn || echo "$label round $round: churn bench exited $?" >&2
    kill $PID 2>/dev/null || true
    wait $PID 2>/dev/null || true
    $PY - "$dir" "$label" "$round" "$base" "$own" "$peers" "$RATE" "$DURATION" >>"$OUT/runs.tsv" <<'EOF'
import json, sys
d, label, rnd, base, own, peers, rate, dur = sys.argv[1:]
base, own, peers = int(base), int(own), int(peers)
s = json.load(open(f"{d}/steady.json"))
c = json.load(open(f"{d}/churn.json"))
pe = s.get("peers_at_end", {})
offered = float(rate) * int(dur)
errs = sum(s["errors"].values()) - s["errors"].get("rejects", 0)
cerrs = sum(v for k, v in c["errors"].items())
ch = c.get("churn") or {}
bpp = (own - base) * 1024 / peers if peers else 0
print("\t".join(str(x) for x in [
    label, rnd, base, own, peers, round(bpp), pe.get("connected"), pe.get("handshaken"),
    pe.get("served"), int(offered), s["blocks"], round(s["blocks"] / offered, 3),
    s["pieces_verified"], s["bad_pieces"] + c["bad_pieces"], errs + s["stalled_at_end"]["handshake"]
    + s["stalled_at_end"]["unchoke"] + s["stalled_at_end"]["request"],
    ch.get("joins_started"), round(ch.get("joins_per_sec", 0), 1), ch.get("sessions_completed"),
    cerrs]))
EOF
    tail -1 "$OUT/runs.tsv"
}

for round in $(seq 1 "$ROUNDS"); do
    for spec in "$@"; do
        run_one "${spec%%=*}" "${spec#*=}" "$round"
    done
done

echo "== medians ($OUT/runs.tsv)"
$PY - "$OUT/runs.tsv" <<'EOF'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
cols = ["base_kib", "own_kib", "peers_connected", "bytes_per_peer", "served", "served_ratio",
        "verified", "bad", "errors", "churn_joins_per_sec", "churn_errors"]
print("label\t" + "\t".join(cols))
for label in dict.fromkeys(r["label"] for r in rows):
    rs = [r for r in rows if r["label"] == label]
    med = [statistics.median(float(r[c]) for r in rs) for c in cols]
    print(label + "\t" + "\t".join(f"{m:g}" for m in med))
EOF
