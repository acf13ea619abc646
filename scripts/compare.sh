#!/usr/bin/env bash
# compare.sh [SCENARIO] — run one benchmark scenario (configs/bench/SCENARIO.toml, default
# hot) against every seeder we can start, one at a time, same data, same swarm:
#   seeder pinned to CPU 0 (taskset -c 0), squall-bench pinned to CPU 1, ROUNDS interleaved
#   rounds (default 3), medians. Loopback only; DHT/LSD/UPnP/NAT-PMP/uTP off everywhere.
# Prints a Markdown table and writes raw JSON + an HTML report to
#   bench/results/<date>-<scenario>/.
# A seeder that cannot start becomes a row saying why; nothing is skipped silently.
#
# Env: SQUALL_BENCH_DIR (work dir for data, default /tmp/squall-bench), ROUNDS (3),
#      DURATION (override the scenario's seconds), SEEDERS (space-separated subset),
#      SQUALL_BENCH_INSTALL=1 (apt-get install missing Debian clients; cargo install rqbit).
set -u -o pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
SCENARIO=${1:-hot}
SC_FILE="$ROOT/configs/bench/$SCENARIO.toml"
WORK=${SQUALL_BENCH_DIR:-/tmp/squall-bench}
ROUNDS=${ROUNDS:-3}
DATE=$(date -u +%Y-%m-%d)
OUT="$ROOT/bench/results/$DATE-$SCENARIO"
SQUALL="$ROOT/target/release/squall"
BENCH="$ROOT/target/release/squall-bench"
PY=/usr/bin/python3
ALL_SEEDERS="squall-copy squall-zerocopy squall-splice libtorrent aria2 transmission rtorrent qbittorrent rqbit null iperf3"
SEEDERS=${SEEDERS:-$ALL_SEEDERS}
SOURCE_IPS=127.0.0.2-127.0.0.250

die() { echo "compare.sh: $*" >&2; exit 1; }
[ -f "$SC_FILE" ] || die "no scenario $SC_FILE (try hot, catalog, many-peers, churn)"
[ "$(nproc)" -ge 2 ] || die "needs 2 CPUs (seeder on CPU 0, bench on CPU 1)"

echo "== building release binaries"
(cd "$ROOT" && cargo build --release -q -p squall -p squall-bench) || die "cargo build failed"

eval "$("$BENCH" scenario-data "$SC_FILE")" || die "cannot read $SC_FILE"
DATA="$WORK/$SCENARIO/data"
TORRENTS="$WORK/$SCENARIO/torrents"
mkdir -p "$DATA" "$TORRENTS" "$OUT"
ulimit -n 65536 2>/dev/null || true

echo "== data: $SC_TORRENTS x $SC_SIZE_BYTES bytes, pieces $SC_PIECE_LENGTH_BYTES (cached in $WORK)"
for i in $(seq 0 $((SC_TORRENTS - 1))); do
    name=$(printf 't%04d.bin' "$i")
    if [ ! -f "$DATA/$name" ] || [ "$(stat -c %s "$DATA/$name")" != "$SC_SIZE_BYTES" ]; then
        "$BENCH" gen-content --size-bytes "$SC_SIZE_BYTES" --out "$DATA/$name" || die "gen-content"
        rm -f "$TORRENTS/$name.torrent"
    fi
    if [ ! -f "$TORRENTS/$name.torrent" ]; then
        "$SQUALL" make "$DATA/$name" -o "$TORRENTS/$name.torrent" \
            --piece-length "$SC_PIECE_LENGTH_BYTES" >/dev/null || die "squall make"
    fi
done
echo "== warming the page cache"
cat "$DATA"/* >/dev/null

maybe_install() { # maybe_install BINARY PACKAGE
    command -v "$1" >/dev/null && return 0
    if [ "${SQUALL_BENCH_INSTALL:-0}" = 1 ]; then
        timeout 300 apt-get install -y --no-install-recommends "$2" >/dev/null 2>&1 || true
    fi
    command -v "$1" >/dev/null
}

PORT=0; PID=0; WHY=""; RUN_DIR=""
free_port() { $PY -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
wait_port() { # wait_port PORT SECS
    local end=$((SECONDS + $2))
    while [ $SECONDS -lt $end ]; do
        (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0
        kill -0 "$PID" 2>/dev/null || return 1
        sleep 0.2
    done
    return 1
}

# Each start_* sets PID and PORT and returns 0, or sets WHY and returns 1.
start_squall() { # MODE
    local state="$RUN_DIR/state"
    rm -rf "$state"
    : >"$RUN_DIR/seeder.log"
    taskset -c 0 "$SQUALL" seed --torrents "$TORRENTS" --data "$DATA" --listen "127.0.0.1:$PORT" \
        --state "$state" --shards 1 --serve "$1" --summary-secs 0 >"$RUN_DIR/seeder.log" 2>&1 &
    PID=$!
    local end=$((SECONDS + 120))
    while [ $SECONDS -lt $end ]; do
        grep -q '^ready' "$RUN_DIR/seeder.log" && return 0
        kill -0 $PID 2>/dev/null || break
        sleep 0.2
    done
    WHY="squall did not become ready: $(tail -1 "$RUN_DIR/seeder.log")"; return 1
}

start_null() {
    taskset -c 0 "$BENCH" null-seeder --listen "127.0.0.1:$PORT" --torrents "$TORRENTS" \
        >"$RUN_DIR/seeder.log" 2>&1 &
    PID=$!
    wait_port "$PORT" 20 || { WHY="null seeder did not listen: $(tail -1 "$RUN_DIR/seeder.log")"; return 1; }
}

start_libtorrent() {
    $PY -c 'import libtorrent' 2>/dev/null || maybe_install none python3-libtorrent
    $PY -c 'import libtorrent' 2>/dev/null || { WHY="python3-libtorrent not installed (apt-get install python3-libtorrent)"; return 1; }
    : >"$RUN_DIR/seeder.log"
    taskset -c 0 $PY "$ROOT/bench/scripts/lt_seed.py" "$PORT" "$TORRENTS" "$DATA" >"$RUN_DIR/seeder.log" 2>&1 &
    PID=$!
    local end=$((SECONDS + 300))
    while [ $SECONDS -lt $end ]; do
        grep -q '^ready' "$RUN_DIR/seeder.log" && return 0
        kill -0 $PID 2>/dev/null || break
        sleep 0.3
    done
    WHY="libtorrent did not become ready: $(tail -1 "$RUN_DIR/seeder.log")"; return 1
}

start_aria2() {
    maybe_install aria2c aria2 || { WHY="aria2c not installed (apt-get install aria2)"; return 1; }
    # -V + --bt-seed-unverified: hash-check once, then seed; -j: every torrent at once.
    taskset -c 0 aria2c --seed-ratio=0 -V --bt-seed-unverified=true -d "$DATA" --listen-port="$PORT" \
        --enable-dht=false --enable-dht6=false --bt-enable-lpd=false --enable-peer-exchange=false \
        --bt-max-peers=0 -j 100000 --max-overall-upload-limit=0 --file-allocation=none \
        --console-log-level=warn --summary-interval=0 "$TORRENTS"/*.torrent >"$RUN_DIR/seeder.log" 2>&1 &
    PID=$!
    wait_port "$PORT" 120 || { WHY="aria2c did not listen: $(tail -1 "$RUN_DIR/seeder.log")"; return 1; }
    sleep 2 # -V: let the hash check finish before measuring
}

start_transmission() {
    maybe_install transmission-daemon transmission-daemon || { WHY="transmission-daemon not installed (apt-get install transmission-daemon)"; return 1; }
    WHY="transmission-daemon installed but not wired into compare.sh yet"; return 1
}
start_rtorrent() {
    maybe_install rtorrent rtorrent || { WHY="rtorrent not installed (apt-get install rtorrent)"; return 1; }
    WHY="rtorrent installed but not wired into compare.sh yet"; return 1
}
start_qbittorrent() {
    maybe_install qbittorrent-nox qbittorrent-nox || { WHY="qbittorrent-nox not installed (apt-get install qbittorrent-nox)"; return 1; }
    WHY="qbittorrent-nox installed but not wired into compare.sh yet"; return 1
}
start_rqbit() {
    if ! command -v rqbit >/dev/null && [ "${SQUALL_BENCH_INSTALL:-0}" = 1 ]; then
        timeout 1200 cargo install rqbit >/dev/null 2>&1 || true
    fi
    command -v rqbit >/dev/null || { WHY="rqbit not installed (cargo install rqbit; SQUALL_BENCH_INSTALL=1 tries it)"; return 1; }
    WHY="rqbit installed but not wired into compare.sh yet"; return 1
}

stop_seeder() {
    [ "$PID" -gt 0 ] 2>/dev/null || return 0
    kill "$PID" 2>/dev/null
    for _ in $(seq 50); do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$PID" 2>/dev/null
    wait "$PID" 2>/dev/null
    PID=0
}
trap stop_seeder EXIT

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

DUR=${DURATION:-$("$PY" -c "import tomllib,sys;print(tomllib.load(open(sys.argv[1],'rb'))['run']['duration_secs'])" "$SC_FILE" 2>/dev/null || echo 8)}
echo "== scenario $SCENARIO, $ROUNDS rounds x ${DUR}s, seeders: $SEEDERS"
for round in $(seq 1 "$ROUNDS"); do
    for s in $SEEDERS; do
        RUN_DIR="$OUT/$s/round$round"; mkdir -p "$RUN_DIR"; rm -f "$RUN_DIR/result.json" "$RUN_DIR/why"
        PORT=$(free_port); PID=0; WHY=""
        ok=0
        case $s in
            iperf3) run_iperf3 && ok=1 ;;
            *)
                case $s in
                    squall-copy) start_squall copy ;;
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
                    taskset -c 1 "$BENCH" scenario "$SC_FILE" --target "127.0.0.1:$PORT" --torrents "$TORRENTS" \
                        --duration "$DUR" --target-pid "$PID" --source-ips "$SOURCE_IPS" \
                        --json "$RUN_DIR/result.json" >"$RUN_DIR/bench.txt" 2>"$RUN_DIR/bench.err"
                    rc=$?
                    [ -f "$RUN_DIR/result.json" ] && ok=1
                    [ $rc -ne 0 ] && WHY="bench exit $rc: $(tail -1 "$RUN_DIR/bench.err")"
                    # RSS of the seeder after the run (many-peers wants it).
                    grep VmHWM "/proc/$PID/status" 2>/dev/null | awk '{print $2}' >"$RUN_DIR/rss_kib" || true
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
    f=$(ls "$OUT/$s"/round*/result.json 2>/dev/null | head -1)
    [ -n "$f" ] && [ "$s" != iperf3 ] && runs+=("$s=$f")
done
if [ ${#runs[@]} -gt 0 ]; then
    "$BENCH" report --title "squall-bench $SCENARIO $DATE (round 1 of each)" --out "$OUT/report.html" "${runs[@]}"
    echo "report: $OUT/report.html"
fi
