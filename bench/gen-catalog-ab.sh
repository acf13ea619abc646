#!/bin/sh
# Interleaved A/B of the catalog generator (issue 24): OLD_SCRIPT (e.g. main e539da5's
# scripts/gen-catalog.py, from `git show e539da5:scripts/gen-catalog.py`) against this
# checkout's scripts/gen-catalog.sh, N torrents into SCRATCH (emptied before each run and
# removed after), ROUNDS pairs. Usage: bench/gen-catalog-ab.sh OLD_SCRIPT SCRATCH [N] [ROUNDS]
# Run it under `flock /tmp/squall-bench.lock`.
set -eu
old=$1 dir=$2 n=${3:-100000} rounds=${4:-2}
new="$(dirname "$0")/../scripts/gen-catalog.sh"
r=1
while [ "$r" -le "$rounds" ]; do
    for v in old new; do
        rm -rf "$dir"
        if [ "$v" = old ]; then set -- python3 "$old"; else set -- "$new"; fi
        /usr/bin/time -f "$v round $r wall_s=%e user_s=%U sys_s=%S" "$@" "$n" "$dir" >/dev/null
    done
    r=$((r + 1))
done
rm -rf "$dir"
