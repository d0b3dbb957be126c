#!/usr/bin/env python3
"""The service manager's side of the fd store, and nothing else: binds a
$NOTIFY_SOCKET datagram socket at argv[1] and keeps every descriptor sent
with FDSTORE=1 (closing those FDSTOREREMOVE=1 names), as systemd would, so
that `umdev serve --fd-store` runs as under systemd. scripts/measure.sh
measures the cost of keeping state for a crash with it. Ends on SIGTERM."""
import array
import os
import socket
import sys

path = sys.argv[1]
try:
    os.unlink(path)
except FileNotFoundError:
    pass
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(path)
kept = {}
while True:
    data, ancdata, _, _ = s.recvmsg(4096, socket.CMSG_SPACE(253 * 4))
    fds = array.array("i")
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
    lines = data.decode(errors="replace").split("\n")
    name = next((l[7:] for l in lines if l.startswith("FDNAME=")), "stored")
    if "FDSTORE=1" in lines:
        kept.setdefault(name, []).extend(fds)
    else:
        for fd in fds:
            os.close(fd)
    if "FDSTOREREMOVE=1" in lines:
        for fd in kept.pop(name, []):
            os.close(fd)
