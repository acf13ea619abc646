#!/usr/bin/python3
"""Seed every .torrent in TORRENTS_DIR from DATA_DIR with libtorrent, for scripts/compare.sh.

Usage: lt_seed.py PORT TORRENTS_DIR DATA_DIR. Prints 'ready' once every torrent is seeding.
Settings: high_performance_seed(), uTP/DHT/LSD/UPnP/NAT-PMP off, many connections per IP,
seed_mode (libtorrent then hash-checks each piece the first time it is requested).
"""
import os
import sys
import time

import libtorrent as lt

port, tdir, ddir = int(sys.argv[1]), sys.argv[2], sys.argv[3]
s = lt.high_performance_seed()
s.update({
    "listen_interfaces": "127.0.0.1:%d" % port,
    "enable_dht": False, "enable_lsd": False, "enable_upnp": False, "enable_natpmp": False,
    "enable_outgoing_utp": False, "enable_incoming_utp": False,
    "allow_multiple_connections_per_ip": True,
    "connections_limit": 100000, "unchoke_slots_limit": -1,
    "active_seeds": -1, "active_limit": -1, "alert_mask": 0,
})
ses = lt.session(s)
handles = []
for name in sorted(os.listdir(tdir)):
    if not name.endswith(".torrent"):
        continue
    p = lt.add_torrent_params()
    p.ti = lt.torrent_info(os.path.join(tdir, name))
    p.save_path = ddir
    p.flags |= lt.torrent_flags.seed_mode
    # Not auto-managed, so it must also be unpaused by hand or it refuses every peer.
    p.flags &= ~(lt.torrent_flags.auto_managed | lt.torrent_flags.paused)
    handles.append(ses.add_torrent(p))
while not all(h.status().is_seeding for h in handles):
    time.sleep(0.1)
print("ready", len(handles), flush=True)
while True:
    time.sleep(3600)
