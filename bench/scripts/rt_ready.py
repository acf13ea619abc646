#!/usr/bin/python3
"""Is rtorrent seeding? For scripts/compare.sh.

Usage: rt_ready.py SCGI_SOCKET N_TORRENTS. Asks rtorrent over its local SCGI socket (XML-RPC)
for every download's completeness, hashing and started state; prints one line and exits 0 when
N_TORRENTS downloads are loaded, complete, not hashing and started, else 1.
"""
import socket
import sys
import xmlrpc.client


def scgi_call(path, method, *params):
    body = xmlrpc.client.dumps(params, method).encode()
    headers = b"CONTENT_LENGTH\0%d\0SCGI\x001\0" % len(body)
    req = b"%d:%s," % (len(headers), headers) + body
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(path)
    s.sendall(req)
    chunks = []
    while True:
        c = s.recv(65536)
        if not c:
            break
        chunks.append(c)
    s.close()
    resp = b"".join(chunks)
    xml = resp.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in resp else resp
    return xmlrpc.client.loads(xml)[0][0]


def main():
    path, want = sys.argv[1], int(sys.argv[2])
    try:
        rows = scgi_call(path, "d.multicall2", "", "main", "d.complete=", "d.hashing=", "d.state=")
    except Exception as e:  # socket not there yet, rtorrent busy, ...
        print("rtorrent scgi: %s" % e)
        return 1
    complete = sum(1 for c, _, _ in rows if c == 1)
    hashing = sum(1 for _, h, _ in rows if h != 0)
    started = sum(1 for _, _, st in rows if st == 1)
    print("rtorrent: %d loaded, %d complete, %d hashing, %d started" % (len(rows), complete, hashing, started))
    return 0 if len(rows) == want and complete == want and hashing == 0 and started == want else 1


sys.exit(main())
