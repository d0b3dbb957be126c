#!/usr/bin/env python3
"""Start-up of `umdev serve --type mtty-2`: from exec to the READY=1 it sends
once its socket listens, over N runs (scripts/measure.sh prints it).

    scripts/startup.py UMDEV [RUNS]
"""
import os
import socket
import statistics
import subprocess
import sys
import time

binary = sys.argv[1]
runs = int(sys.argv[2]) if len(sys.argv) > 2 else 40
base = "/tmp/umdev-startup-%d" % os.getpid()
path, notify = base + ".sock", base + ".notify"
times = []
for _ in range(runs):
    for f in (path, notify):
        try:
            os.unlink(f)
        except FileNotFoundError:
            pass
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(notify)
    s.settimeout(30)
    t0 = time.monotonic()
    p = subprocess.Popen([binary, "serve", "--type", "mtty-2", "--socket", path, "--log-level", "error"],
                         env=dict(os.environ, NOTIFY_SOCKET=notify), stdout=subprocess.DEVNULL)
    while b"READY=1" not in s.recv(4096):
        pass
    times.append((time.monotonic() - t0) * 1000)
    p.terminate()
    p.wait()
    s.close()
for f in (path, notify):
    try:
        os.unlink(f)
    except FileNotFoundError:
        pass
times.sort()
print("%s: exec to READY=1 p50 %.2f ms, p90 %.2f ms, min %.2f ms (%d starts)"
      % (binary, statistics.median(times), times[int(len(times) * 0.9)], times[0], runs))
