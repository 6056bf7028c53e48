#!/usr/bin/env python3
"""socket_activation.py — tools/helloworld under systemd's socket activation
and readiness protocols, with the real systemd-socket-activate and curl.

1. `systemd-socket-activate -l 127.0.0.1:PORT helloworld` (with NOTIFY_SOCKET
   an abstract "@name", then a path): curl gets "Hello, world" on the socket
   systemd made (helloworld's own --port is a different, unused one);
   a datagram receiver gets READY=1, then, after SIGTERM, STOPPING=1, in that
   order; helloworld exits 0.
2. Bad input: LISTEN_FDS naming a non-socket (/dev/null) and a socket that
   is bound but not listening: helloworld refuses to start (exit 1, the
   reason on stderr) instead of serving nothing.

The test skips (exit 77, CTest SKIP_RETURN_CODE) only if
systemd-socket-activate itself cannot run here.

usage: socket_activation.py HELLOWORLD CURL
"""
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

ACTIVATE = "/usr/bin/systemd-socket-activate"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def receive(sock, timeout):
    sock.settimeout(timeout)
    try:
        return sock.recv(4096).decode()
    except socket.timeout:
        return None


def activated_run(hello, curl, notify_name, bind_name):
    recv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    recv.bind(bind_name)
    port = free_port()
    proc = subprocess.Popen([ACTIVATE, "-l", f"127.0.0.1:{port}", "-E", f"NOTIFY_SOCKET={notify_name}",
                             hello, "--threads", "2", "--port", str(free_port())],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # systemd-socket-activate execs helloworld at the first connection; curl's waits in the backlog.
        out = None
        for _ in range(50):
            r = subprocess.run([curl, "-sS", "-m", "10", f"http://127.0.0.1:{port}/"], capture_output=True)
            out = r.stdout
            if r.returncode != 7:  # 7: could not connect (the activator is not listening yet)
                break
            time.sleep(0.1)
        assert out == b"Hello, world", f"curl through the activated socket: {out!r}"
        ready = receive(recv, 10)
        assert ready == "READY=1", f"first notification: {ready!r}"
        proc.send_signal(signal.SIGTERM)  # helloworld has the activator's pid: it exec'd
        stopping = receive(recv, 10)
        assert stopping == "STOPPING=1", f"second notification: {stopping!r}"
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, (proc.returncode, err)
        assert receive(recv, 0.2) is None, "a third notification"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        recv.close()


def refused(hello, fd_object, what):
    """Runs helloworld with LISTEN_FDS=1 naming fd_object as fd 3; it must not start."""
    n = fd_object.fileno()
    r = subprocess.run(["/bin/sh", "-c", f'exec 3<&{n}; LISTEN_PID=$$ LISTEN_FDS=1 exec "$@"', "sh", hello,
                        "--port", "0"], pass_fds=(n,), capture_output=True, text=True, timeout=30)
    assert r.returncode == 1, f"{what}: exit {r.returncode}, {r.stdout!r} {r.stderr!r}"
    return r.stderr


def main():
    hello, curl = sys.argv[1], sys.argv[2]
    probe = subprocess.run([ACTIVATE, "--help"], capture_output=True)
    if probe.returncode != 0:
        print(f"SKIP: {ACTIVATE} cannot run here: {probe.stderr!r}")
        return 77
    activated_run(hello, curl, f"@ioloop-notify-{os.getpid()}", f"\0ioloop-notify-{os.getpid()}")
    with tempfile.TemporaryDirectory() as d:
        activated_run(hello, curl, f"{d}/notify", f"{d}/notify")

    with open("/dev/null", "rb") as devnull:
        err = refused(hello, devnull, "/dev/null as LISTEN_FDS")
        assert "non-socket" in err.lower(), err
    with socket.socket() as bound:
        bound.bind(("127.0.0.1", 0))  # no listen()
        err = refused(hello, bound, "a socket that is not listening")
        assert "invalid argument" in err.lower(), err
    print("socket activation: served, READY=1 then STOPPING=1 (abstract and path), bad fds refused")
    return 0


if __name__ == "__main__":
    sys.exit(main())
