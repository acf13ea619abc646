#!/usr/bin/python3
"""A local Mainline DHT of libtorrent sessions on 127.0.0.1 (Debian python3-libtorrent).

Usage: lt_dht_nodes.py [--count N]
Prints one JSON line {"nodes": ["127.0.0.1:PORT", ...]} once every session knows the others,
then runs until stdin closes (the test holding the pipe ends), and then prints
{"dht_torrents": [n, ...]}: how many info-hashes each node holds announces for. Loopback only: the public
bootstrap routers are replaced by nothing (dht_bootstrap_nodes = ""), and the sessions learn
each other through add_dht_node; LSD, UPnP and NAT-PMP are off; the restrictions that make
libtorrent drop loopback nodes are off.

Why libtorrent nodes, not the mainline crate's Testnet: mainline 8 parses only 4-byte
transaction ids and libtorrent sends 2-byte ones, so mainline nodes never answer libtorrent's
queries (mainline's own requests to libtorrent nodes work: the id is echoed as sent).
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
    ap.add_argument("--count", type=int, default=4)
    args = ap.parse_args()
    sessions = []
    for _ in range(args.count):
        sessions.append(lt.session({
            "listen_interfaces": "127.0.0.1:0",
            "enable_dht": True,
            "dht_bootstrap_nodes": "",
            "dht_restrict_routing_ips": False,
            "dht_restrict_search_ips": False,
            "dht_ignore_dark_internet": False,
            "dht_enforce_node_id": False,
            "dht_prefer_verified_node_ids": False,
            # Every node of a local DHT is 127.0.0.1: libtorrent's per-IP query limit (5/s,
            # then 5 minutes blocked) and its 8 KB/s reply budget would throttle a seeder
            # announcing a catalog; and it keeps only 2,000 torrents by default.
            "dht_block_ratelimit": 1000000,
            "dht_upload_rate_limit": 100000000,
            "dht_max_torrents": 1000000,
            "dht_max_peers": 100000,
            "enable_lsd": False,
            "enable_upnp": False,
            "enable_natpmp": False,
            "alert_mask": 0,
        }))
    time.sleep(0.5)
    nodes = ["127.0.0.1:%d" % s.listen_port() for s in sessions]
    for s in sessions:
        for n in nodes:
            host, port = n.rsplit(":", 1)
            s.add_dht_node((host, int(port)))
    deadline = time.time() + 20
    while time.time() < deadline:
        if all(s.status().dht_nodes >= min(2, args.count - 1) for s in sessions):
            break
        time.sleep(0.1)
    print(json.dumps({"nodes": nodes}), flush=True)
    sys.stdin.read()
    print(json.dumps({"dht_torrents": [s.status().dht_torrents for s in sessions]}), flush=True)


if __name__ == "__main__":
    sys.exit(main())
