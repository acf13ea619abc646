#!/usr/bin/env bash
# Encrypted (MSE/PE, RC4) vs plaintext peers, interleaved, and RC4 alone beside them.
#
# Usage: scripts/bench-encrypt.sh [ROUNDS] [TORRENT_DIR DATA_DIR]
# Each run starts one squall (configs/bench.toml: one shard, pinned to CPU 0) and drives it
# from CPU 1 with the same swarm: P plaintext (the shipped path: page-cache sends), C
# plaintext on the copy path (page_cache_sends = false: the path encrypted peers take, minus
# the cipher), E `--encrypt` (RC4), rotating the order each round so warm-up and order
# effects cancel. Prints Gb/s and the seeder's CPU-s/GB per run, the medians, the ratios,
# then `squall-bench rc4-cost` (RC4 alone, CPU-s/GB, median of 3) and the goal:
# E CPU-s/GB <= P CPU-s/GB + 1.1 x RC4-alone (and the same against C).
# Data defaults to a 256 MiB random file under ${SQUALL_BENCH_DIR:-/tmp/squall-enc}.
# Env: SQUALL_ENC_BENCH_ARGS (default "--peers 32 --depth 64 --duration 5 --warmup 1 --verify sample").
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
WORK=${SQUALL_BENCH_DIR:-/tmp/squall-enc}
TORRENTS=${2:-$WORK/torrents}; DATA=${3:-$WORK/data}
mkdir -p "$WORK"
cargo build --release -q -p squall -p squall-bench
SQ=target/release/squall; BENCH=target/release/squall-bench
if [ ! -d "$TORRENTS" ]; then
  mkdir -p "$TORRENTS" "$DATA"
  head -c $((256 << 20)) /dev/urandom > "$DATA/big.bin"
  "$SQ" make "$DATA/big.bin" -o "$TORRENTS/big.torrent" --piece-length 1M > /dev/null
fi
cat "$DATA"/* > /dev/null
ARGS=${SQUALL_ENC_BENCH_ARGS:---peers 32 --depth 64 --duration 5 --warmup 1 --verify sample}
sed 's/^block_cache_bytes_per_shard.*/&\npage_cache_sends = false/' configs/bench.toml > "$WORK/copy.toml"
run() { # label extra-bench-args...
  local label=$1; shift
  local out=$WORK/out-$label.txt cfg=configs/bench.toml
  if [ "$label" = C ]; then cfg=$WORK/copy.toml; fi
  taskset -c 0 "$SQ" seed --config "$cfg" --torrents "$TORRENTS" --data "$DATA" \
    --listen 127.0.0.1:0 --state "$WORK/state" --shards 1 --summary-secs 0 --admin off \
    > "$out" 2> "$WORK/err-$label.txt" &
  local sp=$!
  for _ in $(seq 600); do grep -q '^ready' "$out" 2>/dev/null && break; sleep 0.1; done
  local port; port=$(grep -o -m1 '127.0.0.1:[0-9]*' "$out")
  # shellcheck disable=SC2086 # ARGS is a word list on purpose
  taskset -c 1 "$BENCH" run --target "$port" --torrents "$TORRENTS" $ARGS "$@" \
    --target-pid "$sp" --json "$WORK/$label.json" > /dev/null
  kill -INT "$sp"; wait "$sp" || true
  python3 -c "import json,sys;d=json.load(open(sys.argv[1]));print(sys.argv[2], round(d['gbps'],2), round(d.get('cpu_secs_per_gb',0),3), json.dumps(d.get('errors',{}),separators=(',',':')))" \
    "$WORK/$label.json" "$label" | tee -a "$WORK/results.txt"
}
: > "$WORK/results.txt"
for r in $(seq "$ROUNDS"); do
  case $((r % 3)) in
    1) run P; run C; run E --encrypt ;;
    2) run E --encrypt; run P; run C ;;
    0) run C; run E --encrypt; run P ;;
  esac
done
: > "$WORK/rc4.txt"
for _ in 1 2 3; do taskset -c 0 "$BENCH" rc4-cost --bytes 1000000000 | tee -a "$WORK/rc4.txt"; done
python3 - "$WORK/results.txt" "$WORK/rc4.txt" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
rc4 = statistics.median(float(l.split()[1]) for l in open(sys.argv[2]))
med = {}
for label in ("P", "C", "E"):
    g = [float(r[1]) for r in rows if r[0] == label]
    c = [float(r[2]) for r in rows if r[0] == label]
    med[label] = (statistics.median(g), statistics.median(c))
    print(f"{label}: median {med[label][0]:.2f} Gb/s, {med[label][1]:.3f} CPU-s/GB over {len(g)} runs")
eg, ec = med["E"]
print(f"RC4 alone: {rc4:.3f} CPU-s/GB (median of 3)")
for base in ("P", "C"):
    bg, bc = med[base]
    print(f"E/{base}: {eg/bg:.2f}x Gb/s, {ec/bc:.2f}x CPU-s/GB; E - {base} = {ec-bc:.3f} CPU-s/GB = {(ec-bc)/rc4:.2f} x RC4-alone")
    print(f"goal E <= {base} + 1.1 x RC4: {ec:.3f} <= {bc + 1.1*rc4:.3f}: {'met' if ec <= bc + 1.1*rc4 else 'NOT met'}")
PY
