#!/usr/bin/env python3
"""Hostile raw peers for scripts/soak.sh: garbage handshakes, slowloris handshakes, request
floods that never read, idle connections, connect/close churn, peers that ask for 512 blocks
through a 4 KiB receive window and never read them (held until squall's send deadline closes
them), and peers that send one 1 MiB message of an unknown id (refused at its length prefix),
in a loop.

Loopback only (the target must be in 127.0.0.0/8), bounded: at most --conns-max sockets
open at once, and it stops after --seconds. Prints one JSON line of counts at the end.
"""
import argparse
import ipaddress
import json
import random
import socket
import struct
import time


def handshake(info_hash, fast):
    reserved = bytearray(8)
    if fast:
        reserved[7] |= 0x04
    return bytes([19]) + b"BitTorrent protocol" + bytes(reserved) + info_hash + b"-HY0001-soakhostile1"


def frame(msg_id, payload=b""):
    return struct.pack(">IB", len(payload) + 1, msg_id) + payload


def connect(host, port, src, rcvbuf=0):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        # Before connect, so the window squall sees stays this small.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(2)
    s.bind((src, 0))
    s.connect((host, port))
    return s


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--peer", required=True, help="HOST:PORT of squall (loopback)")
    ap.add_argument("--info-hash", required=True, help="hex info-hash of a seeded torrent")
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--conns-max", type=int, default=200)
    args = ap.parse_args()
    host, port = args.peer.rsplit(":", 1)
    port = int(port)
    if not ipaddress.ip_address(host).is_loopback:
        raise SystemExit("hostile.py talks to loopback addresses only")
    info_hash = bytes.fromhex(args.info_hash)
    rng = random.Random(7)
    held = []  # [socket, kind, next_action_at, bytes_sent, opened_at]
    counts = {"garbage": 0, "slowloris": 0, "flood": 0, "idle": 0, "churn": 0, "never_reads": 0,
              "giant": 0, "giant_closed": 0, "errors": 0}
    deadline = time.time() + args.seconds
    n = 0
    while time.time() < deadline:
        n += 1
        src = "127.9.%d.%d" % ((n // 200) % 250 + 1, n % 200 + 1)
        kind = rng.choice(["garbage", "slowloris", "flood", "idle", "churn", "never_reads",
                           "giant"])
        try:
            if len(held) < args.conns_max:
                s = connect(host, port, src, 4096 if kind == "never_reads" else 0)
                counts[kind] += 1
                if kind == "garbage":
                    s.sendall(rng.randbytes(68))
                    s.close()
                elif kind == "churn":
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    s.close()
                elif kind == "flood":
                    s.sendall(handshake(info_hash, True) + frame(2))
                    reqs = b"".join(frame(6, struct.pack(">III", i % 64, 0, 16384)) for i in range(2000))
                    s.settimeout(0.5)
                    for _ in range(20):
                        s.sendall(reqs)
                    s.close()
                elif kind == "never_reads":
                    # Interested, then 512 requests; held without reading (never recv'd below)
                    # for 20 s, past squall's 10 s send deadline.
                    reqs = b"".join(frame(6, struct.pack(">III", i, 0, 16384)) for i in range(512))
                    s.sendall(handshake(info_hash, False) + frame(2) + reqs)
                    s.setblocking(False)
                    held.append([s, kind, time.time() + 1, 0, time.time()])
                elif kind == "giant":
                    # One 1 MiB message of an unknown id, then idle: squall closes at the prefix,
                    # so the send may fail part way.
                    s.sendall(handshake(info_hash, False))
                    try:
                        s.sendall(struct.pack(">IB", 1 << 20, 99) + bytes((1 << 20) - 1))
                        s.setblocking(False)
                        held.append([s, kind, time.time() + 1, 0, time.time()])
                    except OSError:
                        counts["giant_closed"] += 1
                        s.close()
                else:
                    s.setblocking(False)
                    held.append([s, kind, time.time() + 1, 0, time.time()])
        except OSError:
            counts["errors"] += 1
        now = time.time()
        keep = []
        for h in held:
            s, kind, at, state, opened = h
            if now >= at:
                try:
                    if kind == "slowloris":
                        hs = handshake(info_hash, False)
                        s.send(hs[state:state + 1])
                        h[3] = state + 1
                    elif kind == "never_reads":
                        pass
                    else:
                        # Drain what squall sent (handshake, bitfield); b"" is its close.
                        while True:
                            got = s.recv(65536)
                            if not got:
                                if kind == "giant":
                                    counts["giant_closed"] += 1
                                s.close()
                                break
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError:
                    if kind == "giant":
                        counts["giant_closed"] += 1
                    s.close()
                    continue
                if s.fileno() < 0:
                    continue
                h[2] = now + 1
                if now - opened > 20 or h[3] >= 60:
                    s.close()
                    continue
            keep.append(h)
        held = keep
        time.sleep(0.01)
    for h in held:
        h[0].close()
    print(json.dumps(counts))


if __name__ == "__main__":
    main()
