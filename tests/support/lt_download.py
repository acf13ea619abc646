#!/usr/bin/python3
"""Download one torrent from given peers with libtorrent (Debian python3-libtorrent).

Usage: lt_download.py --save DIR (--torrent FILE | --magnet URI) --peer HOST:PORT [--peer ...]
                      [--timeout SECS] [--rate-limit BYTES_PER_SEC] [--abort-after-bytes N]
                      [--dht-node 127.0.0.1:PORT ...] [--reconnect-secs N] [--encryption forced]
Prints one JSON line: {"ok": bool, "state": ..., "downloaded": n, "seconds": s, "error": ...}
and exits 0 only when the download completed (or was aborted as asked).

Loopback only: DHT, LSD, UPnP, NAT-PMP and uTP are off; peers are dialed with connect_peer.
With --dht-node (loopback addresses only; anything else is refused), the DHT is on and
bootstrapped from exactly those nodes, with libtorrent's loopback/private-IP restrictions off;
then --peer may be left out and peers come from the DHT alone.
With --encryption forced, MSE/PE is forced both ways with RC4 as the only level (a peer set to
"require encryption"); the JSON line then says how many connected peers were RC4-encrypted.

--reconnect-secs N: redial a peer that dropped the connection after N seconds, however often
it dropped. libtorrent's own default waits 60 s times (failures + 1) and stops dialing after 3
failures, longer than a test's timeout: for tests whose seeder drops connections on purpose.
"""
import argparse
import json
import sys
import time
import warnings

import libtorrent as lt

# session.status() (dht_nodes) is deprecated in 2.0 but still the simplest probe.
warnings.filterwarnings("ignore", category=DeprecationWarning)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--save", required=True)
    ap.add_argument("--torrent")
    ap.add_argument("--magnet")
    ap.add_argument("--peer", action="append", default=[])
    ap.add_argument("--timeout", type=float, default=60)
    ap.add_argument("--rate-limit", type=int, default=0)
    ap.add_argument("--abort-after-bytes", type=int, default=0)
    ap.add_argument("--dht-node", action="append", default=[])
    ap.add_argument("--reconnect-secs", type=int, default=0)
    ap.add_argument("--encryption", choices=["forced"])
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args()
    for node in args.dht_node:
        if not node.startswith("127."):
            print(json.dumps({"ok": False, "error": "--dht-node must be a 127.x address: " + node}))
            return 2

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
    if args.reconnect_secs:
        settings["min_reconnect_time"] = args.reconnect_secs
        settings["max_failcount"] = 1000
    if args.encryption == "forced":
        settings.update({
            "out_enc_policy": int(lt.enc_policy.pe_forced),
            "in_enc_policy": int(lt.enc_policy.pe_forced),
            "allowed_enc_level": int(lt.enc_level.pe_rc4),
            "prefer_rc4": True,
        })
    if args.dht_node:
        settings.update({
            "enable_dht": True,
            # Never the public routers (libtorrent's default): only the local nodes given.
            "dht_bootstrap_nodes": ",".join(args.dht_node),
            "dht_restrict_routing_ips": False,
            "dht_restrict_search_ips": False,
            "dht_ignore_dark_internet": False,
            "dht_enforce_node_id": False,
            "dht_prefer_verified_node_ids": False,
        })
    if args.verbose:
        settings["alert_mask"] = lt.alert.category_t.all_categories
    ses = lt.session(settings)
    for node in args.dht_node:
        host, port = node.rsplit(":", 1)
        ses.add_dht_node((host, int(port)))
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
    rc4_peers = 0
    while time.time() - start < args.timeout:
        s = h.status()
        state = str(s.state)
        for pi in h.get_peer_info():
            if pi.flags & lt.peer_info.rc4_encrypted:
                rc4_peers = max(rc4_peers, 1)
        if time.time() - last_connect > 2 and s.num_peers == 0:
            for p in peers:
                h.connect_peer(p)
            if args.dht_node:
                # A torrent added before the DHT is up waits for the 15-minute announce
                # timer; ask the DHT for peers now (get_peers, then announce).
                h.force_dht_announce()
            last_connect = time.time()
        if args.abort_after_bytes and s.total_payload_download >= args.abort_after_bytes:
            print(json.dumps({"ok": True, "aborted": True, "downloaded": s.total_payload_download,
                              "seconds": time.time() - start}))
            return 0
        if args.verbose and int(time.time() - start) != int(time.time() - start - 0.05):
            print("t=%.0f dht_nodes=%d peers=%d state=%s" % (time.time() - start, ses.status().dht_nodes, s.num_peers, s.state), file=sys.stderr)
        if s.is_seeding or (s.has_metadata and s.progress >= 1.0 and s.state == lt.torrent_status.seeding):
            break
        for a in ses.pop_alerts():
            if args.verbose:
                print("alert: " + a.message(), file=sys.stderr)
            if isinstance(a, (lt.torrent_error_alert, lt.file_error_alert)):
                print(json.dumps({"ok": False, "error": a.message()}))
                return 1
        time.sleep(0.05)
    s = h.status()
    ok = bool(s.is_seeding)
    print(json.dumps({"ok": ok, "state": state, "downloaded": s.total_payload_download,
                      "total_wanted": s.total_wanted, "seconds": round(time.time() - start, 3),
                      "num_peers": s.num_peers, "rc4_peers": rc4_peers}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
