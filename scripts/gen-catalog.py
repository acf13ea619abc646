#!/usr/bin/python3
"""Generate N small single-file torrents and their content, for catalog scale tests.

Usage: scripts/gen-catalog.py N DIR [--size-max BYTES] [--announce URL]

Writes DIR/torrents/tNNNNNNN.torrent, DIR/data/tNNNNNNN.bin (1..size-max bytes of
deterministic content, 16 KiB pieces) and creates DIR/state/. Then measure with:

  squall catalog-check --torrents DIR/torrents --data DIR/data --state DIR/state   # first: hashes, writes resume
  squall catalog-check --torrents DIR/torrents --data DIR/data --state DIR/state   # second: from resume state

Pure Python (bencode and SHA-1 are a few lines), so generating 100,000 torrents does not
spawn 100,000 processes. Each torrent has one tracker, like a typical catalog entry: by
default a loopback one (opentracker's default port; nothing here may name an outside host),
or --announce URL, or none with --announce ''.
"""
import argparse
import hashlib
import os
import random


def bencode(v):
    if isinstance(v, int):
        return b"i%de" % v
    if isinstance(v, str):
        v = v.encode()
    if isinstance(v, bytes):
        return b"%d:%s" % (len(v), v)
    if isinstance(v, list):
        return b"l" + b"".join(bencode(x) for x in v) + b"e"
    if isinstance(v, dict):
        items = sorted((k.encode() if isinstance(k, str) else k, x) for k, x in v.items())
        return b"d" + b"".join(bencode(k) + bencode(x) for k, x in items) + b"e"
    raise TypeError(type(v))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("n", type=int)
    ap.add_argument("dir")
    ap.add_argument("--size-max", type=int, default=4096)
    ap.add_argument("--announce", default="http://127.0.0.1:6969/announce")
    args = ap.parse_args()
    piece_length = 16384
    rng = random.Random(42)
    for sub in ("torrents", "data", "state"):
        os.makedirs(os.path.join(args.dir, sub), exist_ok=True)
    for i in range(args.n):
        name = "t%07d.bin" % i
        size = rng.randint(1, args.size_max)
        content = rng.randbytes(size)
        with open(os.path.join(args.dir, "data", name), "wb") as f:
            f.write(content)
        pieces = b"".join(hashlib.sha1(content[o:o + piece_length]).digest()
                          for o in range(0, size, piece_length))
        torrent = {
            "info": {"length": size, "name": name, "piece length": piece_length, "pieces": pieces},
        }
        if args.announce:
            torrent["announce"] = args.announce
        with open(os.path.join(args.dir, "torrents", "t%07d.torrent" % i), "wb") as f:
            f.write(bencode(torrent))
    print("generated %d torrents in %s" % (args.n, args.dir))


if __name__ == "__main__":
    main()
