/* http.h — an HTTP/1.1 server on ioloop: Tornado's HTTPServer + Application +
 * RequestHandler in C.
 *
 * A server holds routes and options and serves on a runtime's loops
 * (ioloop_http_server_serve starts a runtime listener that hands the server
 * each connection as an ioloop_stream; ioloop_http_server_accept takes a raw
 * fd). A connection, and every request on it, belongs
 * to the loop that accepted it. ioloop_http_server_shutdown (or SIGTERM /
 * SIGINT, with ioloop_http_server_shutdown_on_signals) drains every loop and
 * then stops the runtime.
 *
 * Threading rule: configure the server (routes, options) before the first
 * connection; from then on it is read-only and shared by every loop. Request
 * and response calls are for the loop thread that owns the request. Another
 * thread that wants to answer posts to that loop (ioloop_add_callback with
 * ioloop_http_request_loop(req)) and answers there.
 *
 * Request lifetime: a request is valid from its handler's call until the
 * handler calls ioloop_http_response_finish, even if the client went away in
 * between (then writes return -EPIPE and on_close has run), and even after
 * ioloop_http_server_free: a completion still queued on the loop (a flush's
 * done, an executor job's) runs when the runtime frees the loop, and may
 * finish it then. A handler must finish every request it is given; one never
 * finished is never freed.
 *
 * After finish, req must not be used. As a safety net (not a licence): a
 * finished request keeps its memory and refuses every call (the response
 * calls return -EALREADY, the string accessors NULL, the counts -EALREADY)
 * until it is reused, and it is reused only in a later loop iteration and
 * after 64 later requests on the same loop have finished. So a late call (a
 * duplicate completion, a timer that fires after finish) in that window
 * never reaches another client's response. Beyond it, or after
 * ioloop_http_server_free, a stale pointer is undefined behaviour.
 *
 * Routes: a pattern without any of the characters []()*+?{}|^$\ is a literal
 * path, matched exactly through a hash table (a '.' is then a plain dot).
 * Anything else is a regular expression in Python's syntax (PCRE2, JIT
 * compiled: \d, (?P<name>...), lazy quantifiers, lookarounds) under
 * Tornado's PathMatches rules: '$' is appended unless the pattern ends with
 * one, and the match is anchored at the start of the raw path, so
 * r"/user/(\d+)" matches "/user/42" only. Each capture group becomes a path
 * argument, percent-decoded (a %00 in one gets 400: it would cut the C string
 * short; a group that did not take part reads as ""), by index (every group,
 * named or not, in order) and, for named groups, by name. Literal routes are
 * looked up before patterns; patterns are tried in the order they were added.
 *
 * Errors: functions return 0 or a negative errno.
 */
#ifndef IOLOOP_HTTP_H
#define IOLOOP_HTTP_H

#include "ioloop/ioloop.h"
#include "ioloop/runtime.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct ioloop_http_server ioloop_http_server_t;
typedef struct ioloop_http_request ioloop_http_request_t;

/* A method handler: runs on the connection's loop when the request (and its
 * body, unless streamed) has arrived. It answers now or later with finish. */
typedef void (*ioloop_http_handler_fn)(ioloop_http_request_t *req, void *arg);

/* A streamed body chunk (routes with on_body). data points into the read
 * buffer and is valid only during the call. Return 0, or a negative errno to
 * abort the request (the connection is closed). */
typedef int (*ioloop_http_body_fn)(ioloop_http_request_t *req, const char *data, size_t len, void *arg);

/* Completion of ioloop_http_response_flush: status 0 when everything written
 * so far reached the kernel, -EPIPE when the client went away first. */
typedef void (*ioloop_http_flush_fn)(ioloop_http_request_t *req, int status, void *arg);

/* Called once when the connection of an unfinished request closes. */
typedef void (*ioloop_http_close_fn)(ioloop_http_request_t *req, void *arg);

/* One route: a function per method (NULL: 405 with Allow). A missing .head
 * falls back to .get with the body suppressed. With on_body set, the request
 * body is streamed (Tornado's @stream_request_body): prepare (if set) runs
 * when the headers are in, on_body for each chunk, then the method handler
 * with an empty body. If the client leaves before the body's end, the method
 * handler never runs: a request seen in prepare or on_body is the
 * application's to finish, from on_close (ioloop_http_request_on_close). */
typedef struct {
    ioloop_http_handler_fn get, head, post, put, delete_, patch, options;
    ioloop_http_handler_fn prepare;
    ioloop_http_body_fn on_body;
    void *arg;
} ioloop_http_route_t;

/* Server options; zero means the default (Tornado's where Tornado has one). */
typedef struct {
    bool no_keep_alive;                    /* close after every response */
    bool xheaders;                         /* trust X-Real-IP / X-Forwarded-For / X-Forwarded-Proto */
    size_t max_header_size;                /* 64 KiB: larger request heads get 431 */
    size_t max_body_size;                  /* 100 MiB: larger bodies get 413 */
    ioloop_time_t idle_connection_timeout; /* 3600 s: idle keep-alive connections close */
    ioloop_time_t header_timeout;          /* 60 s: a request head must arrive within it */
    ioloop_time_t body_timeout;            /* 0: none (Tornado); else the body must arrive within it */
    /* gzip (Tornado's compress_response, nginx's `gzip on`): a response is
     * compressed when the client accepts gzip (Accept-Encoding, q=0 refuses),
     * its Content-Type is compressible, its status has a body and is not 206
     * (nor a HEAD), the handler set no Content-Encoding and no Content-Length
     * of its own (those bodies go as they are), and its body, if finished
     * without a flush, is at least gzip_min_length. A flushed (streamed) body
     * is compressed chunk by chunk, each flush a zlib sync flush. Every
     * compressible response gets Vary: Accept-Encoding. */
    bool gzip;
    int gzip_level;                /* 1..9; 0: 6 (Tornado's; nginx's gzip_comp_level default is 1) */
    size_t gzip_min_length;        /* 0: 1024 bytes (Tornado's MIN_LENGTH) */
    const char *const *gzip_types; /* NULL: text/..., JSON, JavaScript, XML, SVG (Tornado's list); else a
                                      NULL-terminated list of media types, one ending in '*' a prefix;
                                      borrowed: it must outlive the server */
    /* 0: none. Else ioloop_http_server_shutdown (and so SIGTERM) first keeps
     * accepting and serving for this long with the health route answering
     * 503, so a load balancer's checks take the process out of rotation
     * while it still accepts, and only then stops the listener and drains. */
    ioloop_time_t drain_delay;
} ioloop_http_server_options_t;

/* ---- server (configure from one thread before serving) ------------------ */

/* Creates a server (opts may be NULL): 0 and the server in *out, or a
 * negative errno (-EINVAL for bad options, -ENOMEM) and *out = NULL. */
IOLOOP_API int ioloop_http_server_new(const ioloop_http_server_options_t *opts, ioloop_http_server_t **out);

/* Adds a route (copied). -EEXIST for a literal path already routed, -EINVAL
 * for a pattern that does not compile (or has more than 16 groups), -ENOMEM.
 * After -EINVAL, ioloop_http_server_last_error says why. */
IOLOOP_API int ioloop_http_server_route(ioloop_http_server_t *s, const char *pattern, const ioloop_http_route_t *route);

/* The message of the last route that failed to compile, quoting its pattern
 * and PCRE2's reason: 'route pattern "/b/(\d+" does not compile: missing
 * closing parenthesis at offset 8' ("" if none failed). Owned by s; valid
 * until the next ioloop_http_server_route. The configuring thread. */
IOLOOP_API const char *ioloop_http_server_last_error(const ioloop_http_server_t *s);

/* Serves s on every loop of rt: starts a runtime listener on address:port
 * (NULL: "0.0.0.0"; port 0: the kernel picks, see ioloop_listener_port) in
 * accept mode `mode` (IOLOOP_ACCEPT_DEFAULT: the runtime's choice). Any
 * thread. 0 and the listener in *out (free it with ioloop_listener_free once
 * the runtime has stopped), or a negative errno from ioloop_listener_start.
 * Under systemd socket activation (ioloop_listen_fds finds LISTEN_FDS for
 * this process) it serves on the inherited sockets instead, address and port
 * ignored (-ENOTSOCK / -EINVAL when one is no listening stream socket); the
 * first serve of the process takes them all. Once listening it sends READY=1
 * to the service manager when NOTIFY_SOCKET is set (ioloop_sd_notify). */
IOLOOP_API int ioloop_http_server_serve(ioloop_http_server_t *s, ioloop_runtime_t *rt, const char *address, int port,
                                        ioloop_accept_mode_t mode, ioloop_listener_t **out);

/* The same with every listener option (a TLS transport per connection,
 * stream limits, backlog): on_accept, on_stream and arg are the server's and
 * are ignored if set. opts->stream: a zero field keeps the server's value,
 * max_buffer_size is never set below max_header_size plus one 16 KiB block,
 * and half_close is always on (the server handles the client's EOF). Requests
 * on a connection whose transport is TLS say "https" from
 * ioloop_http_request_protocol. opts->proxy_protocol applies as runtime.h
 * says: the request's remote address (ioloop_http_request_remote_ip, the
 * access log's) is then the one the PROXY header carries. Socket activation
 * and READY=1 as for ioloop_http_server_serve, unless opts->nfds names
 * sockets already. */
IOLOOP_API int ioloop_http_server_serve_with(ioloop_http_server_t *s, ioloop_runtime_t *rt,
                                             const ioloop_listener_options_t *opts, ioloop_listener_t **out);

/* Graceful shutdown of the whole runtime: after the options' drain_delay
 * (0: at once; meanwhile s serves as before, its health route saying 503),
 * l (may be NULL) stops accepting (what was queued is still served), then
 * every loop of rt drains s (ioloop_http_server_drain with `timeout`, 0:
 * none), and rt stops once every loop is drained: ioloop_runtime_join
 * returns then. Any thread; returns at once. Free s only after the runtime stopped this way (its steps are
 * callbacks on the loops that use s). A loop whose connections from l are
 * still sending their PROXY header (ioloop_listener_pending) starts its
 * drain once they are connections of s (or closed), within l's
 * proxy_timeout. Sends STOPPING=1 to the service
 * manager when NOTIFY_SOCKET is set. 0, -EALREADY if a shutdown of s
 * already began, -EINVAL. */
IOLOOP_API int ioloop_http_server_shutdown(ioloop_http_server_t *s, ioloop_runtime_t *rt, ioloop_listener_t *l,
                                           ioloop_time_t timeout);

/* Runs ioloop_http_server_shutdown(s, rt, l, timeout) on SIGTERM or SIGINT,
 * read by rt's loop 0 (ioloop_signal_watch; it replaces the runtime's own
 * handle_signals watcher). Blocks both signals in the calling thread: call it
 * from the thread that owns the runtime before creating other threads (they
 * inherit the mask). ioloop_http_server_free removes the watchers (and
 * unblocks the signals there). 0, -EALREADY if already set, or the watch's
 * negative errno. */
IOLOOP_API int ioloop_http_server_shutdown_on_signals(ioloop_http_server_t *s, ioloop_runtime_t *rt,
                                                      ioloop_listener_t *l, ioloop_time_t timeout);

/* Adds a health-check route at `path` (GET and HEAD): 200 "ok", or 503
 * "draining" once a shutdown of s began (drain_delay included), both
 * text/plain with Cache-Control: no-store. Point a load balancer's check at
 * it (HAProxy `option httpchk GET /healthz`). The configuring thread, like
 * ioloop_http_server_route; returns what it returns, or -EINVAL for a path
 * that does not start with '/'. */
IOLOOP_API int ioloop_http_server_health_route(ioloop_http_server_t *s, const char *path);

/* True once a shutdown of s began (ioloop_http_server_shutdown, or a signal
 * with ioloop_http_server_shutdown_on_signals), drain_delay included. Any
 * thread. */
IOLOOP_API bool ioloop_http_server_draining(const ioloop_http_server_t *s);

/* Serves an accepted connection on `loop` (its thread): `arg` is the server.
 * The signature is runtime.h's ioloop_accept_fn, so a runtime listener takes
 * it as on_accept directly. The server owns fd from here (it is closed on
 * failure). */
IOLOOP_API void ioloop_http_server_accept(ioloop_t *loop, int fd, const struct sockaddr *peer, socklen_t peer_len,
                                          void *arg);

/* Graceful drain of this server on `loop` (its thread): close idle
 * keep-alive connections (after a 50 ms grace, cleanly), answer the requests
 * in flight with Connection: close, and after `timeout` (0: none) close
 * whatever is left. Connections accepted later on this loop get the same
 * treatment. done(loop, arg) runs on loop once no connection of this server
 * remains there. It does not stop a listener (ioloop_http_server_shutdown
 * does both, on every loop). Returns 0, or -EALREADY if this loop is already
 * draining. */
IOLOOP_API int ioloop_http_server_drain(ioloop_http_server_t *s, ioloop_t *loop, ioloop_time_t timeout,
                                        ioloop_callback_fn done, void *arg);

/* Connections this server has open on `loop` (its thread). */
IOLOOP_API int ioloop_http_server_connections(const ioloop_http_server_t *s, ioloop_t *loop);

/* Counters summed over every loop that served s (each exact, the set not one
 * snapshot). Any thread. */
typedef struct {
    uint64_t connections;  /* accepted */
    uint64_t requests;     /* dispatched to a handler (or answered 404/405) */
    uint64_t sends;        /* writes to the connection streams: pipelined responses share one */
    uint64_t responses[5]; /* responses by status class: [0] 1xx ... [4] 5xx; a handler's (finished,
                              also when the client had gone) and the server's own (400, 413, ...) */
    uint64_t bytes_out;    /* every byte queued for clients: status lines, headers, framing, bodies
                              (files included) */
} ioloop_http_server_stats_t;
IOLOOP_API void ioloop_http_server_get_stats(const ioloop_http_server_t *s, ioloop_http_server_stats_t *out);

/* Serves the server's and its loops' counters at `path` (a literal path,
 * e.g. "/metrics"; GET and HEAD) in the Prometheus text exposition format
 * 0.0.4, labelled per loop (loop="0", ... the runtime index; a loop that is
 * not a runtime's is loop="id<ioloop_id>"): each loop's iterations, busy
 * seconds, callbacks, posts, wakeups (eventfd writes), handler events,
 * timers and live connections (ioloop_get_stats), for every loop of the
 * runtime the scrape runs on and every loop this server has served on; and
 * per loop the server's accepted connections, requests, responses by status
 * class, bytes out and a request-duration histogram (seconds, buckets
 * 0.0005 .. 10 and +Inf; the loop's cached time, so a request answered in
 * the iteration that read it counts 0). The counters are kept whether or not
 * this route is added: each is written by its own loop only (a relaxed
 * atomic load and store, no lock, no read-modify-write) and read by the
 * scrape with relaxed loads, so a scrape is not one snapshot. A scrape while
 * loops stop or close reads only memory that outlives them (the registry
 * walk is under RCU; the server's per-loop state lives until
 * ioloop_http_server_free). Configure before serving, like routes. 0,
 * -EINVAL for a NULL server or a path that is not literal, or
 * ioloop_http_server_route's error (-EEXIST, -ENOMEM). */
IOLOOP_API int ioloop_http_server_metrics_route(ioloop_http_server_t *s, const char *path);

/* ---- access log --------------------------------------------------------- */

/* One finished request, as the log hook sees it. Every pointer is valid only
 * during the hook's call (they point into the request, which is recycled
 * after it). */
typedef struct {
    ioloop_t *loop;              /* the loop that served it: the hook runs on its thread */
    const char *method;          /* "GET" */
    const char *target;          /* the request target as sent ("/a%20b?x=1") */
    const char *version;         /* "HTTP/1.1" or "HTTP/1.0" */
    const char *host;            /* as ioloop_http_request_host ("" if none) */
    const char *referer;         /* the Referer header, NULL if absent */
    const char *user_agent;      /* the User-Agent header, NULL if absent */
    const char *remote_ip;       /* as ioloop_http_request_remote_ip ("" for a peer that is not IP) */
    const struct sockaddr *peer; /* the connection's peer address (peer_len 0: none) */
    socklen_t peer_len;
    int status;             /* the status sent (404/405 answered by the server included) */
    uint64_t body_bytes;    /* body bytes sent, without chunked framing; 0 for HEAD, 204, 304 */
    uint64_t bytes;         /* every byte queued for the client: status line, headers, framing, body */
    ioloop_time_t duration; /* loop time (ioloop_time: cached per iteration, as nginx's $request_time) from
                               the iteration that read the head's first byte to the one that finished:
                               0 for an answer given in the same iteration */
    bool completed;         /* false: the client went away before finish (bytes are what was queued) */
} ioloop_http_log_entry_t;

/* Called on the request's loop thread when a handler (or the server, for a
 * 404/405) finishes a response, after its bytes were queued and before the
 * request is recycled. It must be quick and must not call the request or
 * response API. A request the server rejects while parsing (400, 408, 413,
 * 431, ...: answered before any handler saw it) is not reported. */
typedef void (*ioloop_http_log_fn)(const ioloop_http_log_entry_t *entry, void *arg);

/* Sets the server's log hook (NULL: none, the default). Configure before
 * serving, like routes. */
IOLOOP_API void ioloop_http_server_set_log(ioloop_http_server_t *s, ioloop_http_log_fn fn, void *arg);

/* The built-in access log writer: Common Log Format
 *   127.0.0.1 - - [27/Nov/2026:18:56:40 +0000] "GET /a HTTP/1.1" 200 12
 * or Combined (the same, then "referer" "user-agent", "-" when absent). The
 * body size is "-" when 0 (Apache's %b); the time is local, with its offset;
 * quotes, backslashes, control and non-ASCII bytes in the request line and
 * headers are written \xHH (nginx's escaping), and each field is cut at
 * 4 KiB ("..." marks the cut), so a line is never split.
 *
 * Lines are formatted on the loop thread into a per-loop 128 KiB buffer,
 * which goes to the log's writer thread as one batch (one write(2)) when it
 * is full or 100 ms after its first line (a loop timer). The loop never
 * writes, so a slow disk never stalls it. The writer thread writes with every
 * signal blocked: a closed pipe (EPIPE; its SIGPIPE is consumed there, never
 * delivered), a full disk (ENOSPC) or any write error drops that batch and
 * counts its lines; serving goes on. A pipe or terminal is written through a
 * private non-blocking descriptor (reopened via /proc/self/fd), so a reader
 * that stops reading never blocks close for more than ~2 s. When 4 MiB of
 * batches wait for the writer, new batches are dropped (counted) rather than
 * queued without bound. */
typedef struct ioloop_http_access_log ioloop_http_access_log_t;
typedef enum { IOLOOP_HTTP_LOG_COMMON, IOLOOP_HTTP_LOG_COMBINED } ioloop_http_log_format_t;

/* Opens path for appending (created 0644), or standard output for "-", and
 * starts the writer thread. 0 and *out, or a negative errno. Any thread. */
IOLOOP_API int ioloop_http_access_log_open(const char *path, ioloop_http_log_format_t format,
                                           ioloop_http_access_log_t **out);
/* The same on an fd the caller keeps (never closed here). */
IOLOOP_API int ioloop_http_access_log_open_fd(int fd, ioloop_http_log_format_t format, ioloop_http_access_log_t **out);
/* The hook that feeds a built-in log: ioloop_http_server_set_log(s,
 * ioloop_http_access_log_hook, log). One log may serve several servers. */
IOLOOP_API void ioloop_http_access_log_hook(const ioloop_http_log_entry_t *entry, void *log);

typedef struct {
    uint64_t lines_written; /* reached the kernel */
    uint64_t lines_dropped; /* lost to a write error or a full queue */
    uint64_t writes;        /* write(2) calls that wrote something */
    uint64_t write_errors;  /* write(2) calls that failed (last_errno says why) */
    int last_errno;         /* 0, or the last write error (ENOSPC, EPIPE, ...) */
} ioloop_http_access_log_stats_t;
/* Counters (each exact, the set not one snapshot). Any thread. */
IOLOOP_API void ioloop_http_access_log_get_stats(const ioloop_http_access_log_t *log,
                                                 ioloop_http_access_log_stats_t *out);

/* Writes what the loops buffered, stops the writer thread (after it wrote
 * everything, or gave up after ~2 s on a pipe nobody reads) and frees log.
 * Any thread, once nothing can log to it: after ioloop_http_server_free of
 * every server using it (a request finished later, by a completion that
 * runs in ioloop_runtime_free, is no longer reported), with the loops stopped
 * for good (their pending flush timers are dropped when they close, never
 * run). A batch whose write failed part-way counts all its lines as dropped. */
IOLOOP_API void ioloop_http_access_log_close(ioloop_http_access_log_t *log);

/* Frees the server: closes its connections and removes its signal watchers. Call once no loop
 * serving it runs any more and before those loops are closed. Requests a handler still holds
 * stay valid until finished (see "Request lifetime"). */
IOLOOP_API void ioloop_http_server_free(ioloop_http_server_t *s);

/* ---- request (loop thread) --------------------------------------------- */

/* The loop that owns the request: post here to answer from another thread. */
IOLOOP_API ioloop_t *ioloop_http_request_loop(const ioloop_http_request_t *req);
/* "GET", "POST", ... */
IOLOOP_API const char *ioloop_http_request_method(const ioloop_http_request_t *req);
/* The raw path (no query), e.g. "/a%20b". For an absolute-form target, the
 * path part of it. */
IOLOOP_API const char *ioloop_http_request_path(const ioloop_http_request_t *req);
/* The raw query string without '?', "" when none. */
IOLOOP_API const char *ioloop_http_request_query(const ioloop_http_request_t *req);
/* The request target as sent. */
IOLOOP_API const char *ioloop_http_request_uri(const ioloop_http_request_t *req);
/* "HTTP/1.1" or "HTTP/1.0". */
IOLOOP_API const char *ioloop_http_request_version(const ioloop_http_request_t *req);
/* The host: the absolute-form target's authority, else the Host header ("" if none). */
IOLOOP_API const char *ioloop_http_request_host(const ioloop_http_request_t *req);
/* A header's value by case-insensitive name (the first one), or NULL. */
IOLOOP_API const char *ioloop_http_request_header(const ioloop_http_request_t *req, const char *name);
/* Headers by index, in arrival order. -ENOENT past the end. */
IOLOOP_API int ioloop_http_request_header_at(const ioloop_http_request_t *req, int i, const char **name,
                                             const char **value);
/* The body (NUL-terminated; empty for streamed bodies). */
IOLOOP_API const char *ioloop_http_request_body(const ioloop_http_request_t *req, size_t *len);
/* The peer's IP as text (X-Real-IP / X-Forwarded-For with xheaders). */
IOLOOP_API const char *ioloop_http_request_remote_ip(ioloop_http_request_t *req);
/* "https" on a TLS connection; else "http", or what X-Forwarded-Proto/X-Scheme
 * says with xheaders ("https"). */
IOLOOP_API const char *ioloop_http_request_protocol(const ioloop_http_request_t *req);
/* Path arguments captured by a pattern route, percent-decoded. */
IOLOOP_API int ioloop_http_request_path_arg_count(const ioloop_http_request_t *req);
IOLOOP_API const char *ioloop_http_request_path_arg(const ioloop_http_request_t *req, int i);
/* A named group's value ((?P<name>...)), percent-decoded; NULL if the route
 * has no group of that name. Named groups are also counted by index. */
IOLOOP_API const char *ioloop_http_request_path_arg_named(const ioloop_http_request_t *req, const char *name);
/* The last value of a query (or form-urlencoded body) argument, decoded
 * ('+' is a space), or def when absent — Tornado's get_argument. A pair whose
 * name or value decodes to a NUL (%00) is dropped, as if absent: as a C
 * string it would be cut short ("a.php%00.jpg" read as "a.php"). */
IOLOOP_API const char *ioloop_http_request_argument(ioloop_http_request_t *req, const char *name, const char *def);
/* Every value of an argument, in order: stores up to max pointers in values
 * and returns how many there are. */
IOLOOP_API int ioloop_http_request_arguments(ioloop_http_request_t *req, const char *name, const char **values,
                                             int max);
/* Registers the callback run if the client goes away before finish. */
IOLOOP_API void ioloop_http_request_on_close(ioloop_http_request_t *req, ioloop_http_close_fn fn, void *arg);
/* True once the connection of this request has closed. */
IOLOOP_API bool ioloop_http_request_closed(const ioloop_http_request_t *req);

/* ---- response (loop thread) -------------------------------------------- */

/* Sets the status (default 200) with its standard reason. -EINVAL outside
 * 200..599 (a 1xx is an interim response, which this API does not send; the
 * server sends 100 Continue itself), -EALREADY after the headers went out. */
IOLOOP_API int ioloop_http_response_status(ioloop_http_request_t *req, int status);
/* Adds a response header. A Content-Length set here replaces the server's
 * framing (no chunking) and is held to: the body is counted against it (see
 * write and finish); a second one, or one that is not digits, is -EINVAL.
 * "Connection: close" closes the connection after this response; Date, other
 * Connection values and Transfer-Encoding are the server's (-EINVAL). -EINVAL
 * for a name that is not a token or a value with a control character other
 * than HTAB (CR, LF, NUL, ESC, DEL...: RFC 9110 5.5), -EALREADY after the
 * headers went out. */
IOLOOP_API int ioloop_http_response_header(ioloop_http_request_t *req, const char *name, const char *value);
/* Appends to the body (buffered until flush or finish). -EPIPE if the client
 * went away, -EALREADY after finish, -EMSGSIZE (nothing appended) if the body
 * would outgrow the handler's Content-Length: the connection then closes
 * after this response. */
IOLOOP_API int ioloop_http_response_write(ioloop_http_request_t *req, const void *data, size_t len);
/* Sends the headers (chunked encoding: the length is not known yet) and what
 * was written; done (may be NULL) runs on the loop, never inline, once it has
 * all reached the kernel — wait for it before writing more to apply
 * back-pressure. One done at a time: a flush with a done while an earlier
 * one has not run yet is -EBUSY (and sends nothing); a flush without one is
 * not refused for that, and leaves the pending done in place. finish drops a done
 * that has not run yet. */
IOLOOP_API int ioloop_http_response_flush(ioloop_http_request_t *req, ioloop_http_flush_fn done, void *arg);
/* Ends the response (Content-Length if nothing was flushed before) and
 * releases the request: req must not be used afterwards. -EPROTO if the body
 * sent differs from the handler's Content-Length, or a write past it was
 * refused (the connection closes after what was sent, so no byte is read as
 * the next response). */
IOLOOP_API int ioloop_http_response_finish(ioloop_http_request_t *req);
/* Convenience: status, a body and finish. */
IOLOOP_API int ioloop_http_response_send(ioloop_http_request_t *req, int status, const char *content_type,
                                         const void *body, size_t len);

/* ---- static files (static.c) ------------------------------------------ */

/* Options of a static route; zero means the default. */
typedef struct {
    const char *cache_control; /* Cache-Control of every file response (and its 304); NULL: none */
    const char *index;         /* the file served for a directory; NULL: "index.html", "": none */
    bool list_directories;     /* a directory without index: an HTML listing (else 403) */
    bool follow_symlinks;      /* symlinks may lead outside root_dir (default: 403) */
    bool gzip_static;          /* serve file.gz for file when the client accepts gzip and asks no
                                  range (Content-Encoding: gzip, Vary: Accept-Encoding), as nginx */
    ioloop_time_t cache_valid; /* keep small files (<= 32 KiB, 64 per loop) in memory this long after
                                  reading them, answered with no executor job nor syscall (a change
                                  to the file shows within it, as nginx's open_file_cache_valid);
                                  0: no cache, every request opens the file */
} ioloop_http_static_options_t;

/* Serves the files under root_dir at prefix ("/static/": GET /static/a/b.css
 * is root_dir/a/b.css), as Tornado's StaticFileHandler and nginx do:
 * sendfile for the body (ioloop_stream_write_file; small files are read and
 * copied), a strong ETag (inode, size, mtime) and Last-Modified, 304 for
 * If-None-Match / If-Modified-Since, one byte range (206, 416 with
 * "bytes * /size" unsatisfiable; several ranges: the whole file, as Tornado),
 * If-Range, HEAD, Content-Type from the extension, a directory as
 * prefix/dir/ (prefix/dir redirects there, 301) with its index or listing.
 * Nothing outside root_dir is served: a path with "..", ".", empty segments,
 * a backslash, an encoded '/' or NUL, or bad escapes gets 404; a symlink
 * leading outside (openat2 RESOLVE_BENEATH, or a realpath check on kernels
 * without it) 403 unless follow_symlinks. Opening and fstat run on the
 * executor (ioloop_run_in_executor), never on the loop thread. prefix must
 * start and end with '/'. Configure before serving, as routes. 0, -EINVAL,
 * the errno of opening root_dir, or ioloop_http_server_route's error. */
IOLOOP_API int ioloop_http_static_route(ioloop_http_server_t *s, const char *prefix, const char *root_dir,
                                        const ioloop_http_static_options_t *opts);

#ifdef __cplusplus
}
#endif
#endif
