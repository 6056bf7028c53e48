#!/usr/bin/env python3
"""ioloop_serve.py — tools/ioloop-serve end to end, with curl.

On a temp dir: a file comes back byte for byte; a directory without
index.html gets a listing naming its entries; one with index.html gets it;
with --gzip a text file comes gzip'd (curl --compressed inflates it, and the
raw body is a gzip member), an image does not; --access-log - writes one
Common Log Format line per request; SIGTERM ends it with status 0; a bad
command line exits 2; --file-cache serves a rewritten small file stale
within its time, --file-cache 0 fresh; /healthz says 200 "ok", and 503
"draining" after SIGTERM while --drain-delay keeps it serving (files too);
--healthz off serves a file of that name instead.

usage: ioloop_serve.py IOLOOP_SERVE CURL
"""
import gzip
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time


def curl(curl_bin, *args):
    return subprocess.run([curl_bin, "-sS", *args], capture_output=True, check=True, timeout=30).stdout


def main():
    serve, curl_bin = sys.argv[1], sys.argv[2]
    assert subprocess.run([serve, "--port", "x"], capture_output=True).returncode == 2
    assert subprocess.run([serve, "/nonexistent-dir"], capture_output=True).returncode == 2
    with tempfile.TemporaryDirectory() as root:
        rnd = random.Random(7)
        text = "".join(f"line {i} {rnd.choice(['alpha', 'beta', 'gamma'])} of the served text\n"
                       for i in range(6000)).encode()  # ~190 KiB: past the static route's cache
        blob = bytes(rnd.getrandbits(8) for _ in range(50000))
        os.makedirs(f"{root}/docs/sub")
        os.makedirs(f"{root}/site")
        open(f"{root}/docs/readme.txt", "wb").write(text)
        open(f"{root}/docs/small.txt", "wb").write(text[:3000])
        open(f"{root}/docs/photo.jpg", "wb").write(blob)
        open(f"{root}/site/index.html", "wb").write(b"<h1>home</h1>\n")

        proc = subprocess.Popen([serve, root, "--port", "0", "--threads", "2", "--gzip", "--access-log", "-"],
                                stdout=subprocess.PIPE, text=True)
        try:
            banner = proc.stdout.readline()
            port = int(re.search(r"port (\d+)", banner).group(1))
            base = f"http://127.0.0.1:{port}"

            assert curl(curl_bin, f"{base}/docs/photo.jpg") == blob, "file bytes differ"
            listing = curl(curl_bin, f"{base}/docs/").decode()
            for name in ("readme.txt", "small.txt", "photo.jpg", "sub/"):
                assert name in listing, f"listing lacks {name}: {listing}"
            assert curl(curl_bin, f"{base}/site/") == b"<h1>home</h1>\n"

            for path, body in (("/docs/readme.txt", text), ("/docs/small.txt", text[:3000])):
                out = curl(curl_bin, "--compressed", "-D", "-", f"{base}{path}")
                head, _, got = out.partition(b"\r\n\r\n")
                assert b"content-encoding: gzip" in head.lower(), head
                assert got == body, f"{path}: curl --compressed body differs"
                raw = curl(curl_bin, "-H", "Accept-Encoding: gzip", f"{base}{path}")
                assert gzip.decompress(raw) == body
            head = curl(curl_bin, "-D", "-", "-o", "/dev/null", "-H", "Accept-Encoding: gzip",
                        f"{base}/docs/photo.jpg").lower()
            assert b"content-encoding" not in head, head
            requests = 8  # the GETs above
        finally:
            proc.send_signal(signal.SIGTERM)
            rest, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, proc.returncode
        lines = [l for l in rest.splitlines() if l.strip()]
        assert len(lines) == requests, lines
        assert all(re.match(r'^127\.0\.0\.1 - - \[[^]]+\] "GET /[^"]* HTTP/1\.1" 200 \d+$', l) for l in lines), lines
        # --file-cache: a small file rewritten in place is served stale
        # within the cache's time and fresh with --file-cache 0.
        for cache_ms, want_fresh in (("60000", False), ("0", True)):
            open(f"{root}/docs/note.txt", "wb").write(b"first\n")
            proc = subprocess.Popen([serve, root, "--port", "0", "--threads", "1", "--file-cache", cache_ms],
                                    stdout=subprocess.PIPE, text=True)
            try:
                port = int(re.search(r"port (\d+)", proc.stdout.readline()).group(1))
                assert curl(curl_bin, f"http://127.0.0.1:{port}/docs/note.txt") == b"first\n"
                open(f"{root}/docs/note.txt", "wb").write(b"second\n")
                got = curl(curl_bin, f"http://127.0.0.1:{port}/docs/note.txt")
                assert got == (b"second\n" if want_fresh else b"first\n"), (cache_ms, got)
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.communicate(timeout=30)
            assert proc.returncode == 0, proc.returncode
        # /healthz, and the drain delay after SIGTERM
        open(f"{root}/healthz", "wb").write(b"a file\n")
        proc = subprocess.Popen([serve, root, "--port", "0", "--threads", "1", "--drain-delay", "3000"],
                                stdout=subprocess.PIPE, text=True)
        try:
            base = "http://127.0.0.1:%d" % int(re.search(r"port (\d+)", proc.stdout.readline()).group(1))
            assert curl(curl_bin, "-w", " %{http_code}", f"{base}/healthz") == b"ok 200"
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.2)
            assert curl(curl_bin, "-w", " %{http_code}", f"{base}/healthz") == b"draining 503"
            assert curl(curl_bin, f"{base}/docs/small.txt") == text[:3000]  # still serving
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=30)
        assert proc.returncode == 0, proc.returncode
        proc = subprocess.Popen([serve, root, "--port", "0", "--threads", "1", "--healthz", "off"],
                                stdout=subprocess.PIPE, text=True)
        try:
            base = "http://127.0.0.1:%d" % int(re.search(r"port (\d+)", proc.stdout.readline()).group(1))
            assert curl(curl_bin, f"{base}/healthz") == b"a file\n"
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=30)
        assert proc.returncode == 0, proc.returncode
    print("ioloop_serve: files, listing, index.html, gzip, the access log, the file cache and /healthz OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
