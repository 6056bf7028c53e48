#!/usr/bin/python3
"""examples.py — runs tools/examples as a user would and asserts exact outputs.

    examples.py BINDIR [sanitized]

kv_server on 2 loops (so every connection has a local and a remote shard):
kv_client SET/GET/DEL on keys of both shards, a raw pipelined batch whose
replies must come back byte-exact and in order, a client that half-closes
(every reply, then EOF), a client that stops reading (server memory bounded,
then every reply correct), kv_client --bench, and a refused connection.
echo_server: small and large echoes, concurrent clients, a client that
half-closes, and a client that stops reading (the server stops reading too: the sender blocks; then
everything comes back). Both servers must exit 0 on SIGTERM
with nothing on stderr (sanitizer reports included). Memory bounds are
checked only in plain builds ("sanitized" skips them: shadow memory and
quarantines inflate RSS). Standard library only.
"""
import functools
import os
import re
import socket
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import check_util  # noqa: E402

BINDIR = sys.argv[1]
SANITIZED = len(sys.argv) > 2 and sys.argv[2] not in ("", "OFF", "0")
TIMEOUT, check = check_util.TIMEOUT, check_util.check
Server = functools.partial(check_util.ExampleServer, BINDIR)  # Server(name, *args)


def connect(port, rcvbuf=None):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(TIMEOUT)
    sock.connect(("127.0.0.1", port))
    return sock


def recv_exactly(sock, size):
    chunks, got = [], 0
    while got < size:
        chunk = sock.recv(min(size - got, 1 << 20))
        check(chunk, f"connection closed after {got} of {size} bytes")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def kv_client(port, *words, status=0):
    proc = subprocess.run([os.path.join(BINDIR, "kv_client"), "--port", str(port), *words],
                          capture_output=True, text=True, timeout=TIMEOUT)
    check(proc.returncode == status, f"kv_client {words}: exit {proc.returncode}, stderr {proc.stderr!r}")
    return proc.stdout, proc.stderr


def shard_of(key, shards=2):
    """kv_server's shard choice: FNV-1a 32-bit of the key, modulo the loops."""
    value = 2166136261
    for byte in key.encode():
        value = ((value ^ byte) * 16777619) & 0xFFFFFFFF
    return value % shards


def reply(value):
    """The exact reply kv_server sends for a GET of value (None: a miss)."""
    if value is None:
        return b"$-1\r\n"
    return b"$%d\r\n%s\r\n" % (len(value), value)


def test_kv_commands(port):
    keys = [f"key{i}" for i in range(40)]
    shard0 = [k for k in keys if shard_of(k) == 0][:2]
    shard1 = [k for k in keys if shard_of(k) == 1][:2]
    check(len(shard0) == 2 and len(shard1) == 2, "keys on both shards")
    a, b = shard0
    c, d = shard1

    # One command per connection, then several pipelined by kv_client.
    check(kv_client(port, "SET", a, "alpha")[0] == "OK\n", "SET on shard 0")
    check(kv_client(port, "SET", c, "gamma")[0] == "OK\n", "SET on shard 1")
    check(kv_client(port, "GET", a)[0] == "alpha\n", "GET on shard 0")
    check(kv_client(port, "GET", c)[0] == "gamma\n", "GET on shard 1")
    out, _ = kv_client(port, "SET", b, "a value with spaces", "SET", d, "delta", "GET", b, "GET", d, "GET", a,
                       "GET", "missing", "DEL", c, "DEL", c, "GET", c, "GET", d)
    check(out == "OK\nOK\na value with spaces\ndelta\nalpha\n(nil)\n(integer) 1\n(integer) 0\n(nil)\ndelta\n",
          f"pipelined kv_client commands: {out!r}")


def test_kv_pipelined(port):
    # A raw pipelined batch over 40 keys (both shards, so local replies are
    # ready before the remote ones ahead of them): byte-exact, in order.
    model, requests, expected = {}, [], []
    keys = [f"batch{i}" for i in range(40)]  # none set before
    check({shard_of(k) for k in keys} == {0, 1}, "batch keys on both shards")
    for i in range(600):
        key = keys[(i * 7) % len(keys)]
        op = i % 4
        if op in (0, 3):
            value = f"v{i}".encode() * (1 + i % 5)
            requests.append(b"SET %s %s\r\n" % (key.encode(), value))
            expected.append(b"+OK\r\n")
            model[key] = value
        elif op == 1:
            requests.append(b"GET %s\r\n" % key.encode())
            expected.append(reply(model.get(key)))
        else:
            requests.append(b"DEL %s\r\n" % key.encode())
            expected.append(b":1\r\n" if model.pop(key, None) is not None else b":0\r\n")
    requests.append(b"FLY me\r\n")
    expected.append(b"-ERR unknown command or wrong number of arguments\r\n")
    requests.append(b"GET\r\n")
    expected.append(b"-ERR unknown command or wrong number of arguments\r\n")
    requests.append(b"GET \r\n")
    expected.append(b"-ERR empty key\r\n")
    with connect(port) as sock:
        sock.sendall(b"".join(requests))
        want = b"".join(expected)
        got = recv_exactly(sock, len(want))
        check(got == want, f"pipelined batch: first difference at byte "
                           f"{next((i for i, (x, y) in enumerate(zip(got, want)) if x != y), -1)}")


def test_kv_half_close(port):
    # A client that sends its commands and shuts its side down (nc -N) gets
    # every reply, then EOF: the server answers what came before the EOF.
    big = b"h" * 50000
    with connect(port) as sock:
        sock.sendall(b"SET half %s\r\n" % big + b"GET half\r\n" * 40 + b"DEL half\r\nGET half\r\nGET par")
        sock.shutdown(socket.SHUT_WR)
        want = b"+OK\r\n" + reply(big) * 40 + b":1\r\n$-1\r\n"  # the unterminated line is dropped
        check(recv_exactly(sock, len(want)) == want, "half-closed client: replies")
        check(sock.recv(1) == b"", "half-closed client: EOF after the last reply")


def test_kv_slow_client(server):
    port = server.port
    # A client that pipelines GETs of a 60 KB value and does not read for a
    # while: the server stops reading (bounded memory), then sends all.
    big = b"x" * 60000
    with connect(port) as sock:
        sock.sendall(b"SET big %s\r\n" % big)
        check(recv_exactly(sock, 5) == b"+OK\r\n", "SET big")
    count = 1000  # 60 MB of replies
    with connect(port, rcvbuf=16384) as sock:
        rss_before = server.rss_kib()
        sock.sendall(b"GET big\r\n" * count)
        time.sleep(1.0)
        growth_mib = (server.rss_kib() - rss_before) / 1024
        if not SANITIZED:
            check(growth_mib < 24, f"kv_server RSS grew {growth_mib:.1f} MiB behind a client that does not read")
        want = reply(big)
        for i in range(count):
            check(recv_exactly(sock, len(want)) == want, f"slow client: reply {i}")
    print(f"kv slow client: server RSS growth {growth_mib:.1f} MiB while 60 MB of replies waited")


def test_kv_bench(port):
    out, _ = kv_client(port, "--bench", "20000")
    check(re.fullmatch(r"kv_client: 20000 ops in [0-9.]+ s: [0-9]+ ops/s \(256 in flight\), 0 wrong\n", out),
          f"kv_client --bench: {out!r}")
    print(out.strip())


def test_kv_refused():
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out, err = kv_client(port, "GET", "a", status=1)
    check(out == "" and "Connection refused" in err, f"refused connect: {err!r}")


def test_echo(server):
    port = server.port
    with connect(port) as sock:
        sock.sendall(b"hello\n")
        check(recv_exactly(sock, 6) == b"hello\n", "small echo")

    # Several clients at once, each with a payload larger than one read.
    def client(seed, results):
        payload = bytes((seed + i) % 251 for i in range(300000))
        with connect(port) as sock:
            sender = threading.Thread(target=sock.sendall, args=(payload,))
            sender.start()
            results[seed] = recv_exactly(sock, len(payload)) == payload
            sender.join()

    results = {}
    threads = [threading.Thread(target=client, args=(seed, results)) for seed in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT)
    check(results == {seed: True for seed in range(8)}, f"concurrent echoes: {results}")

    # A client that sends 4 MB and half-closes, reading through a small
    # window: all of it comes back, then EOF. (Whether echo is still queued
    # in the server at the EOF depends on timing, so this passes without
    # half_close too; test_kv_half_close is the one that fails without it.)
    payload = bytes(range(256)) * (4 << 12)

    def send_and_shut(sock):
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)

    with connect(port, rcvbuf=16384) as sock:
        sender = threading.Thread(target=send_and_shut, args=(sock,))
        sender.start()
        check(recv_exactly(sock, len(payload)) == payload, "half-closed echo")
        check(sock.recv(1) == b"", "half-closed echo: EOF after the echo")
        sender.join(TIMEOUT)

    # A client that sends 64 MB without reading for a second: the server
    # stops reading once its output is full, so the sender cannot finish
    # (kernel buffers hold far less); then everything comes back in order.
    total, chunk = 64 << 20, 1 << 16
    sent = [0]
    payload = bytes(range(256)) * (chunk // 256)

    def send_all(sock):
        while sent[0] < total:
            sock.sendall(payload)
            sent[0] += chunk

    with connect(port, rcvbuf=16384) as sock:  # a small window: the kernel holds less
        rss_before = server.rss_kib()
        sender = threading.Thread(target=send_all, args=(sock,))
        sender.start()
        time.sleep(1.0)
        check(sent[0] < total, "echo_server kept reading from a client that does not read")
        growth_mib = (server.rss_kib() - rss_before) / 1024
        if not SANITIZED:
            check(growth_mib < 24, f"echo_server RSS grew {growth_mib:.1f} MiB")
        print(f"echo slow client: {sent[0] >> 20} of {total >> 20} MiB sent after 1 s without reading, "
              f"server RSS growth {growth_mib:.1f} MiB")
        for i in range(total // chunk):
            check(recv_exactly(sock, chunk) == payload, f"slow echo: chunk {i}")
        sender.join(TIMEOUT)


def main():
    kv = Server("kv_server", "--threads", "2")
    check(kv.banner == f"kv_server: listening on port {kv.port} with 2 shard(s)\n", f"banner {kv.banner!r}")
    try:
        test_kv_commands(kv.port)
        test_kv_pipelined(kv.port)
        test_kv_half_close(kv.port)
        test_kv_slow_client(kv)
        test_kv_bench(kv.port)
    finally:
        kv.stop()
    test_kv_refused()
    echo = Server("echo_server", "--threads", "2")
    try:
        test_echo(echo)
    finally:
        echo.stop()
    print("examples: all checks passed")


if __name__ == "__main__":
    main()
