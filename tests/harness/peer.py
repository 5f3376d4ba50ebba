"""A TCP peer for trace tests: a real process in a test's namespace whose
own counts the tracer's are checked against.

    peer.py server PORT client-closes|server-closes|server-resets
    peer.py client HOST PORT N client-closes|server-closes|server-resets

server-resets: the server aborts each connection (SO_LINGER 0, then
close: a reset, no FIN) and the client, waiting in recv, receives it.

Each prints "ready PID", waits for a line on stdin before it starts (so a
tracer can be started in between), prints one JSON line of what it did,
and exits when stdin closes.
"""
import errno
import json
import os
import socket
import struct
import sys


def ready():
    print("ready", os.getpid(), flush=True)


def server(port, mode):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    s.listen(4096)
    ready()
    sys.stdin.readline()
    s.settimeout(0.2)
    served = 0
    while True:
        try:
            a, _ = s.accept()
        except socket.timeout:
            continue
        if mode == "server-closes":
            a.close()
        elif mode == "server-resets":
            a.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            a.close()
        else:
            a.recv(1)  # the client's FIN
            a.close()
        served += 1


def client(host, port, n, mode):
    ready()
    sys.stdin.readline()
    ok = 0
    errors = {}
    for _ in range(n):
        c = socket.socket()
        try:
            c.connect((host, port))
            if mode in ("server-closes", "server-resets"):
                c.recv(1)  # the server's FIN (or its reset: ECONNRESET)
            ok += 1
        except OSError as e:
            name = errno.errorcode.get(e.errno, str(e.errno))
            errors[name] = errors.get(name, 0) + 1
        c.close()
    print(json.dumps({"ok": ok, "errors": errors}), flush=True)
    sys.stdin.read()


if __name__ == "__main__":
    if sys.argv[1] == "server":
        server(int(sys.argv[2]), sys.argv[3])
    else:
        client(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
