/* fuzz_http_request.c — libFuzzer target: bytes from a client into a real
 * server connection (http/conn.c, parse.c, llhttp, request.c, the router,
 * response.c, gzip.c), on a real loop through a socketpair.
 *
 * Threading rule: the fuzzer's thread (fuzz_http_harness.c owns the loop).
 *
 * Input: the first byte's low 6 bits pick how the rest arrives (0: in one
 * write; n: n bytes per loop iteration, so heads and bodies split at every
 * offset are parsed in pieces), bit 6 a client that closes as soon as all is
 * sent (a reset mid-response, deferred handlers still pending), bit 7 a
 * server that is draining; the rest is what the client sends, then it shuts
 * down its side (or closes). Findings: any sanitizer report, a leak, a hang (the
 * connection never closes), or a response stream that does not start with "HTTP/1.".
 */
#include "fuzz_http_harness.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static fuzz_http_seen_t seen;
    if (size < 1)
        return 0;
    unsigned flags = (data[0] & 0x80 ? FUZZ_HTTP_DRAINING : 0) | (data[0] & 0x40 ? FUZZ_HTTP_VANISH : 0);
    fuzz_http_run(data + 1, size - 1, data[0] & 0x3f, flags, &seen);
    return 0;
}
