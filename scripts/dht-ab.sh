#!/usr/bin/env bash
# Does a DHT pass over a large catalog slow serving down? (issue 20)
#
# Usage: scripts/dht-ab.sh [ROUNDS] [TORRENTS_IN_CATALOG]
#
# The seeder holds a catalog of TORRENTS_IN_CATALOG (default 10,000) small torrents plus one
# 256 MiB torrent; squall-bench downloads the big one (the `hot` load: 32 peers x depth 64).
# A: [dht] off. B: [dht] on, bootstrapped only from a local DHT of 4 libtorrent sessions on
# 127.0.0.1 (tests/support/lt_dht_nodes.py), announcing the whole catalog over
# reannounce_secs = 60 (10,000 / 60 s = 167 announces/s, 3.3x the default rate of 50/s), so
# every B run serves while the DHT thread looks up and announces. Seeder (and its DHT thread)
# on CPU 0, bench on CPU 1, ABBA order, medians (scripts/ab.sh). At the end the local nodes
# print how many info-hashes they hold announces for: proof that B announced meanwhile.
# Loopback only: the DHT listens on 127.0.0.1 and knows no node but the local ones.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-5}; COUNT=${2:-10000}
WORK=${SQUALL_BENCH_DIR:-/tmp/squall-dht-ab}
mkdir -p "$WORK"
cargo build --release -q -p squall -p squall-bench
SQ=target/release/squall
CAT=$WORK/catalog; BIG=$WORK/big
if [ ! -f "$CAT/torrents/big.torrent" ]; then
  rm -rf "$CAT" "$BIG"; mkdir -p "$BIG"
  echo "generating $COUNT small torrents (no tracker) and one 256 MiB torrent in $WORK"
  /usr/bin/python3 scripts/gen-catalog.py "$COUNT" "$CAT" --announce '' > /dev/null
  head -c $((256 << 20)) /dev/urandom > "$CAT/data/big.bin"
  "$SQ" make "$CAT/data/big.bin" -o "$CAT/torrents/big.torrent" --piece-length 1M > /dev/null
  cp "$CAT/torrents/big.torrent" "$BIG/"
fi
# The local DHT: holds its stdin open on a fifo, prints its nodes, runs until the fifo closes.
FIFO=$WORK/dht-stdin; rm -f "$FIFO"; mkfifo "$FIFO"
taskset -c 1 /usr/bin/python3 tests/support/lt_dht_nodes.py --count 4 < "$FIFO" > "$WORK/dht-nodes.out" &
DHT_PID=$!
exec 9> "$FIFO"
trap 'exec 9>&-; wait $DHT_PID 2>/dev/null || true' EXIT
for _ in $(seq 300); do grep -q nodes "$WORK/dht-nodes.out" 2>/dev/null && break; sleep 0.1; done
NODES=$(/usr/bin/python3 -c 'import json,sys; print(", ".join("\"%s\"" % n for n in json.loads(open(sys.argv[1]).readline())["nodes"]))' "$WORK/dht-nodes.out")
echo "local DHT nodes: $NODES"
# Per-IP and prefix limits raised for the bench's 32 peers on 127.0.0.1, as configs/bench*.toml do.
BASE=configs/bench.toml
{ cat "$BASE"; printf '\n[dht]\nenabled = false\n'; } > "$WORK/a.toml"
{ cat "$BASE"; printf '\n[dht]\nenabled = true\nlisten = "127.0.0.1:0"\nbootstrap = [%s]\nserver_mode = "always"\nannounce_rate_per_sec = 1000\nreannounce_secs = 60\n' "$NODES"; } > "$WORK/b.toml"
SQUALL_BENCH_DIR=$WORK SQUALL_AB_BENCH_TORRENTS=$BIG scripts/ab.sh "$WORK/a.toml" "$WORK/b.toml" "$ROUNDS" "$CAT/torrents" "$CAT/data"
exec 9>&-
wait $DHT_PID || true
trap - EXIT
echo "announces held by the local DHT nodes (B's passes): $(tail -1 "$WORK/dht-nodes.out")"
