"""Opens N TLS keep-alive connections to an HTTPS server (verified against
CAFILE, SNI localhost), makes one request on each (so each is a live HTTP
connection past its handshake and a request), then holds them idle. Prints
"ready N" once all are open, then holds them until killed or the hold time
passes. Used by tools/bench-http --tls and tests/checks/https_peers.py to
measure the server's RSS per idle TLS connection. Loopback only; bounded in
count and time. Standard library only.

    idle_tls_conns.py HOST PORT COUNT CAFILE [HOLD_SECONDS]
"""
import socket
import ssl
import sys
import time

host, port, count, cafile = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
hold_seconds = float(sys.argv[5]) if len(sys.argv) > 5 else 30.0
context = ssl.create_default_context(cafile=cafile)
context.minimum_version = ssl.TLSVersion.TLSv1_3
request = b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"
conns = []
for i in range(count):
    try:
        raw = socket.create_connection((host, port), timeout=10)
        s = context.wrap_socket(raw, server_hostname="localhost")
        s.sendall(request)
        got = b""
        while b"Hello, world" not in got:
            chunk = s.recv(4096)
            if not chunk:
                break
            got += chunk
    except (OSError, ssl.SSLError) as e:
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
