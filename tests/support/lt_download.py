#!/usr/bin/python3
"""Download one torrent from given peers with libtorrent (Debian python3-libtorrent).

Usage: lt_download.py --save DIR (--torrent FILE | --magnet URI) --peer HOST:PORT [--peer ...]
                      [--timeout SECS] [--rate-limit BYTES_PER_SEC] [--abort-after-bytes N]
Prints one JSON line: {"ok": bool, "state": ..., "downloaded": n, "seconds": s, "error": ...}
and exits 0 only when the download completed (or was aborted as asked).

Loopback only: DHT, LSD, UPnP, NAT-PMP and uTP are off; peers are dialed with connect_peer.
"""
import argparse
import json
import sys
import time

import libtorrent as lt


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--save", required=True)
    ap.add_argument("--torrent")
    ap.add_argument("--magnet")
    ap.add_argument("--peer", action="append", default=[])
    ap.add_argument("--timeout", type=float, default=60)
    ap.add_argument("--rate-limit", type=int, default=0)
    ap.add_argument("--abort-after-bytes", type=int, default=0)
    args = ap.parse_args()

    settings = {
        "listen_interfaces": "127.0.0.1:0",
        "enable_dht": False,
        "enable_lsd": False,
        "enable_upnp": False,
        "enable_natpmp": False,
        "enable_outgoing_utp": False,
        "enable_incoming_utp": False,
        "allow_multiple_connections_per_ip": True,
        "alert_mask": lt.alert.category_t.error_notification | lt.alert.category_t.status_notification,
    }
    if args.rate_limit:
        settings["download_rate_limit"] = args.rate_limit
    ses = lt.session(settings)
    params = lt.add_torrent_params()
    if args.torrent:
        params.ti = lt.torrent_info(args.torrent)
    elif args.magnet:
        params = lt.parse_magnet_uri(args.magnet)
    else:
        print(json.dumps({"ok": False, "error": "give --torrent or --magnet"}))
        return 2
    params.save_path = args.save
    params.flags &= ~lt.torrent_flags.auto_managed
    params.flags &= ~lt.torrent_flags.paused
    h = ses.add_torrent(params)
    if args.rate_limit:
        # libtorrent 2.0 exempts local (loopback) peers from session limits; a per-torrent
        # limit applies to every peer.
        h.set_download_limit(args.rate_limit)
    peers = []
    for p in args.peer:
        host, port = p.rsplit(":", 1)
        peers.append((host.strip("[]"), int(port)))
    start = time.time()
    last_connect = 0.0
    state = ""
    while time.time() - start < args.timeout:
        s = h.status()
        state = str(s.state)
        if time.time() - last_connect > 2 and s.num_peers == 0:
            for p in peers:
                h.connect_peer(p)
            last_connect = time.time()
        if args.abort_after_bytes and s.total_payload_download >= args.abort_after_bytes:
            print(json.dumps({"ok": True, "aborted": True, "downloaded": s.total_payload_download,
                              "seconds": time.time() - start}))
            return 0
        if s.is_seeding or (s.has_metadata and s.progress >= 1.0 and s.state == lt.torrent_status.seeding):
            break
        for a in ses.pop_alerts():
            if isinstance(a, (lt.torrent_error_alert, lt.file_error_alert)):
                print(json.dumps({"ok": False, "error": a.message()}))
                return 1
        time.sleep(0.05)
    s = h.status()
    ok = bool(s.is_seeding)
    print(json.dumps({"ok": ok, "state": state, "downloaded": s.total_payload_download,
                      "total_wanted": s.total_wanted, "seconds": round(time.time() - start, 3),
                      "num_peers": s.num_peers}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
