"""deploylib.py — what the tools/deploy scripts share: free ports, a temp
dir, child processes (ioloop servers, haproxy, nginx) started and always
cleaned up, readiness waits, and the load generator that counts every
request's outcome.

Threading rule: the load generator runs client threads of its own; every
other function is for the script's main thread. Everything binds and
connects on 127.0.0.1 only.

The load client is the strict judge of "zero failed requests": a request
fails if it gets no complete 200 response with the expected body. The one
retry it allows is the one every HTTP/1.1 client makes (RFC 9112 9.3.1,
urllib3, browsers): a request sent on a *reused* keep-alive connection that
the server closed before sending any byte of a response is sent again on a
new connection (the server may close an idle connection at any time, and a
request that crossed the close was never seen). Those are counted apart
("retried"); a fresh connection that fails is always a failure.
"""
import http.client
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time


def fill(template, out, **values):
    """Writes template with every @NAME@ replaced by values[NAME]; returns out."""
    with open(template) as f:
        text = f.read()
    for k, v in values.items():
        text = text.replace("@%s@" % k, str(v))
    left = re.search(r"@[A-Z0-9_]+@", text)
    if left:
        raise ValueError("%s: %s left unfilled" % (template, left.group(0)))
    with open(out, "w") as f:
        f.write(text)
    return out


def free_port():
    """A port free now on 0.0.0.0, outside the kernel's ephemeral range: a
    port that a restart gives up for a moment must not be taken meanwhile as
    the local port of some outgoing connection (HAProxy's, the client's),
    which a port from bind(0) can be, since both come from that range."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(10000, max(low, 10001))
        with socket.socket() as s:
            try:
                s.bind(("0.0.0.0", port))
                return port
            except OSError:
                continue
    raise RuntimeError("no free port below %d" % low)


def wait_http(port, path="/", status=200, timeout=20.0, host="127.0.0.1", source=None):
    """Polls http://host:port/path (from address `source`, if given) until it
    answers `status`; raises after timeout."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection(host, port, timeout=2, source_address=(source, 0) if source else None)
            conn.request("GET", path)
            r = conn.getresponse()
            r.read()
            conn.close()
            if r.status == status:
                return
            last = "status %d" % r.status
        except OSError as e:
            last = repr(e)
        time.sleep(0.05)
    raise RuntimeError("http://%s:%d%s never answered %d (last: %s)" % (host, port, path, status, last))


class Processes:
    """Children started by a script; stop_all() (also at exit and on
    SIGTERM/SIGINT) ends every one still running, by its own pid."""

    def __init__(self):
        self.children = []
        self.tmp = tempfile.mkdtemp(prefix="ioloop-deploy-")
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, signo, frame):
        self.close()
        sys.exit(128 + signo)

    def start(self, argv, name, env=None, pass_fds=()):
        """Starts argv with stdout+stderr to TMP/name.log (and pass_fds open
        in it); returns the Popen."""
        log = open(os.path.join(self.tmp, name + ".log"), "wb")
        p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             env=env, start_new_session=True, pass_fds=pass_fds)
        p.log_path = log.name
        p.name = name
        log.close()
        self.children.append(p)
        return p

    def wait_line(self, p, needle, timeout=20.0):
        """Waits until p's log holds needle; returns that line. Raises if p
        exits first or after timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with open(p.log_path, "rb") as f:
                for line in f.read().decode(errors="replace").splitlines():
                    if needle in line:
                        return line
            if p.poll() is not None:
                break
            time.sleep(0.02)
        raise RuntimeError("%s: no %r in its output (exit %s):\n%s" % (p.name, needle, p.poll(), self.log(p)))

    def log(self, p):
        with open(p.log_path, "rb") as f:
            return f.read().decode(errors="replace")

    def stop(self, p, signo=signal.SIGTERM, timeout=20.0):
        """Signals p and waits for it; returns its exit code (kills after timeout)."""
        if p.poll() is None:
            p.send_signal(signo)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
                raise RuntimeError("%s did not exit within %.0f s of signal %d" % (p.name, timeout, signo))
        return p.returncode

    def close(self, keep_tmp=False):
        for p in self.children:
            if p.poll() is None:
                p.kill()
                p.wait()
        self.children = []
        if not keep_tmp and os.environ.get("IOLOOP_DEPLOY_KEEP") is None:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Load:
    """Continuous GET load on 127.0.0.1:port from client threads: `fresh`
    threads open a new connection per request, `keepalive` threads reuse
    theirs. Counts ok / failed / retried; keeps the first failures' reasons."""

    def __init__(self, port, path="/", body=b"Hello, world", fresh=3, keepalive=3, timeout=10.0, source=None):
        self.port, self.path, self.body, self.timeout = port, path, body, timeout
        self.source = (source, 0) if source else None  # e.g. 127.0.0.2: told apart from a proxy's 127.0.0.1
        self.ok = self.failed = self.retried = 0
        self.errors = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(False,), daemon=True) for _ in range(fresh)]
        self.threads += [threading.Thread(target=self._run, args=(True,), daemon=True) for _ in range(keepalive)]

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    def stop(self):
        self.stopping.set()
        for t in self.threads:
            t.join(self.timeout + 5)

    def _count(self, what, reason=None):
        with self.lock:
            setattr(self, what, getattr(self, what) + 1)
            if reason and len(self.errors) < 20:
                self.errors.append(reason)

    def _connect(self):
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout, source_address=self.source)

    def _once(self, conn):
        conn.request("GET", self.path)
        r = conn.getresponse()
        data = r.read()
        if r.status != 200 or data != self.body:
            raise ValueError("status %d body %r" % (r.status, data[:60]))
        return (r.getheader("Connection") or "").lower() == "close"

    def _run(self, keepalive):
        conn, reused = None, False
        while not self.stopping.is_set():
            if conn is None:
                conn, reused = self._connect(), False
            try:
                closing = self._once(conn)
                self._count("ok")
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as e:
                conn.close()
                conn = None
                if not reused:
                    self._count("failed", "fresh connection: %r" % e)
                    continue
                # The server closed the idle connection as the request crossed
                # it: send it again on a new connection, once.
                self._count("retried")
                try:
                    conn = self._connect()
                    closing = self._once(conn)
                    self._count("ok")
                except Exception as e2:
                    self._count("failed", "retry on a new connection: %r" % e2)
                    conn.close()
                    conn = None
                    continue
            except Exception as e:
                self._count("failed", "%s connection: %r" % ("reused" if reused else "fresh", e))
                conn.close()
                conn = None
                continue
            if closing or not keepalive:
                conn.close()
                conn = None
            else:
                reused = True
        if conn is not None:
            conn.close()

    def summary(self):
        return "%d ok, %d failed, %d retried on a reused connection" % (self.ok, self.failed, self.retried)
