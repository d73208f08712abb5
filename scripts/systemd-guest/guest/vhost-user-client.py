#!/usr/bin/python3
"""The smallest vhost-user frontend: connect, ask GET_FEATURES, print the
answer, hold the connection until RELEASE_FILE exists (at most HOLD_SECS),
then disconnect.

Usage: vhost-user-client.py SOCKET RELEASE_FILE HOLD_SECS
"""
import os
import socket
import struct
import sys
import time

GET_FEATURES = 1
VERSION = 0x1
REPLY = 0x4
VIRTIO_F_VERSION_1 = 1 << 32


def main():
    path, release, hold = sys.argv[1], sys.argv[2], float(sys.argv[3])
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(30)
    sock.connect(path)
    sock.sendall(struct.pack("<III", GET_FEATURES, VERSION, 0))
    reply = b""
    while len(reply) < 20:
        part = sock.recv(20 - len(reply))
        if not part:
            sys.exit("connection closed before the GET_FEATURES reply")
        reply += part
    request, flags, size, features = struct.unpack("<IIIQ", reply)
    if request != GET_FEATURES or not flags & REPLY or size != 8:
        sys.exit(f"bad reply: request={request} flags={flags:#x} size={size}")
    if not features & VIRTIO_F_VERSION_1:
        sys.exit(f"features {features:#x} lack VIRTIO_F_VERSION_1")
    print(f"features={features:#x}", flush=True)
    deadline = time.monotonic() + hold
    while not os.path.exists(release) and time.monotonic() < deadline:
        time.sleep(0.1)
    sock.close()


if __name__ == "__main__":
    main()
