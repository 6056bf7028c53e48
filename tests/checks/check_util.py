#!/usr/bin/python3
"""check_util.py — what the Python checks share: check(), the step timeout,
and ExampleServer, a tools/examples server started as a user would.

As a module only (imported by examples.py and websocket_peers.py, which put
this directory on sys.path). Standard library only.
"""
import os
import re
import signal
import subprocess
import tempfile

TIMEOUT = 60  # seconds for any one step: a hang fails instead of blocking ctest


def check(cond, what):
    if not cond:
        raise AssertionError(what)


class ExampleServer:
    """BINDIR/name started with --port 0 and args; the port is read from its
    banner ("... listening on port N ..."). stop() sends SIGTERM and requires
    exit 0 with nothing on stderr (sanitizer reports included)."""

    def __init__(self, bindir, name, *args):
        self.stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen([os.path.join(bindir, name), "--port", "0", *args],
                                     stdout=subprocess.PIPE, stderr=self.stderr, text=True)
        banner = self.proc.stdout.readline()
        match = re.search(r"listening on port (\d+)", banner)
        check(match, f"{name}: no banner, got {banner!r}")
        self.port = int(match.group(1))
        self.name = name
        self.banner = banner

    def rss_kib(self):
        with open(f"/proc/{self.proc.pid}/status") as status:
            return int(re.search(r"VmRSS:\s+(\d+)", status.read()).group(1))

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=TIMEOUT)
        self.stderr.seek(0)
        err = self.stderr.read().decode(errors="replace")
        check(self.proc.returncode == 0, f"{self.name} exited {self.proc.returncode}: {err}")
        check(err == "", f"{self.name} wrote to stderr: {err}")
