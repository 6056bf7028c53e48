/* http_client.h — an HTTP/1.1 client on ioloop (Tornado's AsyncHTTPClient /
 * simple_httpclient in C): ioloop_http_fetch sends one request and calls back
 * once with the response or an error that names the problem.
 *
 * Threading rule: a fetch belongs to the loop it was started on; every call
 * here is for that loop's thread (from another thread: -EPERM), and every
 * callback runs on it, never inline inside the call that started it.
 *
 * Connections: each loop has its own pool (no lock between loops), keyed by
 * (scheme, host, port, TLS settings): keep-alive connections are reused, at
 * most max_connections_per_host per key are open, requests beyond wait in a
 * FIFO queue (queue_timeout). An idle connection the server closed is seen
 * before reuse; an idempotent request that loses that race (the connection
 * closes before any byte of the response) is retried once on a new one.
 * Idle connections close after idle_timeout, and all of them, with every
 * fetch still running (-ESHUTDOWN), when the loop closes.
 *
 * Errors: 0 or a negative errno (or an IOLOOP_E* code from stream.h).
 * A response's error says what failed, ioloop_http_client_response_error_text
 * says it in words ("request timeout", "malformed response: invalid chunk size"):
 *   -EINVAL bad URL (returned by ioloop_http_fetch), -EPROTONOSUPPORT a scheme
 *   other than http/https, -ETIMEDOUT connect timeout, -ETIME request timeout,
 *   -EAGAIN queue timeout (no connection free in time), -EPROTO malformed
 *   response, -E2BIG response head over the limits, -EMSGSIZE body over
 *   max_body_size, -ECONNRESET connection closed before the response ended,
 *   -ELOOP too many redirects, -EBADMSG a body that does not decompress,
 *   -ECANCELED ioloop_http_fetch_cancel, -ESHUTDOWN the loop closed, and the
 *   stream's and connect's own (-ECONNREFUSED, IOLOOP_ENONAME, IOLOOP_ECERT,
 *   IOLOOP_ETLS, ...).
 */
#ifndef IOLOOP_HTTP_CLIENT_H
#define IOLOOP_HTTP_CLIENT_H

#include "ioloop/ioloop.h"
#include "ioloop/stream.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct ioloop_http_fetch ioloop_http_fetch_t;
typedef struct ioloop_http_client_response ioloop_http_client_response_t;
struct ioloop_tls_context; /* tls.h */

/* A streamed request body: called on the loop when the client wants body
 * bytes (first after the head is queued, then each time everything written
 * so far has left for the kernel). It writes any amount with
 * ioloop_http_fetch_body_write and ends with ioloop_http_fetch_body_end, now
 * or later (a write from a timer re-arms it). Return 0, or a negative errno
 * to fail the fetch with it. */
typedef int (*ioloop_http_body_producer_fn)(ioloop_http_fetch_t *fetch, void *arg);

/* The response head has arrived (before any body byte). Return 0 to go on, or
 * a negative errno to fail the fetch with it. */
typedef int (*ioloop_http_header_fn)(ioloop_http_fetch_t *fetch, const ioloop_http_client_response_t *resp, void *arg);

/* A streamed response body: each piece once (decompressed when asked for).
 * Return 0 for more, IOLOOP_HTTP_PAUSE to stop reading until
 * ioloop_http_fetch_resume (back-pressure: nothing more is read from the
 * server meanwhile), or a negative errno to fail the fetch with it. */
typedef int (*ioloop_http_streaming_fn)(ioloop_http_fetch_t *fetch, const char *data, size_t len, void *arg);
#define IOLOOP_HTTP_PAUSE 1

/* The result: runs exactly once per accepted fetch, on its loop. resp is
 * valid during the call only (copy what you keep). Its error is 0 when a
 * complete response arrived, whatever its status. */
typedef void (*ioloop_http_fetch_fn)(ioloop_t *loop, const ioloop_http_client_response_t *resp, void *arg);

/* One header line to send. */
typedef struct {
    const char *name, *value;
} ioloop_http_client_header_t;

/* A request. Zero is the default for every field. */
typedef struct {
    const char *url;                            /* "http://host[:port]/path?query", "https://[::1]:8443/" */
    const char *method;                         /* NULL: "GET" (or "POST" with a body) */
    const ioloop_http_client_header_t *headers; /* sent as given; Host, Content-Length,
                                                   Transfer-Encoding and Connection are the client's */
    int nheaders;
    const void *body; /* a body in a buffer (borrowed until the callback) */
    size_t body_len;
    ioloop_http_body_producer_fn body_producer; /* or streamed (not with body) */
    void *body_producer_arg;
    int64_t body_producer_length; /* its Content-Length; -1 or 0 with a producer: chunked */

    bool follow_redirects; /* 301/302/303 become GET without a body, 307/308 keep method and body
                              (not a streamed one: that response is returned as is);
                              Authorization is not sent to another host */
    int max_redirects;     /* 0: 5 */

    ioloop_time_t connect_timeout; /* name lookup + TCP connect; 0: 20 s (the TLS handshake is bounded by
                                      the context's handshake_timeout and by request_timeout) */
    ioloop_time_t request_timeout; /* the whole fetch, redirects and queueing included; 0: 20 s */
    ioloop_time_t queue_timeout;   /* waiting for a free connection; 0: connect_timeout */

    bool decompress;        /* send Accept-Encoding: gzip and inflate a gzip/deflate body */
    size_t max_body_size;   /* 0: 100 MiB (what is received, compressed or not, and what is inflated) */
    size_t max_header_size; /* the status line and headers; 0: 64 KiB */
    int max_headers;        /* header lines; 0: 256 */

    ioloop_http_header_fn header_callback;
    ioloop_http_streaming_fn streaming_callback; /* with it the body is not buffered */
    void *callback_arg;                          /* for the three callbacks above */

    /* TLS for https: tls_context if given (the caller's; the connections
     * made with it keep it alive, and it is part of the pool's key), else
     * one the loop's pool builds once and caches by ca_file (NULL: the
     * system's roots) and validate_cert_off. The server's certificate and
     * its name (SNI, DNS or IP) are verified unless validate_cert_off. */
    struct ioloop_tls_context *tls_context;
    const char *ca_file;
    bool validate_cert_off;
} ioloop_http_client_request_t;

/* Starts a fetch on loop. req and what it points to are copied (the body
 * buffer is borrowed until the callback). cb runs exactly once, later.
 * out (may be NULL): a handle valid until cb runs. Loop thread. 0, or -EINVAL
 * (bad URL or request), -EPROTONOSUPPORT (scheme; https without TLS
 * support), -ENOMEM, -EPERM (another thread), -ESHUTDOWN (closed loop). */
IOLOOP_API int ioloop_http_fetch(ioloop_t *loop, const ioloop_http_client_request_t *req, ioloop_http_fetch_fn cb,
                                 void *arg, ioloop_http_fetch_t **out);

/* Abandons a fetch: cb runs later with -ECANCELED (its connection is closed,
 * unless it was idle or queued). A no-op after cb ran. Loop thread. */
IOLOOP_API void ioloop_http_fetch_cancel(ioloop_http_fetch_t *fetch);

/* Resumes a response body paused by IOLOOP_HTTP_PAUSE. Loop thread. 0, or
 * -EINVAL when not paused. */
IOLOOP_API int ioloop_http_fetch_resume(ioloop_http_fetch_t *fetch);

/* For a body_producer: queues len bytes of the body (copied). 0; -ENOBUFS
 * when the connection's output is full (wait for the producer's next call);
 * -EMSGSIZE past body_producer_length; -EPIPE when the fetch is not sending
 * its body (done, failed, or before its head). Loop thread. */
IOLOOP_API int ioloop_http_fetch_body_write(ioloop_http_fetch_t *fetch, const void *data, size_t len);
/* Ends the streamed body. 0, -EPIPE as above, -EMSGSIZE if fewer bytes than
 * body_producer_length were written. */
IOLOOP_API int ioloop_http_fetch_body_end(ioloop_http_fetch_t *fetch);

/* ---- the response (valid during the callback that got it) -------------- */

/* 0 for a complete response, else what failed (see the top of this file). */
IOLOOP_API int ioloop_http_client_response_error(const ioloop_http_client_response_t *resp);
/* The error in words, with the detail the code cannot carry ("" when none). */
IOLOOP_API const char *ioloop_http_client_response_error_text(const ioloop_http_client_response_t *resp);
/* The status code (0 when no response head arrived) and the reason phrase. */
IOLOOP_API int ioloop_http_client_response_status(const ioloop_http_client_response_t *resp);
IOLOOP_API const char *ioloop_http_client_response_reason(const ioloop_http_client_response_t *resp);
/* A header's value by name, case-insensitive (the first if repeated); NULL if absent. */
IOLOOP_API const char *ioloop_http_client_response_header(const ioloop_http_client_response_t *resp, const char *name);
/* The number of headers, and the i-th (0-based) in arrival order: 0, or -ENOENT past the end. */
IOLOOP_API int ioloop_http_client_response_header_count(const ioloop_http_client_response_t *resp);
IOLOOP_API int ioloop_http_client_response_header_at(const ioloop_http_client_response_t *resp, int i,
                                                     const char **name, const char **value);
/* The buffered body (NUL-terminated; "" and 0 when streamed or empty). */
IOLOOP_API const char *ioloop_http_client_response_body(const ioloop_http_client_response_t *resp, size_t *len);
/* The URL the response came from (after redirects), and how many were followed. */
IOLOOP_API const char *ioloop_http_client_response_effective_url(const ioloop_http_client_response_t *resp);
IOLOOP_API int ioloop_http_client_response_redirects(const ioloop_http_client_response_t *resp);

/* Where the time went, from the fetch's start (loop time, ns; -1 for a
 * phase never reached): queue (the wait for a connection ended: a pooled one
 * taken, or a connect begun), connect (the TCP connection up; the TLS
 * handshake goes with the first write; 0 when reused), first_byte (the
 * first byte of the final response), total (the callback). */
typedef struct {
    ioloop_time_t queue, connect, first_byte, total;
    bool reused; /* the final request went on a pooled connection */
} ioloop_http_client_timing_t;
IOLOOP_API void ioloop_http_client_response_timing(const ioloop_http_client_response_t *resp,
                                                   ioloop_http_client_timing_t *out);

/* ---- the loop's pool ------------------------------------------------------ */

typedef struct {
    int max_connections_per_host; /* 0: 10 */
    ioloop_time_t idle_timeout;   /* a pooled connection unused this long closes; 0: 60 s */
    int max_idle_per_host;        /* idle connections kept per key; 0: max_connections_per_host */
} ioloop_http_client_options_t;

/* Sets the loop's pool options (applies to connections and queues from now).
 * Loop thread. 0, -EINVAL, -ENOMEM, -EPERM, -ESHUTDOWN (closed loop). */
IOLOOP_API int ioloop_http_client_configure(ioloop_t *loop, const ioloop_http_client_options_t *opts);

typedef struct {
    uint64_t connections_opened; /* new connections that connected */
    uint64_t connections_reused; /* requests sent on a pooled connection */
    uint64_t stale_closed;       /* pooled connections found closed by the server before reuse */
    uint64_t retries;            /* requests retried after losing the reuse race */
    uint64_t fetches;            /* fetches completed (any result) */
    int open;                    /* connections open now (busy, idle and connecting) */
    int idle;                    /* of which idle in the pool */
    int queued;                  /* requests waiting for a connection */
} ioloop_http_client_stats_t;

/* The loop's pool counters (zeros before its first fetch). Loop thread. 0 or -EPERM. */
IOLOOP_API int ioloop_http_client_get_stats(ioloop_t *loop, ioloop_http_client_stats_t *out);

/* Closes the loop's idle connections now (busy ones finish their fetch).
 * Loop thread. 0 or -EPERM. */
IOLOOP_API int ioloop_http_client_close_idle(ioloop_t *loop);

#ifdef __cplusplus
}
#endif
#endif
