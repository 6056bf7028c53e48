#!/usr/bin/python3
"""websocket_peers.py — our WebSocket against a real peer, Python's websockets
(Debian python3-websockets), both ways, and the two examples as a user runs them.

    websocket_peers.py BINDIR TOOLDIR

1. tools/examples/ws_echo (2 loops, --compress) against websockets' client: text,
   binary, fragmented, a 16 MiB message, ping/pong, close codes, permessage-deflate
   negotiated (and not, when the client does not offer it; with every RFC 7692
   parameter when the client asks for them), an oversized message
   (1009); raw-socket invalid frames (reserved bits, bad opcode, unmasked, invalid
   UTF-8, a control frame over 125 bytes) each get their close code and the server
   keeps serving.
2. tools/examples/ws_chat (2 loops): every message reaches every client, whichever
   loop holds it.
3. Our client (tools/ws-load --check) against a websockets server, with and
   without compression (and with our client_no_context_takeover): text (echoed
   fragmented), binary, 16 MiB, ping/pong, close 4000.
Every server must exit 0 on SIGTERM with nothing on stderr (sanitizer reports
included). Run with /usr/bin/python3 (Debian's websockets).
"""
import asyncio
import functools
import os
import socket
import struct
import subprocess
import sys

import websockets
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import check_util  # noqa: E402

BINDIR, TOOLDIR = sys.argv[1], sys.argv[2]
TIMEOUT, check = check_util.TIMEOUT, check_util.check
Server = functools.partial(check_util.ExampleServer, BINDIR)  # Server(name, *args)


def raw_open(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(1)
        check(chunk, "EOF in the handshake")
        head += chunk
    check(head.startswith(b"HTTP/1.1 101"), f"no 101: {head!r}")
    check(b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in head, "wrong Sec-WebSocket-Accept")
    return s


def frame(opcode, payload, fin=True, rsv=0, masked=True):
    head = bytes([(0x80 if fin else 0) | rsv | opcode])
    n = len(payload)
    m = 0x80 if masked else 0
    if n < 126:
        head += bytes([m | n])
    elif n < 65536:
        head += bytes([m | 126]) + struct.pack("!H", n)
    else:
        head += bytes([m | 127]) + struct.pack("!Q", n)
    if not masked:
        return head + payload
    key = b"\x01\x02\x03\x04"
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def recv_exact(s, n):
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def raw_close_code(s):
    """Reads frames until a close frame; returns its code (None at EOF)."""
    while True:
        h = recv_exact(s, 2)
        if h is None:
            return None
        n = h[1] & 0x7F
        if n == 126:
            n = struct.unpack("!H", recv_exact(s, 2))[0]
        elif n == 127:
            n = struct.unpack("!Q", recv_exact(s, 8))[0]
        payload = recv_exact(s, n)
        if h[0] & 0x0F == 8:
            return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005


async def echo_checks(port):
    url = f"ws://127.0.0.1:{port}/ws"
    async with websockets.connect(url, max_size=None, compression=None) as ws:
        check(ws.response_headers.get("Sec-WebSocket-Extensions") is None, "compression without an offer")
        await ws.send("hello κόσμε")
        check(await ws.recv() == "hello κόσμε", "text")
        await ws.send(bytes(range(256)))
        check(await ws.recv() == bytes(range(256)), "binary")
        await ws.send(["frag", "men", "ted"])
        check(await ws.recv() == "fragmented", "fragmented")
        big = os.urandom(1 << 20) * 16
        await ws.send(big)
        check(await ws.recv() == big, "16 MiB")
        pong = await ws.ping(b"ping!")
        await asyncio.wait_for(pong, 10)
        await ws.close(4001, "bye")
        check(ws.close_code == 4001, f"close code {ws.close_code}")
    async with websockets.connect(url, max_size=None) as ws:  # offers permessage-deflate
        ext = ws.response_headers.get("Sec-WebSocket-Extensions") or ""
        check(ext.startswith("permessage-deflate"), f"compression not negotiated: {ext!r}")
        text = "compress me " * 10000
        await ws.send(text)
        check(await ws.recv() == text, "compressed text")
        await ws.send(b"")
        check(await ws.recv() == b"", "compressed empty")
        big = bytes(range(256)) * (1 << 16)
        await ws.send(big)
        check(await ws.recv() == big, "compressed 16 MiB")
    # every parameter of RFC 7692 offered: no context takeover both ways, a 1 KiB server window
    pmd = ClientPerMessageDeflateFactory(server_no_context_takeover=True, client_no_context_takeover=True,
                                         server_max_window_bits=10, client_max_window_bits=11)
    async with websockets.connect(url, max_size=None, compression=None, extensions=[pmd]) as ws:
        ext = ws.response_headers.get("Sec-WebSocket-Extensions") or ""
        for param in ("server_no_context_takeover", "client_no_context_takeover", "server_max_window_bits=10"):
            check(param in ext, f"{param} not granted: {ext!r}")
        for i in range(5):
            text = f"message {i} " * 500
            await ws.send(text)
            check(await ws.recv() == text, f"no-context-takeover message {i}")
    async with websockets.connect(url, max_size=None, compression=None) as ws:
        await ws.send(b"x" * ((32 << 20) + 1))
        try:
            await ws.recv()
            check(False, "an oversized message was echoed")
        except websockets.ConnectionClosed as e:
            check(e.rcvd is not None and e.rcvd.code == 1009, f"oversized: {e!r}")
    print("websocket_peers: ws_echo against websockets' client: ok", flush=True)


def invalid_frames(port):
    cases = [
        ("reserved bits", frame(1, b"x", rsv=0x20), 1002),
        ("RSV1 without compression", frame(1, b"x", rsv=0x40), 1002),
        ("bad opcode", frame(3, b"x"), 1002),
        ("unmasked client frame", frame(1, b"x", masked=False), 1002),
        ("invalid UTF-8", frame(1, b"\xc0\xaf"), 1007),
        ("control frame over 125 bytes", frame(9, b"p" * 126), 1002),
        ("fragmented control frame", frame(9, b"p", fin=False), 1002),
    ]
    good = raw_open(port)
    for what, data, code in cases:
        s = raw_open(port)
        s.sendall(data)
        got = raw_close_code(s)
        check(got == code, f"{what}: close code {got}, expected {code}")
        s.sendall(frame(8, struct.pack("!H", 1000)))
        check(recv_exact(s, 1) is None, f"{what}: the server did not end the connection")
        s.close()
        good.sendall(frame(1, what.encode()))  # the server keeps serving
        h = recv_exact(good, 2)
        check(recv_exact(good, h[1]) == what.encode(), f"echo after {what}")
    good.close()
    print("websocket_peers: invalid frames: ok", flush=True)


async def chat_checks(port):
    url = f"ws://127.0.0.1:{port}/chat"
    clients = [await websockets.connect(url) for _ in range(6)]
    await asyncio.sleep(0.2)  # every on_open has run
    for i, c in enumerate(clients):
        await c.send(f"from {i}")
    for c in clients:
        got = sorted([await asyncio.wait_for(c.recv(), 10) for _ in clients])
        check(got == sorted(f"from {i}" for i in range(len(clients))), f"chat: {got}")
    for c in clients:
        await c.close()
    print("websocket_peers: ws_chat across loops: ok", flush=True)


async def echo(ws):
    try:
        async for message in ws:
            if isinstance(message, str) and len(message) > 3:
                await ws.send([message[:3], message[3:]])  # fragmented: our client reassembles it
            else:
                await ws.send(message)
    except websockets.ConnectionClosed:  # our client closes with 4000: not an "OK" close to websockets
        pass


async def client_checks():
    for compression, flag in ((None, None), ("deflate", "--compress"), ("deflate", "--no-context-takeover")):
        async with websockets.serve(echo, "127.0.0.1", 0, max_size=None, compression=compression) as server:
            port = server.sockets[0].getsockname()[1]
            args = [os.path.join(TOOLDIR, "ws-load"), f"ws://127.0.0.1:{port}/", "--check"]
            if flag:
                args.append(flag)
            proc = await asyncio.create_subprocess_exec(*args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            out, err = await asyncio.wait_for(proc.communicate(), TIMEOUT)
            out = out.decode()
            check(proc.returncode == 0 and "check ok" in out and not err,
                  f"ws-load --check ({compression}): {out} {err.decode()}")
            if compression:
                check("extensions: permessage-deflate" in out, f"no compression: {out}")
            if flag == "--no-context-takeover":
                check("client_no_context_takeover" in out, f"our no_context_takeover not granted: {out}")
    print("websocket_peers: our client against a websockets server: ok", flush=True)


def main():
    echo_srv = Server("ws_echo", "--threads", "2", "--compress", "--max-message-size", str(32 << 20))
    try:
        asyncio.run(asyncio.wait_for(echo_checks(echo_srv.port), TIMEOUT))
        invalid_frames(echo_srv.port)
    finally:
        echo_srv.stop()
    chat = Server("ws_chat", "--threads", "2")
    try:
        asyncio.run(asyncio.wait_for(chat_checks(chat.port), TIMEOUT))
    finally:
        chat.stop()
    asyncio.run(client_checks())


if __name__ == "__main__":
    main()
