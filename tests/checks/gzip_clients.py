#!/usr/bin/env python3
"""gzip_clients.py — real clients against dynamic gzip.

Runs `test_http_gzip --serve` (the suite's routes, gzip on), then:
- Python's urllib with Accept-Encoding: gzip: the body is gzip and Python's
  gzip module gives back the handler's bytes; without the header, identity;
  an image is never compressed; gzip;q=0 is honoured.
- curl --compressed: curl inflates it to the same bytes, and says it was gzip.

usage: gzip_clients.py TEST_HTTP_GZIP CURL
"""
import gzip
import subprocess
import sys
import urllib.request


def fetch(port, path, headers):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers)
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.status, resp.headers, resp.read()


def expected_text(n):
    # test_http_gzip.c's fill_text
    out, i = [], 0
    total = 0
    while total + 64 < 64 * 1024:
        line = f"line {i}: the quick brown fox jumps over the lazy dog\n"
        out.append(line)
        total += len(line)
        i += 1
    data = "".join(out).encode()
    return (data + bytes(64 * 1024 - len(data)))[:n]  # the rest of the static array is zeros


def main():
    binary, curl = sys.argv[1], sys.argv[2]
    server = subprocess.Popen([binary, "--serve"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        port = int(server.stdout.readline())
        text = expected_text(4096)

        status, headers, body = fetch(port, "/text", {"Accept-Encoding": "gzip"})
        assert status == 200, status
        assert headers["Content-Encoding"] == "gzip", headers
        assert headers["Vary"] == "Accept-Encoding", headers
        assert len(body) < len(text)
        assert gzip.decompress(body) == text, "urllib + gzip module: body differs"

        status, headers, body = fetch(port, "/big", {"Accept-Encoding": "gzip, deflate"})
        big = gzip.decompress(body)
        assert big == expected_text(len(big)) and len(big) > 60000, len(big)

        status, headers, body = fetch(port, "/text", {})
        assert headers["Content-Encoding"] is None and body == text, headers

        status, headers, body = fetch(port, "/text", {"Accept-Encoding": "gzip;q=0, identity"})
        assert headers["Content-Encoding"] is None and body == text, headers

        status, headers, body = fetch(port, "/png", {"Accept-Encoding": "gzip"})
        assert headers["Content-Encoding"] is None and len(body) == 8192, headers

        out = subprocess.run([curl, "-sS", "--compressed", "-D", "-", "-o", "/dev/stdout",
                              f"http://127.0.0.1:{port}/text"], capture_output=True, check=True).stdout
        head, _, body = out.partition(b"\r\n\r\n")
        assert b"content-encoding: gzip" in head.lower(), head
        assert body == text, "curl --compressed: body differs"

        raw = subprocess.run([curl, "-sS", "-H", "Accept-Encoding: gzip", f"http://127.0.0.1:{port}/big"],
                             capture_output=True, check=True).stdout
        assert gzip.decompress(raw) == big
        print("gzip_clients: urllib, gzip module and curl --compressed agree")
    finally:
        server.stdin.close()
        server.wait(timeout=20)
    return server.returncode


if __name__ == "__main__":
    sys.exit(main())
