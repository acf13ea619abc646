# Sourced by scripts/compare.sh and scripts/latency.sh: the benchmark data they share and the
# waits that decide a seeder is ready. Expects BENCH, SQUALL and PY to be set and die() to be
# defined; the waits read PID (the seeder's pid) and give up early when it has exited.

# A free TCP port on 127.0.0.1 (the kernel's pick).
free_port() { $PY -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }

# wait_port PORT SECS: 0 once 127.0.0.1:PORT accepts, 1 on timeout or if the seeder died.
wait_port() {
    local end=$((SECONDS + $2))
    while [ $SECONDS -lt $end ]; do
        (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0
        kill -0 "$PID" 2>/dev/null || return 1
        sleep 0.2
    done
    return 1
}

# wait_until SECS CMD [ARGS...]: 0 once CMD succeeds, 1 on timeout or if the seeder died.
wait_until() {
    local end=$((SECONDS + $1)); shift
    while [ $SECONDS -lt $end ]; do
        "$@" && return 0
        kill -0 "$PID" 2>/dev/null || return 1
        sleep 0.3
    done
    return 1
}

# gen_bench_data DATA TORRENTS COUNT SIZE_BYTES PIECE_BYTES: COUNT files t0000.bin ... of
# gen-content's pattern (so the null seeder's bytes verify against them too) and their
# torrents; kept between runs, remade when a file's size or the piece length changed (the
# caller keys TORRENTS by piece length).
gen_bench_data() {
    local data=$1 torrents=$2 count=$3 size=$4 piece=$5 i name
    mkdir -p "$data" "$torrents"
    for i in $(seq 0 $((count - 1))); do
        name=$(printf 't%04d.bin' "$i")
        if [ ! -f "$data/$name" ] || [ "$(stat -c %s "$data/$name")" != "$size" ]; then
            "$BENCH" gen-content --size-bytes "$size" --out "$data/$name" || die "gen-content"
            rm -f "$torrents/$name.torrent"
        fi
        if [ ! -f "$torrents/$name.torrent" ]; then
            "$SQUALL" make "$data/$name" -o "$torrents/$name.torrent" \
                --piece-length "$piece" >/dev/null || die "squall make"
        fi
    done
}

# make_memcg NAME BYTES: create a memory cgroup NAME below this shell's own cgroup with a
# limit of BYTES (page cache included) and print its directory. cgroup v2 (memory.max) when
# a v2 hierarchy with the memory controller is mounted (/sys/fs/cgroup or
# /sys/fs/cgroup/unified), else v1 (memory.limit_in_bytes under /sys/fs/cgroup/memory).
make_memcg() {
    local name=$1 bytes=$2 mnt rel dir
    for mnt in /sys/fs/cgroup /sys/fs/cgroup/unified; do
        if grep -qw memory "$mnt/cgroup.controllers" 2>/dev/null; then
            rel=$(awk -F: '$1 == "0" { print $3 }' /proc/self/cgroup)
            dir="$mnt${rel%/}/$name"
            # v2: a child may use a controller only when its parent delegates it.
            echo +memory >"$mnt${rel%/}/cgroup.subtree_control" 2>/dev/null || true
            mkdir -p "$dir" && echo "$bytes" >"$dir/memory.max" || return 1
            echo "$dir"; return 0
        fi
    done
    mnt=/sys/fs/cgroup/memory
    [ -f "$mnt/memory.limit_in_bytes" ] || return 1
    rel=$(awk -F: '$2 == "memory" { print $3 }' /proc/self/cgroup)
    dir="$mnt${rel%/}/$name"
    mkdir -p "$dir" && echo "$bytes" >"$dir/memory.limit_in_bytes" || return 1
    echo "$dir"
}

# drop_page_cache: write dirty pages back, then drop the clean page cache (root).
drop_page_cache() { sync; echo 1 >/proc/sys/vm/drop_caches; }
