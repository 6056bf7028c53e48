# Tornado's AsyncHTTPClient (simple_httpclient, the default) as a load
# generator: N coroutines, each fetching URL in a loop until the time is up.
# simple_httpclient has no keep-alive: every fetch is a new connection.
# Prints one JSON object: requests, seconds, errors, latency percentiles (ns).
#   tornado_load.py URL CONCURRENCY SECONDS
import json, sys, time

import tornado.httpclient
import tornado.ioloop


async def main(url, concurrency, seconds):
    tornado.httpclient.AsyncHTTPClient.configure(None, max_clients=concurrency)
    client = tornado.httpclient.AsyncHTTPClient()
    latencies, errors = [], 0
    start = time.monotonic()
    deadline = start + seconds

    async def worker():
        nonlocal errors
        while time.monotonic() < deadline:
            t0 = time.monotonic_ns()
            try:
                await client.fetch(url, raise_error=True)
                latencies.append(time.monotonic_ns() - t0)
            except Exception:
                errors += 1

    await tornado.gen.multi([worker() for _ in range(concurrency)])
    elapsed = time.monotonic() - start
    latencies.sort()
    pick = lambda p: latencies[min(len(latencies) - 1, int(p / 100 * len(latencies)))] if latencies else 0
    print(json.dumps({"requests": len(latencies), "seconds": elapsed, "errors": errors,
                      "p50": pick(50), "p99": pick(99)}))


if __name__ == "__main__":
    import tornado.gen
    tornado.ioloop.IOLoop.current().run_sync(lambda: main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3])))
