#!/usr/bin/python3
"""Generate N small single-file torrents and their content, for catalog scale tests.

Usage: scripts/gen-catalog.py N DIR [--size-max BYTES] [--announce URL] [--jobs J]
                                    [--distinct-content K]

Writes DIR/torrents/tNNNNNNN.torrent, DIR/data/tNNNNNNN.bin (1..size-max bytes of
deterministic content, 16 KiB pieces) and creates DIR/state/. Then measure with:

  squall catalog-check --torrents DIR/torrents --data DIR/data --state DIR/state   # first: hashes, writes resume
  squall catalog-check --torrents DIR/torrents --data DIR/data --state DIR/state   # second: from resume state

Pure Python (bencode and SHA-1 are a few lines), so generating 1,000,000 torrents does not
spawn 1,000,000 processes; the work is split into contiguous ranges over --jobs worker
processes (default: all cores), ~1 minute for 1,000,000 on 2 cores. Each torrent's size and
bytes come from its own seeded generator (seed 42 + index), so the output does not depend on
--jobs. Each torrent has one tracker, like a typical catalog entry: by default a loopback one
(opentracker's default port; nothing here may name an outside host), or --announce URL, or
none with --announce ''.

--distinct-content K (default 0 = every file distinct): torrent i >= K gets the bytes of
torrent i mod K, and its data file is a hard link to that one. Names (and so info-hashes)
stay distinct; the disk holds K content files instead of N (1,000,000 tiny files would take
4 GB of 4 KiB blocks). The catalog still stats one path per torrent.
"""
import argparse
import hashlib
import multiprocessing
import os
import random

PIECE_LENGTH = 16384


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


def content_of(i, size_max):
    rng = random.Random(42 + i)
    size = rng.randint(1, size_max)
    return rng.randbytes(size)


def torrent_bytes(name, content, announce):
    # Same bytes as bencode() of the dict, built directly (this is the hot loop).
    pieces = b"".join(hashlib.sha1(content[o:o + PIECE_LENGTH]).digest()
                      for o in range(0, len(content), PIECE_LENGTH))
    n = name.encode()
    info = (b"d6:lengthi%de4:name%d:%s12:piece lengthi%de6:pieces%d:%se"
            % (len(content), len(n), n, PIECE_LENGTH, len(pieces), pieces))
    head = b"d8:announce%d:%s" % (len(announce), announce.encode()) if announce else b"d"
    return head + b"4:info" + info + b"e"


def write_file(path, data):
    # os.open/os.write: three syscalls per file (open() adds fstat, ioctl, lseek and buffers).
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def work(job):
    lo, hi, d, size_max, announce, distinct = job
    data, torrents = os.path.join(d, "data"), os.path.join(d, "torrents")
    for i in range(lo, hi):
        name = "t%07d.bin" % i
        src = i % distinct if distinct else i
        content = content_of(src, size_max)
        path = os.path.join(data, name)
        if src != i:
            try:
                os.link(os.path.join(data, "t%07d.bin" % src), path)
            except FileExistsError:
                os.unlink(path)
                os.link(os.path.join(data, "t%07d.bin" % src), path)
        else:
            write_file(path, content)
        write_file(os.path.join(torrents, "t%07d.torrent" % i), torrent_bytes(name, content, announce))
    return hi - lo


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("n", type=int)
    ap.add_argument("dir")
    ap.add_argument("--size-max", type=int, default=4096)
    ap.add_argument("--announce", default="http://127.0.0.1:6969/announce")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--distinct-content", type=int, default=0)
    args = ap.parse_args()
    for sub in ("torrents", "data", "state"):
        os.makedirs(os.path.join(args.dir, sub), exist_ok=True)
    distinct = min(args.distinct_content, args.n) if args.distinct_content > 0 else 0
    common = (args.dir, args.size_max, args.announce, distinct)
    # The shared content files first, so the hard links of later ranges find them.
    first = distinct if distinct else 0
    if first:
        work((0, first) + common)
    chunk = 10000
    jobs = [(lo, min(lo + chunk, args.n)) + common for lo in range(first, args.n, chunk)]
    with multiprocessing.Pool(max(1, args.jobs)) as pool:
        for _ in pool.imap_unordered(work, jobs):
            pass
    print("generated %d torrents in %s" % (args.n, args.dir))


if __name__ == "__main__":
    main()
