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
    "upload-cut": req("POST /upload HTTP/1.1", "Host: a", "Content-Length: 10", body=b"abc"),
    "upload-head-only": req("POST /upload HTTP/1.1", "Host: a", "Content-Length: 10"),
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
    "healthz": req("GET /healthz HTTP/1.1", "Host: a") + req("HEAD /healthz HTTP/1.1", "Host: a"),
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
# ... its top bit sends to a server that is draining,
HTTP_REQUEST_DRAIN = {"pipelined": 0x80, "post-chunked": 0x81, "later": 0x80, "flush-gzip": 0x80, "get": 0x80,
                      "healthz": 0x80}
# ... and bit 6 closes the client once all is sent.
HTTP_REQUEST_VANISH = {"later": 0x40, "flush-gzip": 0x40, "stream-continue": 0x41, "pipelined": 0xc0}

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


def v2(cmd, fam, body):
    sig = b"\r\n\r\n\x00\r\nQUIT\n"
    return sig + bytes([cmd, fam]) + len(body).to_bytes(2, "big") + body


IP4 = bytes([192, 0, 2, 1, 198, 51, 100, 2]) + (56324).to_bytes(2, "big") + (443).to_bytes(2, "big")
IP6 = bytes.fromhex("20010db8000000000000000000000001" "20010db8000000000000000000000002") + bytes([0x10, 0x92, 0, 80])
UNIX = b"/run/src.sock".ljust(108, b"\x00") + b"/run/dst.sock".ljust(108, b"\x00")
TLVS = bytes([0x01, 0, 2]) + b"h2" + bytes([0x04, 0, 3, 0, 0, 0]) + bytes([0x20, 0, 5, 0x01, 0, 0, 0, 0])
PROXY = {
    "v1-tcp4": b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\nGET / HTTP/1.1\r\n\r\n",
    "v1-tcp6": b"PROXY TCP6 2001:db8::1 2001:db8::2 4242 80\r\n",
    "v1-unknown": b"PROXY UNKNOWN\r\n",
    "v1-unknown-addrs": b"PROXY UNKNOWN ffff:f...f:ffff 1 2\r\n",
    "v1-too-long": b"PROXY TCP4 " + b"1" * 120 + b"\r\n",
    "v1-bad-port": b"PROXY TCP4 192.0.2.1 198.51.100.2 65536 443\r\n",
    "v2-tcp4": v2(0x21, 0x11, IP4) + b"GET / HTTP/1.1\r\n",
    "v2-tcp6": v2(0x21, 0x21, IP6),
    "v2-unix": v2(0x21, 0x31, UNIX),
    "v2-local": v2(0x20, 0x00, b""),
    "v2-tlvs": v2(0x21, 0x11, IP4 + TLVS),
    "v2-udp4": v2(0x21, 0x12, IP4),
    "v2-bad-version": v2(0x11, 0x11, IP4),
    "v2-bad-command": v2(0x22, 0x11, IP4),
    "v2-too-long": v2(0x21, 0x11, IP4)[:14] + b"\xff\xff",
    "v2-short-block": v2(0x21, 0x21, IP4),
    "not-proxy": b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
}

CLIENT = {
    "length": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nhello",
    "chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-T: 1\r\n\r\n",
    "close-delimited": b"HTTP/1.0 200 OK\r\nServer: x\r\n\r\nthe body runs until the close",
    "continue": b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n",
    "204-length": b"HTTP/1.1 204 No Content\r\nContent-Length: 10\r\n\r\n",
    "304": b"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n",
    "two": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n"
           b"Connection: close\r\n\r\n",
    "switching": b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    "bad-status": b"HTTP/1.1 2OO OK\r\n\r\n",
    "two-lengths": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc",
    "cut": b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort",
}
CLIENT_HEAD = {"head-length": b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n"}

WS = {  # name: (first byte, bytes)
    "server-masked-hello": (1, bytes.fromhex("818537fa213d7f9f4d5158")),
    "client-hello": (0, bytes.fromhex("810548656c6c6f")),
    "client-fragments": (0, bytes.fromhex("010348656c80026c6f")),
    "client-ping-pong": (0, bytes.fromhex("890548656c6c6f8a00")),
    "client-close": (0, bytes.fromhex("880203e8")),
    "client-close-reason": (0, bytes.fromhex("880603e8627965")),
    "client-deflate-hello": (2, bytes.fromhex("c107f248cdc9c90700")),
    "client-deflate-reset": (6, bytes.fromhex("c107f248cdc9c90700c107f248cdc9c90700")),
    "client-len126": (0, bytes.fromhex("827e007e") + bytes(range(126))),
    "client-len64": (0, bytes.fromhex("827f0000000000000100") + bytes(256)),
    "client-bad-utf8": (0, bytes.fromhex("8102c328")),
    "client-control-between": (0, bytes.fromhex("0101418900800142")),
    "client-rsv-bits": (0, bytes.fromhex("f10141")),
    "server-unmasked": (1, bytes.fromhex("810548656c6c6f")),
    "client-hello-split": (1 << 3, bytes.fromhex("810548656c6c6f810548656c6c6f")),
}


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
    for name, first in HTTP_REQUEST_DRAIN.items():
        write("http_request", name + "-drain", bytes([first]) + HTTP_REQUEST[name])
    for name, first in HTTP_REQUEST_VANISH.items():
        write("http_request", name + "-vanish", bytes([first]) + HTTP_REQUEST[name])
    for name, data in CHUNKED.items():
        write("http_chunked", name + "-echo", b"\x00" + data)
        write("http_chunked", name + "-stream", b"\x01" + data)
    write("http_chunked", "many-echo-split", bytes([1 << 1]) + CHUNKED["many"])
    write("http_chunked", "trailers-stream-split", bytes([(3 << 1) | 1]) + CHUNKED["trailers"])
    for i, path in enumerate(ROUTER_PATHS):
        write("http_router", "path-%02d" % i, b"\x00" + path.encode())
    for i, (pattern, path) in enumerate(ROUTER_PATTERNS):
        write("http_router", "pattern-%02d" % i, b"\x01" + pattern.encode() + b"\x00" + path.encode())
    for name, data in PROXY.items():
        write("proxy_protocol", name, data)
    for name, data in CLIENT.items():
        write("http_client_parse", name, b"\x00" + data)
    for name, data in CLIENT_HEAD.items():
        write("http_client_parse", name, b"\x01" + data)
    write("http_client_parse", "chunked-split", bytes([1 << 1]) + CLIENT["chunked"])
    write("http_client_parse", "two-split", bytes([7 << 1]) + CLIENT["two"])
    for name, (first, data) in WS.items():
        write("ws_reader", name, bytes([first]) + data)


if __name__ == "__main__":
    main()
