#!/usr/bin/python3
"""https_peers.py — tools/helloworld serving https:// on 2 loops, driven by
real TLS peers, each check asserting exact outputs:

  curl        --cacert, TLS 1.3 (the default) and --tlsv1.2 --tls-max 1.2;
  python      ssl + http.client: verified, keep-alive (one socket, several
              requests), then 3 requests pipelined in one TLS write;
  s_client    openssl s_client -tls1_2 and -tls1_3: handshake verified, a GET
              answered;
  plain       plain HTTP sent to the TLS port: a clean close (FIN, not a reset;
              an HTTP 400 before it is accepted, as nginx sends), and the
              server keeps serving;
  idle        200 idle TLS connections (tools/http-bench/idle_tls_conns.py):
              RSS per connection bounded (plain builds only).

helloworld must exit 0 on SIGTERM with nothing on stderr (so sanitizer
reports fail the test). Certificates are made at test time (tls_certs.py).

    https_peers.py HELLOWORLD [sanitized]
"""
import http.client
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tls_certs  # noqa: E402

HELLOWORLD = sys.argv[1]
SANITIZED = len(sys.argv) > 2 and sys.argv[2] not in ("", "OFF", "0")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TIMEOUT = 60
REQUEST = b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"


def check(cond, what):
    if not cond:
        raise AssertionError(what)


class Server:
    def __init__(self, certs):
        self.stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [HELLOWORLD, "--port", "0", "--threads", "2", "--pin", "no",
             "--tls-cert", certs["cert"], "--tls-key", certs["key"]],
            stdout=subprocess.PIPE, stderr=self.stderr, text=True)
        banner = self.proc.stdout.readline()
        match = re.search(r"https://127\.0\.0\.1:(\d+)/", banner)
        check(match, f"helloworld: no https banner, got {banner!r}")
        self.port = int(match.group(1))

    def rss_kib(self):
        with open(f"/proc/{self.proc.pid}/status") as status:
            return int(re.search(r"VmRSS:\s+(\d+)", status.read()).group(1))

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=TIMEOUT)
        self.stderr.seek(0)
        err = self.stderr.read().decode(errors="replace")
        check(code == 0 and err == "", f"helloworld exited {code}, stderr:\n{err}")


def run(cmd, stdin=b""):
    return subprocess.run(cmd, input=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=TIMEOUT)


def curl(server, certs):
    url = f"https://localhost:{server.port}/"
    for extra, version in (([], "TLSv1.3"), (["--tlsv1.2", "--tls-max", "1.2"], "TLSv1.2")):
        out = run(["curl", "-sS", "-v", "--cacert", certs["ca"], *extra, url])
        trace = out.stderr.decode(errors="replace")
        check(out.returncode == 0, f"curl {extra}: exit {out.returncode}\n{trace}")
        check(out.stdout == b"Hello, world", f"curl {extra}: body {out.stdout!r}")
        check(f"SSL connection using {version}" in trace, f"curl {extra}: not {version}\n{trace}")
    # Without the CA, curl refuses the certificate (the test CA is nobody's root).
    out = run(["curl", "-sS", url])
    check(out.returncode == 60, f"curl without --cacert: exit {out.returncode}, expected 60")


def python_client(server, certs):
    context = ssl.create_default_context(cafile=certs["ca"])
    conn = http.client.HTTPSConnection("localhost", server.port, context=context, timeout=TIMEOUT)
    first_sock = None
    for i in range(5):
        conn.request("GET", "/")
        resp = conn.getresponse()
        body = resp.read()
        check(resp.status == 200 and body == b"Hello, world", f"python request {i}: {resp.status} {body!r}")
        check(resp.getheader("Connection") != "close", f"python request {i}: the server closed keep-alive")
        if first_sock is None:
            first_sock = conn.sock
            check(conn.sock.version() == "TLSv1.3", f"python: {conn.sock.version()}")
        check(conn.sock is first_sock, f"python request {i}: a new connection (keep-alive broken)")
    conn.close()

    # Pipelined: three requests in one TLS write, three responses in order.
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT)
    tls = context.wrap_socket(raw, server_hostname="localhost")
    tls.sendall(REQUEST * 3)
    got = b""
    while got.count(b"Hello, world") < 3:
        chunk = tls.recv(65536)
        check(chunk, f"pipelined: closed after {got!r}")
        got += chunk
    check(got.count(b"HTTP/1.1 200 OK") == 3, f"pipelined: {got!r}")
    tls.close()


def s_client(server, certs):
    for flag, version in (("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")):
        out = run(["openssl", "s_client", flag, "-connect", f"127.0.0.1:{server.port}", "-servername", "localhost",
                   "-CAfile", certs["ca"], "-verify_return_error", "-verify_hostname", "localhost", "-ign_eof"],
                  stdin=b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        text = out.stdout.decode(errors="replace")
        check(out.returncode == 0, f"s_client {flag}: exit {out.returncode}\n{text}\n{out.stderr!r}")
        check(re.search(rf"Protocol\s*: {version}", text) or f"New, {version}" in text,
              f"s_client {flag}: not {version}\n{text}")
        check("Verify return code: 0 (ok)" in text, f"s_client {flag}: not verified\n{text}")
        check("HTTP/1.1 200 OK" in text and "Hello, world" in text, f"s_client {flag}: no answer\n{text}")


def plain_http(server, certs):
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
    got = b""
    try:
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                break
            got += chunk
    except ConnectionResetError:
        raise AssertionError(f"plain HTTP to the TLS port: reset (after {got!r}), expected a clean close")
    sock.close()
    check(got == b"" or got.startswith(b"HTTP/1.1 400") or got.startswith(b"\x15\x03"),
          f"plain HTTP to the TLS port: got {got!r}")
    # The server goes on serving.
    out = run(["curl", "-sS", "--cacert", certs["ca"], f"https://localhost:{server.port}/"])
    check(out.stdout == b"Hello, world", f"after plain HTTP: {out.stdout!r} {out.stderr!r}")


def idle(server, certs):
    n = 200
    before = server.rss_kib()
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "tools/http-bench/idle_tls_conns.py"),
                             "127.0.0.1", str(server.port), str(n), certs["ca"], "60"],
                            stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    try:
        check(line.strip() == f"ready {n}", f"idle: {line!r}")
        time.sleep(0.5)
        per_conn = (server.rss_kib() - before) / n
        print(f"idle: {n} TLS connections, {per_conn:.1f} KiB RSS each", flush=True)
        if not SANITIZED:
            check(per_conn < 64, f"idle: {per_conn:.1f} KiB per idle TLS connection (bound 64)")
    finally:
        proc.kill()
        proc.wait()


def main():
    with tempfile.TemporaryDirectory() as tmp:
        certs = tls_certs.make(tmp)
        server = Server(certs)
        try:
            for step in (curl, python_client, s_client, plain_http, idle):
                step(server, certs)
                print(f"{step.__name__}: ok", flush=True)
        finally:
            server.stop()
    print("https_peers: ok")


if __name__ == "__main__":
    main()
