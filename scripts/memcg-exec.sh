#!/usr/bin/env bash
# memcg-exec.sh CGROUP_DIR CMD [ARGS...] — join the memory cgroup CGROUP_DIR (empty: none),
# then exec CMD, so everything CMD starts (threads, io-wq workers, children) is charged to it.
# Used by scripts/compare.sh for scenarios with [seeder] memory_limit_bytes (cold).
set -eu
cg=$1; shift
if [ -n "$cg" ]; then echo $$ >"$cg/cgroup.procs"; fi
exec "$@"
