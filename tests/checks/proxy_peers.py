#!/usr/bin/env python3
"""proxy_peers.py — the PROXY protocol against real senders: curl's
--haproxy-protocol (v1) and HAProxy 2.6 (send-proxy, send-proxy-v2, and its
health checks, which send v2 LOCAL), in front of tools/helloworld
--proxy-protocol (plain and TLS) and tools/ioloop-serve --proxy-protocol.

The client connects from 127.0.0.3 (curl --interface): behind HAProxy the
TCP peer of ioloop is HAProxy at 127.0.0.1, so an access-log line saying
127.0.0.3 can only come from the header. HAProxy's checks (LOCAL) log as the
real peer, 127.0.0.1. A client without the header is refused (the
connection closes, curl fails), and the server keeps serving. A Python TLS
client sends its header and ClientHello in one segment (TCP_CORK): TLS must
still find its ClientHello after the header phase.

usage: proxy_peers.py HELLOWORLD IOLOOP_SERVE CURL [HAPROXY]
"""
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def curl(curl_bin, *args):
    return subprocess.run([curl_bin, "-sS", "-m", "10", *args], capture_output=True, timeout=30)


def start(cmd):
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    banner = proc.stdout.readline()
    m = re.search(r"127\.0\.0\.1:(\d+)/", banner)
    assert m, f"no banner from {cmd}: {banner!r} {proc.stderr.read() if proc.poll() is not None else ''}"
    return proc, int(m.group(1))


def stop(proc):
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, (proc.returncode, err)
    return [l for l in out.splitlines() if l.strip()]


def log_ips(lines):
    return [l.split(" ", 1)[0] for l in lines]


def certs(d):
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{d}/key.pem",
                    "-out", f"{d}/cert.pem", "-days", "1", "-subj", "/CN=localhost"],
                   check=True, capture_output=True)
    return f"{d}/cert.pem", f"{d}/key.pem"


def tls_in_one_segment(port):
    """The header and the ClientHello in one TCP segment (TCP_CORK holds the
    header until the handshake's first flight joins it): the header phase
    must leave the ClientHello in the socket for TLS."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
    raw.sendall(b"PROXY TCP4 192.0.2.55 127.0.0.1 40000 443\r\n")
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    tls = ctx.wrap_socket(raw, do_handshake_on_connect=False)
    tls.setblocking(False)
    try:
        tls.do_handshake()  # writes the ClientHello behind the corked header
    except ssl.SSLWantReadError:
        pass
    tls.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 0)  # both leave now, together (wrap took raw's fd)
    tls.settimeout(10)
    tls.do_handshake()
    tls.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    data = b""
    while True:
        chunk = tls.recv(4096)
        if not chunk:
            break
        data += chunk
    tls.close()
    assert data.startswith(b"HTTP/1.1 200") and data.endswith(b"Hello, world"), data


def with_curl(hello, serve, curl_bin, d):
    cert, key = certs(d)
    # plain and TLS helloworld: curl's v1 header from 127.0.0.3
    for tls in (False, True):
        extra = ["--tls-cert", cert, "--tls-key", key] if tls else []
        proc, port = start([hello, "--port", "0", "--threads", "2", "--proxy-protocol", "--access-log", "-", *extra])
        url = f"{'https' if tls else 'http'}://127.0.0.1:{port}/"
        try:
            r = curl(curl_bin, "-k", "--haproxy-protocol", "--interface", "127.0.0.3", url)
            assert r.returncode == 0 and r.stdout == b"Hello, world", (tls, r)
            r = curl(curl_bin, "-k", url)  # no header: refused before any response
            assert r.returncode != 0, (tls, "served without a PROXY header", r)
            r = curl(curl_bin, "-k", "--haproxy-protocol", url)  # still serving
            assert r.returncode == 0 and r.stdout == b"Hello, world", (tls, r)
            if tls:
                tls_in_one_segment(port)
        finally:
            lines = stop(proc)
        # two loops each write their own batches: lines of different loops come in any order
        assert sorted(log_ips(lines)) == sorted(["127.0.0.3", "127.0.0.1"] + (["192.0.2.55"] if tls else [])), lines
    # ioloop-serve
    os.makedirs(f"{d}/root")
    open(f"{d}/root/a.txt", "w").write("served\n")
    proc = subprocess.Popen([serve, f"{d}/root", "--port", "0", "--threads", "1", "--proxy-protocol",
                             "--access-log", "-"], stdout=subprocess.PIPE, text=True)
    port = int(re.search(r"port (\d+)", proc.stdout.readline()).group(1))
    try:
        r = curl(curl_bin, "--haproxy-protocol", "--interface", "127.0.0.3", f"http://127.0.0.1:{port}/a.txt")
        assert r.returncode == 0 and r.stdout == b"served\n", r
        assert curl(curl_bin, f"http://127.0.0.1:{port}/a.txt").returncode != 0
    finally:
        lines = stop(proc)
    assert log_ips(lines) == ["127.0.0.3"], lines


def with_haproxy(hello, curl_bin, haproxy, d):
    for send in ("send-proxy", "send-proxy-v2"):
        proc, port = start([hello, "--port", "0", "--threads", "2", "--proxy-protocol", "--access-log", "-"])
        front = free_port()
        cfg = f"{d}/haproxy-{send}.cfg"
        open(cfg, "w").write(f"""
global
    maxconn 100
defaults
    mode tcp
    timeout connect 5s
    timeout client 10s
    timeout server 10s
frontend fe
    bind 127.0.0.1:{front}
    default_backend be
backend be
    option httpchk GET /
    server s1 127.0.0.1:{port} {send} check check-send-proxy inter 100ms
""")
        ha = subprocess.Popen([haproxy, "-db", "-f", cfg], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
        try:
            got = None
            for _ in range(50):
                r = curl(curl_bin, "--interface", "127.0.0.3", f"http://127.0.0.1:{front}/")
                got = r
                if r.returncode == 0:
                    break
                time.sleep(0.1)  # HAProxy still starting
            assert got.returncode == 0 and got.stdout == b"Hello, world", (send, got)
            for _ in range(4):
                r = curl(curl_bin, "--interface", "127.0.0.3", f"http://127.0.0.1:{front}/")
                assert r.returncode == 0 and r.stdout == b"Hello, world", (send, r)
            time.sleep(0.5)  # a few health checks
        finally:
            ha.send_signal(signal.SIGTERM)
            ha_out, _ = ha.communicate(timeout=30)
            lines = stop(proc)
        ips = log_ips(lines)
        assert ips.count("127.0.0.3") == 5, (send, lines, ha_out)
        # the checks: v2 LOCAL keeps the real peer; v1 checks carry HAProxy's own address
        assert ips.count("127.0.0.1") >= 1, (send, lines, ha_out)
        assert set(ips) == {"127.0.0.1", "127.0.0.3"}, (send, lines)


def main():
    hello, serve, curl_bin = sys.argv[1:4]
    haproxy = sys.argv[4] if len(sys.argv) > 4 and sys.argv[4] else None
    with tempfile.TemporaryDirectory() as d:
        with_curl(hello, serve, curl_bin, d)
        if haproxy:
            with_haproxy(hello, curl_bin, haproxy, d)
    print("PROXY protocol: curl v1 (plain, TLS), ioloop-serve" + (", HAProxy v1 and v2 with LOCAL checks" if haproxy else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
