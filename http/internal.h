/* internal.h — libioloop-http's private structures, shared by the http/ sources.
 *
 * Threading rule: a worker (the server's state on one loop), its connections
 * and their requests are touched only by that loop's thread. The server itself
 * (options, routes, listener list) is read-only once serving starts, except the
 * worker list (lock-free push) and the listener list (under its mutex).
 *
 * Memory plan (the "no allocation per request" rule): every worker keeps free
 * lists of buffer blocks, connections and requests. A connection's input is
 * its stream's buffer; an idle keep-alive connection holds its `conn_t` (the
 * llhttp parser and a few fields) and its stream, and takes an output block
 * only while a response is being formatted.
 */
#ifndef IOLOOP_HTTP_INTERNAL_H
#define IOLOOP_HTTP_INTERNAL_H

#include "ioloop/http.h"
#include "ioloop/runtime.h"
#include "ioloop/stream.h"

#include "ws_internal.h"

#include <llhttp.h>
#include <netinet/in.h>
#include <pthread.h>
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <stdatomic.h>
#include <stdint.h>
#include <time.h>

enum {
    HTTP_BLOCK = 16384,      /* pooled buffer block */
    HTTP_MAX_PATH_ARGS = 16, /* capture groups a pattern may have */
    HTTP_MAX_HEADERS = 256,  /* header lines per request (431 beyond) */
    HTTP_POOL_KEEP = 256,    /* free blocks/requests a worker keeps */
    HTTP_QUARANTINE = 64,    /* finished requests reused only behind this many others (FIFO) */
    HTTP_REQ_POOL_KEEP = 4096, /* free requests a worker keeps: finished ones wait an iteration
                                  before reuse, so a pipelined burst (64 connections x 16) needs
                                  more than the blocks' 256 to not malloc per request */
};
/* The request-duration histogram's upper bounds (metrics.c), the last +Inf. */
enum { HTTP_DURATION_BUCKETS = 15 };
/* A connection's output mark (the stream's max_write_buffer_size): at or
 * above it nothing more is parsed, so the stream stops reading too. */
#define HTTP_WRITE_MARK ((size_t)256 * 1024)
#define HTTP_LINGER IOLOOP_SEC(2)        /* read-and-discard after our FIN */
#define HTTP_DRAIN_GRACE IOLOOP_MSEC(50) /* an idle connection's last chance in a drain */
/* ... and a connection that has not sent a byte yet: accepted from the
 * backlog as the drain began, its client is about to send its first request
 * (a busy client can take longer than 50 ms between connect and send) */
#define HTTP_DRAIN_FIRST_GRACE IOLOOP_SEC(1)

typedef struct http_worker http_worker_t;
typedef struct http_conn http_conn_t;

/* A growable byte buffer whose memory may come from a worker's block pool. */
typedef struct {
    char *data;
    size_t len, cap;
} hbuf_t;

typedef struct {
    char *pattern;
    bool literal;
    pcre2_code *code; /* patterns: compiled with PCRE2_ANCHORED, '$' appended as Tornado does */
    bool jit;         /* pcre2_jit_compile succeeded */
    int groups;
    const char *names[HTTP_MAX_PATH_ARGS]; /* named groups: names point into code's name table */
    int name_group[HTTP_MAX_PATH_ARGS];    /* ... and their group numbers (1-based) */
    int nnames;
    ioloop_http_route_t route;
} http_route_t;

struct ioloop_http_server {
    ioloop_http_server_options_t opts;
    uint64_t id; /* unique per process: validates the per-thread worker cache */
    /* routes: literal ones in an open-addressing hash, patterns in order */
    http_route_t **routes;
    int nroutes, routes_cap;
    http_route_t **lit; /* hash slots */
    unsigned lit_mask;
    int nlit;
    /* workers: pushed lock-free, never removed before server_free */
    _Atomic(http_worker_t *) workers;
    /* the runtime-wide shutdown (shutdown.c); set once, read by its callbacks */
    atomic_bool shutting_down;
    ioloop_runtime_t *shut_rt;
    ioloop_listener_t *shut_listener;
    ioloop_time_t shut_timeout;
    atomic_int shut_pending; /* loops yet to pass the current phase */
    /* signal watchers set by ioloop_http_server_shutdown_on_signals */
    ioloop_t *sig_loop;
    ioloop_runtime_t *sig_rt;
    ioloop_listener_t *sig_listener;
    ioloop_time_t sig_timeout;
    char last_error[512];      /* ioloop_http_server_last_error */
    ioloop_http_log_fn log_fn; /* ioloop_http_server_set_log */
    void *log_arg;
    struct http_static *statics; /* static routes' state (static.c), freed with the server */
    struct ws_route *ws_routes;  /* WebSocket routes' state (ws_server.c), freed with the server */
};

/* One header line: offsets into the head (the stream's input while parsing, req->head_copy after). */
typedef struct {
    uint32_t name_off, name_len, val_off, val_len;
} http_hdr_t;

typedef struct {
    const char *name, *value;
} http_arg_t;

struct ioloop_http_request {
    http_conn_t *c; /* NULL once the connection closed */
    http_worker_t *w;
    const http_route_t *route;
    ioloop_http_handler_fn handler;
    ioloop_http_request_t *next_free;                 /* w's FIFO of finished requests */
    ioloop_http_request_t *orphan_next, *orphan_prev; /* w->orphans */
    bool orphaned;

    /* ---- parsed head (offsets while parsing; `base` once complete) ---- */
    const char *base;
    uint32_t url_off, url_len;
    http_hdr_t *hdrs;
    int nhdrs, hdrs_cap;
    bool in_value; /* last header callback was a value */
    int host_count, te_count;
    bool te_chunked_only, expect_continue, expect_other, has_body;
    uint8_t method, major, minor;
    const char *path, *query, *uri, *host;
    hbuf_t body;
    uint64_t body_received;

    /* ---- decoded on demand ---- */
    hbuf_t pbuf; /* path arguments */
    const char *pargs[HTTP_MAX_PATH_ARGS];
    int npargs;
    hbuf_t abuf; /* arguments */
    http_arg_t *args;
    int nargs, args_cap;
    bool args_parsed;
    char remote_ip[64];
    bool remote_ip_set;
    const char *protocol;

    /* ---- state ---- */
    bool headers_done, complete, finished, closed;
    bool user_owned;  /* application code has seen it (prepare or handler) */
    bool dispatched;  /* the method handler ran: parsing waits for finish */
    hbuf_t head_copy; /* the request line and headers, copied out of the stream at headers complete */
    struct sockaddr_in6 peer;
    socklen_t peer_len;
    ioloop_time_t start;
    bool keep_alive, streaming;
    int fail_status; /* answer this instead of dispatching (404/405/...) */

    /* ---- response ---- */
    int status;
    hbuf_t rhdr;  /* user headers, formatted "Name: value\r\n" */
    hbuf_t rbody; /* written, not yet flushed */
    bool user_length, user_ctype, headers_sent, chunked, head, no_body, close_delimited;
    bool length_error;      /* the body disagreed with the handler's Content-Length */
    uint64_t user_length_n; /* the handler's Content-Length value */
    uint64_t body_sent;     /* body bytes framed into c->out so far */
    ioloop_http_close_fn on_close;
    void *on_close_arg;
    ioloop_http_flush_fn flush_fn;
    void *flush_arg;
    bool flush_waiting; /* flush_fn waits for the out buffer to drain */
    bool file_body;     /* finish_file: the body is a file range, not in rbody */
    int refs;           /* scheduled flush completions holding req (at most one: a second flush waits, -EBUSY) */
    int flush_status;
    uint64_t wire_bytes; /* everything framed into c->out for this response (the log's bytes) */
    struct http_gzip *gzip; /* deflate state of a response being compressed (gzip.c), else NULL */
};

/* A connection's state (conn.c has the diagram). Reading and parsing are
 * decided from it by one function, conn_update, after every event. */
enum {
    CONN_HEAD,    /* waiting for (or reading) a request head */
    CONN_BODY,    /* the head is in, its body is arriving */
    CONN_HANDLER, /* the request is complete and dispatched: parsing waits for finish */
    CONN_LINGER,  /* our side is shut down: discard input until EOF or HTTP_LINGER */
    CONN_DEAD,    /* closed; freed when the stream's close callback runs */
};

struct http_conn {
    llhttp_t parser;
    http_worker_t *w;         /* NULL once the server was freed while the stream still closes */
    http_conn_t *prev, *next; /* w->conns, or w->closing once dead */
    ioloop_stream_t *stream;
    ioloop_http_request_t *req; /* the request being parsed or handled */
    const char *parse_base;     /* the stream's unconsumed input during llhttp_execute */
    size_t parsed;              /* bytes of a head in progress already fed to llhttp (not consumed) */
    hbuf_t out;                 /* response formatting buffer: handed to the stream by conn_send */
    ioloop_timer_t timer;
    ioloop_time_t timer_at, deadline;
    uint8_t state;
    bool close_after;            /* no keep-alive: linger once the response is out */
    bool eof;                    /* the client shut down its side */
    bool reading;                /* the stream is not paused */
    bool updating, update_again; /* conn_update re-entrancy */
    bool corked, wrote_corked;   /* inside the parse loop's cork; wrote meanwhile (one send) */
    bool shut;                   /* ioloop_stream_shutdown was called */
    bool watching;               /* a zero-length write's done is pending (watch_output) */
    size_t parse_len;            /* length of the input at parse_base */
    int busy;                    /* response.c frames on the stack (enter/leave) */
    bool report_close;           /* fed through ioloop_http_server_accept: report the close to the loop */
    bool tls;                    /* the stream's transport is TLS: requests say "https" */
    bool got_data;               /* the client sent something: not a fresh connection any more */
    int fail_status;             /* >0: answer this and close; -1: parse no more */
    struct sockaddr_in6 peer;    /* AF_INET or AF_INET6 */
    socklen_t peer_len;
    /* a response's file body (ioloop__http_response_finish_file), owned by
     * the connection until handed to the stream right after what c->out
     * holds (nothing is appended to c->out meanwhile: parsing waits for a
     * writable stream, which the pending file means it is not) */
    bool file_pending;
    int file_fd;
    off_t file_off;
    size_t file_len;
};

struct http_worker {
    ioloop_http_server_t *server;
    ioloop_t *loop;
    http_worker_t *next;
    http_conn_t *conns;
    int nconns;
    http_conn_t *closing; /* closed, waiting for their stream's close callback */
    char **blocks;
    int nblocks, blocks_cap;
    ioloop_http_request_t *limbo, *limbo_tail; /* finished in this iteration: join free_reqs in the next */
    bool reap_posted;
    ioloop_http_request_t *free_reqs, *free_reqs_tail; /* FIFO: the oldest is reused first */
    int nfree_reqs;
    int live_reqs;                  /* requests not in free_reqs: each keeps the worker alive (see worker_free) */
    ioloop_http_request_t *orphans; /* held by handlers, connection gone */
    http_conn_t *free_conns;
    int nfree_conns;
    time_t date_sec;
    char date[40];
    char discard[4096]; /* lingering reads land here */
    bool draining;
    bool dead; /* server_free ran: only live requests keep this struct; the last one frees it */
    ioloop_timer_t drain_timer;
    ioloop_callback_fn drain_done;
    void *drain_arg;
    /* counters (ioloop_http_server_get_stats, metrics.c): written by this loop only */
    _Atomic uint64_t st_connections, st_requests, st_sends;
    _Atomic uint64_t st_responses[5];                    /* by status class, 1xx..5xx */
    _Atomic uint64_t st_bytes_out;                       /* every byte queued for clients */
    _Atomic uint64_t st_duration[HTTP_DURATION_BUCKETS]; /* finished requests per bucket (not cumulative) */
    _Atomic uint64_t st_duration_sum;                    /* ns */
    /* Set at creation, so that the scrape labels a worker without touching
     * its loop: the loop's runtime index (-ENOENT: not a runtime's) and id. */
    int label_index;
    unsigned label_id;
    pcre2_match_data *match;      /* route matching: made on first use, freed with the worker */
    struct http_gzip *gzip_free;  /* idle deflate states (gzip.c) */
    ioloop__ws_list_t websockets; /* upgraded connections on this loop (ws_server.c): a drain closes them, 1001 */
    int ngzip_free;
};

/* Bumps a worker counter: one writer (the loop), so no read-modify-write. */
#define HTTP_STAT_INC(w, field) HTTP_STAT_ADD(w, field, 1)
#define HTTP_STAT_ADD(w, field, n)                                                                                     \
    atomic_store_explicit(&(w)->field, atomic_load_explicit(&(w)->field, memory_order_relaxed) + (n),                  \
                          memory_order_relaxed)

/* server.c */
http_worker_t *ioloop__http_worker(ioloop_http_server_t *s, ioloop_t *loop, bool create);
const char *ioloop__http_date(http_worker_t *w);
/* Writes t as an IMF-fixdate ("Sun, 06 Nov 1994 08:49:37 GMT", 29 chars and a
 * NUL) into out, whatever the locale. Returns the length. */
size_t ioloop__http_format_date(time_t t, char out[32]);
void ioloop__http_worker_conn_gone(http_worker_t *w);
/* The listener's on_stream (ioloop_http_server_serve). */
void ioloop__http_server_on_stream(ioloop_t *loop, ioloop_stream_t *stream, const struct sockaddr *peer,
                                   socklen_t peer_len, void *arg);
/* A live request went back to a dead worker's hands: the last one frees it. */
void ioloop__http_worker_release(http_worker_t *w);

/* shutdown.c */
void ioloop__http_signals_unwatch(ioloop_http_server_t *s);

/* buffers (server.c) */
int ioloop__hbuf_reserve(http_worker_t *w, hbuf_t *b, size_t extra);
int ioloop__hbuf_append(http_worker_t *w, hbuf_t *b, const void *data, size_t len);
void ioloop__hbuf_release(http_worker_t *w, hbuf_t *b);

/* router.c */
int ioloop__http_router_add(ioloop_http_server_t *s, const char *pattern, const ioloop_http_route_t *route);
/* Finds the route for req->path into *out (NULL: none, 404) and fills
 * req->pargs. Returns 0, or an HTTP status to answer with: 400 for a path
 * argument that decodes to a NUL, 503 without memory. */
int ioloop__http_router_match(const ioloop_http_server_t *s, ioloop_http_request_t *req, const http_route_t **out);
void ioloop__http_router_free(ioloop_http_server_t *s);
/* White-box for tests: 1 if the pattern route `pattern` was JIT compiled, 0
 * if not (or no such pattern route), -ENOTSUP without a JIT in PCRE2. */
int ioloop__http_route_jit(const ioloop_http_server_t *s, const char *pattern);
/* Percent-decodes src[0..len) into dst (NUL-terminated); plus_space for forms. */
size_t ioloop__http_unquote(char *dst, const char *src, size_t len, bool plus_space);
/* The value of a hex digit, or -1 (router.c; static.c decodes paths with it too). */
int ioloop__http_hexval(char ch);

/* conn.c */
/* Serves a stream (from the listener's on_stream, or wrapped around an fd by
 * ioloop_http_server_accept: report_close then tells the loop of its close). */
void ioloop__http_conn_start(http_worker_t *w, ioloop_stream_t *stream, const struct sockaddr *peer, socklen_t peer_len,
                             bool report_close);
/* Ends the connection now (its request hears on_close). */
void ioloop__http_conn_close(http_conn_t *c);
/* The drain began: an idle connection closes after a short grace. */
void ioloop__http_conn_drain(http_conn_t *c);
/* Hands c->out to the stream (flush and 100-continue; never inline callbacks). */
void ioloop__http_conn_send(http_conn_t *c);
/* The response of c->req ended (finish cleared c->req): decide keep-alive and go on. */
void ioloop__http_conn_response_done(http_conn_t *c);
/* Kept for response.c: a closed connection is freed only by its stream's
 * close callback, never inline, so these only check the nesting. */
void ioloop__http_conn_enter(http_conn_t *c);
void ioloop__http_conn_leave(http_conn_t *c);
/* The upgrade (WebSocket): req's handler hands its connection to another
 * protocol. head (the 101 response) is queued after what the connection sent
 * before, then the connection lets go of the stream (no callback of it
 * reaches the connection again, reading is resumed) and take(stream, req,
 * arg) runs: the stream, with any bytes that followed the request still
 * unconsumed in its input, is the callee's; req is readable during the call
 * and finished (logged with status 101, recycled) after it. The connection
 * leaves the worker's list (the callee keeps its own: w->websockets). 0, or
 * the error (req is then finished and the connection closes as usual). */
typedef void (*ioloop__http_upgrade_fn)(ioloop_stream_t *stream, ioloop_http_request_t *req, void *arg);
int ioloop__http_conn_upgrade(ioloop_http_request_t *req, const void *head, size_t len, ioloop__http_upgrade_fn take,
                              void *arg);
/* The stream options every connection of s uses. */
void ioloop__http_stream_options(const ioloop_http_server_t *s, ioloop_stream_options_t *out);
/* The server forgets its connections (server_free): streams still closing free theirs alone. */
void ioloop__http_worker_forget_conns(http_worker_t *w);
/* White-box for tests: the largest input and output (stream queue + out
 * buffer) any connection of s holds on `loop`; that loop's thread. */
void ioloop__http_conn_memory(ioloop_http_server_t *s, ioloop_t *loop, size_t *in_max, size_t *out_max);

/* parse.c */
extern const llhttp_settings_t ioloop__http_settings;
/* Parses what the stream holds while the state allows (HEAD, BODY) and the
 * output is writable; dispatches a complete request. */
void ioloop__http_conn_parse(http_conn_t *c);

/* request.c */
/* A request from the worker's pool (counted in w->live_reqs until put). */
ioloop_http_request_t *ioloop__http_request_get(http_worker_t *w);
/* Marks req finished and recycles it (once no flush completion is queued):
 * in the next loop iteration, FIFO behind HTTP_QUARANTINE others, so a stale
 * pointer meets finished. */
void ioloop__http_request_put(ioloop_http_request_t *req);
/* Runs on headers complete: validation, routing, xheaders. Returns 0 or an
 * HTTP status to answer with (and close). */
int ioloop__http_request_head_done(http_conn_t *c, ioloop_http_request_t *req);

/* access_log.c */
/* Reports a finished request to the server's log hook, if any (finish, before the request is put). */
void ioloop__http_log_request(ioloop_http_request_t *req, bool completed);

/* metrics.c (loop thread; single-writer counters, no atomic read-modify-write) */
/* A finished request (ioloop_http_response_finish): its status class, its
 * bytes and its duration. */
void ioloop__http_metrics_finished(ioloop_http_request_t *req);
/* A response the server wrote itself while parsing (400, 408, 413, 431...):
 * its status class and bytes, no duration (no handler saw it). */
void ioloop__http_metrics_error(http_worker_t *w, int status, size_t bytes);

/* request.c: the remote address as text, whatever the request's state. */
const char *ioloop__http_remote_ip(ioloop_http_request_t *req);

/* mime.c */
/* The Content-Type for a file name, from its extension (application/octet-stream if unknown). */
const char *ioloop__http_mime_type(const char *name);

/* ws_server.c */
void ioloop__http_ws_routes_free(ioloop_http_server_t *s);

/* static.c */
void ioloop__http_static_free_all(ioloop_http_server_t *s);
/* White-box for tests: runs on the executor thread after a path passed the
 * checks and before it is opened (a test deletes the file there). */
typedef void (*ioloop__http_static_hook_fn)(const char *relative_path);
extern _Atomic(ioloop__http_static_hook_fn) ioloop__http_static_test_hook;
/* White-box for tests: true takes the path kernels without openat2 take. */
extern atomic_bool ioloop__http_static_no_openat2;

/* response.c */
/* Appends a complete error response (status, small HTML body, Connection:
 * close) to out. */
int ioloop__http_error_bytes(http_worker_t *w, hbuf_t *out, int status);
const char *ioloop__http_reason(int status);
/* The client went away: wakes a waiting flush with -EPIPE. */
void ioloop__http_response_abort(ioloop_http_request_t *req);
/* c->out drained: completes a waiting flush. */
void ioloop__http_response_drained(ioloop_http_request_t *req);
/* Finishes req with len bytes of fd from offset as its body (Content-Length:
 * len; status and other headers as set before): the head goes into c->out
 * and the range follows it on the connection's stream with
 * ioloop_stream_write_file (sendfile on a plain socket), in order with the
 * responses before and after it. Takes fd in every case: closed once the
 * range has left, or the connection ended, or at once for HEAD, a bodiless
 * status, a closed connection or an error. Nothing may have been written or
 * flushed before. 0, or what finish returns; -EALREADY (fd closed) after
 * finish. */
int ioloop__http_response_finish_file(ioloop_http_request_t *req, int fd, off_t offset, size_t len);

/* gzip.c */
/* Validates and defaults the gzip options (server_new): -EINVAL for a level outside 0..9. */
int ioloop__http_gzip_check_options(ioloop_http_server_options_t *opts);
/* Before the head is written: decides whether this response is compressed
 * (adding Vary / Content-Encoding to rhdr). known_length: rbody is the whole
 * body (finish without an earlier flush). 0 or -ENOMEM. */
int ioloop__http_gzip_head(ioloop_http_request_t *req, bool known_length);
/* Compresses rbody in place when the response is compressed (last: the end
 * of the body, else a sync flush). 0, -ENOMEM or -EIO. */
int ioloop__http_gzip_body(ioloop_http_request_t *req, bool last);
/* Gives the request's deflate state back to its worker's pool. */
void ioloop__http_gzip_release(ioloop_http_request_t *req);
/* ioloop__http_response_finish_file through gzip: when the response would
 * be compressed, the range is read and deflated a 128 KiB block at a time,
 * each flushed once the previous one reached the kernel (chunked); else it
 * goes as it is, with Vary if its type is compressible. Takes fd in every case. */
int ioloop__http_gzip_finish_file(ioloop_http_request_t *req, int fd, off_t offset, size_t len);
/* Frees a worker's idle deflate states. */
void ioloop__http_gzip_pool_free(http_worker_t *w);

#endif
