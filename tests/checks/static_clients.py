#!/usr/bin/env python3
"""static_clients.py — real clients against ioloop_http_static_route
(tools/http-bench/static_server): curl with -r (ranges), -z (If-Modified-Since:
304) and --compressed (gzip_static), and Python's urllib (bytes, HEAD, Range,
304, traversal). Standard library and the curl binary only.

    static_clients.py BUILD_DIR
"""
import gzip, hashlib, os, shutil, subprocess, sys, tempfile, time, urllib.error, urllib.request


def main():
    build = sys.argv[1]
    server_bin = os.path.join(build, "tools", "static_server")
    tmp = tempfile.mkdtemp(prefix="ioloop-static-clients-")
    root = os.path.join(tmp, "root")
    os.mkdir(root)
    big = os.urandom(10 * 1024 * 1024)
    with open(os.path.join(root, "big.bin"), "wb") as f:
        f.write(big)
    text = ("hello static world\n" * 500).encode()
    with open(os.path.join(root, "page.txt"), "wb") as f:
        f.write(text)
    with open(os.path.join(root, "page.txt.gz"), "wb") as f:
        f.write(gzip.compress(text))
    with open(os.path.join(tmp, "secret.txt"), "wb") as f:
        f.write(b"SECRET")
    os.mkdir(os.path.join(root, "dir"))
    with open(os.path.join(root, "dir", "a<b>.txt"), "wb") as f:
        f.write(b"a")
    proc = subprocess.Popen([server_bin, "--root", root, "--port", "0", "--gzip-static", "yes", "--list", "yes"],
                            stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        port = int(line.split("127.0.0.1:")[1].split("/")[0])
        base = f"http://127.0.0.1:{port}"
        failures = []

        def check(name, cond):
            print(("ok   " if cond else "FAIL ") + name)
            if not cond:
                failures.append(name)

        def curl(*args):
            return subprocess.run(["curl", "-s", *args], capture_output=True, timeout=60).stdout

        # curl: whole file, -r ranges, -z conditional, --compressed
        check("curl bytes identical (10 MiB, sendfile)",
              hashlib.sha256(curl(base + "/big.bin")).digest() == hashlib.sha256(big).digest())
        check("curl -r 0-0", curl("-r", "0-0", base + "/big.bin") == big[:1])
        check("curl -r 100-", curl("-r", "100-", base + "/big.bin") == big[100:])
        check("curl -r -1", curl("-r", "-1", base + "/big.bin") == big[-1:])
        out = curl("-r", "20000-", "-w", "%{http_code}", "-o", "/dev/null", base + "/page.txt")
        check("curl -r past the end: 416", out == b"416")
        code = curl("-z", os.path.join(root, "big.bin"), "-w", "%{http_code}", "-o", "/dev/null", base + "/big.bin")
        check("curl -z (not modified since the file's mtime): 304", code == b"304")
        code = curl("-z", "Sun, 06 Nov 1994 08:49:37 GMT", "-w", "%{http_code}", "-o", "/dev/null",
                    base + "/big.bin")
        check("curl -z an older date: 200", code == b"200")
        check("curl --compressed (gzip_static twin, decoded)", curl("--compressed", base + "/page.txt") == text)
        hdrs = curl("-D", "-", "-o", "/dev/null", "-H", "Accept-Encoding: gzip", base + "/page.txt")
        check("gzip_static headers", b"Content-Encoding: gzip" in hdrs and b"Vary: Accept-Encoding" in hdrs)
        check("curl --path-as-is /../secret.txt refused",
              curl("--path-as-is", "-w", "%{http_code}", "-o", "/dev/null", base + "/../secret.txt") in (b"404", b"403", b"400"))
        check("curl --path-as-is %2e%2e refused",
              curl("--path-as-is", "-w", "%{http_code}", "-o", "/dev/null", base + "/%2e%2e/secret.txt") == b"404")

        # urllib
        with urllib.request.urlopen(base + "/big.bin") as r:
            body = r.read()
            etag, lastmod = r.headers["ETag"], r.headers["Last-Modified"]
        check("urllib bytes identical", body == big)
        with urllib.request.urlopen(urllib.request.Request(base + "/big.bin", method="HEAD")) as r:
            check("urllib HEAD: Content-Length, no body",
                  r.headers["Content-Length"] == str(len(big)) and r.read() == b"")
        with urllib.request.urlopen(urllib.request.Request(base + "/big.bin", headers={"Range": "bytes=100-199"})) as r:
            check("urllib Range 206", r.status == 206 and r.read() == big[100:200]
                  and r.headers["Content-Range"] == f"bytes 100-199/{len(big)}")
        for hdr in ({"If-None-Match": etag}, {"If-Modified-Since": lastmod}):
            try:
                urllib.request.urlopen(urllib.request.Request(base + "/big.bin", headers=hdr))
                check(f"urllib 304 with {list(hdr)[0]}", False)
            except urllib.error.HTTPError as e:
                check(f"urllib 304 with {list(hdr)[0]}", e.code == 304 and e.read() == b"")
        with urllib.request.urlopen(base + "/dir") as r:  # 301 followed to dir/
            page = r.read().decode()
            check("urllib directory redirect and listing", r.url.endswith("/dir/") and "a&lt;b&gt;.txt" in page)
        try:
            urllib.request.urlopen(base + "/%2e%2e/secret.txt")
            check("urllib %2e%2e refused", False)
        except urllib.error.HTTPError as e:
            check("urllib %2e%2e refused", e.code == 404)
        if failures:
            print("static_clients: FAILED:", ", ".join(failures))
            return 1
        print("static_clients: all passed")
        return 0
    finally:
        proc.terminate()
        proc.wait(timeout=15)
        shutil.rmtree(tmp)


if __name__ == "__main__":
    sys.exit(main())
