"""A VNC client and a browser that stop reading cost only their own frames:
other viewers keep seeing changes, and the device keeps answering."""
import os
import socket
import subprocess
import time

from browser import Browser
from conftest import free_port, mismatches, pattern_rows, png_rows, wait_for


def stalled_vnc(port):
    """RFB 3.8, no authentication, asks for frames, never reads them."""
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.recv(12)
    s.sendall(b"RFB 003.008\n")
    n = s.recv(1)[0]
    s.recv(n)
    s.sendall(b"\x01")
    s.recv(4)
    s.sendall(b"\x01")
    init = s.recv(24)
    s.recv(int.from_bytes(init[20:24], "big"))
    w, h = int.from_bytes(init[0:2], "big"), int.from_bytes(init[2:4], "big")
    for i in range(64):
        s.sendall(bytes([3, 1 if i else 0, 0, 0, 0, 0]) + w.to_bytes(2, "big") + h.to_bytes(2, "big"))
    return s


def stalled_websocket(port):
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.sendall(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    return s


def test_stalled_clients_do_not_hold_up_others_or_the_device(umdev):
    device = umdev.serve("mbochs-medium")
    umdev.play(device, "--mode", "1024x768", "--seed", "1")
    vnc, http = free_port(), free_port()
    view = umdev.view("--socket", device + ".display", "--vnc", f"127.0.0.1:{vnc}", "--http", f"127.0.0.1:{http}")
    shot = os.path.join(umdev.dir, "vnc.png")
    wait_for(lambda: subprocess.run(["vncdo", "-s", f"127.0.0.1::{vnc}", "capture", shot],
                                    capture_output=True, timeout=60).returncode == 0, what="VNC")
    stuck = [stalled_vnc(vnc), stalled_websocket(http)]
    browser = Browser(f"http://127.0.0.1:{http}/")
    try:
        # The guest changes mode and picture several times while the stalled clients hold on.
        for seed, (w, h) in zip(range(10, 16), [(800, 600), (1024, 768)] * 3):
            umdev.play(device, "--mode", f"{w}x{h}", "--seed", str(seed))
            # The device socket still answers at once: a register round trip per write.
            bench = subprocess.run([umdev.bench, "--socket", device, "--region", "2", "--offset", "0x50a",
                                    "--widths", "2", "--only", "write-2", "--iterations", "2000"],
                                   capture_output=True, text=True, timeout=60)
            assert bench.returncode == 0, bench.stderr
        w, h, seed = 1024, 768, 15

        def vnc_shows():
            subprocess.run(["vncdo", "-s", f"127.0.0.1::{vnc}", "capture", shot], check=True, timeout=60)
            sw, sh, rows = png_rows(shot)
            return (sw, sh) == (w, h) and mismatches(rows, pattern_rows(w, h, seed)) == 0
        wait_for(vnc_shows, timeout=15, step=0.2, what="the last picture over VNC")

        def page_shows():
            cw, ch, rows = png_rows(browser.canvas_png(0))
            return (cw, ch) == (w, h) and mismatches(rows, pattern_rows(w, h, seed)) == 0
        wait_for(page_shows, timeout=15, step=0.2, what="the last picture in the page")
        assert view.poll() is None   # the viewer is still running
    finally:
        browser.close()
        for s in stuck:
            s.close()
