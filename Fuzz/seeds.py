#!/usr/bin/env python3
"""Writes the fuzz targets' seed corpora (Fuzz/corpus/*) from the recorded
sessions: QEMU's own messages to a vfio-user server
(Tests/Fixtures/qemu-transcripts/*.jsonl) for the codec and the endpoint,
and the Linux bochs driver's register accesses
(Tests/Fixtures/bochs-display/*.trace.txt) for the device models.
Run it again when the recordings change; the seeds are kept small."""
import glob
import hashlib
import json
import os
import struct

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "Fuzz", "corpus")


def write(target, data):
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    name = hashlib.sha1(data).hexdigest()[:16]
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def messages(path):
    """Client-to-server messages of a transcript: (header+payload bytes, descriptor count)."""
    for line in open(path):
        d = json.loads(line)
        if d.get("dir") != "c2s" or "payload_hex" not in d:
            continue
        payload = bytes.fromhex(d["payload_hex"])
        flags = (d["flags"] if isinstance(d.get("flags"), int) else 0)
        header = struct.pack("<HHIII", d["msg_id"], d["command"], 16 + len(payload), flags, d.get("error", 0))
        yield header + payload, d.get("nfds", 0)


def codec_and_endpoint():
    device_for = {"gpio": 0, "gpio-reboot": 0, "irq": 0, "irq-nommap": 1}
    for path in sorted(glob.glob(os.path.join(ROOT, "Tests/Fixtures/qemu-transcripts/*.jsonl"))):
        name = os.path.basename(path)[:-6]
        msgs = list(messages(path))
        # codec: one of each command (the first few of each kind), VERSION also as JSON.
        seen = {}
        for m, nfds in msgs:
            cmd = struct.unpack_from("<H", m, 2)[0]
            if seen.get(cmd, 0) >= 3 or len(m) > 4096:
                continue
            seen[cmd] = seen.get(cmd, 0) + 1
            write("codec", bytes([(nfds & 0x1f) | (0x80 if cmd == 1 else 0)]) + m)
        # endpoint: the session's opening, and a later stretch, as records; for every device.
        for start, count in ((0, 60), (len(msgs) // 2, 40)):
            body = b""
            for m, nfds in msgs[start:start + count]:
                if len(m) > 8192:
                    continue
                body += bytes([min(nfds, 15) | (0x80 if struct.unpack_from("<H", m, 2)[0] == 2 and nfds else 0)])
                body += struct.pack("<H", len(m)) + m
            for device in (device_for.get(name, 0), 2, 3, 4):
                write("endpoint", bytes([device]) + body[:60000])


def devices():
    """bochs-display traces as mbochs accesses: [kind][region][width][step][offset][value]."""
    regions = {"cfg": 7, "edid": 2, "dispi": 2, "qext": 2, "vga": 2, "mmio": 2}
    widths = {1: 0, 2: 1, 4: 2, 8: 3}
    for path in sorted(glob.glob(os.path.join(ROOT, "Tests/Fixtures/bochs-display/*.trace.txt"))):
        ops = b""
        for line in open(path):
            if line.startswith("#") or not line.strip():
                continue
            f = line.split()
            if len(f) < 7 or f[2] not in ("R", "W") or f[3] not in regions:
                continue
            try:
                offset = int(f[4], 16) if f[4].startswith("0x") else int(f[4])
                size = int(f[5])
                value = int(f[6], 16) if f[6].startswith("0x") else int(f[6])
            except ValueError:
                continue
            kind = 1 if f[2] == "W" else 0
            ops += struct.pack("<BBBBII", kind, regions[f[3]], widths.get(size, 0), 0, offset & 0xffffffff, value & 0xffffffff)
        for device in (4, 5):     # mbochs-small, mbochs-large (fuzz-devices' table)
            write("devices", bytes([device]) + ops[:12 * 300])
    # mtty: a loopback exchange with the FIFO on (FCR, IER, THR writes, RBR/IIR/LSR reads).
    ops = b""
    for kind, off, val in [(1, 2, 0xc1), (1, 1, 0x0f), (1, 4, 0x0b)] + [(1, 0, 0x41 + i) for i in range(20)] + \
                          [(0, 2, 0), (0, 5, 0)] + [(2, 0, 0), (0, 0, 0)] * 10:
        ops += struct.pack("<BBBBII", kind, 0, 0, 40 if kind & 2 else 0, off, val)
    write("devices", bytes([1]) + ops)


def handover():
    """Handovers as Protocol/HANDOVER.md lays them out: byte 0 is how many
    descriptors came with the bytes."""
    def section(kind, required, payload):
        return struct.pack("<HHI", kind, 1 if required else 0, len(payload)) + payload

    def name(s):
        return bytes([len(s)]) + s.encode()

    writer = section(1, False, name("umdev 0.9") + struct.pack("<IQ", 4242, 123456789))
    listener = section(2, False, struct.pack("<IH", 0, 1) + name("mtty-2/listener"))
    client = section(2, False, struct.pack("<IH", 1, 2) + name("mtty-2/client"))
    state = section(3, True, name("mtty-2") + struct.pack("<I", 6) + b"MTTY\x02\x00")
    unknown = section(999, False, b"\x01\x02\x03")
    none = 0xFFFFFFFF
    # device: instance, listener 0, owns the file, one region memory (descriptor 2).
    device = section(4, True, name("") + struct.pack("<IBH", 0, 1, 1) + struct.pack("<I", 2))
    # connection: socket 1, negotiated (QEMU's limits), 4 buffered bytes, no
    # pending descriptors, one DMA window with descriptor 3, one INTx vector
    # with trigger 4, masked.
    caps = struct.pack("<IQQI", 16, 1 << 20, 4096, 65535) + struct.pack("<BQQ", 1, 4096, 256 << 20) + bytes([0, 0, 1]) \
        + struct.pack("<I", 1) + bytes([15])
    conn = name("") + struct.pack("<I", 1) + b"\x01" + caps + struct.pack("<IIHB", 16, 65535, 0, 0) \
        + struct.pack("<I", 4) + b"\x00\x01\x02\x03" + b"\x00" + struct.pack("<iBI", -1, 0, 0) \
        + struct.pack("<I", 1) + struct.pack("<QQQII", 0x100000, 0x10000, 0, 3, 3) \
        + struct.pack("<I", 1) + struct.pack("<HHIIIB", 0, 0, 4, none, none, 1)
    connection = section(5, True, conn)
    # daemon: control listener 0, owns its file, asked by control connection 1.
    daemon = section(6, True, struct.pack("<IBI", 0, 1, 1))
    def text(s):
        return struct.pack("<H", len(s)) + s.encode()
    uuid = "0b5e7d2c-4a1f-4c3e-9d8b-7a6f5e4d3c2b"
    instance = section(7, True, name(uuid) + name("mbochs-small") + struct.pack("<H", 1) + text("label") + text("console")
                       + struct.pack("<H", 0))
    # display: listener 2, owns its file, next id 3, two recent dmabuf planes (ids 1, 2).
    plane1 = struct.pack("<BIIIIQIQI", 2, 0x34325258, 640, 480, 2560, 2560 * 480, 0, 0, 1)
    plane2 = struct.pack("<BIIIIQIQI", 2, 0x34325258, 800, 600, 3200, 3200 * 600, 0, 0, 2)
    display = section(8, True, name(uuid) + struct.pack("<IB", 2, 1) + name("/run/umdev/" + uuid + ".display")
                      + struct.pack("<IB", 3, 2) + plane1 + plane2)
    mbochs = section(4, True, name(uuid) + struct.pack("<IBH", 3, 1, 1) + struct.pack("<I", 4))
    # host: port0 a pty (master 1, slave 2), port1 a socket line (listener 3, peer 4), 3 bytes of output.
    def line(kind, path, out):
        return bytes([kind]) + name(path) + struct.pack("<I", len(out)) + out
    host = section(9, True, name("") + bytes([2])
                   + name("port0") + bytes([2]) + name("master") + struct.pack("<I", 1) + name("slave") + struct.pack("<I", 2)
                   + struct.pack("<I", 19) + line(1, "/dev/pts/7", b"abc")
                   + name("port1") + bytes([2]) + name("listener") + struct.pack("<I", 3) + name("peer") + struct.pack("<I", 4)
                   + struct.pack("<I", 21) + line(2, "/run/port1.sock", b""))
    # migration: STOP_COPY, 16 bytes of outgoing stream of which 8 were read, nothing incoming.
    migration = section(10, True, name("") + struct.pack("<I", 3) + struct.pack("<I", 16) + b"UMDVMIG2" + struct.pack("<I", 4) + b"{}{}"
                        + struct.pack("<I", 8) + struct.pack("<I", 0))
    for sections, fds in (([writer, listener, client, state], 2), ([writer, device, host, state], 5),
                          ([writer, device, state, connection, migration], 5), ([writer, unknown], 0), ([], 0),
                          ([writer, device, state, connection], 5),
                          ([writer, daemon, instance, mbochs, display, state], 5)):
        write("handover", bytes([fds]) + b"UMDH" + struct.pack("<HH", 1, len(sections)) + b"".join(sections))
    # State memfds (byte 0 bit 6): a header naming the second of two copies, FNV-1a 64 over it.
    def fnv(b):
        h = 0xCBF29CE484222325
        for x in b:
            h = ((h ^ x) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
        return h
    for sections, fds in (([writer, device, state, connection], 5), ([writer, daemon, instance, mbochs, display, state], 5)):
        doc = b"UMDH" + struct.pack("<HH", 1, len(sections)) + b"".join(sections)
        old = b"UMDH" + struct.pack("<HH", 1, 0)
        header = b"UMDS" + struct.pack("<HHQQQQ", 1, 0, 7, 64 + 256, len(doc), fnv(doc))
        file = header + bytes(64 - len(header)) + old + bytes(256 - len(old)) + doc
        write("handover", bytes([0x40 | fds]) + file)


if __name__ == "__main__":
    codec_and_endpoint()
    devices()
    handover()
    for t in ("codec", "endpoint", "devices", "handover"):
        d = os.path.join(OUT, t)
        print(t, len(os.listdir(d)), "seeds,", sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d)), "bytes")
