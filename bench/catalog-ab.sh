#!/bin/sh
# Interleaved A/B of catalog restarts (issue 24): `catalog-check` from resume state with the
# before binary (per-torrent resume files) and the after binary (compact store), warm-up
# first, then ROUNDS pairs. Usage: bench/catalog-ab.sh BEFORE AFTER DIR [ROUNDS]
# (DIR from scripts/gen-catalog.sh, already loaded once by each binary). Run it under
# `flock /tmp/squall-bench.lock`.
set -eu
before=$1 after=$2 dir=$3 rounds=${4:-3}
run() {
    /usr/bin/time -f "wall_s=%e maxrss_kb=%M" "$1" catalog-check --torrents "$dir/torrents" \
        --data "$dir/data" --state "$dir/state" 2>&1 | tr '\n' ' '
    echo
}
echo "warm-up before: $(run "$before")"
echo "warm-up after: $(run "$after")"
i=1
while [ "$i" -le "$rounds" ]; do
    echo "round $i before: $(run "$before")"
    echo "round $i after: $(run "$after")"
    i=$((i + 1))
done
