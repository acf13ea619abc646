#!/bin/bash
# Benchmark: `squall verify` (all cores) against one `openssl sha1` stream over the same
# page-cached data. Prints each run, the medians, and the speed-up ratio (openssl time /
# squall time; issue 2 asks for >= 1.6 on the 2-core machine).
#
# Usage: scripts/bench-verify.sh [SIZE_MIB=1024] [RUNS=3]
# Env:   SQUALL_BIN (default: builds target/release/squall), BENCH_DIR (default: a temp dir,
#        removed at the end).
set -euo pipefail
SIZE_MIB=${1:-1024}
RUNS=${2:-3}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
if [[ -z "${SQUALL_BIN:-}" ]]; then
    (cd "$ROOT" && cargo build --release -q -p squall)
    SQUALL_BIN="$ROOT/target/release/squall"
fi
command -v openssl >/dev/null || { echo "openssl is missing: apt-get install openssl" >&2; exit 1; }
DIR=${BENCH_DIR:-$(mktemp -d)}
trap '[[ -z "${BENCH_DIR:-}" ]] && rm -rf "$DIR"' EXIT
mkdir -p "$DIR/data"
DATA="$DIR/data/bench.bin"
head -c "$((SIZE_MIB * 1024 * 1024))" /dev/urandom > "$DATA"
"$SQUALL_BIN" make "$DATA" -o "$DIR/bench.torrent" --force >/dev/null
cat "$DATA" > /dev/null   # warm the page cache

now() { date +%s.%N; }
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
ossl=(); sq=()
for i in $(seq "$RUNS"); do
    t0=$(now); openssl sha1 "$DATA" >/dev/null; t1=$(now)
    "$SQUALL_BIN" verify "$DIR/bench.torrent" "$DIR/data" >/dev/null; t2=$(now)
    o=$(echo "$t1 - $t0" | bc -l); s=$(echo "$t2 - $t1" | bc -l)
    ossl+=("$o"); sq+=("$s")
    printf 'run %d: openssl sha1 %.3f s   squall verify %.3f s\n' "$i" "$o" "$s"
done
om=$(printf '%s\n' "${ossl[@]}" | median)
sm=$(printf '%s\n' "${sq[@]}" | median)
printf 'date: %s  cores: %s  size: %d MiB\n' "$(date -u +%Y-%m-%dT%H:%MZ)" "$(nproc)" "$SIZE_MIB"
printf 'median openssl sha1: %.3f s (%.0f MB/s)\n' "$om" "$(echo "$SIZE_MIB * 1.048576 / $om" | bc -l)"
printf 'median squall verify: %.3f s (%.0f MB/s)\n' "$sm" "$(echo "$SIZE_MIB * 1.048576 / $sm" | bc -l)"
printf 'ratio (openssl time / squall time): %.2f\n' "$(echo "$om / $sm" | bc -l)"
