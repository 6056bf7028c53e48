"""A hostile client: pipelines "GET / HTTP/1.1" on one keep-alive connection
as fast as the server takes it and never reads a response. Stops when the
server has taken nothing for `stall` seconds or after `seconds`, then prints
"sent BYTES" and holds the connection open `hold` more seconds (so the
server's RSS can be read while the connection is still alive). Used by
tools/bench-http to compare the server's RSS growth with nginx's. Loopback
only; bounded in bytes and time."""
import socket
import sys
import time

host, port = sys.argv[1], int(sys.argv[2])
seconds = float(sys.argv[3]) if len(sys.argv) > 3 else 3.0
hold = float(sys.argv[4]) if len(sys.argv) > 4 else 2.0
stall = 1.0
limit = 1 << 30  # never push more than 1 GiB
chunk = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 2048
s = socket.create_connection((host, port))
s.setblocking(False)
sent = 0
start = last_progress = time.monotonic()
while sent < limit:
    now = time.monotonic()
    if now - start > seconds or now - last_progress > stall:
        break
    try:
        n = s.send(chunk)
    except BlockingIOError:
        time.sleep(0.005)
        continue
    except OSError:
        break
    sent += n
    last_progress = time.monotonic()
print(f"sent {sent}", flush=True)
time.sleep(hold)
s.close()
