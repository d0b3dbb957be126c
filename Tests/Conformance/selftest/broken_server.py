#!/usr/bin/env python3
"""A deliberately small, deliberately broken vfio-user server for testing
vfio-user-conformance itself (test_suite.py).

  broken_server.py MODE SOCKET

Modes:
  plain            answers VERSION, GET_INFO, region and IRQ info and config-space
                   reads of an empty PCI function; everything else gets EINVAL
  exit-on-bad-version
                   as plain, but exits with status 3 on a VERSION it cannot parse
  silent           accepts connections and reads, but never answers
  wrong-id         as plain, but every reply carries the wrong message id
  all-capabilities as plain, but every VERSION reply names all of its capabilities,
                   whatever the client proposed (as libvfio-user's samples do)
"""
import json
import os
import socket
import struct
import sys

HEADER = struct.Struct("<HHIII")
VERSION, GET_INFO, REGION_INFO, IRQ_INFO, REGION_READ = 1, 4, 5, 7, 9
REPLY, ERROR = 0x1, 0x20
EINVAL = 22


def recv_exact(conn, n):
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data


def reply(conn, mode, msg_id, command, payload=b"", error=0):
    if mode == "wrong-id":
        msg_id = (msg_id + 1) & 0xFFFF
    flags = REPLY | (ERROR if error else 0)
    body = b"" if error else payload
    conn.sendall(HEADER.pack(msg_id, command, 16 + len(body), flags, error) + body)


def answer(conn, mode, msg_id, command, payload):
    if command == VERSION:
        try:
            if len(payload) < 4:
                raise ValueError("short")
            text = payload[4:]
            if text:
                if not text.endswith(b"\0"):
                    raise ValueError("no NUL")
                doc = json.loads(text[:-1])
                if not isinstance(doc, dict):
                    raise ValueError("not an object")
        except (ValueError, UnicodeDecodeError):
            if mode == "exit-on-bad-version":
                sys.exit(3)
            return reply(conn, mode, msg_id, command, error=EINVAL)
        caps = b'{"capabilities":{}}'
        if mode == "all-capabilities":
            caps = (b'{"capabilities":{"max_msg_fds":8,"max_data_xfer_size":1048576,"pgsizes":4096,'
                    b'"max_dma_maps":65535,"migration":{"pgsize":4096}}}')
        return reply(conn, mode, msg_id, command, struct.pack("<HH", 0, 0) + caps + b"\0")
    if command == GET_INFO and len(payload) == 16:
        return reply(conn, mode, msg_id, command, struct.pack("<IIII", 16, 1 << 1, 9, 5))
    if command == REGION_INFO and len(payload) == 32:
        argsz, _, index, _, _, _ = struct.unpack("<IIIIQQ", payload)
        if index >= 9:
            return reply(conn, mode, msg_id, command, error=EINVAL)
        size = 256 if index == 7 else 0
        flags = 3 if size else 0
        return reply(conn, mode, msg_id, command, struct.pack("<IIIIQQ", 32, flags, index, 0, size, 0))
    if command == IRQ_INFO and len(payload) == 16:
        _, _, index, _ = struct.unpack("<IIII", payload)
        if index >= 5:
            return reply(conn, mode, msg_id, command, error=EINVAL)
        return reply(conn, mode, msg_id, command, struct.pack("<IIII", 16, 1, index, 0))
    if command == REGION_READ and len(payload) == 16:
        offset, region, count = struct.unpack("<QII", payload)
        if region == 7 and offset + count <= 256 and count <= 256:
            return reply(conn, mode, msg_id, command, payload + bytes(count))
    return reply(conn, mode, msg_id, command, error=EINVAL)


def serve(conn, mode):
    while True:
        msg_id, command, size, flags, _ = HEADER.unpack(recv_exact(conn, 16))
        if size < 16 or size > (1 << 21):
            return
        payload = recv_exact(conn, size - 16)
        if mode == "silent" or flags & 0x10:
            continue
        answer(conn, mode, msg_id, command, payload)


def main():
    mode, path = sys.argv[1], sys.argv[2]
    if mode not in ("plain", "exit-on-bad-version", "silent", "wrong-id", "all-capabilities"):
        sys.exit(f"unknown mode {mode}")
    if os.path.exists(path):
        os.unlink(path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(8)
    if os.environ.get("BROKEN_SERVER_SAYS_READY"):
        # For a test that starts this server itself: it is listening now.
        print("listening", flush=True)
    while True:
        conn, _ = listener.accept()
        try:
            serve(conn, mode)
        except (EOFError, ConnectionError):
            pass
        finally:
            conn.close()


if __name__ == "__main__":
    main()
