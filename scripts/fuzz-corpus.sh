#!/usr/bin/env bash
# Regenerates the fuzz seed corpora under fuzz/corpus/<target>/ from real tools:
# mktorrent, transmission-create, libtorrent (python3-libtorrent via /usr/bin/python3:
# v1, v2 and hybrid) and `squall make`, plus hand-built wire streams, BEP 10/9 payloads,
# magnet links and configs.
#
# Owns: seed generation only. Must never: write outside fuzz/corpus/ (content and torrents
# are built in a temporary directory) or contact the network. A missing tool is reported and
# skipped, so the script works with whatever is installed; the committed seeds already cover
# every tool. Every seed is kept under 64 KiB (libFuzzer's default -max_len is 4 KiB for
# larger corpora, and small seeds mutate faster).
#
# Usage: scripts/fuzz-corpus.sh
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CORPUS="$ROOT/fuzz/corpus"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$CORPUS"/{bencode_decode,metainfo_parse,magnet_parse,wire_stream,extended_and_metadata,config_parse,http_request}

SQUALL="$ROOT/target/debug/squall"
if [[ ! -x "$SQUALL" ]]; then
    (cd "$ROOT" && cargo build -q --bin squall)
fi

# Content: one small file, one multi-file directory with an empty file and a nested dir.
mkdir -p "$WORK/content/multi/sub" "$WORK/out"
head -c 70001 /dev/urandom >"$WORK/content/single.bin"
head -c 30000 /dev/urandom >"$WORK/content/multi/a.bin"
head -c 5000 /dev/urandom >"$WORK/content/multi/sub/b.bin"
: >"$WORK/content/multi/sub/empty"
printf 'hello' >"$WORK/content/multi/z.txt"

made=()
note() { echo "fuzz-corpus: $*" >&2; }

for src in single.bin multi; do
    if command -v mktorrent >/dev/null; then
        mktorrent -l 15 -a http://127.0.0.1:6969/announce -c "mktorrent seed" \
            -o "$WORK/out/mktorrent-$src.torrent" "$WORK/content/$src" >/dev/null && made+=("mktorrent-$src")
    else
        note "mktorrent missing: skipped"
    fi
    if command -v transmission-create >/dev/null; then
        transmission-create -s 16 -t http://127.0.0.1:6969/announce -c "transmission seed" \
            -o "$WORK/out/transmission-$src.torrent" "$WORK/content/$src" >/dev/null \
            && made+=("transmission-$src")
    else
        note "transmission-create missing: skipped"
    fi
    "$SQUALL" make --piece-length 16K --tracker http://127.0.0.1:6969/announce \
        --web-seed http://127.0.0.1/ws/ --comment "squall seed" \
        -o "$WORK/out/squall-$src.torrent" "$WORK/content/$src" >/dev/null && made+=("squall-$src")
done
"$SQUALL" make --private --piece-length 32K -o "$WORK/out/squall-private-multi.torrent" \
    "$WORK/content/multi" >/dev/null && made+=("squall-private-multi")

if /usr/bin/python3 -c 'import libtorrent' 2>/dev/null; then
    /usr/bin/python3 - "$WORK/content" "$WORK/out" <<'PY'
import os, sys
import libtorrent as lt
content, out = sys.argv[1], sys.argv[2]
flags = {"v1": lt.create_torrent.v1_only, "v2": lt.create_torrent.v2_only, "hybrid": 0}
for src in ("single.bin", "multi"):
    for kind, flag in flags.items():
        fs = lt.file_storage()
        lt.add_files(fs, os.path.join(content, src))
        t = lt.create_torrent(fs, 16384, flags=flag)
        t.add_tracker("http://127.0.0.1:6969/announce")
        t.add_url_seed("http://127.0.0.1/ws/")
        t.set_comment("libtorrent seed")
        lt.set_piece_hashes(t, content)
        with open(os.path.join(out, f"libtorrent-{kind}-{src}.torrent"), "wb") as f:
            f.write(lt.bencode(t.generate()))
PY
    for f in "$WORK"/out/libtorrent-*.torrent; do made+=("$(basename "$f" .torrent)"); done
else
    note "python3-libtorrent missing (/usr/bin/python3): skipped"
fi

for name in "${made[@]}"; do
    f="$WORK/out/$name.torrent"
    size=$(stat -c %s "$f")
    if ((size >= 65536)); then
        note "$name is $size bytes (>= 64 KiB): not kept"
        continue
    fi
    cp "$f" "$CORPUS/metainfo_parse/$name.torrent"
    cp "$f" "$CORPUS/bencode_decode/$name.torrent"
    # The info dictionary alone is also a good bencode seed, and its magnet a magnet seed.
    if command -v transmission-show >/dev/null && [[ $name != libtorrent-v2* && $name != libtorrent-hybrid* ]]; then
        transmission-show --magnet "$f" 2>/dev/null | grep '^magnet:' \
            >"$CORPUS/magnet_parse/$name.txt" || rm -f "$CORPUS/magnet_parse/$name.txt"
    fi
done

# Hand-built seeds for the protocol and config targets (see fuzz/src/lib.rs for layouts).
/usr/bin/python3 - "$CORPUS" "$ROOT/configs/default.toml" <<'PY'
import os, struct, sys
corpus, default_toml = sys.argv[1], sys.argv[2]

def put(target, name, data):
    with open(os.path.join(corpus, target, name), "wb") as f:
        f.write(data)

def frame(msg_id=None, body=b""):
    if msg_id is None:
        return struct.pack(">I", 0)
    return struct.pack(">IB", 1 + len(body), msg_id) + body

def ben(v):
    if isinstance(v, int): return b"i%de" % v
    if isinstance(v, str): v = v.encode()
    if isinstance(v, bytes): return b"%d:%s" % (len(v), v)
    if isinstance(v, list): return b"l" + b"".join(ben(x) for x in v) + b"e"
    if isinstance(v, dict):
        return b"d" + b"".join(ben(k) + ben(v[k]) for k in sorted(v)) + b"e"

ext_hs = ben({"m": {"ut_metadata": 3, "ut_pex": 1, "lt_donthave": 7}, "metadata_size": 31337,
              "reqq": 250, "v": "libtorrent/2.0.8", "yourip": b"\x7f\x00\x00\x01", "p": 6881,
              "upload_only": 1})
md_req = ben({"msg_type": 0, "piece": 0})
md_data = ben({"msg_type": 1, "piece": 1, "total_size": 20000}) + b"\xab" * (20000 - 16384)
md_rej = ben({"msg_type": 2, "piece": 5})
for name, data in [("ext_handshake", ext_hs), ("md_request", md_req), ("md_data", md_data),
                   ("md_reject", md_rej), ("md_unknown", ben({"msg_type": 9, "piece": 0}))]:
    put("extended_and_metadata", name, data)
    put("bencode_decode", "wire-" + name, data)

req = struct.pack(">III", 0, 0, 16384)
session = b"".join([
    frame(20, b"\x00" + ext_hs), frame(14), frame(2), frame(None), frame(4, struct.pack(">I", 3)),
    frame(5, b"\xff\xe0"), frame(6, req), frame(8, req), frame(16, req),
    frame(7, struct.pack(">II", 0, 0) + b"x" * 40), frame(9, struct.pack(">H", 6881)),
    frame(13, struct.pack(">I", 1)), frame(17, struct.pack(">I", 2)), frame(15),
    frame(20, b"\x03" + md_req), frame(21, b"bep52"), frame(0), frame(1), frame(3),
])
# flags: bit 0 = prepend a valid handshake; bits 1-3 = max_len 2^(7+n); then k chunk sizes.
put("wire_stream", "session-whole", bytes([1 | (6 << 1), 0]) + session)
put("wire_stream", "session-chunked", bytes([1 | (6 << 1), 3, 1, 7, 200]) + session)
put("wire_stream", "oversized-prefix", bytes([1, 1, 5]) + struct.pack(">I", 0xFFFFFFFF) + b"\x07")
put("wire_stream", "bad-have-len", bytes([1, 0]) + frame(4, b"\x00\x00"))
hs = b"\x13BitTorrent protocol" + b"\x00" * 5 + b"\x10\x00\x05" + b"\x11" * 20 + b"-LT2080-" + b"r" * 12
put("wire_stream", "raw-handshake", bytes([6 << 1, 2, 3, 64]) + hs + frame(2) + frame(6, req))
put("wire_stream", "http-client", bytes([0, 0]) + b"GET / HTTP/1.1\r\n\r\n")

for name, link in [
    ("hex", "magnet:?xt=urn:btih:c12fe1c06bba254a9dc9f519b335aa7c1367a88a&dn=a%20b&tr=http%3A%2F%2F127.0.0.1%3A6969%2Fannounce"),
    ("base32", "magnet:?xt=urn:btih:YEX6DQDLXISUVHOJ6UM3GNNKPQJWPKEK&dn=x&x.pe=127.0.0.1:6881"),
    ("many", "magnet:?dn=%E2%9C%93&xt=urn:btih:c12fe1c06bba254a9dc9f519b335aa7c1367a88a&tr=udp://t:1&tr=http://u/a&foo=bar&&x.pe=[::1]:1"),
]:
    put("magnet_parse", name + ".txt", link.encode())

with open(default_toml, "rb") as f:
    put("config_parse", "default.toml", f.read())
put("config_parse", "catalog.toml", b'[catalog]\ntorrents_dir = "/srv/t"\ndata_dir = "/srv/d"\nstate_dir = "/var/lib/squall"\n')
put("config_parse", "engine.toml", b'[engine]\nshards = 2\nserve_mode = "splice"\npeers_max = 100\nblock_len_max_bytes = 16384\n')
put("config_parse", "empty.toml", b"")
# HTTP heads: the first two bytes set the parse limits (see squall_fuzz::http_request).
put("http_request", "range-get", b"\x08\x10GET /single.bin HTTP/1.1\r\nHost: x\r\nRange: bytes=0-99\r\n\r\n")
put("http_request", "head-pipelined", b'\x40\x40HEAD /multi/sub/b%20c HTTP/1.1\r\nHost: x\r\nIf-None-Match: "e"\r\nConnection: close\r\n\r\nGET /x HTTP/1.0\r\n\r\n')
put("http_request", "traversal-multirange", b'\x40\x40GET /a/%2e%2e/%c0%ae HTTP/1.1\r\nHost: x\r\nRange: bytes=-5,7-\r\nIf-Range: "t"\r\n\r\n')
put("http_request", "tight-limits", b"\x02\x01GET /aaaaaaaaaaaaaaaaaaaaaa HTTP/1.1\r\nHost: x\r\n\r\n")
PY

for t in "$CORPUS"/*/; do
    echo "fuzz-corpus: $(basename "$t"): $(find "$t" -type f | wc -l) seeds"
done
