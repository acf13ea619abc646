#!/usr/bin/python3
"""Load a .torrent in libtorrent (Debian python3-libtorrent), force a full recheck of the
content under SAVE_PATH, and exit 0 only if every piece passes.

Usage: /usr/bin/python3 lt_recheck.py TORRENT SAVE_PATH
Network is off: no DHT, LSD, UPnP, NAT-PMP; listens on loopback only.
"""
import sys
import time

import libtorrent as lt


def main():
    torrent_path, save_path = sys.argv[1], sys.argv[2]
    ses = lt.session({
        "listen_interfaces": "127.0.0.1:0",
        "enable_dht": False,
        "enable_lsd": False,
        "enable_upnp": False,
        "enable_natpmp": False,
        "alert_mask": 0,
    })
    ti = lt.torrent_info(torrent_path)
    params = lt.add_torrent_params()
    params.ti = ti
    params.save_path = save_path
    handle = ses.add_torrent(params)
    handle.force_recheck()
    deadline = time.time() + 60
    # force_recheck queues a check; wait until it has run and the torrent settled.
    time.sleep(0.2)
    while time.time() < deadline:
        st = handle.status()
        checking = st.state in (lt.torrent_status.checking_files,
                                lt.torrent_status.checking_resume_data)
        if not checking and (st.is_seeding or st.state == lt.torrent_status.downloading):
            break
        time.sleep(0.05)
    st = handle.status()
    total = ti.num_pieces()
    print(f"info_hash={ti.info_hash()} state={st.state} num_pieces={st.num_pieces} total={total} seeding={st.is_seeding}")
    sys.exit(0 if st.num_pieces == total and st.is_seeding else 1)


if __name__ == "__main__":
    main()
