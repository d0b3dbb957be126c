"""Fixtures for the end-to-end tests: umdev's own binary serving devices,
`umdev-bench play-guest` drawing on them, and `umdev view` watching."""
import os
import shutil
import socket
import subprocess
import tempfile
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def umdev_path(program="umdev"):
    """$UMDEV (or $UMDEV_BENCH), else the debug build's."""
    variable = {"umdev": "UMDEV", "umdev-bench": "UMDEV_BENCH"}[program]
    if os.environ.get(variable):
        return os.environ[variable]
    if program == "umdev-bench" and os.environ.get("UMDEV"):
        return os.path.join(os.path.dirname(os.environ["UMDEV"]), "umdev-bench")
    bin_dir = subprocess.run(["swift", "build", "--show-bin-path"], cwd=ROOT, check=True,
                             capture_output=True, text=True).stdout.strip()
    return os.path.join(bin_dir, program)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout=15.0, step=0.05, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(step)
    raise AssertionError(f"timed out waiting for {what}")


class Umdev:
    def __init__(self):
        self.binary = umdev_path()
        self.bench = umdev_path("umdev-bench")
        self.dir = tempfile.mkdtemp(prefix="umdev-e2e-")
        self.processes = []

    def serve(self, type_):
        path = os.path.join(self.dir, type_ + ".sock")
        self.processes.append(subprocess.Popen([self.binary, "serve", "--type", type_, "--socket", path,
                                                "--log-level", "error"]))
        wait_for(lambda: os.path.exists(path + ".display"), what=path + ".display")
        return path

    def play(self, socket_path, *args):
        out = subprocess.run([self.bench, "play-guest", "--socket", socket_path, *args],
                             check=True, capture_output=True, text=True).stdout
        assert out.startswith("ready:"), out
        return out

    def view(self, *args):
        log = open(os.path.join(self.dir, "view.log"), "a")
        p = subprocess.Popen([self.binary, "view", *args], stdout=log, stderr=log)
        self.processes.append(p)
        return p

    def close(self):
        for p in reversed(self.processes):
            p.terminate()
        for p in self.processes:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def umdev():
    u = Umdev()
    yield u
    u.close()


BARS = [0xffffff, 0xffff00, 0x00ffff, 0x00ff00, 0xff00ff, 0xff0000, 0x0000ff, 0x000000]


def pattern_pixel(x, y, width, height, seed):
    """umdev's TestPattern (Sources/Viewer/TestPattern.swift) at (x, y), as 0xRRGGBB."""
    if y < height // 4:
        return BARS[min(7, x * 8 // max(1, width))]
    return (x * 255 // max(1, width - 1)) << 16 | (y * 255 // max(1, height - 1)) << 8 | (((x ^ y) & 0xff) ^ seed)


def pattern_rows(width, height, seed):
    """The whole pattern as RGB rows."""
    rows = []
    for y in range(height):
        row = bytearray(width * 3)
        for x in range(width):
            c = pattern_pixel(x, y, width, height, seed)
            row[3 * x:3 * x + 3] = bytes((c >> 16, (c >> 8) & 0xff, c & 0xff))
        rows.append(bytes(row))
    return rows


def png_rows(data):
    """RGB rows of a PNG (bytes or path), with its size."""
    import png
    reader = png.Reader(bytes=data) if isinstance(data, (bytes, bytearray)) else png.Reader(filename=data)
    width, height, rows, _ = reader.asRGBA8()
    return width, height, [bytes(b for i, b in enumerate(r) if i % 4 != 3) for r in rows]


def mismatches(rows, expected):
    return sum(1 for a, b in zip(rows, expected) for i in range(0, len(a), 3) if a[i:i + 3] != b[i:i + 3]) \
        + abs(len(rows) - len(expected))
