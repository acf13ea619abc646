#!/usr/bin/python3
"""Copy .torrent files, giving each an `announce` URL, for seeders that refuse trackerless
torrents (rtorrent with DHT off: "Could not create download: Could not find any trackers").

Usage: add_announce.py SRC_DIR DST_DIR URL. The info dict is copied byte for byte, so the
info-hash is unchanged. The URL should point at nothing (e.g. http://127.0.0.1:1/announce):
the seeder's announces then fail fast on loopback and never leave the machine.
"""
import os
import sys

src, dst, url = sys.argv[1], sys.argv[2], sys.argv[3].encode()
os.makedirs(dst, exist_ok=True)
entry = b"8:announce%d:%s" % (len(url), url)
n = 0
for name in sorted(os.listdir(src)):
    if not name.endswith(".torrent"):
        continue
    raw = open(os.path.join(src, name), "rb").read()
    if not raw.startswith(b"d"):
        sys.exit("%s: not a bencoded dict" % name)
    if not raw.startswith(b"d8:announce"):
        # "announce" sorts before every other top-level key a torrent has ("announce-list",
        # "comment", "created by", "creation date", "info", ...), so it goes first.
        if raw.startswith(b"d1:") or raw.startswith(b"d2:"):
            sys.exit("%s: unexpected short top-level key; refusing to guess the key order" % name)
        raw = b"d" + entry + raw[1:]
    with open(os.path.join(dst, name), "wb") as f:
        f.write(raw)
    n += 1
print(n)
