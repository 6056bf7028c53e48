/* client.c — one fetch (Tornado's simple_httpclient, h2o's http1client): the
 * request is copied, a connection taken from the loop's pool (client_pool.c),
 * the head and body written, the response parsed (client_parse.c) from the
 * stream's consumer, inflated, buffered or streamed, redirects followed.
 *
 * Threading rule: a fetch and everything it touches belong to its loop's thread.
 *
 * One timer covers the whole fetch (request_timeout); the connect and the
 * queue have their own. A fetch ends in one place, fetch_finish: it leaves its
 * connection (closed unless the response completed cleanly) or its queue, and
 * the callback runs from a loop callback, never inline. A request on a reused
 * connection that ends before any response byte is sent once more on a new
 * one when it is idempotent and its body is a buffer (RFC 9110 9.2.2; curl
 * and Go's Transport do the same).
 */
#define _GNU_SOURCE
#include "client_internal.h"

#ifdef IOLOOP_HTTP_HAVE_TLS
#include "ioloop/tls.h"
#endif

#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define DEFAULT_TIMEOUT IOLOOP_SEC(20)
#define DEFAULT_MAX_BODY ((size_t)100 * 1024 * 1024)
#define DEFAULT_MAX_REDIRECTS 5
#define INFLATE_CHUNK 16384

static void fetch_attempt(ioloop_http_fetch_t *fetch);

static size_t max_body(const ioloop_http_fetch_t *fetch)
{
    return fetch->req.max_body_size ? fetch->req.max_body_size : DEFAULT_MAX_BODY;
}

static ioloop_time_t since_start(const ioloop_http_fetch_t *fetch)
{
    return ioloop_time(fetch->pool->loop) - fetch->start;
}

/* ---- the end of a fetch ------------------------------------------------------------ */

static void fetch_deliver(ioloop_t *loop, void *arg)
{
    ioloop_http_fetch_t *fetch = arg;
    const client_url_t *u = &fetch->url;
    fetch->effective_url.len = 0;
    ioloop__cbuf_printf(&fetch->effective_url, "%s://%s%s%s", u->tls ? "https" : "http", u->ipv6 ? "[" : "",
                        u->host ? u->host : "", u->ipv6 ? "]" : "");
    if (!u->default_port)
        ioloop__cbuf_printf(&fetch->effective_url, ":%d", u->port);
    ioloop__cbuf_printf(&fetch->effective_url, "%s", u->target ? u->target : "");
    fetch->pool->stats.fetches++;
    if (!fetch->resp.body.data)
        ioloop__cbuf_append(&fetch->resp.body, "", 0);
    fetch->cb(loop, &fetch->resp, fetch->arg);
    ioloop__client_fetch_recycle(fetch);
}

/* Ends the fetch with err (0: the response is complete); the callback runs later. */
static void fetch_finish(ioloop_http_fetch_t *fetch, int err, const char *text)
{
    if (fetch->state == FETCH_DONE)
        return;
    client_pool_t *pool = fetch->pool;
    ioloop_t *loop = pool->loop;
    fetch->resp.error = err;
    if (err && !fetch->resp.error_text[0])
        snprintf(fetch->resp.error_text, sizeof(fetch->resp.error_text), "%s", text ? text : ioloop_strerror(err));
    if (fetch->request_timer)
        ioloop_remove_timeout(loop, fetch->request_timer);
    fetch->request_timer = 0;
    if (fetch->state == FETCH_QUEUED)
        ioloop__client_queue_remove(fetch);
    client_conn_t *conn = fetch->conn;
    fetch->conn = NULL;
    if (conn && conn->fetch == fetch) {
        conn->fetch = NULL;
        if (conn->state == CONN_BUSY)
            ioloop__client_conn_close(conn); /* mid-exchange: never reused */
        /* connecting: the connection goes to the pool (or the queue) when it is up */
    }
    fetch->state = FETCH_DONE;
    fetch->resp.timing.total = since_start(fetch);
    if (ioloop_add_callback(loop, fetch_deliver, fetch) != 0)
        fetch_deliver(loop, fetch); /* the loop is closing: its hooks run us now */
}

void ioloop__client_fetch_fail(ioloop_http_fetch_t *fetch, int err, const char *text)
{
    fetch_finish(fetch, err, text);
}

static void fail_fmt(ioloop_http_fetch_t *fetch, int err, const char *what)
{
    char text[192];
    snprintf(text, sizeof(text), "%.120s: %.60s", what, ioloop_strerror(err));
#ifdef IOLOOP_HTTP_HAVE_TLS
    if ((err == IOLOOP_ECERT || err == IOLOOP_ETLS) && ioloop_tls_error_message()[0])
        snprintf(text, sizeof(text), "%.60s: %.120s", what, ioloop_tls_error_message());
#endif
    fetch_finish(fetch, err, text);
}

static void request_timeout(ioloop_t *loop, void *arg)
{
    (void)loop;
    ioloop_http_fetch_t *fetch = arg;
    fetch->request_timer = 0;
    char text[96];
    snprintf(text, sizeof(text), "request timeout after %lld ms",
             (long long)((fetch->req.request_timeout ? fetch->req.request_timeout : DEFAULT_TIMEOUT) / 1000000));
    fetch_finish(fetch, -ETIME, text);
}

/* ---- sending --------------------------------------------------------------------- */

static bool is_method(const ioloop_http_fetch_t *fetch, const char *m)
{
    return strcmp(fetch->method, m) == 0;
}

static bool idempotent(const ioloop_http_fetch_t *fetch)
{
    static const char *const ok[] = {"GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE"};
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++)
        if (is_method(fetch, ok[i]))
            return true;
    return false;
}

static bool client_header(const char *name)
{
    static const char *const ours[] = {"host", "content-length", "transfer-encoding", "connection"};
    for (size_t i = 0; i < sizeof(ours) / sizeof(ours[0]); i++)
        if (strcasecmp(name, ours[i]) == 0)
            return true;
    return false;
}

static bool has_header(const ioloop_http_fetch_t *fetch, const char *name)
{
    for (int i = 0; i < fetch->req.nheaders; i++)
        if (strcasecmp(fetch->headers[i].name, name) == 0)
            return true;
    return false;
}

static int format_head(ioloop_http_fetch_t *fetch)
{
    cbuf_t *b = &fetch->out;
    const client_url_t *u = &fetch->url;
    b->len = 0;
    int rc = ioloop__cbuf_printf(b, "%s %s HTTP/1.1\r\nHost: %s%s%s", fetch->method, u->target, u->ipv6 ? "[" : "",
                                 u->host, u->ipv6 ? "]" : "");
    if (rc == 0 && !u->default_port)
        rc = ioloop__cbuf_printf(b, ":%d", u->port);
    if (rc == 0)
        rc = ioloop__cbuf_append(b, "\r\n", 2);
    for (int i = 0; rc == 0 && i < fetch->req.nheaders; i++) {
        const ioloop_http_client_header_t *h = &fetch->headers[i];
        if (client_header(h->name) || (fetch->strip_auth && strcasecmp(h->name, "authorization") == 0))
            continue;
        rc = ioloop__cbuf_printf(b, "%s: %s\r\n", h->name, h->value);
    }
    if (rc == 0 && !has_header(fetch, "user-agent"))
        rc = ioloop__cbuf_append(b, "User-Agent: ioloop\r\n", 20);
    if (rc == 0 && fetch->req.decompress && !has_header(fetch, "accept-encoding"))
        rc = ioloop__cbuf_append(b, "Accept-Encoding: gzip\r\n", 23);
    if (rc == 0 && fetch->has_body) {
        if (fetch->req.body_producer && fetch->body_chunked)
            rc = ioloop__cbuf_append(b, "Transfer-Encoding: chunked\r\n", 28);
        else
            rc = ioloop__cbuf_printf(b, "Content-Length: %llu\r\n",
                                     (unsigned long long)(fetch->req.body_producer
                                                              ? (uint64_t)fetch->req.body_producer_length
                                                              : (uint64_t)fetch->req.body_len));
    } else if (rc == 0 && (is_method(fetch, "POST") || is_method(fetch, "PUT") || is_method(fetch, "PATCH"))) {
        rc = ioloop__cbuf_append(b, "Content-Length: 0\r\n", 19);
    }
    if (rc == 0)
        rc = ioloop__cbuf_append(b, "\r\n", 2);
    return rc;
}

static void release_nothing(void *data, void *arg)
{
    (void)data, (void)arg;
}

static void body_watch_done(ioloop_stream_t *stream, int status, void *arg);

/* Asks for a done callback once everything queued so far has left. */
static void body_watch(ioloop_http_fetch_t *fetch)
{
    client_conn_t *conn = fetch->conn;
    if (fetch->watch_pending || fetch->body_ended || !conn || !conn->stream)
        return;
    if (ioloop_stream_write(conn->stream, "", 0, body_watch_done, conn) == 0)
        fetch->watch_pending = true;
}

static void body_watch_done(ioloop_stream_t *stream, int status, void *arg)
{
    (void)stream;
    client_conn_t *conn = arg;
    ioloop_http_fetch_t *fetch = conn->fetch;
    if (!fetch || fetch->state != FETCH_SENDING)
        return;
    fetch->watch_pending = false;
    if (status != 0 || fetch->body_ended)
        return;
    int rc = fetch->req.body_producer(fetch, fetch->req.body_producer_arg);
    if (rc < 0 && fetch->state == FETCH_SENDING)
        fail_fmt(fetch, rc, "the body producer failed");
}

int ioloop_http_fetch_body_write(ioloop_http_fetch_t *fetch, const void *data, size_t len)
{
    if (!fetch || (!data && len))
        return -EINVAL;
    if (fetch->state != FETCH_SENDING || !fetch->req.body_producer || fetch->body_ended || !fetch->conn ||
        !fetch->conn->stream)
        return -EPIPE;
    if (!fetch->body_chunked && fetch->body_written + len > (uint64_t)fetch->req.body_producer_length)
        return -EMSGSIZE;
    if (len == 0)
        return 0;
    ioloop_stream_t *stream = fetch->conn->stream;
    if (!ioloop_stream_writable(stream)) {
        body_watch(fetch); /* the producer is asked again once the output drained */
        return -ENOBUFS;
    }
    int rc;
    if (fetch->body_chunked) {
        char size[24];
        int n = snprintf(size, sizeof(size), "%zx\r\n", len);
        struct iovec iov[3] = {{size, (size_t)n}, {(void *)data, len}, {"\r\n", 2}};
        rc = ioloop_stream_writev(stream, iov, 3, NULL, NULL);
    } else {
        rc = ioloop_stream_write(stream, data, len, NULL, NULL);
    }
    if (rc != 0)
        return rc;
    fetch->body_written += len;
    body_watch(fetch);
    return 0;
}

int ioloop_http_fetch_body_end(ioloop_http_fetch_t *fetch)
{
    if (!fetch)
        return -EINVAL;
    if (fetch->state != FETCH_SENDING || !fetch->req.body_producer || fetch->body_ended || !fetch->conn ||
        !fetch->conn->stream)
        return -EPIPE;
    if (!fetch->body_chunked && fetch->body_written != (uint64_t)fetch->req.body_producer_length)
        return -EMSGSIZE;
    if (fetch->body_chunked) {
        int rc = ioloop_stream_write(fetch->conn->stream, "0\r\n\r\n", 5, NULL, NULL);
        if (rc != 0)
            return rc;
    }
    fetch->body_ended = true;
    return 0;
}

static void conn_data(ioloop_stream_t *stream, int status, void *arg);

void ioloop__client_send(ioloop_http_fetch_t *fetch, client_conn_t *conn)
{
    assert(conn->state == CONN_BUSY && conn->stream);
    fetch->conn = conn;
    conn->fetch = fetch;
    fetch->state = FETCH_SENDING;
    fetch->following = false;
    fetch->body_ended = !fetch->has_body;
    fetch->body_written = 0;
    fetch->watch_pending = false;
    fetch->paused = false;
    if (fetch->reused && fetch->resp.timing.connect < 0)
        fetch->resp.timing.connect = 0;
    fetch->resp.timing.reused = fetch->reused;
    conn->completed = false;
    conn->got_bytes = false;
    conn->requests++;
    ioloop__http_resp_reset(&conn->parser, is_method(fetch, "HEAD"));
    conn->parser.max_header_size = fetch->req.max_header_size ? fetch->req.max_header_size : 64 * 1024;
    conn->parser.max_headers = fetch->req.max_headers > 0 ? fetch->req.max_headers : 256;
    int rc = format_head(fetch);
    if (rc == 0) {
        ioloop_stream_cork(conn->stream);
        rc = ioloop_stream_write(conn->stream, fetch->out.data, fetch->out.len, NULL, NULL);
        if (rc == 0 && fetch->has_body && !fetch->req.body_producer && fetch->req.body_len)
            rc =
                ioloop_stream_write_borrowed(conn->stream, fetch->req.body, fetch->req.body_len, release_nothing, NULL);
        ioloop_stream_uncork(conn->stream);
    }
    if (rc == 0)
        rc = ioloop_stream_read_start(conn->stream, conn_data, conn);
    if (rc != 0) {
        int why = rc == -EPIPE ? ioloop_stream_error(conn->stream) : 0;
        fail_fmt(fetch, why && why != IOLOOP_EOF ? why : rc, "sending the request failed");
        return;
    }
    if (fetch->req.body_producer)
        body_watch(fetch);
}

void ioloop__client_connect_done(ioloop_http_fetch_t *fetch, client_conn_t *conn, int status)
{
    if (status != 0) {
        fetch->conn = NULL;
        char what[320];
        if (status == -ETIMEDOUT)
            snprintf(what, sizeof(what), "connect timeout after %lld ms to %s:%d",
                     (long long)((fetch->req.connect_timeout ? fetch->req.connect_timeout : DEFAULT_TIMEOUT) / 1000000),
                     conn->host->name, conn->host->port);
        else
            snprintf(what, sizeof(what), "connect to %s:%d failed", conn->host->name, conn->host->port);
        if (status == -ETIMEDOUT)
            fetch_finish(fetch, status, what);
        else
            fail_fmt(fetch, status, what);
        return;
    }
    fetch->resp.timing.connect = since_start(fetch);
    fetch->reused = false;
    ioloop__client_send(fetch, conn);
}

/* ---- receiving --------------------------------------------------------------------- */

/* Whether this response is a redirect the fetch follows. */
static bool follow(ioloop_http_fetch_t *fetch, const ioloop__http_resp_t *rp)
{
    int s = rp->status;
    if (!fetch->req.follow_redirects || !(s == 301 || s == 302 || s == 303 || s == 307 || s == 308))
        return false;
    if (!ioloop__http_resp_header(rp, "location"))
        return false;
    if ((s == 307 || s == 308) && fetch->req.body_producer && fetch->has_body)
        return false; /* a streamed body cannot be sent again */
    return true;      /* over max_redirects: -ELOOP once it completes (response_done) */
}

static int copy_head(ioloop_http_fetch_t *fetch, const ioloop__http_resp_t *rp)
{
    ioloop_http_client_response_t *r = &fetch->resp;
    r->head.len = 0;
    if (ioloop__cbuf_append(&r->head, rp->buf, rp->len) != 0)
        return -ENOMEM;
    if (rp->nheaders > r->headers_cap) {
        ioloop__http_resp_header_t *h = realloc(r->headers, (size_t)rp->nheaders * sizeof(*h));
        if (!h)
            return -ENOMEM;
        r->headers = h;
        r->headers_cap = rp->nheaders;
    }
    if (rp->nheaders)
        memcpy(r->headers, rp->headers, (size_t)rp->nheaders * sizeof(*r->headers));
    r->nheaders = rp->nheaders;
    r->reason_off = rp->reason_off;
    r->status = rp->status;
    return 0;
}

static int on_head(ioloop__http_resp_t *rp, void *arg)
{
    client_conn_t *conn = arg;
    ioloop_http_fetch_t *fetch = conn->fetch;
    if (!fetch)
        return -ECANCELED;
    if (copy_head(fetch, rp) != 0)
        return -ENOMEM;
    fetch->resp.body.len = 0;
    fetch->inflated = 0;
    fetch->following = follow(fetch, rp);
    if (fetch->following)
        return 0;
    if (rp->content_length >= 0 && (uint64_t)rp->content_length > max_body(fetch) && !rp->head_request) {
        snprintf(rp->error_text, sizeof(rp->error_text), "response body of %lld bytes over max_body_size",
                 (long long)rp->content_length);
        return -EMSGSIZE;
    }
    const char *ce = ioloop__http_resp_header(rp, "content-encoding");
    if (fetch->req.decompress && ce && !rp->head_request &&
        (strcasecmp(ce, "gzip") == 0 || strcasecmp(ce, "x-gzip") == 0 || strcasecmp(ce, "deflate") == 0)) {
        if (!fetch->z && !(fetch->z = calloc(1, sizeof(*fetch->z))))
            return -ENOMEM;
        if (fetch->z_active)
            inflateEnd(fetch->z);
        memset(fetch->z, 0, sizeof(*fetch->z));
        if (inflateInit2(fetch->z, 15 + 32) != Z_OK) /* zlib or gzip, detected */
            return -ENOMEM;
        fetch->z_active = true;
    }
    if (fetch->req.header_callback) {
        int rc = fetch->req.header_callback(fetch, &fetch->resp, fetch->req.callback_arg);
        if (conn->fetch != fetch || fetch->state == FETCH_DONE)
            return -ECANCELED;
        if (rc < 0)
            return rc;
    }
    return 0;
}

/* Hands decompressed (or plain) body bytes to the buffer or the streaming callback. */
static int deliver(ioloop_http_fetch_t *fetch, client_conn_t *conn, const char *data, size_t len)
{
    if (fetch->req.streaming_callback) {
        int rc = fetch->req.streaming_callback(fetch, data, len, fetch->req.callback_arg);
        if (conn->fetch != fetch || fetch->state == FETCH_DONE)
            return -ECANCELED;
        if (rc == IOLOOP_HTTP_PAUSE)
            fetch->paused = true;
        else if (rc < 0)
            return rc;
        return 0;
    }
    return ioloop__cbuf_append(&fetch->resp.body, data, len) == 0 ? 0 : -ENOMEM;
}

static int on_body(ioloop__http_resp_t *rp, const char *data, size_t len, void *arg)
{
    client_conn_t *conn = arg;
    ioloop_http_fetch_t *fetch = conn->fetch;
    if (!fetch)
        return -ECANCELED;
    if (fetch->following)
        return 0;
    if (rp->body_bytes > max_body(fetch)) {
        snprintf(rp->error_text, sizeof(rp->error_text), "response body over max_body_size (%zu bytes)",
                 max_body(fetch));
        return -EMSGSIZE;
    }
    if (!fetch->z_active) {
        int rc = deliver(fetch, conn, data, len);
        if (rc < 0)
            return rc;
        return fetch->paused ? IOLOOP_HTTP_PAUSE : 0;
    }
    z_stream *z = fetch->z;
    z->next_in = (Bytef *)data;
    z->avail_in = (uInt)len;
    char out[INFLATE_CHUNK];
    while (z->avail_in) {
        z->next_out = (Bytef *)out;
        z->avail_out = sizeof(out);
        int zr = inflate(z, Z_NO_FLUSH);
        if (zr != Z_OK && zr != Z_STREAM_END && zr != Z_BUF_ERROR) {
            snprintf(rp->error_text, sizeof(rp->error_text), "response body does not decompress: %s",
                     z->msg ? z->msg : "bad data");
            return -EBADMSG;
        }
        size_t n = sizeof(out) - z->avail_out;
        fetch->inflated += n;
        if (fetch->inflated > max_body(fetch)) {
            snprintf(rp->error_text, sizeof(rp->error_text), "decompressed body over max_body_size (%zu bytes)",
                     max_body(fetch));
            return -EMSGSIZE;
        }
        if (n) {
            int rc = deliver(fetch, conn, out, n);
            if (rc < 0)
                return rc;
        }
        if (zr == Z_STREAM_END) {
            if (z->avail_in) {
                snprintf(rp->error_text, sizeof(rp->error_text), "response body: bytes after the compressed data");
                return -EBADMSG;
            }
            break;
        }
        if (zr == Z_BUF_ERROR && n == 0)
            break;
    }
    return fetch->paused ? IOLOOP_HTTP_PAUSE : 0;
}

static void on_complete(ioloop__http_resp_t *rp, void *arg)
{
    (void)rp;
    client_conn_t *conn = arg;
    conn->completed = true;
}

const ioloop__http_resp_callbacks_t ioloop__client_parse_callbacks = {
    .on_head = on_head,
    .on_body = on_body,
    .on_complete = on_complete,
};

/* The response is complete: redirect, or the fetch's result. */
static void response_done(ioloop_http_fetch_t *fetch, client_conn_t *conn, bool reusable)
{
    ioloop__http_resp_t *rp = &conn->parser;
    fetch->conn = NULL;
    conn->fetch = NULL;
    if (fetch->z_active && !fetch->following) {
        bool ended = fetch->z->total_in > 0 && inflate(fetch->z, Z_FINISH) == Z_STREAM_END;
        inflateEnd(fetch->z);
        fetch->z_active = false;
        if (!ended && rp->body_bytes > 0) {
            ioloop__client_conn_release(conn, false);
            fetch_finish(fetch, -EBADMSG, "response body does not decompress: truncated compressed data");
            return;
        }
    }
    bool following = fetch->following;
    const char *location = following ? ioloop__http_resp_header(rp, "location") : NULL;
    int status = rp->status;
    if (following) {
        int max = fetch->req.max_redirects > 0 ? fetch->req.max_redirects : DEFAULT_MAX_REDIRECTS;
        if (fetch->resp.redirects >= max) {
            ioloop__client_conn_release(conn, reusable);
            char text[64];
            snprintf(text, sizeof(text), "too many redirects (max_redirects %d)", max);
            fetch_finish(fetch, -ELOOP, text);
            return;
        }
        client_url_t next = {0};
        int rc = ioloop__client_url_resolve(&next, &fetch->url, location);
        ioloop__client_conn_release(conn, reusable); /* location points into conn's parser */
        if (rc != 0) {
            free(next.text.data);
            fetch_finish(fetch, rc,
                         rc == -EPROTONOSUPPORT ? "redirect to an unsupported scheme"
                                                : "redirect to a malformed Location");
            return;
        }
        bool same_origin =
            next.tls == fetch->url.tls && next.port == fetch->url.port && strcasecmp(next.host, fetch->url.host) == 0;
        if (!same_origin)
            fetch->strip_auth = true;
        free(fetch->url.text.data);
        fetch->url = next;
        fetch->resp.redirects++;
        if (status == 301 || status == 302 || status == 303) {
            if (!is_method(fetch, "HEAD"))
                fetch->method = "GET";
            fetch->has_body = false;
            fetch->body_dropped = true;
        }
        fetch->retried = false;
        fetch->fresh_only = false;
        fetch->resp.timing.first_byte = -1;
        fetch_attempt(fetch);
        return;
    }
    ioloop__client_conn_release(conn, reusable);
    fetch_finish(fetch, 0, NULL);
}

/* The response could not complete on conn (err; the parser's text if it has one). */
static void response_failed(ioloop_http_fetch_t *fetch, client_conn_t *conn, int err)
{
    ioloop__http_resp_t *rp = &conn->parser;
    bool nothing = !conn->got_bytes;
    if (nothing && fetch->reused && !fetch->retried && idempotent(fetch) && !fetch->req.body_producer &&
        (err == -ECONNRESET || err == IOLOOP_EOF || err == -EPIPE)) {
        /* lost the race with the server's close of an idle connection: once more, on a new one */
        fetch->conn = NULL;
        conn->fetch = NULL;
        ioloop__client_conn_close(conn);
        fetch->retried = true;
        fetch->fresh_only = true;
        fetch->pool->stats.retries++;
        fetch_attempt(fetch);
        return;
    }
    if (rp->error_text[0])
        fetch_finish(fetch, err, rp->error_text);
    else if (err == -ECONNRESET || err == IOLOOP_EOF || err == -EPIPE)
        fetch_finish(fetch, -ECONNRESET,
                     nothing ? "connection closed before the response" : "connection closed mid-response");
    else
        fail_fmt(fetch, err, "connection failed");
}

/* Parses what the stream holds; returns false once the fetch left conn. */
static bool conn_parse(client_conn_t *conn, ioloop_http_fetch_t *fetch)
{
    for (;;) {
        size_t len = 0;
        const char *data = ioloop_stream_peek(conn->stream, &len);
        if (len == 0 || fetch->paused)
            return true;
        if (!conn->got_bytes) {
            conn->got_bytes = true;
            if (fetch->resp.timing.first_byte < 0)
                fetch->resp.timing.first_byte = since_start(fetch);
        }
        ssize_t used = ioloop__http_resp_feed(&conn->parser, data, len);
        if (conn->fetch != fetch)
            return false; /* a callback cancelled it */
        if (used < 0) {
            response_failed(fetch, conn, (int)used);
            return false;
        }
        ioloop_stream_consume(conn->stream, (size_t)used);
        if (conn->completed) {
            size_t left = 0;
            ioloop_stream_peek(conn->stream, &left);
            ioloop_stream_read_stop(conn->stream);
            /* bytes beyond the response, or a body still being sent: not reusable */
            response_done(fetch, conn, ioloop__http_resp_reusable(&conn->parser) && left == 0 && fetch->body_ended);
            return false;
        }
        if (conn->parser.paused) {
            ioloop_stream_pause(conn->stream);
            return true;
        }
        if ((size_t)used < len)
            continue;
        return true;
    }
}

static void conn_end(client_conn_t *conn, ioloop_http_fetch_t *fetch, int err)
{
    int rc = ioloop__http_resp_eof(&conn->parser);
    if (conn->fetch != fetch)
        return;
    if (rc == 0 && conn->completed) {
        response_done(fetch, conn, false); /* close-delimited */
        return;
    }
    /* a TLS or timeout error says more than the parser's "closed" */
    if (err != IOLOOP_EOF && err != -ECONNRESET && err != -EPIPE && err != -ECANCELED)
        conn->parser.error_text[0] = '\0';
    else
        err = rc;
    response_failed(fetch, conn, err);
}

static void conn_data(ioloop_stream_t *stream, int status, void *arg)
{
    (void)stream;
    client_conn_t *conn = arg;
    ioloop_http_fetch_t *fetch = conn->fetch;
    if (!fetch || conn->state != CONN_BUSY)
        return;
    if (!conn_parse(conn, fetch))
        return;
    if (status != 0)
        conn_end(conn, fetch, status);
}

void ioloop__client_conn_ended(client_conn_t *conn, int err)
{
    ioloop_http_fetch_t *fetch = conn->fetch;
    if (!fetch)
        return;
    conn_end(conn, fetch, err);
}

int ioloop_http_fetch_resume(ioloop_http_fetch_t *fetch)
{
    if (!fetch || !fetch->paused || fetch->state != FETCH_SENDING || !fetch->conn)
        return -EINVAL;
    client_conn_t *conn = fetch->conn;
    fetch->paused = false;
    ioloop__http_resp_resume(&conn->parser);
    size_t buffered = 0;
    ioloop_stream_peek(conn->stream, &buffered);
    if (buffered == 0) {
        /* paused on the body's last byte: the end of the message needs no more input */
        ssize_t n = ioloop__http_resp_feed(&conn->parser, "", 0);
        if (n < 0) {
            response_failed(fetch, conn, (int)n);
            return 0;
        }
        if (conn->completed) {
            ioloop_stream_read_stop(conn->stream);
            response_done(fetch, conn, ioloop__http_resp_reusable(&conn->parser) && fetch->body_ended);
            return 0;
        }
    }
    ioloop_stream_resume(conn->stream); /* runs the consumer again with what is buffered */
    return 0;
}

void ioloop_http_fetch_cancel(ioloop_http_fetch_t *fetch)
{
    if (fetch && fetch->state != FETCH_DONE)
        fetch_finish(fetch, -ECANCELED, "cancelled");
}

/* ---- starting -------------------------------------------------------------------- */

/* Takes a connection for the fetch's current URL (first try, redirect, retry). */
static void fetch_attempt(ioloop_http_fetch_t *fetch)
{
    client_pool_t *pool = fetch->pool;
    void *tls = NULL;
    if (fetch->url.tls) {
        int err = 0;
        tls = ioloop__client_tls_context(pool, &fetch->req, &err);
        if (!tls) {
            fail_fmt(fetch, err, "no TLS context");
            return;
        }
    }
    client_host_t *host = ioloop__client_host(pool, &fetch->url, tls);
    if (!host) {
        fetch_finish(fetch, -ENOMEM, NULL);
        return;
    }
    fetch->state = FETCH_IDLE;
    ioloop__client_dispatch(fetch, host);
}

/* Copies the request's strings into the fetch. */
static int copy_request(ioloop_http_fetch_t *fetch, const ioloop_http_client_request_t *req)
{
    fetch->req = *req;
    size_t need = (req->method ? strlen(req->method) : 0) + 1 + (req->ca_file ? strlen(req->ca_file) + 1 : 0);
    for (int i = 0; i < req->nheaders; i++) {
        if (!req->headers[i].name || !req->headers[i].value)
            return -EINVAL;
        need += strlen(req->headers[i].name) + strlen(req->headers[i].value) + 2;
    }
    fetch->strings.len = 0;
    if (ioloop__cbuf_reserve(&fetch->strings, need + 1) != 0)
        return -ENOMEM;
    if (req->nheaders > fetch->headers_cap) {
        ioloop_http_client_header_t *h = realloc(fetch->headers, (size_t)req->nheaders * sizeof(*h));
        if (!h)
            return -ENOMEM;
        fetch->headers = h;
        fetch->headers_cap = req->nheaders;
    }
    char *p = fetch->strings.data;
    const char *method = req->method ? req->method : (req->body || req->body_producer) ? "POST" : "GET";
    size_t n = strlen(method);
    memcpy(p, method, n + 1);
    fetch->method = p;
    p += n + 1;
    for (int i = 0; i < req->nheaders; i++) {
        const char *name = req->headers[i].name, *value = req->headers[i].value;
        size_t nl = strlen(name), vl = strlen(value);
        if (nl == 0 || strcspn(name, ": \t\r\n") != nl || strcspn(value, "\r\n") != vl)
            return -EINVAL; /* a header that would split the head */
        memcpy(p, name, nl + 1);
        fetch->headers[i].name = p;
        p += nl + 1;
        memcpy(p, value, vl + 1);
        fetch->headers[i].value = p;
        p += vl + 1;
    }
    fetch->req.headers = fetch->headers;
    fetch->req.method = fetch->method;
    if (req->ca_file) {
        n = strlen(req->ca_file);
        memcpy(p, req->ca_file, n + 1);
        fetch->req.ca_file = p;
    }
    fetch->req.url = NULL;
    if (strcspn(fetch->method, " \t\r\n") != strlen(fetch->method) || !fetch->method[0])
        return -EINVAL;
    return 0;
}

int ioloop_http_fetch(ioloop_t *loop, const ioloop_http_client_request_t *req, ioloop_http_fetch_fn cb, void *arg,
                      ioloop_http_fetch_t **out)
{
    if (out)
        *out = NULL;
    if (!loop || !req || !req->url || !cb || req->nheaders < 0 || (req->nheaders && !req->headers) ||
        (req->body && req->body_producer) || (!req->body && req->body_len) || req->max_redirects < 0 ||
        req->connect_timeout < 0 || req->request_timeout < 0 || req->queue_timeout < 0)
        return -EINVAL;
    int rc;
    client_pool_t *pool = ioloop__client_pool(loop, &rc);
    if (!pool)
        return rc;
    if (pool->closing)
        return -ESHUTDOWN;
    ioloop_http_fetch_t *fetch = ioloop__client_fetch_alloc(pool);
    if (!fetch)
        return -ENOMEM;
    rc = ioloop__client_url_parse(&fetch->url, req->url);
    if (rc == 0)
        rc = copy_request(fetch, req);
#ifndef IOLOOP_HTTP_HAVE_TLS
    if (rc == 0 && fetch->url.tls)
        rc = -EPROTONOSUPPORT;
#endif
    if (rc != 0) {
        fetch->state = FETCH_DONE;
        ioloop__client_fetch_recycle(fetch);
        return rc;
    }
    fetch->cb = cb;
    fetch->arg = arg;
    fetch->has_body = req->body != NULL || req->body_producer != NULL;
    fetch->body_chunked = req->body_producer && req->body_producer_length <= 0;
    fetch->start = ioloop_time(loop);
    fetch->resp.timing = (ioloop_http_client_timing_t){.queue = -1, .connect = -1, .first_byte = -1, .total = -1};
    ioloop_time_t t = req->request_timeout ? req->request_timeout : DEFAULT_TIMEOUT;
    rc = ioloop_call_later(loop, t, request_timeout, fetch, &fetch->request_timer);
    if (rc != 0) {
        fetch->state = FETCH_DONE;
        ioloop__client_fetch_recycle(fetch);
        return rc;
    }
    if (out)
        *out = fetch;
    fetch_attempt(fetch);
    return 0;
}

/* ---- the response's accessors ------------------------------------------------------ */

int ioloop_http_client_response_error(const ioloop_http_client_response_t *resp)
{
    return resp ? resp->error : -EINVAL;
}

const char *ioloop_http_client_response_error_text(const ioloop_http_client_response_t *resp)
{
    return resp && resp->error ? resp->error_text : "";
}

int ioloop_http_client_response_status(const ioloop_http_client_response_t *resp)
{
    return resp ? resp->status : 0;
}

const char *ioloop_http_client_response_reason(const ioloop_http_client_response_t *resp)
{
    return resp && resp->status && resp->head.data ? resp->head.data + resp->reason_off : "";
}

const char *ioloop_http_client_response_header(const ioloop_http_client_response_t *resp, const char *name)
{
    if (!resp || !name || !resp->status)
        return NULL;
    for (int i = 0; i < resp->nheaders; i++)
        if (strcasecmp(resp->head.data + resp->headers[i].name_off, name) == 0)
            return resp->head.data + resp->headers[i].value_off;
    return NULL;
}

int ioloop_http_client_response_header_count(const ioloop_http_client_response_t *resp)
{
    return resp && resp->status ? resp->nheaders : 0;
}

int ioloop_http_client_response_header_at(const ioloop_http_client_response_t *resp, int i, const char **name,
                                          const char **value)
{
    if (!resp || !resp->status || i < 0 || i >= resp->nheaders)
        return -ENOENT;
    if (name)
        *name = resp->head.data + resp->headers[i].name_off;
    if (value)
        *value = resp->head.data + resp->headers[i].value_off;
    return 0;
}

const char *ioloop_http_client_response_body(const ioloop_http_client_response_t *resp, size_t *len)
{
    if (len)
        *len = resp && resp->body.data ? resp->body.len : 0;
    return resp && resp->body.data ? resp->body.data : "";
}

const char *ioloop_http_client_response_effective_url(const ioloop_http_client_response_t *resp)
{
    if (!resp)
        return "";
    const ioloop_http_fetch_t *fetch =
        (const ioloop_http_fetch_t *)((const char *)resp - offsetof(ioloop_http_fetch_t, resp));
    return fetch->effective_url.data ? fetch->effective_url.data : "";
}

int ioloop_http_client_response_redirects(const ioloop_http_client_response_t *resp)
{
    return resp ? resp->redirects : 0;
}

void ioloop_http_client_response_timing(const ioloop_http_client_response_t *resp, ioloop_http_client_timing_t *out)
{
    if (resp && out)
        *out = resp->timing;
}
