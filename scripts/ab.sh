#!/usr/bin/env bash
# A/B one engine knob with squall-bench, interleaved, on this machine's two cores.
#
# Usage: scripts/ab.sh CONFIG_A CONFIG_B [ROUNDS] [TORRENT_DIR DATA_DIR]
#   CONFIG_A/B: TOML files that differ in the key under test (e.g. [engine] vectored_reads).
# Seeder pinned to CPU 0, bench to CPU 1, ABBA order; prints one line per run and the medians.
# Data defaults to a 256 MiB random file (made once under ${SQUALL_BENCH_DIR:-/tmp/squall-ab}).
#
# Environment (all optional):
#   SQUALL_AB_BENCH_ARGS   squall-bench arguments instead of the hot-style default
#                          ("--peers 32 --depth 64 --duration 5 --warmup 1 --verify sample"),
#                          e.g. "--peers 256 --depth 16 --hop --duration 8 --warmup 1 --verify sample"
#   SQUALL_AB_MEMCG_BYTES  run the seeder in a memory cgroup of this many bytes (page cache
#                          included): a catalog larger than the RAM it may use. Needs root.
#   SQUALL_AB_BIN_A/B      squall binaries to compare instead of one build with two configs
#                          (an A/B of a code change: pass the same config twice)
#   SQUALL_AB_COLD=1       drop the page cache (vm.drop_caches, root) before each run
#                          instead of warming it: every run starts from disk.
#   SQUALL_AB_BENCH_TORRENTS  the torrents the bench downloads, when only some of the seeder's
#                          catalog (TORRENT_DIR) should be asked for (scripts/dht-ab.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
A=${1:?config A}; B=${2:?config B}; ROUNDS=${3:-3}
WORK=${SQUALL_BENCH_DIR:-/tmp/squall-ab}
TORRENTS=${4:-$WORK/torrents}; DATA=${5:-$WORK/data}
mkdir -p "$WORK"
cargo build --release -q -p squall -p squall-bench
SQ=target/release/squall; BENCH=target/release/squall-bench
if [ ! -d "$TORRENTS" ]; then
  mkdir -p "$TORRENTS" "$DATA"
  head -c $((256 << 20)) /dev/urandom > "$DATA/big.bin"
  "$SQ" make "$DATA/big.bin" -o "$TORRENTS/big.torrent" --piece-length 1M > /dev/null
fi
BENCH_ARGS=${SQUALL_AB_BENCH_ARGS:---peers 32 --depth 64 --duration 5 --warmup 1 --verify sample}
COLD=${SQUALL_AB_COLD:-0}
MEMCG=""
if [ -n "${SQUALL_AB_MEMCG_BYTES:-}" ]; then
  # Below this shell's own cgroup; v2 memory.max or v1 memory.limit_in_bytes, detected.
  . scripts/bench-lib.sh
  MEMCG=$(make_memcg "squall-ab-$$" "$SQUALL_AB_MEMCG_BYTES") || { echo "ab.sh: cannot create a memory cgroup" >&2; exit 1; }
  trap 'rmdir "$MEMCG" 2>/dev/null || true' EXIT
  echo "seeder memory cgroup: $MEMCG, limit $SQUALL_AB_MEMCG_BYTES bytes (page cache included)"
fi
drop_caches() { sync; echo 1 > /proc/sys/vm/drop_caches; }
if [ "$COLD" = 1 ]; then drop_caches; else cat "$DATA"/* > /dev/null; fi
run() { # label config
  local label=$1 cfg=$2 out=$WORK/out-$1.txt
  local sq=$SQ
  if [ "$label" = A ]; then sq=${SQUALL_AB_BIN_A:-$SQ}; else sq=${SQUALL_AB_BIN_B:-$SQ}; fi
  # The seeder joins the cgroup (when there is one) before exec, so its io-wq workers do too.
  taskset -c 0 sh -c '[ -z "$1" ] || echo $$ > "$1/cgroup.procs"; shift; exec "$@"' sh "$MEMCG" \
    "$sq" seed --config "$cfg" --torrents "$TORRENTS" --data "$DATA" --listen 127.0.0.1:0 \
    --state "$WORK/state-$label" --shards 1 --summary-secs 0 --admin off > "$out" 2> "$WORK/err-$label.txt" &
  local sp=$!
  for _ in $(seq 600); do grep -q '^ready' "$out" 2>/dev/null && break; sleep 0.1; done
  local port; port=$(grep -o '127.0.0.1:[0-9]*' "$out" | head -1)
  # Loading may have hashed the content into the page cache: a cold run starts from disk.
  if [ "$COLD" = 1 ]; then drop_caches; fi
  # shellcheck disable=SC2086 # BENCH_ARGS is a word list on purpose
  taskset -c 1 "$BENCH" run --target "$port" --torrents "${SQUALL_AB_BENCH_TORRENTS:-$TORRENTS}" $BENCH_ARGS \
    --target-pid "$sp" --json "$WORK/$label.json" > /dev/null
  kill -INT "$sp"; wait "$sp" || true
  python3 -c "import json,sys;d=json.load(open(sys.argv[1]));print(sys.argv[2], round(d['gbps'],2), round(d.get('cpu_secs_per_gb',0),3))" \
    "$WORK/$label.json" "$label" | tee -a "$WORK/results.txt"
}
: > "$WORK/results.txt"
# ABBA order: alternate which config goes first, so warm-up/order effects cancel.
for r in $(seq "$ROUNDS"); do
  if (( r % 2 )); then run A "$A"; run B "$B"; else run B "$B"; run A "$A"; fi
done
python3 - "$WORK/results.txt" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
for label in ("A", "B"):
    g = [float(r[1]) for r in rows if r[0] == label]
    c = [float(r[2]) for r in rows if r[0] == label]
    print(f"{label}: median {statistics.median(g):.2f} Gb/s, {statistics.median(c):.3f} CPU-s/GB over {len(g)} runs")
PY
