"""Opens N keep-alive connections to a server, makes one request on each (so
each is a live HTTP connection that went through a request), then holds them
idle. Prints "ready N" once all are
open, then holds them until killed or the hold time passes. Used by tools/bench-http to measure the server's RSS per idle
connection. Loopback only; bounded in count and time."""
import socket
import sys
import time

host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
hold_seconds = float(sys.argv[4]) if len(sys.argv) > 4 else 30.0
request = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
conns = []
for i in range(count):
    try:
        s = socket.create_connection((host, port), timeout=5)
        s.sendall(request)
        got = b""
        while b"Hello, world" not in got:
            chunk = s.recv(4096)
            if not chunk:
                break
            got += chunk
    except OSError as e:
        print(f"connection {i}: {e}", file=sys.stderr)
        break
    if b"Hello, world" not in got:
        print(f"connection {i}: closed by the server", file=sys.stderr)
        break
    conns.append(s)
# How many were opened: a server that refuses more is measured on those.
print(f"ready {len(conns)}", flush=True)
time.sleep(hold_seconds)
for s in conns:
    s.close()
