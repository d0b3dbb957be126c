"""`umdev view --vnc` seen by a real VNC client (vncdotool)."""
import os
import subprocess

from conftest import free_port, mismatches, pattern_rows, png_rows, wait_for


def capture(port, path):
    subprocess.run(["vncdo", "-s", f"127.0.0.1::{port}", "capture", path], check=True, timeout=60)
    return png_rows(path)


def test_vnc_frame_is_the_guest_pattern_and_follows_a_mode_change(umdev):
    device = umdev.serve("mbochs-medium")
    umdev.play(device, "--mode", "800x600", "--pan", "0,64", "--seed", "9")
    port = free_port()
    umdev.view("--socket", device + ".display", "--vnc", f"127.0.0.1:{port}")
    shot = os.path.join(umdev.dir, "vnc.png")
    wait_for(lambda: subprocess.run(["vncdo", "-s", f"127.0.0.1::{port}", "capture", shot],
                                    capture_output=True, timeout=60).returncode == 0, what="a VNC capture")
    width, height, rows = capture(port, shot)
    assert (width, height) == (800, 600)
    assert mismatches(rows, pattern_rows(800, 600, 9)) == 0

    # The guest sets another mode: the next capture has its size and content.
    umdev.play(device, "--mode", "640x480", "--seed", "33")

    def shows_new_mode():
        w, h, r = capture(port, shot)
        return (w, h) == (640, 480) and mismatches(r, pattern_rows(640, 480, 33)) == 0
    wait_for(shows_new_mode, timeout=10, step=0.2, what="the new mode over VNC")


def test_vnc_shows_black_while_the_plane_is_disabled(umdev):
    device = umdev.serve("mbochs-small")   # no mode set: nothing on screen
    port = free_port()
    umdev.view("--socket", device + ".display", "--vnc", f"127.0.0.1:{port}")
    shot = os.path.join(umdev.dir, "black.png")
    wait_for(lambda: subprocess.run(["vncdo", "-s", f"127.0.0.1::{port}", "capture", shot],
                                    capture_output=True, timeout=60).returncode == 0, what="a VNC capture")
    _, _, rows = png_rows(shot)
    assert all(b == 0 for row in rows for b in row)


def test_vnc_refuses_the_network_without_a_password(umdev):
    device = umdev.serve("mdpy-vga")
    p = subprocess.run([umdev.binary, "view", "--socket", device + ".display", "--vnc", "0.0.0.0:5999"],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 1
    assert "--vnc-password-file" in p.stderr


def test_vnc_keeps_the_picture_across_live_upgrades_of_the_server(umdev):
    """`kill -USR2` replaces `umdev serve` (same pid); the viewer reconnects
    to the same display socket at once, and the picture never changes."""
    import signal
    import time
    path = os.path.join(umdev.dir, "upgraded.sock")
    log_path = os.path.join(umdev.dir, "serve.log")
    with open(log_path, "a") as log:
        server = subprocess.Popen([umdev.binary, "serve", "--type", "mbochs-medium", "--socket", path,
                                   "--log-level", "notice"], stdout=subprocess.DEVNULL, stderr=log)
    umdev.processes.append(server)
    wait_for(lambda: os.path.exists(path + ".display"), what=path + ".display")
    umdev.play(path, "--mode", "800x600", "--seed", "21")
    port = free_port()
    umdev.view("--socket", path + ".display", "--vnc", f"127.0.0.1:{port}")
    shot = os.path.join(umdev.dir, "upgrade.png")
    wait_for(lambda: subprocess.run(["vncdo", "-s", f"127.0.0.1::{port}", "capture", shot],
                                    capture_output=True, timeout=60).returncode == 0, what="a VNC capture")
    expected = pattern_rows(800, 600, 21)
    for round_ in range(1, 4):
        os.kill(server.pid, signal.SIGUSR2)
        wait_for(lambda: open(log_path).read().count("took over mbochs-medium") == round_, timeout=30,
                 what=f"upgrade {round_}")
        assert server.poll() is None
        width, height, rows = capture(port, shot)
        assert (width, height) == (800, 600)
        assert mismatches(rows, expected) == 0
    time.sleep(0.2)
    view_log = open(os.path.join(umdev.dir, "view.log")).read()
    assert "retrying every second" not in view_log, view_log
    assert view_log.count("watching") >= 2, view_log
