#!/usr/bin/env python3
"""metrics_peers.py — /metrics read by Prometheus' own parser and by curl.

helloworld --metrics and ioloop-serve --metrics on 2 loops: requests of
known status (curl, urllib), then a scrape through curl parsed with
prometheus_client's text parser (python3-prometheus-client, the reference
implementation of the text format): every family has the type it says, every
loop has its loop="0"/"1" series, the responses moved by what was sent, each
histogram's buckets are cumulative and its +Inf bucket equals its _count;
HEAD gets no body; SIGTERM still ends the server with status 0.

usage: metrics_peers.py HELLOWORLD IOLOOP_SERVE CURL
"""
import math
import re
import signal
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def curl(curl_bin, *args):
    return subprocess.run([curl_bin, "-sS", *args], capture_output=True, check=True, timeout=30).stdout


def scrape(curl_bin, base):
    out = curl(curl_bin, "-D", "-", f"{base}/metrics").decode()
    head, _, body = out.partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 200"), head
    assert f"content-type: {CONTENT_TYPE}" in head.lower(), head
    families = {f.name: f for f in text_string_to_metric_families(body)}
    return families, body


def value(families, family, name, **labels):
    for s in families[family].samples:
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    raise AssertionError(f"no {name}{labels}")


def total(families, family, name, **labels):
    return sum(s.value for s in families[family].samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def check_histograms(families):
    for f in families.values():
        if f.type != "histogram":
            continue
        series = {}
        for s in f.samples:
            key = tuple(sorted((k, v) for k, v in s.labels.items() if k != "le"))
            series.setdefault(key, {"buckets": [], "count": None, "sum": None})
            if s.name.endswith("_bucket"):
                series[key]["buckets"].append((float(s.labels["le"]), s.value))
            elif s.name.endswith("_count"):
                series[key]["count"] = s.value
            elif s.name.endswith("_sum"):
                series[key]["sum"] = s.value
        assert series, f.name
        for key, h in series.items():
            les = [le for le, _ in h["buckets"]]
            counts = [c for _, c in h["buckets"]]
            assert les == sorted(les) and math.isinf(les[-1]), (f.name, key, les)
            assert counts == sorted(counts), (f.name, key, counts)
            assert h["count"] == counts[-1] and h["sum"] is not None, (f.name, key)


def run(cmd, curl_bin, routes):
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        port = int(re.search(r"(?:127\.0\.0\.1:|port )(\d+)", proc.stdout.readline()).group(1))
        base = f"http://127.0.0.1:{port}"
        before, _ = scrape(curl_bin, base)
        for fam, typ in (("ioloop_loop_iterations", "counter"), ("ioloop_loop_busy_seconds", "counter"),
                         ("ioloop_loop_posts", "counter"), ("ioloop_loop_wakeups", "counter"),
                         ("ioloop_loop_connections", "gauge"), ("ioloop_http_responses", "counter"),
                         ("ioloop_http_request_duration_seconds", "histogram")):
            assert before[fam].type == typ, (fam, before[fam].type)
        for loop in ("0", "1"):
            value(before, "ioloop_loop_iterations", "ioloop_loop_iterations_total", loop=loop)
            value(before, "ioloop_loop_busy_seconds", "ioloop_loop_busy_seconds_total", loop=loop)
        for _ in range(5):
            assert curl(curl_bin, "-o", "/dev/null", "-w", "%{http_code}", f"{base}{routes['ok']}") == b"200"
            try:
                urllib.request.urlopen(f"{base}/no/such/thing", timeout=10)
                raise AssertionError("404 expected")
            except urllib.error.HTTPError as e:
                assert e.code == 404
        after, text = scrape(curl_bin, base)
        check_histograms(after)
        resp = ("ioloop_http_responses", "ioloop_http_responses_total")
        assert total(after, *resp, code="2xx") - total(before, *resp, code="2xx") == 5 + 1, text  # + the first scrape
        assert total(after, *resp, code="4xx") - total(before, *resp, code="4xx") == 5, text
        head = curl(curl_bin, "-I", f"{base}/metrics").decode()
        assert head.startswith("HTTP/1.1 200") and CONTENT_TYPE in head, head
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0


def main():
    helloworld, serve, curl_bin = sys.argv[1:4]
    run([helloworld, "--port", "0", "--threads", "2", "--metrics"], curl_bin, {"ok": "/"})
    with tempfile.TemporaryDirectory() as root:
        open(f"{root}/a.txt", "w").write("a file\n")
        run([serve, root, "--port", "0", "--threads", "2", "--metrics"], curl_bin, {"ok": "/a.txt"})
    print("metrics_peers: ok")


if __name__ == "__main__":
    main()
