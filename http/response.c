/* response.c — the response writer: status, headers, buffered writes, flush
 * with a completion for back-pressure, finish. Content-Length when the whole
 * body is known at finish, chunked once something was flushed before (HTTP/1.0
 * clients get a close-delimited body instead), no body for HEAD, 204, 304.
 * A handler's own Content-Length is counted against what it writes: a body
 * that disagrees closes the connection after it, so framing never desyncs.
 *
 * Threading rule: the loop thread that owns the request.
 *
 * With the gzip option, gzip.c decides before the head and compresses rbody
 * in place before it is framed (ioloop__http_gzip_head / _body).
 *
 * Bytes go into the connection's out buffer (a pooled block) and are sent at
 * once; what the kernel does not take waits for the socket to be writable.
 */
#define _GNU_SOURCE
#include "internal.h"

#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

const char *ioloop__http_reason(int status)
{
    switch (status) {
    case 100:
        return "Continue";
    case 101:
        return "Switching Protocols";
    case 200:
        return "OK";
    case 201:
        return "Created";
    case 202:
        return "Accepted";
    case 204:
        return "No Content";
    case 206:
        return "Partial Content";
    case 301:
        return "Moved Permanently";
    case 302:
        return "Found";
    case 303:
        return "See Other";
    case 304:
        return "Not Modified";
    case 307:
        return "Temporary Redirect";
    case 308:
        return "Permanent Redirect";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 408:
        return "Request Timeout";
    case 409:
        return "Conflict";
    case 411:
        return "Length Required";
    case 413:
        return "Content Too Large";
    case 414:
        return "URI Too Long";
    case 415:
        return "Unsupported Media Type";
    case 417:
        return "Expectation Failed";
    case 429:
        return "Too Many Requests";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 501:
        return "Not Implemented";
    case 502:
        return "Bad Gateway";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    case 505:
        return "HTTP Version Not Supported";
    default:
        return "Unknown";
    }
}

/* Appends without checking room: callers reserve first. */
static void put(hbuf_t *b, const char *s, size_t n)
{
    memcpy(b->data + b->len, s, n);
    b->len += n;
}
#define PUTS(b, lit) put((b), (lit), sizeof(lit) - 1)

static void put_str(hbuf_t *b, const char *s)
{
    put(b, s, strlen(s));
}

static void put_uint(hbuf_t *b, size_t v, int base)
{
    char tmp[24];
    int i = sizeof(tmp);
    do {
        tmp[--i] = "0123456789abcdef"[v % (size_t)base];
        v /= (size_t)base;
    } while (v);
    put(b, tmp + i, sizeof(tmp) - (size_t)i);
}

static bool status_has_body(int status)
{
    return status >= 200 && status != 204 && status != 304;
}

/* Status line and headers into c->out. known_length: the whole body is
 * body_len bytes; else the body streams (chunked, or close-delimited for an
 * HTTP/1.0 client). */
static int write_head(ioloop_http_request_t *req, http_conn_t *c, bool known_length, size_t body_len)
{
    bool body = status_has_body(req->status);
    bool keep = req->keep_alive && !c->w->draining && !c->close_after;
    if (!known_length && !req->user_length && body) {
        if (req->minor == 1)
            req->chunked = true;
        else
            req->close_delimited = true, keep = false;
    }
    req->keep_alive = keep;
    size_t extra = (known_length && body && !req->head && !req->file_body) ? body_len : 0;
    if (ioloop__hbuf_reserve(c->w, &c->out, 256 + req->rhdr.len + extra) != 0)
        return -ENOMEM;
    hbuf_t *o = &c->out;
    size_t before = o->len;
    PUTS(o, "HTTP/1.1 ");
    put_uint(o, (size_t)req->status, 10);
    PUTS(o, " ");
    put_str(o, ioloop__http_reason(req->status));
    PUTS(o, "\r\nDate: ");
    put_str(o, ioloop__http_date(c->w));
    PUTS(o, "\r\n");
    if (!req->user_ctype && body)
        PUTS(o, "Content-Type: text/html; charset=UTF-8\r\n");
    if (body && !req->user_length) {
        if (known_length) {
            PUTS(o, "Content-Length: ");
            put_uint(o, body_len, 10);
            PUTS(o, "\r\n");
        } else if (req->chunked) {
            PUTS(o, "Transfer-Encoding: chunked\r\n");
        }
    }
    if (!keep)
        PUTS(o, "Connection: close\r\n");
    else if (req->minor == 0)
        PUTS(o, "Connection: keep-alive\r\n");
    if (req->rhdr.len)
        put(o, req->rhdr.data, req->rhdr.len);
    PUTS(o, "\r\n");
    req->wire_bytes += o->len - before;
    req->headers_sent = true;
    return 0;
}

/* Moves what was written (req->rbody) into c->out, framed as needed. */
static int emit_body(ioloop_http_request_t *req, http_conn_t *c)
{
    size_t n = req->rbody.len;
    req->rbody.len = 0;
    if (n == 0 || req->head || !status_has_body(req->status))
        return 0;
    req->body_sent += n;
    if (ioloop__hbuf_reserve(c->w, &c->out, n + 32) != 0)
        return -ENOMEM;
    size_t before = c->out.len;
    if (req->chunked) {
        put_uint(&c->out, n, 16);
        PUTS(&c->out, "\r\n");
    }
    put(&c->out, req->rbody.data, n);
    if (req->chunked)
        PUTS(&c->out, "\r\n");
    req->wire_bytes += c->out.len - before;
    return 0;
}

int ioloop_http_response_status(ioloop_http_request_t *req, int status)
{
    if (req->headers_sent || req->finished)
        return -EALREADY;
    if (status < 200 || status > 599)
        return -EINVAL; /* a 1xx is interim, never the final response */
    req->status = status;
    return 0;
}

/* field-value (RFC 9110 5.5): no CTL but HTAB, no DEL; obs-text passes. */
static bool valid_value(const char *s)
{
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if ((ch < 0x20 && ch != '\t') || ch == 0x7f)
            return false;
    }
    return true;
}

/* Content-Length = 1*DIGIT, at most 2^63 - 1. */
static bool parse_length(const char *s, uint64_t *out)
{
    uint64_t v = 0;
    if (!*s)
        return false;
    for (; *s; s++) {
        if (*s < '0' || *s > '9' || v > (UINT64_MAX / 2 - 9) / 10)
            return false;
        v = v * 10 + (uint64_t)(*s - '0');
    }
    *out = v;
    return true;
}

/* Would the body still fit the handler's Content-Length after len more
 * bytes? (HEAD and bodiless statuses send none, so nothing is counted.) */
static bool length_allows(const ioloop_http_request_t *req, size_t len)
{
    if (!req->user_length || req->head || !status_has_body(req->status))
        return true;
    uint64_t have = req->body_sent + req->rbody.len;
    return have <= req->user_length_n && len <= req->user_length_n - have;
}

static bool valid_token(const char *s)
{
    if (!*s)
        return false;
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch <= 0x20 || ch >= 0x7f || strchr("\"(),/:;<=>?@[\\]{}", ch))
            return false;
    }
    return true;
}

int ioloop_http_response_header(ioloop_http_request_t *req, const char *name, const char *value)
{
    if (req->headers_sent || req->finished)
        return -EALREADY;
    if (!valid_token(name) || !valid_value(value))
        return -EINVAL;
    if (!strcasecmp(name, "Connection") && !strcasecmp(value, "close")) {
        req->keep_alive = false; /* the server writes the header itself */
        return 0;
    }
    if (!strcasecmp(name, "Date") || !strcasecmp(name, "Connection") || !strcasecmp(name, "Transfer-Encoding"))
        return -EINVAL;
    if (!strcasecmp(name, "Content-Length")) {
        /* The server frames what it sends: one length, digits only, and the
         * body is counted against it (see check_length). */
        if (req->user_length || !parse_length(value, &req->user_length_n))
            return -EINVAL;
        req->user_length = true;
    }
    if (!strcasecmp(name, "Content-Type"))
        req->user_ctype = true;
    size_t nl = strlen(name), vl = strlen(value);
    int err = ioloop__hbuf_reserve(req->w, &req->rhdr, nl + vl + 4);
    if (err)
        return err;
    put(&req->rhdr, name, nl);
    PUTS(&req->rhdr, ": ");
    put(&req->rhdr, value, vl);
    PUTS(&req->rhdr, "\r\n");
    return 0;
}

int ioloop_http_response_write(ioloop_http_request_t *req, const void *data, size_t len)
{
    if (req->finished)
        return -EALREADY;
    if (!req->c)
        return -EPIPE;
    if (!length_allows(req, len)) {
        /* Past the handler's Content-Length: the extra bytes would be read
         * as the next response. Refused, and the connection closes after
         * this response. */
        req->length_error = true;
        req->keep_alive = false;
        return -EMSGSIZE;
    }
    return ioloop__hbuf_append(req->w, &req->rbody, data, len);
}

/* One completion at a time (a second flush with a callback gets -EBUSY until
 * this one ran), so fn/arg/status on req are this completion's own. */
static void flush_done(ioloop_t *loop, void *arg)
{
    (void)loop;
    ioloop_http_request_t *req = arg;
    assert(req->refs == 1);
    req->refs--;
    if (req->finished) {
        ioloop__http_request_put(req); /* finish came first: its put waited for us */
        return;
    }
    ioloop_http_flush_fn fn = req->flush_fn;
    void *fn_arg = req->flush_arg;
    req->flush_fn = NULL;
    req->flush_arg = NULL;
    if (fn)
        fn(req, req->flush_status, fn_arg);
}

static void flush_complete(ioloop_http_request_t *req, int status)
{
    if (!req->flush_waiting)
        return;
    req->flush_waiting = false;
    req->flush_status = status;
    req->refs++;
    /* Queued even while the server is being freed: the loop runs it when it
     * closes, and req (with its worker) stays valid until then. */
    if (ioloop_add_callback(req->w->loop, flush_done, req) != 0) {
        req->refs--;
        ioloop_http_flush_fn fn = req->flush_fn;
        req->flush_fn = NULL;
        if (fn)
            fn(req, status, req->flush_arg);
    }
}

void ioloop__http_response_drained(ioloop_http_request_t *req)
{
    flush_complete(req, 0);
}

void ioloop__http_response_abort(ioloop_http_request_t *req)
{
    flush_complete(req, -EPIPE);
}

int ioloop_http_response_flush(ioloop_http_request_t *req, ioloop_http_flush_fn done, void *arg)
{
    if (req->finished)
        return -EALREADY;
    http_conn_t *c = req->c;
    if (!c)
        return -EPIPE;
    if (done && (req->flush_waiting || req->refs > 0))
        return -EBUSY; /* the previous flush's done has not run yet */
    ioloop__http_conn_enter(c);
    int err = req->headers_sent ? 0 : ioloop__http_gzip_head(req, false);
    if (!err && !req->headers_sent)
        err = write_head(req, c, false, 0);
    if (!err)
        err = ioloop__http_gzip_body(req, false);
    if (!err)
        err = emit_body(req, c);
    if (!err && done) {
        req->flush_fn = done;
        req->flush_arg = arg;
        req->flush_waiting = true;
    }
    if (!err)
        ioloop__http_conn_send(c);
    ioloop__http_conn_leave(c);
    return err;
}

int ioloop_http_response_finish(ioloop_http_request_t *req)
{
    if (req->finished)
        return -EALREADY;
    req->finished = true;
    http_conn_t *c = req->c;
    if (!c) {
        if (req->orphaned) {
            http_worker_t *w = req->w;
            if (req->orphan_prev)
                req->orphan_prev->orphan_next = req->orphan_next;
            else
                w->orphans = req->orphan_next;
            if (req->orphan_next)
                req->orphan_next->orphan_prev = req->orphan_prev;
            req->orphaned = false;
        }
        ioloop__http_metrics_finished(req);
        ioloop__http_log_request(req, false);
        ioloop__http_request_put(req);
        return 0;
    }
    ioloop__http_conn_enter(c);
    int err = 0;
    /* A body shorter than the handler's Content-Length leaves the client
     * waiting for bytes that would come from the next response. */
    if (req->user_length && !req->head && status_has_body(req->status) &&
        req->body_sent + req->rbody.len != req->user_length_n) {
        req->length_error = true;
        req->keep_alive = false;
    }
    /* Answered before the request body was in: the rest of it is never read,
     * so the connection closes after this response; say so in its head. */
    if (!req->complete)
        req->keep_alive = false;
    if (!req->headers_sent) {
        err = ioloop__http_gzip_head(req, true); /* compressed before the head: its length goes there */
        if (!err)
            err = ioloop__http_gzip_body(req, true);
        if (!err)
            err = write_head(req, c, true, req->rbody.len);
        if (!err)
            err = emit_body(req, c);
    } else {
        err = ioloop__http_gzip_body(req, true);
        if (!err)
            err = emit_body(req, c);
        if (!err && req->chunked && !req->head) {
            if (ioloop__hbuf_reserve(c->w, &c->out, 5) == 0) {
                PUTS(&c->out, "0\r\n\r\n");
                req->wire_bytes += 5;
            } else
                err = -ENOMEM;
        }
    }
    if (!err && req->length_error)
        err = -EPROTO;
    if (err || !req->keep_alive || !req->complete || req->close_delimited)
        c->close_after = true;
    if (!req->complete)
        c->fail_status = -1; /* answered before the body was in: parse no more */
    ioloop__http_metrics_finished(req);
    ioloop__http_log_request(req, true);
    c->req = NULL;
    req->c = NULL;
    req->flush_waiting = false;
    ioloop__http_request_put(req);
    ioloop__http_conn_response_done(c);
    ioloop__http_conn_leave(c);
    return err;
}

int ioloop__http_response_finish_file(ioloop_http_request_t *req, int fd, off_t offset, size_t len)
{
    if (req->finished) {
        close(fd);
        return -EALREADY;
    }
    http_conn_t *c = req->c;
    if (!c || req->headers_sent || req->rbody.len || req->user_length) {
        close(fd); /* gone, or misuse: the body would not be this file alone */
        int err = ioloop_http_response_finish(req);
        return c ? -EINVAL : err;
    }
    bool send_file = len && !req->head && status_has_body(req->status);
    ioloop__http_conn_enter(c);
    req->file_body = true;
    int err = write_head(req, c, true, len); /* HEAD gets the length, 304 none */
    if (!err && send_file) {
        assert(!c->file_pending);
        c->file_pending = true;
        c->file_fd = fd;
        c->file_off = offset;
        c->file_len = len;
        req->body_sent = len;
    } else {
        close(fd);
    }
    ioloop__http_conn_leave(c);
    int ferr = ioloop_http_response_finish(req); /* hands c->out, then the file, to the stream */
    return err ? err : ferr;
}

int ioloop_http_response_send(ioloop_http_request_t *req, int status, const char *content_type, const void *body,
                              size_t len)
{
    int err = ioloop_http_response_status(req, status);
    if (!err && content_type)
        err = ioloop_http_response_header(req, "Content-Type", content_type);
    if (!err)
        err = ioloop_http_response_write(req, body, len);
    int ferr = ioloop_http_response_finish(req);
    return err ? err : ferr;
}

int ioloop__http_error_bytes(http_worker_t *w, hbuf_t *out, int status)
{
    char buf[512];
    const char *reason = ioloop__http_reason(status);
    int blen = snprintf(buf, sizeof(buf), "<html><title>%d: %s</title><body>%d: %s</body></html>", status, reason,
                        status, reason);
    char head[256];
    int hlen = snprintf(head, sizeof(head),
                        "HTTP/1.1 %d %s\r\nDate: %s\r\nContent-Type: text/html; charset=UTF-8\r\n"
                        "Content-Length: %d\r\nConnection: close\r\n\r\n",
                        status, reason, ioloop__http_date(w), blen);
    int err = ioloop__hbuf_append(w, out, head, (size_t)hlen);
    return err ? err : ioloop__hbuf_append(w, out, buf, (size_t)blen);
}
