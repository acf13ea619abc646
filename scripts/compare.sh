#!/usr/bin/env bash
# compare.sh [SCENARIO] — run one benchmark scenario (configs/bench/SCENARIO.toml, default
# hot) against every seeder we can start, one at a time, same data, same swarm:
#   seeder pinned to CPU 0 (taskset -c 0), squall-bench pinned to CPU 1, ROUNDS interleaved
#   rounds (default 3), medians. Loopback only; DHT/LSD/UPnP/NAT-PMP/uTP off everywhere.
# Prints a Markdown table and writes raw JSON + an HTML report to
#   bench/results/<date>-<scenario>/.
# A seeder that cannot start becomes a row saying why; nothing is skipped silently.
# A scenario's [seeder] table sets how every seeder runs (cold): in a memory cgroup of
# memory_limit_bytes (v2 memory.max or v1 memory.limit_in_bytes, detected), the page cache
# dropped once it is ready (drop_caches), and fio_ceiling adds the row `fio`: io_uring,
# O_DIRECT random reads of one piece over the same files at the swarm's queue depth.
#
# Env: SQUALL_BENCH_DIR (work dir for data, default /tmp/squall-bench), ROUNDS (3),
#      DURATION (override the scenario's seconds), SEEDERS (space-separated subset),
#      SQUALL_BENCH_INSTALL=1 (apt-get install missing Debian clients; cargo install rqbit).
#      SQUALL_BASE_BIN (another squall binary, e.g. main's, run as the seeder `squall-base`
#      with configs/bench.toml: a before/after row in the same run).
# Smoke-test overrides (never for published numbers): BENCH_SIZE_BYTES (bytes per torrent),
#      BENCH_NTORRENTS (number of torrents), BENCH_PEERS (the scenario's peer count).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
SCENARIO=${1:-hot}
# The HTTP scenario (Squall --http against nginx) has its own driver.
[ "$SCENARIO" = http ] && exec "$ROOT/scripts/compare-http.sh"
SC_FILE="$ROOT/configs/bench/$SCENARIO.toml"
WORK=${SQUALL_BENCH_DIR:-/tmp/squall-bench}
ROUNDS=${ROUNDS:-3}
DATE=$(date -u +%Y-%m-%d)
# SQUALL_BENCH_OUT: another results directory (e.g. a second published run on the same day).
OUT=${SQUALL_BENCH_OUT:-"$ROOT/bench/results/$DATE-$SCENARIO"}
SQUALL="$ROOT/target/release/squall"
BENCH="$ROOT/target/release/squall-bench"
PY=/usr/bin/python3
ALL_SEEDERS="squall-copy squall-cached squall-zerocopy squall-splice libtorrent aria2 transmission rtorrent qbittorrent rqbit null iperf3"
# cold: the disk is the ceiling (fio), not loopback; Squall in each read mode.
COLD_SEEDERS="fio squall-copy squall-buffered squall-direct libtorrent aria2 transmission rtorrent qbittorrent rqbit"
SOURCE_IPS=127.0.0.2-127.0.0.250

die() { echo "compare.sh: $*" >&2; exit 1; }
# free_port, wait_port, wait_until, gen_bench_data (shared with latency.sh).
. "$ROOT/scripts/bench-lib.sh"
[ -f "$SC_FILE" ] || die "no scenario $SC_FILE (try hot, catalog, many-peers, churn, open-loop, http)"
[ "$(nproc)" -ge 2 ] || die "needs 2 CPUs (seeder on CPU 0, bench on CPU 1)"

echo "== building release binaries"
(cd "$ROOT" && cargo build --release -q -p squall -p squall-bench) || die "cargo build failed"

eval "$("$BENCH" scenario-data "$SC_FILE")" || die "cannot read $SC_FILE"
if [ "$SC_FIO_CEILING" = 1 ]; then SEEDERS=${SEEDERS:-$COLD_SEEDERS}; else SEEDERS=${SEEDERS:-$ALL_SEEDERS}; fi
MEMCG=""
if [ "$SC_MEMORY_LIMIT_BYTES" -gt 0 ]; then
    [ "$(id -u)" = 0 ] || die "scenario $SCENARIO runs seeders in a memory cgroup: needs root"
    MEMCG=$(make_memcg "squall-compare-$$" "$SC_MEMORY_LIMIT_BYTES") || die "cannot create a memory cgroup"
    echo "== every seeder runs in memory cgroup $MEMCG, limit $SC_MEMORY_LIMIT_BYTES bytes (page cache included)"
fi
if [ "$SC_DROP_CACHES" = 1 ] && [ "$(id -u)" != 0 ]; then die "scenario $SCENARIO drops the page cache: needs root"; fi
# Every seeder starts through PIN: on CPU 0, in the scenario's memory cgroup (if any).
PIN="$ROOT/scripts/memcg-exec.sh $MEMCG taskset -c 0"
[ -n "$MEMCG" ] || PIN="taskset -c 0"
DATA_KEY=$SCENARIO
if [ -n "${BENCH_SIZE_BYTES:-}${BENCH_NTORRENTS:-}${BENCH_PEERS:-}" ]; then
    OUT="$OUT-smoke" # overridden scenario: results kept apart from real runs
    echo "== smoke overrides in force (BENCH_SIZE_BYTES/BENCH_NTORRENTS/BENCH_PEERS): not a published scenario"
fi
if [ -n "${BENCH_SIZE_BYTES:-}${BENCH_NTORRENTS:-}" ]; then
    SC_SIZE_BYTES=${BENCH_SIZE_BYTES:-$SC_SIZE_BYTES}
    SC_TORRENTS=${BENCH_NTORRENTS:-$SC_TORRENTS}
    DATA_KEY="$SCENARIO-${SC_TORRENTS}x$SC_SIZE_BYTES"
fi
DATA="$WORK/$DATA_KEY/data"
# Torrents depend on the piece length as well as the data: a scenario whose piece length
# changes must not silently reuse torrents made with the old one.
TORRENTS="$WORK/$DATA_KEY/torrents-$SC_PIECE_LENGTH_BYTES"
mkdir -p "$DATA" "$TORRENTS" "$OUT"
if [ -n "${BENCH_PEERS:-}" ]; then # a copy of the scenario with fewer (or more) peers
    sed "s/^peers = .*/peers = $BENCH_PEERS/" "$SC_FILE" >"$OUT/scenario.toml"
    SC_FILE="$OUT/scenario.toml"
fi
ulimit -n 65536 2>/dev/null || true

echo "== data: $SC_TORRENTS x $SC_SIZE_BYTES bytes, pieces $SC_PIECE_LENGTH_BYTES (cached in $WORK)"
gen_bench_data "$DATA" "$TORRENTS" "$SC_TORRENTS" "$SC_SIZE_BYTES" "$SC_PIECE_LENGTH_BYTES"
if [ "$SC_DROP_CACHES" = 1 ]; then
    echo "== cold: the page cache is dropped before each run"
else
    echo "== warming the page cache"
    cat "$DATA"/* >/dev/null
fi

maybe_install() { # maybe_install BINARY PACKAGE
    command -v "$1" >/dev/null && return 0
    if [ "${SQUALL_BENCH_INSTALL:-0}" = 1 ]; then
        timeout 300 apt-get install -y --no-install-recommends "$2" >/dev/null 2>&1 || true
    fi
    command -v "$1" >/dev/null
}

PORT=0; PID=0; WHY=""; RUN_DIR=""

# squall_with LINE...: $SEEDER_TMP/squall.toml = configs/bench.toml with these [engine] lines
# in place of the keys they set (a forced read mode for cold).
squall_with() {
    local line key cfg="$SEEDER_TMP/squall.toml"
    cp "$ROOT/configs/bench.toml" "$cfg"
    for line in "$@"; do
        key=${line%% *}
        sed -i "/^$key *=/d" "$cfg"
        sed -i "/^\\[engine\\]/a $line" "$cfg"
    done
}

# Each start_* sets PID and PORT and returns 0, or sets WHY and returns 1.
start_squall() { # MODE [CONFIG]
    # Scratch state (1,000 resume files for catalog) lives with the other seeders' state,
    # not in the results directory.
    local state="$SEEDER_TMP/state"
    rm -rf "$state"
    : >"$RUN_DIR/seeder.log"
    # configs/bench.toml: limits sized for synthetic swarms (thousands of peers on one torrent).
    # configs/bench-cached.toml: the same, plus a hot-block cache larger than the data.
    $PIN "${SQUALL_BIN:-$SQUALL}" seed --config "${2:-$ROOT/configs/bench.toml}" --torrents "$TORRENTS" --data "$DATA" \
        --listen "127.0.0.1:$PORT" --state "$state" --shards 1 --serve "$1" --summary-secs 0 \
        --admin off >"$RUN_DIR/seeder.log" 2>&1 &
    PID=$!
    wait_until 120 grep -q '^ready' "$RUN_DIR/seeder.log" && return 0
    WHY="squall did not become ready: $(tail -1 "$RUN_DIR/seeder.log")"; return 1
}

start_null() {
    $PIN "$BENCH" null-seeder --listen "127.0.0.1:$PORT" --torrents "$TORRENTS" \
        >"$RUN_DIR/seeder.log" 2>&1 &
    PID=$!
    wait_port "$PORT" 20 || { WHY="null seeder did not listen: $(tail -1 "$RUN_DIR/seeder.log")"; return 1; }
}

start_libtorrent() {
    $PY -c 'import libtorrent' 2>/dev/null || maybe_install none python3-libtorrent
    $PY -c 'import libtorrent' 2>/dev/null || { WHY="python3-libtorrent not installed (apt-get install python3-libtorrent)"; return 1; }
    : >"$RUN_DIR/seeder.log"
    $PIN $PY "$ROOT/bench/scripts/lt_seed.py" "$PORT" "$TORRENTS" "$DATA" >"$RUN_DIR/seeder.log" 2>&1 &
    PID=$!
    wait_until 300 grep -q '^ready' "$RUN_DIR/seeder.log" && return 0
    WHY="libtorrent did not become ready: $(tail -1 "$RUN_DIR/seeder.log")"; return 1
}

start_aria2() {
    maybe_install aria2c aria2 || { WHY="aria2c not installed (apt-get install aria2)"; return 1; }
    # -V + --bt-seed-unverified: hash-check once, then seed; -j: every torrent at once.
    $PIN aria2c --seed-ratio=0 -V --bt-seed-unverified=true -d "$DATA" --listen-port="$PORT" \
        --enable-dht=false --enable-dht6=false --bt-enable-lpd=false --enable-peer-exchange=false \
        --bt-max-peers=0 -j 100000 --max-overall-upload-limit=0 --file-allocation=none \
        --console-log-level=warn --summary-interval=0 "$TORRENTS"/*.torrent >"$RUN_DIR/seeder.log" 2>&1 &
    PID=$!
    wait_port "$PORT" 120 || { WHY="aria2c did not listen: $(tail -1 "$RUN_DIR/seeder.log")"; return 1; }
    sleep 2 # -V: let the hash check finish before measuring
}


# --- Transmission: transmission-daemon -f with a generated settings.json in a temp config dir;
# torrents added over RPC (transmission-remote -w DATA -a), then verified (-v); ready when every
# torrent is listed at 100% and nothing is verifying or queued.
TR_RPC=""
tr_remote() { transmission-remote "127.0.0.1:$TR_RPC" "$@"; }
tr_all_seeding() {
    local l rows
    l=$(tr_remote -l 2>/dev/null) || return 1
    rows=$(printf '%s\n' "$l" | awk 'NR>1 && $1 ~ /^[0-9]+\*?$/')
    [ "$(printf '%s\n' "$rows" | grep -c .)" -eq "$SC_TORRENTS" ] || return 1
    if printf '%s\n' "$rows" | grep -v ' 100% ' | grep -q .; then return 1; fi
    if printf '%s\n' "$rows" | grep -qiE 'verif|check|queue|stopped'; then return 1; fi
    printf '%s\n' "$l" >"$RUN_DIR/ready.txt"
}
start_transmission() {
    maybe_install transmission-daemon transmission-daemon || { WHY="transmission-daemon not installed (apt-get install transmission-daemon)"; return 1; }
    maybe_install transmission-remote transmission-cli || { WHY="transmission-remote not installed (apt-get install transmission-cli)"; return 1; }
    local conf="$SEEDER_TMP/transmission"
    rm -rf "$conf"; mkdir -p "$conf"
    TR_RPC=$(free_port)
    cat >"$conf/settings.json" <<JSON
{
    "bind-address-ipv4": "127.0.0.1",
    "bind-address-ipv6": "::1",
    "peer-port": $PORT,
    "peer-port-random-on-start": false,
    "port-forwarding-enabled": false,
    "dht-enabled": false,
    "lpd-enabled": false,
    "pex-enabled": false,
    "utp-enabled": false,
    "encryption": 0,
    "peer-limit-global": 100000,
    "peer-limit-per-torrent": 100000,
    "upload-slots-per-torrent": 100000,
    "speed-limit-up-enabled": false,
    "speed-limit-down-enabled": false,
    "alt-speed-enabled": false,
    "ratio-limit-enabled": false,
    "idle-seeding-limit-enabled": false,
    "download-queue-enabled": false,
    "seed-queue-enabled": false,
    "queue-stalled-enabled": false,
    "start-added-torrents": true,
    "trash-original-torrent-files": false,
    "download-dir": "$DATA",
    "incomplete-dir-enabled": false,
    "watch-dir-enabled": false,
    "rename-partial-files": false,
    "blocklist-enabled": false,
    "message-level": 1,
    "rpc-enabled": true,
    "rpc-bind-address": "127.0.0.1",
    "rpc-port": $TR_RPC,
    "rpc-authentication-required": false,
    "rpc-whitelist-enabled": true,
    "rpc-whitelist": "127.0.0.1",
    "rpc-host-whitelist-enabled": false
}
JSON
    $PIN transmission-daemon -f -g "$conf" --logfile "$RUN_DIR/seeder.log" >"$RUN_DIR/seeder.out" 2>&1 &
    PID=$!
    wait_port "$TR_RPC" 30 || { WHY="transmission-daemon RPC did not listen: $(tail -1 "$RUN_DIR/seeder.out" 2>/dev/null)"; return 1; }
    # Add in batches of 100 (catalog has 1,000 torrents), download dir = the data dir. Each file
    # needs its own -a: transmission-remote keeps only the last of several bare file names.
    local batch=() f
    for f in "$TORRENTS"/*.torrent; do
        batch+=(-a "$f")
        if [ ${#batch[@]} -ge 200 ]; then
            tr_remote -w "$DATA" "${batch[@]}" >>"$RUN_DIR/seeder.out" 2>&1 || { WHY="transmission-remote -a failed: $(tail -1 "$RUN_DIR/seeder.out")"; return 1; }
            batch=()
        fi
    done
    if [ ${#batch[@]} -gt 0 ]; then
        tr_remote -w "$DATA" "${batch[@]}" >>"$RUN_DIR/seeder.out" 2>&1 || { WHY="transmission-remote -a failed: $(tail -1 "$RUN_DIR/seeder.out")"; return 1; }
    fi
    # Hash-check the existing data so Transmission knows it is complete, then (re)start.
    tr_remote -t all -v >>"$RUN_DIR/seeder.out" 2>&1 || true
    sleep 1
    wait_until 600 tr_all_seeding || { WHY="transmission not seeding within 600 s: $(tr_remote -l 2>/dev/null | awk 'NR>1 && $1 ~ /^[0-9]+\*?$/ { n++; if ($2 == "100%") d++ } END { printf "%d of '"$SC_TORRENTS"' torrents listed, %d at 100%%", n, d }')"; return 1; }
    tr_remote -t all -s >>"$RUN_DIR/seeder.out" 2>&1 || true
    wait_port "$PORT" 10 || { WHY="transmission-daemon peer port $PORT not listening"; return 1; }
    # Transmission unchokes only on its 10 s rechoke timer: a new peer waits up to 10 s, so the
    # measurement starts after at least TR_WARMUP_SECS (default 11) of warm-up.
    MIN_WARMUP=${TR_WARMUP_SECS:-11}
}

# --- rtorrent: a generated rc file, run headless inside a private tmux server (it needs a tty);
# ready when its SCGI socket (bench/scripts/rt_ready.py) says every torrent is complete, none
# is hashing, and all are started.
RT_TMUX=""
rt_ready() { $PY "$ROOT/bench/scripts/rt_ready.py" "$SEEDER_TMP/rtorrent/scgi.sock" "$SC_TORRENTS" >"$RUN_DIR/ready.txt" 2>&1; }
start_rtorrent() {
    maybe_install rtorrent rtorrent || { WHY="rtorrent not installed (apt-get install rtorrent)"; return 1; }
    maybe_install tmux tmux || { WHY="tmux not installed (rtorrent needs a tty; apt-get install tmux)"; return 1; }
    local dir="$SEEDER_TMP/rtorrent"
    rm -rf "$dir"; mkdir -p "$dir/session"
    # rtorrent with DHT off refuses a torrent without trackers ("Could not find any trackers"):
    # give it copies with an announce URL that points at nothing on loopback (same info-hash).
    $PY "$ROOT/bench/scripts/add_announce.py" "$TORRENTS" "$dir/torrents" "http://127.0.0.1:1/announce" >/dev/null \
        || { WHY="could not add an announce URL to the torrents for rtorrent"; return 1; }
    cat >"$dir/rtorrent.rc" <<RC
directory.default.set = $DATA
session.path.set = $dir/session
network.bind_address.set = 127.0.0.1
network.port_range.set = $PORT-$PORT
network.port_random.set = no
network.scgi.open_local = $dir/scgi.sock
network.max_open_sockets.set = 60000
network.max_open_files.set = 4096
dht.mode.set = disable
protocol.pex.set = no
trackers.use_udp.set = no
protocol.encryption.set = allow_incoming,try_outgoing,enable_retry
throttle.global_up.max_rate.set = 0
throttle.global_down.max_rate.set = 0
throttle.max_uploads.set = 65000
throttle.max_uploads.global.set = 65000
throttle.max_peers.normal.set = 65000
throttle.max_peers.seed.set = 65000
pieces.hash.on_completion.set = no
log.open_file = main, $RUN_DIR/seeder.log
log.add_output = warn, main
load.start = $dir/torrents/*.torrent
RC
    RT_TMUX="squall-bench-rt-$$"
    tmux -L "$RT_TMUX" -f /dev/null new-session -d -s rt -x 200 -y 50 \
        "exec $PIN rtorrent -n -o import=$dir/rtorrent.rc" >"$RUN_DIR/seeder.out" 2>&1 \
        || { WHY="tmux could not start rtorrent: $(tail -1 "$RUN_DIR/seeder.out")"; return 1; }
    PID=$(tmux -L "$RT_TMUX" list-panes -t rt -F '#{pane_pid}' 2>/dev/null | head -1 || true)
    [ -n "$PID" ] || { PID=0; WHY="rtorrent exited at once: $(tail -1 "$RUN_DIR/seeder.log" 2>/dev/null)"; return 1; }
    wait_until 600 rt_ready || { WHY="rtorrent not seeding: $(tail -1 "$RUN_DIR/ready.txt" 2>/dev/null) $(tail -1 "$RUN_DIR/seeder.log" 2>/dev/null)"; return 1; }
    wait_port "$PORT" 10 || { WHY="rtorrent peer port $PORT not listening"; return 1; }
}

# --- qBittorrent-nox: qBittorrent.conf pre-written in a temp profile; torrents added over its
# Web API with skip_checking; ready when every torrent is uploading/stalledUP.
QB_WEB=""
qb_all_seeding() {
    curl -fsS "http://127.0.0.1:$QB_WEB/api/v2/torrents/info" >"$RUN_DIR/ready.txt" 2>/dev/null || return 1
    $PY -c '
import json, sys
t = json.load(open(sys.argv[1]))
ok = [x for x in t if x["state"] in ("uploading", "stalledUP", "forcedUP")]
sys.exit(0 if len(t) == int(sys.argv[2]) and len(ok) == len(t) else 1)' "$RUN_DIR/ready.txt" "$SC_TORRENTS"
}
start_qbittorrent() {
    maybe_install qbittorrent-nox qbittorrent-nox || { WHY="qbittorrent-nox not installed (apt-get install qbittorrent-nox)"; return 1; }
    maybe_install curl curl || { WHY="curl not installed"; return 1; }
    local prof="$SEEDER_TMP/qbittorrent"
    rm -rf "$prof"; mkdir -p "$prof/qBittorrent/config"
    QB_WEB=$(free_port)
    cat >"$prof/qBittorrent/config/qBittorrent.conf" <<CONF
[LegalNotice]
Accepted=true

[BitTorrent]
Session\\Port=$PORT
Session\\Interface=lo
Session\\InterfaceName=lo
Session\\InterfaceAddress=127.0.0.1
Session\\DHTEnabled=false
Session\\LSDEnabled=false
Session\\PeXEnabled=false
Session\\BTProtocol=TCP
Session\\Encryption=0
Session\\QueueingSystemEnabled=false
Session\\MaxConnections=-1
Session\\MaxConnectionsPerTorrent=-1
Session\\MaxUploads=-1
Session\\MaxUploadsPerTorrent=-1
Session\\MultiConnectionsPerIp=true
Session\\GlobalMaxRatio=-1
Session\\GlobalUPSpeedLimit=0
Session\\GlobalDLSpeedLimit=0
Session\\AddTorrentPaused=false
Session\\DefaultSavePath=$DATA
Session\\TempPathEnabled=false

[Network]
PortForwardingEnabled=false

[Preferences]
Connection\\UPnP=false
WebUI\\Address=127.0.0.1
WebUI\\Port=$QB_WEB
WebUI\\LocalHostAuth=false
WebUI\\UseUPnP=false
WebUI\\CSRFProtection=false
WebUI\\HostHeaderValidation=false
Connection\\ResolvePeerCountries=false
CONF
    $PIN qbittorrent-nox --profile="$prof" --webui-port="$QB_WEB" >"$RUN_DIR/seeder.log" 2>&1 &
    PID=$!
    wait_port "$QB_WEB" 60 || { WHY="qbittorrent-nox WebUI did not listen: $(tail -1 "$RUN_DIR/seeder.log")"; return 1; }
    local f
    for f in "$TORRENTS"/*.torrent; do
        curl -fsS -X POST "http://127.0.0.1:$QB_WEB/api/v2/torrents/add" -F "torrents=@$f" \
            -F "savepath=$DATA" -F skip_checking=true -F paused=false >>"$RUN_DIR/seeder.out" 2>&1 \
            || { WHY="qBittorrent Web API add failed for $(basename "$f"): $(tail -1 "$RUN_DIR/seeder.out")"; return 1; }
    done
    wait_until 600 qb_all_seeding || { WHY="qbittorrent not seeding: $(head -c 300 "$RUN_DIR/ready.txt" 2>/dev/null)"; return 1; }
    wait_port "$PORT" 10 || { WHY="qbittorrent peer port $PORT not listening"; return 1; }
}

# --- rqbit: `rqbit download` (stateless; keeps seeding after the data checks complete) over
# every torrent, DHT/LSD/UPnP off, TCP on 127.0.0.1:P only; ready when its HTTP API
# (127.0.0.1:random) lists every torrent live and finished.
RQ_API=""
rq_all_seeding() {
    curl -fsS "http://127.0.0.1:$RQ_API/torrents?with_stats=true" >"$RUN_DIR/ready.txt" 2>/dev/null || return 1
    $PY -c '
import json, sys
t = json.load(open(sys.argv[1]))["torrents"]
ok = [x for x in t if (x.get("stats") or {}).get("state") == "live" and x["stats"].get("finished")]
sys.exit(0 if len(t) == int(sys.argv[2]) and len(ok) == len(t) else 1)' "$RUN_DIR/ready.txt" "$SC_TORRENTS"
}
start_rqbit() {
    if ! command -v rqbit >/dev/null && [ "${SQUALL_BENCH_INSTALL:-0}" = 1 ]; then
        echo "== cargo install rqbit --locked (slow, ~30 min on 2 busy cores; once)"
        timeout 3600 cargo install rqbit --locked >"$WORK/rqbit-install.log" 2>&1 || true
    fi
    command -v rqbit >/dev/null || { WHY="rqbit not installed (cargo install rqbit --locked; SQUALL_BENCH_INSTALL=1 tries it)"; return 1; }
    maybe_install curl curl || { WHY="curl not installed"; return 1; }
    RQ_API=$(free_port)
    $PIN rqbit -v warn --disable-dht --disable-dht-persistence --disable-lsd \
        --disable-upnp-port-forward --ipv4-only --listen-ip 127.0.0.1 --listen-port "$PORT" \
        --http-api-listen-addr "127.0.0.1:$RQ_API" --peer-limit 100000 \
        --concurrent-init-limit 64 \
        download -o "$DATA" --overwrite "$TORRENTS"/*.torrent >"$RUN_DIR/seeder.log" 2>&1 &
    PID=$!
    wait_until 600 rq_all_seeding || { WHY="rqbit not seeding within 600 s: $(tail -1 "$RUN_DIR/seeder.log")"; return 1; }
    wait_port "$PORT" 10 || { WHY="rqbit peer port $PORT not listening"; return 1; }
}

stop_seeder() {
    if [ "$PID" -gt 0 ] 2>/dev/null; then
        kill "$PID" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$PID" 2>/dev/null || true
        wait "$PID" 2>/dev/null || true
    fi
    PID=0
    if [ -n "$RT_TMUX" ]; then # the private tmux server that held rtorrent's tty
        tmux -L "$RT_TMUX" kill-server 2>/dev/null || true
        RT_TMUX=""
    fi
}
BENCH_PID=0
cleanup() {
    if [ "$BENCH_PID" -gt 0 ] 2>/dev/null; then
        kill "$BENCH_PID" 2>/dev/null || true
        wait "$BENCH_PID" 2>/dev/null || true
    fi
    stop_seeder
}
trap 'cleanup; [ -z "$MEMCG" ] || rmdir "$MEMCG" 2>/dev/null || true' EXIT
trap 'exit 130' INT TERM

run_iperf3() { # -> $RUN_DIR/result.json in the bench's schema (gbps only)
    maybe_install iperf3 iperf3 || { WHY="iperf3 not installed"; return 1; }
    taskset -c 0 iperf3 -s -B 127.0.0.1 -p "$PORT" >"$RUN_DIR/seeder.log" 2>&1 &
    PID=$!
    # No probe connection here: iperf3 -s takes any connection for its control channel.
    sleep 1
    kill -0 "$PID" 2>/dev/null || { WHY="iperf3 -s did not start: $(tail -1 "$RUN_DIR/seeder.log")"; return 1; }
    taskset -c 1 iperf3 -c 127.0.0.1 -p "$PORT" -t "$DUR" -J >"$RUN_DIR/iperf3.json" 2>"$RUN_DIR/bench.err" \
        || { WHY="iperf3 client failed: $(tail -1 "$RUN_DIR/bench.err")"; return 1; }
    $PY - "$RUN_DIR/iperf3.json" "$RUN_DIR/result.json" <<'EOF'
import json, sys
j = json.load(open(sys.argv[1]))
bps = j["end"]["sum_received"]["bits_per_second"]
json.dump({"gbps": bps / 1e9, "bytes": j["end"]["sum_received"]["bytes"],
           "latency_us": {}, "bad_pieces": 0, "pieces_verified": 0, "timeline": [
               i["sum"]["bits_per_second"] / 1e9 for i in j["intervals"]]}, open(sys.argv[2], "w"))
EOF
}

# The disk's ceiling: fio over the same files, O_DIRECT random reads of one piece through
# io_uring, at the queue depth the swarm offers (peers x depth x 16 KiB, in pieces), for the
# same duration, in the same memory cgroup, on the seeder's CPU. -> result.json in the
# bench's schema: gbps, p50/p99 completion latency (us), CPU-s/GB (fio's usr + sys).
run_fio() {
    maybe_install fio fio || { WHY="fio not installed (apt-get install fio)"; return 1; }
    local depth files
    depth=$((SC_PEERS * SC_DEPTH * 16384 / SC_PIECE_LENGTH_BYTES))
    [ "$depth" -ge 1 ] || depth=1
    files=$(ls "$DATA"/*.bin | paste -sd:)
    if [ "$SC_DROP_CACHES" = 1 ]; then drop_page_cache; fi
    $PIN fio --name=ceiling --filename="$files" --ioengine=io_uring --direct=1 --rw=randread \
        --bs="$SC_PIECE_LENGTH_BYTES" --iodepth="$depth" --numjobs=1 --time_based \
        --runtime="$DUR" --ramp_time=1 --norandommap --randrepeat=0 \
        --output-format=json --output="$RUN_DIR/fio.json" >"$RUN_DIR/seeder.log" 2>&1 \
        || { WHY="fio failed: $(tail -1 "$RUN_DIR/seeder.log")"; return 1; }
    $PY - "$RUN_DIR/fio.json" "$RUN_DIR/result.json" "$depth" <<'EOF'
import json, sys
j = json.load(open(sys.argv[1]))["jobs"][0]
r = j["read"]
secs = j["job_runtime"] / 1000.0
gb = r["io_bytes"] / 1e9
pct = r["clat_ns"].get("percentile", {})
cpu = (j["usr_cpu"] + j["sys_cpu"]) / 100.0 * secs
json.dump({"gbps": r["io_bytes"] * 8 / secs / 1e9, "bytes": r["io_bytes"],
           "cpu_secs_per_gb": cpu / gb if gb else None, "iodepth": int(sys.argv[3]),
           "latency_us": {"p50": int(pct.get("50.000000", 0) / 1000), "p99": int(pct.get("99.000000", 0) / 1000)},
           "bad_pieces": 0, "pieces_verified": 0, "timeline": []}, open(sys.argv[2], "w"))
EOF
}

DUR=${DURATION:-$("$PY" -c "import tomllib,sys;print(tomllib.load(open(sys.argv[1],'rb'))['run']['duration_secs'])" "$SC_FILE" 2>/dev/null || echo 8)}
echo "== scenario $SCENARIO, $ROUNDS rounds x ${DUR}s, seeders: $SEEDERS"
# A rerun on the same day replaces a seeder's rounds: the summary takes the median of every
# round*/ it finds, so leftover rounds of an earlier run would be mixed in.
for s in $SEEDERS; do rm -rf "${OUT:?}/$s"; done
for round in $(seq 1 "$ROUNDS"); do
    for s in $SEEDERS; do
        RUN_DIR="$OUT/$s/round$round"; mkdir -p "$RUN_DIR"; rm -f "$RUN_DIR/result.json" "$RUN_DIR/why"
        PORT=$(free_port); PID=0; WHY=""; MIN_WARMUP=""
        # Config/session dirs of the real clients: scratch space under WORK, not in results.
        SEEDER_TMP="$WORK/seeder-state/$s"; rm -rf "$SEEDER_TMP"; mkdir -p "$SEEDER_TMP"
        ok=0
        case $s in
            iperf3) run_iperf3 && ok=1 ;;
            fio) run_fio && ok=1 ;;
            *)
                case $s in
                    squall-copy) start_squall copy ;;
                    squall-cached) start_squall copy "$ROOT/configs/bench-cached.toml" ;;
                    # cold: each read mode forced (squall-copy runs the default, auto); the
                    # direct cache is half the memory budget (1 GiB when there is none).
                    squall-buffered) squall_with 'direct_io = false' && start_squall copy "$SEEDER_TMP/squall.toml" ;;
                    squall-direct) squall_with 'direct_io = true' "block_cache_bytes_per_shard = $(( SC_MEMORY_LIMIT_BYTES > 0 ? SC_MEMORY_LIMIT_BYTES / 2 : 1 << 30 ))" && start_squall copy "$SEEDER_TMP/squall.toml" ;;
                    squall-base) if [ -x "${SQUALL_BASE_BIN:-}" ]; then SQUALL_BIN=$SQUALL_BASE_BIN start_squall copy; else WHY="SQUALL_BASE_BIN not set"; false; fi ;;
                    squall-zerocopy) start_squall zerocopy ;;
                    squall-splice) start_squall splice ;;
                    null) start_null ;;
                    libtorrent) start_libtorrent ;;
                    aria2) start_aria2 ;;
                    transmission) start_transmission ;;
                    rtorrent) start_rtorrent ;;
                    qbittorrent) start_qbittorrent ;;
                    rqbit) start_rqbit ;;
                    *) WHY="unknown seeder"; false ;;
                esac && {
                    run_sc=$SC_FILE
                    if [ -n "$MIN_WARMUP" ]; then # a seeder that needs longer before it unchokes
                        run_sc="$RUN_DIR/scenario.toml"
                        awk -v w="$MIN_WARMUP" '/^warmup_secs *=/ && $3 + 0 < w { $0 = "warmup_secs = " w } { print }' \
                            "$SC_FILE" >"$run_sc"
                        grep -q '^warmup_secs' "$run_sc" || sed -i "/^\[run\]/a warmup_secs = $MIN_WARMUP" "$run_sc"
                    fi
                    rc=0
                    # cold: whatever loading read (hash checks, -V) leaves the cache now.
                    if [ "$SC_DROP_CACHES" = 1 ]; then drop_page_cache; fi
                    # In the background + wait, so an INT/TERM trap runs at once and stops both.
                    taskset -c 1 "$BENCH" scenario "$run_sc" --target "127.0.0.1:$PORT" --torrents "$TORRENTS" \
                        --duration "$DUR" --target-pid "$PID" --source-ips "$SOURCE_IPS" \
                        --json "$RUN_DIR/result.json" >"$RUN_DIR/bench.txt" 2>"$RUN_DIR/bench.err" &
                    BENCH_PID=$!
                    wait "$BENCH_PID" || rc=$?
                    BENCH_PID=0
                    [ -f "$RUN_DIR/result.json" ] && ok=1
                    [ $rc -ne 0 ] && WHY="bench exit $rc: $(tail -1 "$RUN_DIR/bench.err")"
                    # RSS of the seeder after the run (many-peers wants it): the peak (VmHWM,
                    # which counts file pages mapped, e.g. squall's page_cache_sends), and
                    # the seeder's own memory now (RssAnon + RssShmem).
                    grep VmHWM "/proc/$PID/status" 2>/dev/null | awk '{print $2}' >"$RUN_DIR/rss_kib" || true
                    awk '/^RssAnon:|^RssShmem:/ {own += $2} END {print own}' "/proc/$PID/status" \
                        >"$RUN_DIR/own_rss_kib" 2>/dev/null || true
                }
                ;;
        esac
        stop_seeder
        [ -n "$WHY" ] && echo "$WHY" >"$RUN_DIR/why"
        if [ $ok = 1 ]; then
            printf '  round %s %-16s %6.2f Gb/s\n' "$round" "$s" "$($PY -c "import json,sys;print(json.load(open(sys.argv[1]))['gbps'])" "$RUN_DIR/result.json")"
        else
            printf '  round %s %-16s not available: %s\n' "$round" "$s" "$WHY"
        fi
    done
done

echo "== summary"
"$PY" "$ROOT/bench/scripts/summarize.py" "$OUT" "$SCENARIO" "$SEEDERS" | tee "$OUT/summary.md"
runs=()
for s in $SEEDERS; do
    f=$(ls "$OUT/$s"/round*/result.json 2>/dev/null | head -1 || true)
    if [ -n "$f" ] && [ "$s" != iperf3 ] && [ "$s" != fio ]; then runs+=("$s=$f"); fi
done
if [ ${#runs[@]} -gt 0 ]; then
    "$BENCH" report --title "squall-bench $SCENARIO $DATE (round 1 of each)" --out "$OUT/report.html" "${runs[@]}"
    echo "report: $OUT/report.html"
fi
