/* fuzz_http_harness.h — drives raw bytes into a real HTTP server connection
 * for the libFuzzer targets (fuzz_http_request, fuzz_http_chunked).
 *
 * Threading rule: one thread, the fuzzer's: the loop, the server and every
 * connection live on it, and nothing here starts a thread (so execs/s stay
 * high and a crash's stack is the server's own).
 *
 * One loop and one server are made on the first input and reused for every
 * later one. Each input gets a fresh socketpair handed to
 * ioloop_http_server_accept: the bytes go in (all at once, or in segments
 * with a loop iteration between two), the client's side is shut down for
 * writing, the server's answer is read and discarded, and the loop runs
 * until the server has closed the connection and every deferred handler has
 * finished. A server that never closes is a hang: libFuzzer's -timeout
 * reports it.
 */
#ifndef IOLOOP_FUZZ_HTTP_HARNESS_H
#define IOLOOP_FUZZ_HTTP_HARNESS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum { FUZZ_BODY_MAX = 65536 }; /* the harness server's max_body_size */

/* What the handlers saw of the first request of the last input. */
typedef struct {
    int requests;          /* method handlers run (every route) */
    bool first_body_done;  /* the first request's handler ran on /echo or /stream */
    size_t first_body_len; /* ... and its body, collected or streamed */
    char first_body[FUZZ_BODY_MAX];
    size_t response_bytes; /* what the client side read */
} fuzz_http_seen_t;

enum {
    FUZZ_HTTP_DRAINING = 1, /* to the server whose drain began before any connection */
    FUZZ_HTTP_VANISH = 2,   /* the client closes once all is sent (no half-close, no reading the answer) */
};

/* Feeds data to a new server connection, segment bytes per loop iteration
 * (0: everything at once), and runs the loop until the connection is gone.
 * flags: FUZZ_HTTP_*. Aborts (a finding) if the harness's invariants fail. */
void fuzz_http_run(const uint8_t *data, size_t size, size_t segment, unsigned flags, fuzz_http_seen_t *seen);

#endif
