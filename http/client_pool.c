/* client_pool.c — the HTTP client's per-loop connection pool (curl's
 * connection cache, h2o's socketpool, one per loop): hosts keyed by (scheme,
 * host, port, TLS context), their connections, the FIFO of fetches waiting
 * for one, the cached TLS contexts and a free list of fetches.
 *
 * Threading rule: the pool is its loop's alone (found through the loop's
 * close hooks); no lock, nothing shared between loops.
 *
 * An idle connection keeps a stream consumer running, so a close or a stray
 * byte from the server ends it at once; before a reuse a zero-timeout poll(2)
 * catches a FIN that arrived since the loop last polled. What still slips
 * through (a close in flight) is client.c's retry. The loop's close ends every
 * connection and fetch (-ESHUTDOWN) and frees the pool after the last of them.
 */
#define _GNU_SOURCE
#include "client_internal.h"

#ifdef IOLOOP_HTTP_HAVE_TLS
#include "ioloop/tls.h"
#endif

#include <assert.h>
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define DEFAULT_MAX_PER_HOST 10
#define DEFAULT_IDLE_TIMEOUT IOLOOP_SEC(60)
#define FETCH_FREE_KEEP 64
#define CONN_MAX_INPUT ((size_t)1024 * 1024)

static void pool_maybe_free(client_pool_t *pool);
static void queue_done(ioloop_http_fetch_t *fetch);

/* ---- fetches ---------------------------------------------------------------- */

ioloop_http_fetch_t *ioloop__client_fetch_alloc(client_pool_t *pool)
{
    ioloop_http_fetch_t *fetch = pool->free_fetches;
    if (fetch) {
        pool->free_fetches = fetch->queue_next;
        pool->nfree--;
        /* keep the buffers, clear the rest */
        cbuf_t strings = fetch->strings, out = fetch->out, head = fetch->resp.head, body = fetch->resp.body,
               url = fetch->url.text, eff = fetch->effective_url;
        ioloop_http_client_header_t *headers = fetch->headers;
        int headers_cap = fetch->headers_cap;
        ioloop__http_resp_header_t *rh = fetch->resp.headers;
        int rh_cap = fetch->resp.headers_cap;
        z_stream *z = fetch->z;
        memset(fetch, 0, sizeof(*fetch));
        fetch->strings = (cbuf_t){strings.data, 0, strings.cap};
        fetch->out = (cbuf_t){out.data, 0, out.cap};
        fetch->resp.head = (cbuf_t){head.data, 0, head.cap};
        fetch->resp.body = (cbuf_t){body.data, 0, body.cap};
        fetch->url.text = (cbuf_t){url.data, 0, url.cap};
        fetch->effective_url = (cbuf_t){eff.data, 0, eff.cap};
        fetch->headers = headers;
        fetch->headers_cap = headers_cap;
        fetch->resp.headers = rh;
        fetch->resp.headers_cap = rh_cap;
        fetch->z = z;
    } else {
        fetch = calloc(1, sizeof(*fetch));
        if (!fetch)
            return NULL;
    }
    fetch->pool = pool;
    return fetch;
}

static void fetch_free(ioloop_http_fetch_t *fetch)
{
    if (fetch->z) {
        if (fetch->z_active)
            inflateEnd(fetch->z);
        free(fetch->z);
    }
    free(fetch->strings.data);
    free(fetch->out.data);
    free(fetch->resp.head.data);
    free(fetch->resp.body.data);
    free(fetch->url.text.data);
    free(fetch->effective_url.data);
    free(fetch->headers);
    free(fetch->resp.headers);
    free(fetch);
}

void ioloop__client_fetch_recycle(ioloop_http_fetch_t *fetch)
{
    client_pool_t *pool = fetch->pool;
    if (fetch->z_active) {
        inflateEnd(fetch->z);
        fetch->z_active = false;
    }
    /* a large body buffer is not kept: the free list stays small */
    if (fetch->resp.body.cap > 64 * 1024) {
        free(fetch->resp.body.data);
        fetch->resp.body = (cbuf_t){0};
    }
    if (pool->closing || pool->nfree >= FETCH_FREE_KEEP) {
        fetch_free(fetch);
    } else {
        fetch->queue_next = pool->free_fetches;
        pool->free_fetches = fetch;
        pool->nfree++;
    }
    if (pool->closing) {
        pool->pending--;
        pool_maybe_free(pool);
    }
}

/* ---- the pool and its close hook ---------------------------------------------- */

static void pool_free(client_pool_t *pool)
{
    while (pool->hosts) {
        client_host_t *host = pool->hosts;
        pool->hosts = host->next;
        assert(!host->conns && !host->queue_head);
        free(host);
    }
    while (pool->tls) {
        client_tls_t *t = pool->tls;
        pool->tls = t->next;
#ifdef IOLOOP_HTTP_HAVE_TLS
        ioloop_tls_context_free(t->ctx);
#endif
        free(t->ca_file);
        free(t);
    }
    while (pool->free_fetches) {
        ioloop_http_fetch_t *fetch = pool->free_fetches;
        pool->free_fetches = fetch->queue_next;
        fetch_free(fetch);
    }
    free(pool);
}

static void pool_maybe_free(client_pool_t *pool)
{
    if (pool->closing && pool->pending == 0)
        pool_free(pool);
}

/* The loop closes: streams and connects may already have ended (their hooks
 * ran first) or end after this. Every fetch fails with -ESHUTDOWN; the pool
 * waits (pending) for the close callbacks still to come. */
static void pool_close(ioloop_t *loop, ioloop_close_hook_t *hook)
{
    (void)loop;
    client_pool_t *pool = (client_pool_t *)hook;
    pool->closing = true;
    pool->pending = 1; /* our own, until the walk below is over (a callback run from it may free a fetch) */
    for (client_host_t *host = pool->hosts; host; host = host->next) {
        while (host->queue_head) {
            ioloop_http_fetch_t *fetch = host->queue_head;
            ioloop__client_queue_remove(fetch);
            pool->pending++;
            ioloop__client_fetch_fail(fetch, -ESHUTDOWN, "the loop closed");
        }
        for (client_conn_t *conn = host->conns; conn; conn = conn->next)
            pool->pending++;
    }
    for (client_host_t *host = pool->hosts; host; host = host->next) {
        client_conn_t *conn = host->conns;
        while (conn) {
            client_conn_t *next = conn->next;
            if (conn->fetch) {
                pool->pending++;
                ioloop_http_fetch_t *fetch = conn->fetch;
                ioloop__client_fetch_fail(fetch, -ESHUTDOWN, "the loop closed");
            }
            ioloop__client_conn_close(conn);
            conn = next;
        }
    }
    pool->pending--;
    pool_maybe_free(pool);
}

client_pool_t *ioloop__client_pool(ioloop_t *loop, int *err)
{
    int rc = ioloop_remove_timeout(loop, 0); /* the owner check: -EPERM off the loop's thread */
    if (rc) {
        *err = rc;
        return NULL;
    }
    client_pool_t *pool = (client_pool_t *)ioloop_close_hook_find(loop, pool_close);
    if (pool)
        return pool;
    pool = calloc(1, sizeof(*pool));
    if (!pool) {
        *err = -ENOMEM;
        return NULL;
    }
    pool->hook.fn = pool_close;
    pool->loop = loop;
    rc = ioloop_close_hook_add(loop, &pool->hook);
    if (rc != 0) {
        free(pool);
        *err = rc;
        return NULL;
    }
    return pool;
}

static int max_per_host(const client_pool_t *pool)
{
    return pool->opts.max_connections_per_host > 0 ? pool->opts.max_connections_per_host : DEFAULT_MAX_PER_HOST;
}

int ioloop_http_client_configure(ioloop_t *loop, const ioloop_http_client_options_t *opts)
{
    if (!loop || !opts || opts->max_connections_per_host < 0 || opts->idle_timeout < 0 || opts->max_idle_per_host < 0)
        return -EINVAL;
    int rc;
    client_pool_t *pool = ioloop__client_pool(loop, &rc);
    if (!pool)
        return rc;
    pool->opts = *opts;
    return 0;
}

int ioloop_http_client_get_stats(ioloop_t *loop, ioloop_http_client_stats_t *out)
{
    if (!loop || !out)
        return -EINVAL;
    int rc = ioloop_remove_timeout(loop, 0); /* the owner check */
    if (rc)
        return rc;
    client_pool_t *pool = (client_pool_t *)ioloop_close_hook_find(loop, pool_close);
    memset(out, 0, sizeof(*out));
    if (!pool)
        return 0;
    *out = pool->stats;
    out->open = out->idle = out->queued = 0;
    for (client_host_t *host = pool->hosts; host; host = host->next) {
        out->open += host->nopen;
        out->idle += host->nidle;
        for (ioloop_http_fetch_t *f = host->queue_head; f; f = f->queue_next)
            out->queued++;
    }
    return 0;
}

int ioloop_http_client_close_idle(ioloop_t *loop)
{
    if (!loop)
        return -EINVAL;
    int rc = ioloop_remove_timeout(loop, 0); /* the owner check */
    if (rc)
        return rc;
    client_pool_t *pool = (client_pool_t *)ioloop_close_hook_find(loop, pool_close);
    if (!pool)
        return 0;
    for (client_host_t *host = pool->hosts; host; host = host->next)
        while (host->idle)
            ioloop__client_conn_close(host->idle);
    return 0;
}

/* ---- hosts and TLS contexts ------------------------------------------------------ */

client_host_t *ioloop__client_host(client_pool_t *pool, const client_url_t *url, void *tls_ctx)
{
    for (client_host_t *host = pool->hosts; host; host = host->next)
        if (host->https == url->tls && host->port == url->port && host->tls_ctx == tls_ctx &&
            strcasecmp(host->name, url->host) == 0)
            return host;
    size_t n = strlen(url->host);
    client_host_t *host = calloc(1, sizeof(*host) + n + 1);
    if (!host)
        return NULL;
    memcpy(host->name, url->host, n + 1);
    host->pool = pool;
    host->https = url->tls;
    host->port = url->port;
    host->tls_ctx = tls_ctx;
    host->next = pool->hosts;
    pool->hosts = host;
    return host;
}

void *ioloop__client_tls_context(client_pool_t *pool, const ioloop_http_client_request_t *req, int *err)
{
#ifdef IOLOOP_HTTP_HAVE_TLS
    if (req->tls_context)
        return req->tls_context;
    const char *ca = req->ca_file ? req->ca_file : "";
    for (client_tls_t *t = pool->tls; t; t = t->next)
        if (t->verify_off == req->validate_cert_off && strcmp(t->ca_file, ca) == 0)
            return t->ctx;
    client_tls_t *t = calloc(1, sizeof(*t));
    if (!t || !(t->ca_file = strdup(ca))) {
        free(t);
        *err = -ENOMEM;
        return NULL;
    }
    static const char *const alpn[] = {"http/1.1"};
    ioloop_tls_options_t o = {.ca_file = req->ca_file,
                              .verify = req->validate_cert_off ? IOLOOP_TLS_VERIFY_OFF : IOLOOP_TLS_VERIFY_DEFAULT,
                              .alpn = alpn,
                              .nalpn = 1};
    ioloop_tls_context_t *ctx = NULL;
    int rc = ioloop_tls_context_new(&o, &ctx);
    if (rc != 0) {
        free(t->ca_file);
        free(t);
        *err = rc;
        return NULL;
    }
    t->ctx = ctx;
    t->verify_off = req->validate_cert_off;
    t->next = pool->tls;
    pool->tls = t;
    return ctx;
#else
    (void)pool, (void)req;
    *err = -EPROTONOSUPPORT;
    return NULL;
#endif
}

/* ---- connections ------------------------------------------------------------------ */

static void conn_unlink_idle(client_conn_t *conn)
{
    client_host_t *host = conn->host;
    for (client_conn_t **p = &host->idle; *p; p = &(*p)->idle_next) {
        if (*p == conn) {
            *p = conn->idle_next;
            host->nidle--;
            break;
        }
    }
    conn->idle_next = NULL;
    if (conn->idle_timer) {
        ioloop_remove_timeout(host->pool->loop, conn->idle_timer);
        conn->idle_timer = 0;
    }
}

static void conn_stream_closed(ioloop_stream_t *stream, int error, void *arg);

/* Ends a connection: its stream closes (the close callback frees it). */
void ioloop__client_conn_close(client_conn_t *conn)
{
    if (conn->state == CONN_CLOSED)
        return;
    if (conn->state == CONN_IDLE)
        conn_unlink_idle(conn);
    conn->state = CONN_CLOSED;
    conn->fetch = NULL;
    if (conn->connecting) {
        ioloop_tcp_connect_cancel(conn->connecting); /* the connect's callback frees it */
    } else if (conn->stream) {
        ioloop_stream_close(conn->stream);
    }
}

static void conn_free(client_conn_t *conn)
{
    client_host_t *host = conn->host;
    client_pool_t *pool = host->pool;
    if (conn->state == CONN_IDLE)
        conn_unlink_idle(conn);
    if (conn->prev)
        conn->prev->next = conn->next;
    else
        host->conns = conn->next;
    if (conn->next)
        conn->next->prev = conn->prev;
    host->nopen--;
    ioloop__http_resp_free(&conn->parser);
    free(conn);
    if (pool->closing) {
        pool->pending--;
        pool_maybe_free(pool);
        return;
    }
    /* a slot is free: the next queued fetch may open a connection */
    if (host->queue_head) {
        ioloop_http_fetch_t *fetch = host->queue_head;
        ioloop__client_queue_remove(fetch);
        ioloop__client_dispatch(fetch, host);
    }
}

static void conn_stream_closed(ioloop_stream_t *stream, int error, void *arg)
{
    (void)stream;
    client_conn_t *conn = arg;
    conn->stream = NULL;
    /* the protocol side decides: a retry, a completed close-delimited body, or an error */
    if (conn->fetch && conn->state == CONN_BUSY)
        ioloop__client_conn_ended(conn, error == 0 ? -ECONNRESET : error);
    conn->state = CONN_CLOSED;
    conn->fetch = NULL;
    conn_free(conn);
}

/* An idle connection's consumer: any byte or the end means the server is done with it. */
static void conn_idle_data(ioloop_stream_t *stream, int status, void *arg)
{
    (void)stream, (void)status;
    client_conn_t *conn = arg;
    if (conn->state != CONN_IDLE)
        return;
    conn->host->pool->stats.stale_closed++;
    ioloop__client_conn_close(conn);
}

static void conn_idle_timeout(ioloop_t *loop, void *arg)
{
    (void)loop;
    client_conn_t *conn = arg;
    conn->idle_timer = 0;
    ioloop__client_conn_close(conn);
}

/* True when the socket says nothing happened since the connection went idle. */
static bool conn_fresh(client_conn_t *conn)
{
    if (ioloop_stream_closed(conn->stream))
        return false;
    size_t buffered = 0;
    ioloop_stream_peek(conn->stream, &buffered);
    if (buffered)
        return false;
#ifdef POLLRDHUP
    struct pollfd pfd = {.fd = ioloop_stream_fd(conn->stream), .events = POLLIN | POLLRDHUP};
#else
    struct pollfd pfd = {.fd = ioloop_stream_fd(conn->stream), .events = POLLIN};
#endif
    return poll(&pfd, 1, 0) == 0;
}

void ioloop__client_conn_release(client_conn_t *conn, bool reusable)
{
    client_host_t *host = conn->host;
    client_pool_t *pool = host->pool;
    conn->fetch = NULL;
    if (conn->state != CONN_BUSY && conn->state != CONN_CONNECTING)
        return;
    if (!reusable || pool->closing || !conn->stream) {
        ioloop__client_conn_close(conn);
        return;
    }
    if (host->queue_head) { /* the next waiting fetch takes it */
        ioloop_http_fetch_t *fetch = host->queue_head;
        ioloop__client_queue_remove(fetch);
        conn->state = CONN_BUSY;
        queue_done(fetch);
        fetch->reused = conn->requests > 0;
        if (fetch->reused)
            pool->stats.connections_reused++;
        ioloop__client_send(fetch, conn);
        return;
    }
    int max_idle = pool->opts.max_idle_per_host > 0 ? pool->opts.max_idle_per_host : max_per_host(pool);
    if (host->nidle >= max_idle) {
        ioloop__client_conn_close(conn);
        return;
    }
    conn->state = CONN_IDLE;
    conn->idle_next = host->idle;
    host->idle = conn;
    host->nidle++;
    ioloop_time_t idle = pool->opts.idle_timeout > 0 ? pool->opts.idle_timeout : DEFAULT_IDLE_TIMEOUT;
    if (ioloop_call_later(pool->loop, idle, conn_idle_timeout, conn, &conn->idle_timer) != 0 ||
        ioloop_stream_read_start(conn->stream, conn_idle_data, conn) != 0)
        ioloop__client_conn_close(conn);
}

static void conn_connect_done(ioloop_t *loop, int status, ioloop_stream_t *stream, void *arg)
{
    (void)loop;
    client_conn_t *conn = arg;
    conn->connecting = NULL;
    if (status == 0) {
        conn->stream = stream;
        conn->host->pool->stats.connections_opened++;
        ioloop_stream_set_close_callback(stream, conn_stream_closed, conn);
        if (conn->state == CONN_CLOSED) { /* abandoned meanwhile */
            ioloop_stream_close(stream);
            return;
        }
    }
    ioloop_http_fetch_t *fetch = conn->fetch;
    if (status != 0) {
        conn->state = CONN_CLOSED;
        conn->fetch = NULL;
        if (fetch)
            ioloop__client_connect_done(fetch, conn, status);
        conn_free(conn);
        return;
    }
    if (fetch) {
        conn->state = CONN_BUSY;
        ioloop__client_connect_done(fetch, conn, 0);
    } else {
        ioloop__client_conn_release(conn, true);
    }
}

static int conn_open(client_host_t *host, ioloop_http_fetch_t *fetch)
{
    client_pool_t *pool = host->pool;
    client_conn_t *conn = calloc(1, sizeof(*conn));
    if (!conn)
        return -ENOMEM;
    conn->host = host;
    conn->state = CONN_CONNECTING;
    conn->fetch = fetch;
    ioloop__http_resp_init(&conn->parser, fetch->req.max_header_size, fetch->req.max_headers,
                           &ioloop__client_parse_callbacks, conn);
    ioloop_tcp_connect_options_t o = {
        .timeout = fetch->req.connect_timeout ? fetch->req.connect_timeout : IOLOOP_SEC(20),
        .nodelay = true,
        .stream = {.max_buffer_size = CONN_MAX_INPUT},
    };
#ifdef IOLOOP_HTTP_HAVE_TLS
    if (host->https) {
        int rc = ioloop_tls_client_options(host->tls_ctx, host->name, &o);
        if (rc != 0) {
            ioloop__http_resp_free(&conn->parser);
            free(conn);
            return rc;
        }
    }
#endif
    conn->next = host->conns;
    if (host->conns)
        host->conns->prev = conn;
    host->conns = conn;
    host->nopen++;
    fetch->conn = conn;
    fetch->state = FETCH_CONNECTING;
    int rc = ioloop_tcp_connect(pool->loop, host->name, host->port, &o, conn_connect_done, conn, &conn->connecting);
    if (rc != 0) {
        fetch->conn = NULL;
        conn->state = CONN_CLOSED;
        conn->fetch = NULL;
        host->conns = conn->next;
        if (conn->next)
            conn->next->prev = NULL;
        host->nopen--;
        ioloop__http_resp_free(&conn->parser);
        free(conn);
        return rc;
    }
    return 0;
}

static void queue_timeout(ioloop_t *loop, void *arg)
{
    (void)loop;
    ioloop_http_fetch_t *fetch = arg;
    fetch->queue_timer = 0;
    ioloop__client_queue_remove(fetch);
    ioloop__client_fetch_fail(fetch, -EAGAIN, "queue timeout: no connection to the host became free in time");
}

void ioloop__client_queue_remove(ioloop_http_fetch_t *fetch)
{
    client_host_t *host = fetch->host;
    if (!host)
        return;
    ioloop_http_fetch_t **p = &host->queue_head, *prev = NULL;
    while (*p && *p != fetch) {
        prev = *p;
        p = &(*p)->queue_next;
    }
    if (*p) {
        *p = fetch->queue_next;
        if (host->queue_tail == fetch)
            host->queue_tail = prev;
    }
    fetch->queue_next = NULL;
    fetch->host = NULL;
    fetch->state = FETCH_IDLE;
    if (fetch->queue_timer) {
        ioloop_remove_timeout(host->pool->loop, fetch->queue_timer);
        fetch->queue_timer = 0;
    }
}

/* The end of the fetch's wait for a connection (timing.queue): its first one. */
static void queue_done(ioloop_http_fetch_t *fetch)
{
    if (fetch->resp.timing.queue < 0)
        fetch->resp.timing.queue = ioloop_time(fetch->pool->loop) - fetch->start;
}

void ioloop__client_dispatch(ioloop_http_fetch_t *fetch, client_host_t *host)
{
    client_pool_t *pool = host->pool;
    if (!fetch->fresh_only) {
        while (host->idle) {
            client_conn_t *conn = host->idle;
            if (!conn_fresh(conn)) {
                pool->stats.stale_closed++;
                ioloop__client_conn_close(conn);
                continue;
            }
            conn_unlink_idle(conn);
            ioloop_stream_read_stop(conn->stream);
            conn->state = CONN_BUSY;
            fetch->reused = true;
            pool->stats.connections_reused++;
            queue_done(fetch);
            ioloop__client_send(fetch, conn);
            return;
        }
    }
    fetch->reused = false;
    /* a retry may go one over: the connection it lost on still counts until its close callback */
    if (host->nopen < max_per_host(pool) || (fetch->fresh_only && host->nopen <= max_per_host(pool))) {
        queue_done(fetch);
        int rc = conn_open(host, fetch);
        if (rc != 0)
            ioloop__client_fetch_fail(fetch, rc, "connect failed");
        return;
    }
    fetch->host = host;
    fetch->state = FETCH_QUEUED;
    fetch->queue_next = NULL;
    if (host->queue_tail)
        host->queue_tail->queue_next = fetch;
    else
        host->queue_head = fetch;
    host->queue_tail = fetch;
    ioloop_time_t t = fetch->req.queue_timeout     ? fetch->req.queue_timeout
                      : fetch->req.connect_timeout ? fetch->req.connect_timeout
                                                   : IOLOOP_SEC(20);
    int rc = ioloop_call_later(pool->loop, t, queue_timeout, fetch, &fetch->queue_timer);
    if (rc != 0) {
        ioloop__client_queue_remove(fetch);
        ioloop__client_fetch_fail(fetch, rc, "no timer for the queue");
    }
}
