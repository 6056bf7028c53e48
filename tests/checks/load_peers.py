#!/usr/bin/python3
"""load_peers.py — tools/ioloop-load against real servers and hostile ones.

Real servers: our helloworld (keep-alive and 16-deep pipelining, two loops),
nginx (tools/http-bench/nginx.conf.in) and helloworld over https. Each run
must report requests > 0, no error of any kind, and ordered percentiles.
Hostile servers (asyncio, in this process, port 0): one that resets after
reading the request, one that never answers, one that answers 500, one that
answers garbage, a port nobody listens on, a close-delimited body, a slow
sender (a response in 1-byte pieces) and a body that never ends (the peak
RSS must stay flat): each must show up as the right error kind (or none),
with the tool still exiting 0 after its run.

    load_peers.py IOLOAD HELLOWORLD
    IOLOOP_LOAD_WRAPPER="valgrind -q --error-exitcode=99 ..." load_peers.py ...  (ioloop-load runs under it)
Standard library, nginx and openssl only; 127.0.0.1 and kernel-chosen ports.
"""
import asyncio, json, os, shutil, socket, struct, subprocess, sys, tempfile, threading, time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
failures = []


def check(name, cond, detail=""):
    print(("ok   " if cond else "FAIL ") + name + ("" if cond else f"  [{detail}]"), flush=True)
    if not cond:
        failures.append(name)


WRAPPER = os.environ.get("IOLOOP_LOAD_WRAPPER", "").split()


def load(ioload, url, *args, duration="0.6"):
    """Runs ioloop-load; its JSON report plus rc and maxrss_kib (wait4's peak RSS)."""
    cmd = [*WRAPPER, ioload, "-d", duration, "--json", *args, url]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.stdout.read(), proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        print(err, file=sys.stderr)
        return {"rc": proc.returncode, "stderr": err, "requests": -1, "errors": {}}
    r = json.loads(out)
    r["rc"] = 0
    r["maxrss_kib"] = usage.ru_maxrss
    return r


def sane(name, r, pipeline=1):
    lat = r.get("latency_ns", {})
    order = [lat.get(k, -1) for k in ("p50", "p90", "p99", "p99.9", "max")]
    check(f"{name}: requests > 0", r.get("requests", 0) > 0, r)
    check(f"{name}: no errors", r.get("errors", {}).get("total", -1) == 0, r.get("errors"))
    check(f"{name}: percentiles ordered", order[0] > 0 and order == sorted(order), order)
    check(f"{name}: bytes read", r.get("bytes", 0) >= r.get("requests", 0) * 20, r.get("bytes"))
    check(f"{name}: whole batches ({pipeline})", r.get("pipeline") == pipeline)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port, proc=None):
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            if proc and proc.poll() is not None:
                return False
            time.sleep(0.05)
    return False


def start_helloworld(hello, *extra):
    proc = subprocess.Popen([hello, "--port", "0", "--threads", "1", "--pin", "no", *extra],
                            stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    return proc, int(line.split("127.0.0.1:")[1].split("/")[0])


# ---- hostile servers ---------------------------------------------------------------------

async def read_request(reader):
    try:
        await reader.readuntil(b"\r\n\r\n")
        return True
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
        return False


async def resets(reader, writer):
    await read_request(reader)
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def stalls(reader, writer):
    await read_request(reader)
    try:
        await reader.read()  # never answers; waits for the client to go
    except ConnectionError:
        pass
    writer.close()


async def answers(reader, writer, response, close=False, piece=0, pause=0.0):
    try:
        while await read_request(reader):
            if piece:
                for i in range(0, len(response), piece):
                    writer.write(response[i:i + piece])
                    await writer.drain()
                    await asyncio.sleep(pause)
            else:
                writer.write(response)
                await writer.drain()
            if close:
                break
    except ConnectionError:
        pass
    writer.close()


async def endless(reader, writer):
    """A response whose body never ends (1 TB announced), pushed as fast as the client reads."""
    await read_request(reader)
    block = b"x" * 65536
    try:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000000\r\n\r\n")
        while True:
            writer.write(block)
            await writer.drain()
    except (ConnectionError, RuntimeError):
        pass
    writer.close()


SEEN = set()


async def records(reader, writer):
    """Answers 204 and keeps each request head it got (its request line and headers)."""
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            SEEN.add(head.decode("latin-1"))
            writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
        pass
    writer.close()


SERVERS = {
    "endless": endless,
    "records": records,
    "resets": resets,
    "stalls": stalls,
    "500": lambda r, w: answers(r, w, b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\n\r\noops"),
    "garbage": lambda r, w: answers(r, w, b"HELLO THERE\r\n\r\n"),
    "close-delimited": lambda r, w: answers(r, w, b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nbody until close",
                                            close=True),
    "slow": lambda r, w: answers(r, w, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", piece=1, pause=0.002),
}


def start_hostile():
    ports, ready = {}, threading.Event()
    loop = asyncio.new_event_loop()

    async def main():
        for name, fn in SERVERS.items():
            server = await asyncio.start_server(fn, "127.0.0.1", 0)
            ports[name] = server.sockets[0].getsockname()[1]
        ready.set()
        await asyncio.Event().wait()

    threading.Thread(target=lambda: loop.run_until_complete(main()), daemon=True).start()
    ready.wait(10)
    return ports


def main():
    ioload, hello = sys.argv[1], sys.argv[2]
    tmp = tempfile.mkdtemp(prefix="ioloop-load-check-")
    procs = []
    try:
        # helloworld: keep-alive and pipelined, two loops
        proc, port = start_helloworld(hello)
        procs.append(proc)
        url = f"http://127.0.0.1:{port}/"
        sane("helloworld keep-alive", load(ioload, url, "-c", "8", "--threads", "2", duration="1"))
        sane("helloworld pipelined", load(ioload, url, "-c", "8", "-p", "16", "--threads", "2", duration="1"), 16)
        # SIGINT ends a long run early, with the report of what was done
        t0 = time.monotonic()
        proc = subprocess.Popen([*WRAPPER, ioload, "-c", "4", "-d", "60", "--json", url], stdout=subprocess.PIPE, text=True)
        time.sleep(4.0 if WRAPPER else 1.0)  # past start-up (valgrind's is slow), when SIGINT is blocked and awaited
        proc.send_signal(2)
        out, _ = proc.communicate(timeout=30)
        r = json.loads(out) if proc.returncode == 0 and out else {}
        check("SIGINT: early end, reported", time.monotonic() - t0 < 20 and r.get("requests", 0) > 0 and
              r.get("seconds", 99) < 20, (proc.returncode, out))
        r = load(ioload, url, "-c", "3", "--threads", "2", "-H", "X-Test: 1")
        sane("helloworld, 3 connections over 2 loops, an extra header", r)

        # nginx
        if shutil.which("nginx") or os.path.exists("/usr/sbin/nginx"):
            nport = free_port()
            os.makedirs(os.path.join(tmp, "body"))
            conf = open(os.path.join(ROOT, "tools/http-bench/nginx.conf.in")).read()
            conf = conf.replace("@WORKERS@", "1").replace("@PORT@", str(nport)).replace("@DIR@", tmp)
            with open(os.path.join(tmp, "nginx.conf"), "w") as f:
                f.write(conf)
            nginx = shutil.which("nginx") or "/usr/sbin/nginx"
            proc = subprocess.Popen([nginx, "-c", os.path.join(tmp, "nginx.conf"), "-p", tmp],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            procs.append(proc)
            if wait_port(nport, proc):
                nurl = f"http://127.0.0.1:{nport}/"
                sane("nginx keep-alive", load(ioload, nurl, "-c", "8", "--threads", "1", duration="1"))
                sane("nginx pipelined", load(ioload, nurl, "-c", "8", "-p", "16", "--threads", "1", duration="1"), 16)
            else:
                check("nginx started", False, "nginx did not listen")
        else:
            print("skip nginx: not installed")

        # https (helloworld with a test certificate), when helloworld has TLS and ioloop-load too
        sys.path.insert(0, HERE)
        import tls_certs
        certs = tls_certs.make(os.path.join(tmp, "certs"))
        tproc = subprocess.Popen([hello, "--port", "0", "--threads", "1", "--pin", "no",
                                  "--tls-cert", certs["cert"], "--tls-key", certs["key"]],
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        procs.append(tproc)
        line = tproc.stdout.readline()
        if line.startswith("helloworld: https://"):
            tport = int(line.split("127.0.0.1:")[1].split("/")[0])
            r = load(ioload, f"https://localhost:{tport}/", "-c", "4", "--cacert", certs["ca"])
            if r["rc"] == 1 and "without TLS" in r.get("stderr", ""):
                print("skip https: ioloop-load built without TLS")
            else:
                sane("https keep-alive, verified", r)
                r = load(ioload, f"https://localhost:{tport}/", "-c", "2")  # system roots: the test CA is not one
                check("https, unknown CA: every connect fails, counted as connect errors", r.get("requests") == 0 and
                      r["errors"]["connect"] > 0 and r["errors"]["total"] == r["errors"]["connect"], r)
        else:
            print("skip https: helloworld built without TLS")

        # hostile servers
        ports = start_hostile()
        h = lambda name: f"http://127.0.0.1:{ports[name]}/"
        for target, sent in (("?q=1", "/?q=1"), ("", "/"), ("/a/b?x=y", "/a/b?x=y")):
            SEEN.clear()
            r = load(ioload, h("records").rstrip("/") + target, "-c", "1", "-H", "X-Load: yes", duration="0.3")
            want = f"GET {sent} HTTP/1.1\r\nHost: 127.0.0.1:{ports['records']}\r\nX-Load: yes\r\n\r\n"
            check(f"request for URL ending {target!r}: target {sent}, Host, the -H header, nothing else",
                  r["requests"] > 0 and SEEN == {want}, (SEEN, want))
        r = load(ioload, h("resets"), "-c", "4", "--threads", "2")
        check("resets: no request, read/write errors counted",
              r["requests"] == 0 and r["errors"]["read"] + r["errors"]["write"] > 0 and r["rc"] == 0, r)
        r = load(ioload, h("stalls"), "-c", "2", "--timeout", "150ms", duration="0.8")
        check("stalls: timeout errors, nothing else", r["requests"] == 0 and r["errors"]["timeout"] >= 2 and
              r["errors"]["total"] == r["errors"]["timeout"], r)
        r = load(ioload, h("500"), "-c", "2", "-p", "4")
        check("500: every response a status error", r["requests"] > 0 and
              r["errors"]["status"] == r["requests"] and r["errors"]["total"] == r["requests"], r)
        r = load(ioload, h("garbage"), "-c", "2")
        check("garbage: parse errors, no request", r["requests"] == 0 and r["errors"]["parse"] > 0, r)
        r = load(ioload, h("close-delimited"), "-c", "2")
        check("close-delimited bodies: counted, reconnects are not errors",
              r["requests"] > 0 and r["errors"]["total"] == 0, r)
        r = load(ioload, h("slow"), "-c", "2")
        # 40 one-byte pieces 2 ms apart: no response completes in under ~70 ms
        check("slow sender: served, latency includes the trickle",
              r["requests"] > 0 and r["errors"]["total"] == 0 and r["latency_ns"]["p50"] > 50e6, r)
        base = load(ioload, url, "-c", "2", duration="1")
        r = load(ioload, h("endless"), "-c", "2", duration="1")
        check("endless body: read and dropped as it comes, memory flat",
              r["errors"]["total"] == 0 and r["bytes"] > 50e6 and r["maxrss_kib"] < base["maxrss_kib"] + 16384,
              (r, base.get("maxrss_kib")))
        r = load(ioload, f"http://127.0.0.1:{free_port()}/", "-c", "2", duration="0.3")
        check("nobody listening: connect errors, retried with a pause (not a spin)",
              r["requests"] == 0 and 2 <= r["errors"]["connect"] <= 2 * 40 and
              r["errors"]["total"] == r["errors"]["connect"], r)

        # bad usage
        for args in ([], ["-c", "0", "http://x/"], ["ftp://x/"], ["http://[::1/"], ["-d", "abc", "http://x/"]):
            rc = subprocess.run([*WRAPPER, ioload, *args], capture_output=True).returncode
            check(f"usage error {args}: exit 2", rc == 2, rc)
    finally:
        for p in procs:
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{len(failures)} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
