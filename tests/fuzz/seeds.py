#!/usr/bin/env python3
"""Writes the seed corpora in tests/fuzz/corpus/<target>/ (re-run after editing).

Each seed is one meaningful input in the target's format (see the comment at
the top of each fuzz_*.c): a first byte that picks the mode, then the bytes.
Inputs a fuzzer run found (crashes, once fixed) are added by hand as
corpus/<target>/crash-<sha1> and are not written here.
"""
import os

HERE = os.path.dirname(os.path.abspath(__file__))


def req(*lines, body=b""):
    head = "".join(l + "\r\n" for l in lines) + "\r\n"
    return head.encode() + body


HTTP_REQUEST = {
    "get": req("GET / HTTP/1.1", "Host: example.com"),
    "head": req("HEAD / HTTP/1.1", "Host: a"),
    "pipelined": req("GET / HTTP/1.1", "Host: a") + req("GET /later HTTP/1.1", "Host: a")
    + req("GET /user/1 HTTP/1.1", "Host: a", "Connection: close"),
    "http10": req("GET / HTTP/1.0", "Connection: keep-alive") + req("GET / HTTP/1.0"),
    "post-length": req("POST /echo HTTP/1.1", "Host: a", "Content-Length: 11", body=b"hello world"),
    "post-form": req("POST /echo HTTP/1.1", "Host: a", "Content-Type: application/x-www-form-urlencoded",
                     "Content-Length: 21", body=b"a=1&b=%41+b&b=%00&c=3"),
    "post-chunked": req("POST /echo HTTP/1.1", "Host: a", "Transfer-Encoding: chunked",
                        body=b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nTrailer-A: x\r\n\r\n"),
    "stream-continue": req("POST /stream HTTP/1.1", "Host: a", "Expect: 100-continue", "Content-Length: 8",
                           body=b"abcdefgh"),
    "stream-chunked": req("PUT /stream HTTP/1.1", "Host: a", "Transfer-Encoding: chunked",
                          body=b"3\r\nabc\r\n0\r\n\r\n"),
    "later": req("GET /later HTTP/1.1", "Host: a") + req("POST /later HTTP/1.1", "Host: a",
                                                       "Content-Length: 2", body=b"xy"),
    "flush-gzip": req("GET /flush HTTP/1.1", "Host: a", "Accept-Encoding: gzip, deflate;q=0.5"),
    "echo-gzip": req("GET /echo HTTP/1.1", "Host: a", "Accept-Encoding: gzip"),
    "pattern-args": req("GET /user/42/posts/%41%2f?a=1&b=2&b=%FF HTTP/1.1", "Host: a",
                        "X-Forwarded-For: 10.0.0.1, 192.0.2.7", "X-Real-IP: 2001:db8::1",
                        "X-Forwarded-Proto: https"),
    "absolute-form": req("GET http://example.com:8080/user/7?q=1 HTTP/1.1", "Host: example.com:8080"),
    "options-405": req("OPTIONS /user/3 HTTP/1.1", "Host: a") + req("DELETE / HTTP/1.1", "Host: a"),
    "404": req("GET /nowhere HTTP/1.1", "Host: a"),
    "cl-and-te": req("POST /echo HTTP/1.1", "Host: a", "Content-Length: 4", "Transfer-Encoding: chunked",
                     body=b"0\r\n\r\n"),
    "two-lengths": req("POST /echo HTTP/1.1", "Host: a", "Content-Length: 1", "Content-Length: 2",
                       body=b"ab"),
    "te-gzip-chunked": req("POST /echo HTTP/1.1", "Host: a", "Transfer-Encoding: gzip, chunked",
                           body=b"0\r\n\r\n"),
    "obs-fold": b"GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n  folded\r\n\r\n",
    "bare-lf": b"GET / HTTP/1.1\nHost: a\n\n",
    "no-host": req("GET / HTTP/1.1"),
    "two-hosts": req("GET / HTTP/1.1", "Host: a", "Host: b"),
    "expect-other": req("POST /echo HTTP/1.1", "Host: a", "Expect: something", "Content-Length: 0"),
    "upgrade": req("GET / HTTP/1.1", "Host: a", "Connection: Upgrade", "Upgrade: websocket",
                   "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version: 13"),
    "connect": req("CONNECT example.com:443 HTTP/1.1", "Host: example.com:443"),
    "big-header": req("GET / HTTP/1.1", "Host: a", "X-Big: " + "x" * 4200),
    "big-body": req("POST /echo HTTP/1.1", "Host: a", "Content-Length: 70000"),
}
# The first byte: 0 sends everything at once, n sends n bytes per loop iteration.
HTTP_REQUEST_SPLIT = {"get": 1, "post-chunked": 3, "pipelined": 7, "stream-continue": 2, "pattern-args": 5}

CHUNKED = {
    "one": b"5\r\nhello\r\n0\r\n\r\n",
    "many": b"1\r\na\r\n2\r\nbc\r\n3\r\ndef\r\n0\r\n\r\n",
    "ext": b"4;name=value;x\r\nwiki\r\n0;last\r\n\r\n",
    "trailers": b"3\r\nabc\r\n0\r\nX-Checksum: 12\r\nX-Other: a b\r\n\r\n",
    "hex-case": b"A\r\n0123456789\r\n00b\r\nhello world\r\n000\r\n\r\n",
    "then-next": b"2\r\nok\r\n0\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
    "too-big": b"ffffffff\r\nabc\r\n",
    "empty": b"0\r\n\r\n",
    "bad-crlf": b"3\r\nabcX\r\n0\r\n\r\n",
    "lf-only": b"3\nabc\n0\n\n",
}

ROUTER_PATHS = [
    "/", "/index.html", "/api/v1/status", "/user/42", "/user/42/posts", "/files/a/b/c.txt",
    "/lazy/a/b/c", "/nest/abab/x/tail%41", "/one/two/", "/re/abc-12", "/many/0123456789abcdef",
    "/user/%34%32", "/files/%00", "/files/%zz%4", "/nest/a%2fb/",
]
ROUTER_PATTERNS = [
    ("/a/(?P<x>[0-9]+)", "/a/123"),
    ("/(?P<a>.*?)/(?P<a2>.*)", "/x/y/z"),
    ("(?J)/(?:(?P<n>a)|(?P<n>b))", "/b"),
    ("/(a(b(c)?)?)?$", "/abc"),
    ("/(\\d+)/(\\w+)\\.(json|xml)", "/12/item.json"),
    ("/(.)(.)(.)(.)(.)(.)(.)(.)(.)(.)(.)(.)(.)(.)(.)(.)(.)", "/abcdefghijklmnopq"),
    ("/(", "/"),
    ("/(?P<", "/"),
    ("/[z-a]", "/"),
    ("/(?<=x)y", "/y"),
    ("/literal/path", "/literal/path"),
    ("/(a|aa)+$", "/aaaaaaaaaaaaaaaaaaaaaaaab"),
]


def write(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def main():
    for name, data in HTTP_REQUEST.items():
        write("http_request", name, b"\x00" + data)
    for name, seg in HTTP_REQUEST_SPLIT.items():
        write("http_request", name + "-split", bytes([seg]) + HTTP_REQUEST[name])
    for name, data in CHUNKED.items():
        write("http_chunked", name + "-echo", b"\x00" + data)
        write("http_chunked", name + "-stream", b"\x01" + data)
    write("http_chunked", "many-echo-split", bytes([1 << 1]) + CHUNKED["many"])
    write("http_chunked", "trailers-stream-split", bytes([(3 << 1) | 1]) + CHUNKED["trailers"])
    for i, path in enumerate(ROUTER_PATHS):
        write("http_router", "path-%02d" % i, b"\x00" + path.encode())
    for i, (pattern, path) in enumerate(ROUTER_PATTERNS):
        write("http_router", "pattern-%02d" % i, b"\x01" + pattern.encode() + b"\x00" + path.encode())


if __name__ == "__main__":
    main()
