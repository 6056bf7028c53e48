/* client_internal.h — the HTTP client's private structures, shared by
 * client.c (a fetch and its connection's protocol), client_pool.c (the
 * per-loop pool: hosts, idle connections, queues, TLS contexts) and
 * client_url.c (URLs and redirects); ws_client.c uses only the URL parser.
 *
 * Threading rule: everything here belongs to one loop and is touched only by
 * its thread.
 *
 * Ownership: the pool owns its hosts, a host its connections and its queue;
 * a fetch is owned by the caller's callback until it runs, and points at the
 * connection serving it (conn->fetch points back) or sits in a host's queue.
 */
#ifndef IOLOOP_HTTP_CLIENT_INTERNAL_H
#define IOLOOP_HTTP_CLIENT_INTERNAL_H

#include "client_parse.h"

#include "ioloop/http_client.h"
#include "ioloop/stream.h"

#include <stdbool.h>
#include <stdint.h>
#include <zlib.h>

typedef struct client_pool client_pool_t;
typedef struct client_host client_host_t;
typedef struct client_conn client_conn_t;

/* A growable buffer, kept (not freed) when a fetch goes back to the free list. */
typedef struct {
    char *data;
    size_t len, cap;
} cbuf_t;
int ioloop__cbuf_reserve(cbuf_t *b, size_t more);
int ioloop__cbuf_append(cbuf_t *b, const void *data, size_t len);
int ioloop__cbuf_printf(cbuf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* A parsed URL: strings into `text` (its own copy of the URL). */
typedef struct {
    cbuf_t text;
    bool tls;           /* the scheme is the TLS one: https, wss */
    const char *host;   /* without brackets: "::1" */
    const char *target; /* path and query, "/" at least; no fragment */
    int port;
    bool ipv6, default_port;
} client_url_t;
/* Parses "<plain|tls>://host[:port][/path][?query][#fragment]" (schemes without
 * "://", matched case-insensitively; the fragment is dropped; the port defaults
 * to 80 or 443): 0, -EINVAL (malformed, spaces or controls, userinfo),
 * -EPROTONOSUPPORT (another scheme). The client passes "http", "https"; the
 * WebSocket client "ws", "wss". url->text is the caller's to free. */
int ioloop__client_url_parse_as(client_url_t *url, const char *text, const char *plain, const char *tls);
/* ioloop__client_url_parse_as(url, text, "http", "https") */
int ioloop__client_url_parse(client_url_t *url, const char *text);
/* Resolves a Location against base into out (absolute, scheme-relative,
 * absolute-path or relative reference). Same returns. */
int ioloop__client_url_resolve(client_url_t *out, const client_url_t *base, const char *location);

enum { CONN_CONNECTING, CONN_BUSY, CONN_IDLE, CONN_CLOSED };

struct client_conn {
    client_host_t *host;
    client_conn_t *prev, *next; /* host->conns */
    client_conn_t *idle_next;   /* host->idle (LIFO: the warmest first) */
    ioloop_stream_t *stream;
    ioloop_tcp_connect_t *connecting;
    ioloop_http_fetch_t *fetch; /* being served (or the one that opened it) */
    ioloop__http_resp_t parser;
    ioloop_timer_t idle_timer;
    int state;
    unsigned requests; /* sent on it so far */
    bool completed;    /* the parser completed the response being read */
    bool got_bytes;    /* a byte of the current response arrived */
};

struct client_host {
    client_host_t *next;
    client_pool_t *pool;
    bool https;
    int port;
    void *tls_ctx;        /* ioloop_tls_context_t *, NULL for http */
    client_conn_t *conns; /* every connection of the key */
    client_conn_t *idle;
    int nopen, nidle;
    ioloop_http_fetch_t *queue_head, *queue_tail;
    char name[]; /* the host */
};

typedef struct client_tls {
    struct client_tls *next;
    char *ca_file;
    bool verify_off;
    void *ctx; /* ioloop_tls_context_t * */
} client_tls_t;

struct client_pool {
    ioloop_close_hook_t hook; /* first: the hook is the pool (ioloop_close_hook_add, ioloop.h) */
    ioloop_t *loop;
    ioloop_http_client_options_t opts;
    client_host_t *hosts;
    client_tls_t *tls;
    ioloop_http_fetch_t *free_fetches;
    int nfree;
    ioloop_http_client_stats_t stats;
    bool closing;
    int pending; /* connections and fetches alive while closing (the pool is freed at 0) */
};

struct ioloop_http_client_response {
    int error;
    char error_text[192];
    int status;
    cbuf_t head;                         /* a copy of the parser's head buffer */
    ioloop__http_resp_header_t *headers; /* offsets into head */
    int nheaders, headers_cap;
    uint32_t reason_off;
    cbuf_t body;
    int redirects;
    ioloop_http_client_timing_t timing;
};

enum { FETCH_IDLE, FETCH_QUEUED, FETCH_CONNECTING, FETCH_SENDING, FETCH_DONE };

struct ioloop_http_fetch {
    client_pool_t *pool;
    ioloop_http_fetch_t *queue_next;  /* host queue, or the pool's free list */
    client_host_t *host;              /* while queued */
    client_conn_t *conn;              /* while connecting or sending */
    ioloop_http_client_request_t req; /* the caller's, its strings pointing into `strings` */
    cbuf_t strings;                   /* method, headers */
    ioloop_http_client_header_t *headers;
    int headers_cap;
    client_url_t url;
    const char *method;
    bool has_body, body_dropped; /* body_dropped: a 301/302/303 made it a GET */
    bool strip_auth;             /* redirected to another origin */
    ioloop_http_fetch_fn cb;
    void *arg;
    int state;
    bool retried, fresh_only, reused;
    bool following; /* this response is a redirect we follow: its body is dropped */
    bool body_chunked, body_ended, watch_pending, paused;
    uint64_t body_written;
    ioloop_timer_t request_timer, queue_timer;
    ioloop_time_t start;
    cbuf_t out; /* the request head being formatted */
    cbuf_t effective_url;
    z_stream *z;
    bool z_active;
    uint64_t inflated;
    ioloop_http_client_response_t resp;
};

/* client_pool.c */
/* The loop's pool, made on first use; loop thread only (checked first).
 * NULL and *err: -EPERM (another thread), -ENOMEM, -ESHUTDOWN. */
client_pool_t *ioloop__client_pool(ioloop_t *loop, int *err);
client_host_t *ioloop__client_host(client_pool_t *pool, const client_url_t *url, void *tls_ctx);
void *ioloop__client_tls_context(client_pool_t *pool, const ioloop_http_client_request_t *req, int *err);
/* A connection for fetch: an idle one (checked for a server close), a new
 * one, or the fetch waits in the host's queue. */
void ioloop__client_dispatch(ioloop_http_fetch_t *fetch, client_host_t *host);
void ioloop__client_queue_remove(ioloop_http_fetch_t *fetch);
/* A connection done with its fetch: idle (then it serves the queue) or closed. */
void ioloop__client_conn_release(client_conn_t *conn, bool reusable);
void ioloop__client_conn_close(client_conn_t *conn);
ioloop_http_fetch_t *ioloop__client_fetch_alloc(client_pool_t *pool);
void ioloop__client_fetch_recycle(ioloop_http_fetch_t *fetch);

/* client.c */
void ioloop__client_fetch_fail(ioloop_http_fetch_t *fetch, int err, const char *text);
void ioloop__client_send(ioloop_http_fetch_t *fetch, client_conn_t *conn);
/* The connect conn->fetch waited for is done (status 0: conn->stream is up). */
void ioloop__client_connect_done(ioloop_http_fetch_t *fetch, client_conn_t *conn, int status);
/* A busy connection's stream ended (err: the stream's error) before the
 * consumer saw the end: the fetch is told (retry, close-delimited end, error). */
void ioloop__client_conn_ended(client_conn_t *conn, int err);
extern const ioloop__http_resp_callbacks_t ioloop__client_parse_callbacks;

#endif
