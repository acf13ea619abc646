#!/usr/bin/python3
"""A libtorrent leecher that finds nobody by itself: it announces to the torrent's tracker,
listens on 127.0.0.1 and waits to be dialed (it never calls connect_peer).

Usage: lt_tracker_leech.py --save DIR --torrent FILE [--timeout SECS] [--encryption forced|disabled]
Prints `announced` on its own line once the tracker has answered (the test starts the seeder
only then), and at the end one JSON line: {"ok": bool, "downloaded": n, "seconds": s, ...};
exits 0 only when the download completed.

Loopback only: DHT, LSD, UPnP, NAT-PMP and uTP are off; incoming TCP only.
With --encryption forced, MSE/PE is forced both ways with RC4 only (plaintext is refused);
with --encryption disabled, MSE/PE is refused both ways (plaintext only).
"""
import argparse
import json
import sys
import time

import libtorrent as lt


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--save", required=True)
    ap.add_argument("--torrent", required=True)
    ap.add_argument("--timeout", type=float, default=90)
    ap.add_argument("--encryption", choices=["forced", "disabled"])
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
        "announce_to_all_trackers": True,
        "alert_mask": lt.alert.category_t.error_notification
        | lt.alert.category_t.status_notification
        | lt.alert.category_t.tracker_notification,
    }
    if args.encryption == "forced":
        settings.update({
            "out_enc_policy": int(lt.enc_policy.pe_forced),
            "in_enc_policy": int(lt.enc_policy.pe_forced),
            "allowed_enc_level": int(lt.enc_level.pe_rc4),
        })
    if args.encryption == "disabled":
        settings.update({
            "out_enc_policy": int(lt.enc_policy.pe_disabled),
            "in_enc_policy": int(lt.enc_policy.pe_disabled),
        })
    ses = lt.session(settings)
    params = lt.add_torrent_params()
    params.ti = lt.torrent_info(args.torrent)
    params.save_path = args.save
    params.flags &= ~lt.torrent_flags.auto_managed
    params.flags &= ~lt.torrent_flags.paused
    h = ses.add_torrent(params)
    start = time.time()
    announced = False
    error = None
    while time.time() - start < args.timeout:
        for a in ses.pop_alerts():
            if isinstance(a, lt.tracker_reply_alert) and not announced:
                announced = True
                print("announced", flush=True)
            elif isinstance(a, (lt.tracker_error_alert, lt.torrent_error_alert)):
                error = a.message()
                print(json.dumps({"alert": error}), file=sys.stderr, flush=True)
        s = h.status()
        if s.is_seeding:
            break
        time.sleep(0.05)
    s = h.status()
    ok = bool(s.is_seeding)
    print(json.dumps({"ok": ok, "announced": announced, "downloaded": s.total_payload_download,
                      "seconds": round(time.time() - start, 3), "num_peers": s.num_peers,
                      "error": error}), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
