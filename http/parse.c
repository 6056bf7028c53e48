/* parse.c — the parse loop and the llhttp callbacks of a connection: the
 * request head is checked as it arrives, copied into the request at headers
 * complete, and the body is collected or streamed to the route's on_body.
 *
 * Threading rule: the connection's loop thread (called from conn_update).
 *
 * Input stays in the stream's buffer: llhttp reads it through
 * ioloop_stream_peek. Spans are recorded as offsets from the start of the
 * unconsumed input, which is the start of the current request: a head in
 * progress is never consumed, so the offsets survive the buffer moving
 * between two reads. At headers complete the head is copied into the request
 * (one memcpy of the head, into a pooled block), so the request's strings
 * never point into the stream; from then on every byte parsed is consumed.
 * on_message_complete pauses llhttp: one request is parsed at a time, and the
 * next one waits (unparsed, in the stream) until its predecessor's response
 * is finished, so responses leave in request order.
 */
#define _GNU_SOURCE
#include "internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static void dispatch(http_conn_t *c, ioloop_http_request_t *req)
{
    c->state = CONN_HANDLER;
    req->dispatched = true;
    req->user_owned = true;
    HTTP_STAT_INC(c->w, st_requests);
    if (req->fail_status) {
        int st = req->fail_status;
        if (st == 405) {
            char allow[64] = "";
            const ioloop_http_route_t *r = &req->route->route;
            const struct {
                ioloop_http_handler_fn fn;
                const char *name;
            } m[] = {{r->get, "GET"},        {r->get ? r->get : r->head, "HEAD"},
                     {r->post, "POST"},      {r->put, "PUT"},
                     {r->delete_, "DELETE"}, {r->patch, "PATCH"},
                     {r->options, "OPTIONS"}};
            for (size_t i = 0; i < sizeof(m) / sizeof(m[0]); i++) {
                if (!m[i].fn)
                    continue;
                if (allow[0])
                    strcat(allow, ", ");
                strcat(allow, m[i].name);
            }
            ioloop_http_response_header(req, "Allow", allow);
        }
        char body[96];
        int n = snprintf(body, sizeof(body), "<html><title>%d: %s</title><body>%d: %s</body></html>", st,
                         ioloop__http_reason(st), st, ioloop__http_reason(st));
        ioloop_http_response_send(req, st, NULL, body, (size_t)n);
        return;
    }
    req->handler(req, req->route->route.arg);
}

/* Feeds what the stream holds to llhttp while the state allows it. */
void ioloop__http_conn_parse(http_conn_t *c)
{
    const ioloop_http_server_options_t *o = &c->w->server->opts;
    while ((c->state == CONN_HEAD || c->state == CONN_BODY) && c->fail_status == 0 && !c->close_after &&
           ioloop_stream_writable(c->stream)) {
        size_t len = 0;
        const char *data = ioloop_stream_peek(c->stream, &len);
        if (len <= c->parsed)
            return;
        c->parse_base = data;
        c->parse_len = len;
        llhttp_errno_t err = llhttp_execute(&c->parser, data + c->parsed, len - c->parsed);
        c->parse_base = NULL;
        if (c->state == CONN_DEAD)
            return;
        size_t fed = err == HPE_OK ? len : (size_t)(llhttp_get_error_pos(&c->parser) - data);
        ioloop_http_request_t *req = c->req;
        if (err == HPE_OK && req && !req->headers_done) {
            c->parsed = fed; /* a head in progress stays where it is */
            if (fed > o->max_header_size)
                c->fail_status = 431;
            continue;
        }
        /* The head was copied, body bytes were delivered: all of it goes. */
        ioloop_stream_consume(c->stream, fed);
        c->parsed = 0;
        if (err == HPE_PAUSED) {
            llhttp_resume(&c->parser);
            if (req && req->complete && c->req == req)
                dispatch(c, req);
        } else if (err != HPE_OK && c->fail_status == 0) {
            c->fail_status = 400;
        }
    }
}

/* ---- llhttp callbacks ---------------------------------------------------- */

static int cb_message_begin(llhttp_t *p)
{
    http_conn_t *c = p->data;
    if (c->state != CONN_HEAD || c->req)
        return -1;
    ioloop_http_request_t *req = ioloop__http_request_get(c->w);
    if (!req) {
        c->fail_status = 503;
        return -1;
    }
    req->c = c;
    if (c->tls)
        req->protocol = "https";
    req->start = ioloop_time(c->w->loop);
    memcpy(&req->peer, &c->peer, sizeof(c->peer));
    req->peer_len = c->peer_len;
    c->req = req;
    return 0;
}

static int cb_url(llhttp_t *p, const char *at, size_t len)
{
    http_conn_t *c = p->data;
    ioloop_http_request_t *req = c->req;
    if (!req->url_len)
        req->url_off = (uint32_t)(at - c->parse_base);
    req->url_len += (uint32_t)len;
    return 0;
}

static int cb_header_field(llhttp_t *p, const char *at, size_t len)
{
    http_conn_t *c = p->data;
    ioloop_http_request_t *req = c->req;
    if (!req || req->headers_done)
        return req ? 0 : -1; /* trailers are read and ignored */
    if (req->nhdrs == 0 || req->in_value) {
        if (req->nhdrs == HTTP_MAX_HEADERS) {
            c->fail_status = 431;
            return -1;
        }
        if (req->nhdrs == req->hdrs_cap) {
            int cap = req->hdrs_cap ? req->hdrs_cap * 2 : 16;
            http_hdr_t *n = realloc(req->hdrs, (size_t)cap * sizeof(*n));
            if (!n) {
                c->fail_status = 503;
                return -1;
            }
            req->hdrs = n;
            req->hdrs_cap = cap;
        }
        http_hdr_t *h = &req->hdrs[req->nhdrs++];
        *h = (http_hdr_t){.name_off = (uint32_t)(at - c->parse_base), .name_len = (uint32_t)len};
        req->in_value = false;
    } else {
        req->hdrs[req->nhdrs - 1].name_len += (uint32_t)len;
    }
    return 0;
}

static int cb_header_field_complete(llhttp_t *p)
{
    http_conn_t *c = p->data;
    ioloop_http_request_t *req = c->req;
    if (!req || req->headers_done)
        return req ? 0 : -1;
    http_hdr_t *h = &req->hdrs[req->nhdrs - 1];
    /* field-name = token (RFC 9110 5.1): llhttp lets a few non-tchars by. */
    static const char tchar_extra[] = "!#$%&'*+-.^_`|~";
    const unsigned char *n = (const unsigned char *)c->parse_base + h->name_off;
    if (h->name_len == 0) {
        c->fail_status = 400;
        return -1;
    }
    for (uint32_t i = 0; i < h->name_len; i++) {
        unsigned char ch = n[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              (ch && strchr(tchar_extra, ch)))) {
            c->fail_status = 400;
            return -1;
        }
    }
    h->val_off = h->name_off + h->name_len; /* an empty value stays empty */
    h->val_len = 0;
    req->in_value = true;
    return 0;
}

static int cb_header_value(llhttp_t *p, const char *at, size_t len)
{
    http_conn_t *c = p->data;
    ioloop_http_request_t *req = c->req;
    if (!req || req->headers_done)
        return req ? 0 : -1;
    if (len == 0)
        return 0; /* an empty value's span may point at the next line: it stays at the ':' */
    http_hdr_t *h = &req->hdrs[req->nhdrs - 1];
    if (!h->val_len)
        h->val_off = (uint32_t)(at - c->parse_base);
    h->val_len += (uint32_t)len;
    return 0;
}

static bool name_is(const char *name, size_t len, const char *want, size_t want_len)
{
    return len == want_len && strncasecmp(name, want, len) == 0;
}

/* A field value: VCHAR, obs-text, SP and HTAB only (RFC 9110 5.5); bare CR,
 * LF, NUL and other controls make the request invalid. */
static int cb_header_value_complete(llhttp_t *p)
{
    http_conn_t *c = p->data;
    ioloop_http_request_t *req = c->req;
    if (!req || req->headers_done)
        return req ? 0 : -1;
    http_hdr_t *h = &req->hdrs[req->nhdrs - 1];
    const unsigned char *v = (const unsigned char *)c->parse_base + h->val_off;
    while (h->val_len && (v[h->val_len - 1] == ' ' || v[h->val_len - 1] == '\t'))
        h->val_len--;
    for (uint32_t i = 0; i < h->val_len; i++) {
        if ((v[i] < 0x20 && v[i] != '\t') || v[i] == 0x7f) {
            c->fail_status = 400;
            return -1;
        }
    }
    const char *name = c->parse_base + h->name_off;
    const char *val = (const char *)v;
    switch (h->name_len) {
    case 4:
        if (name_is(name, 4, "host", 4))
            req->host_count++;
        break;
    case 6:
        if (name_is(name, 6, "expect", 6)) {
            if (h->val_len == 12 && strncasecmp(val, "100-continue", 12) == 0)
                req->expect_continue = true;
            else
                req->expect_other = true;
        }
        break;
    case 17:
        if (name_is(name, 17, "transfer-encoding", 17)) {
            req->te_count++;
            req->te_chunked_only = req->te_count == 1 && h->val_len == 7 && strncasecmp(val, "chunked", 7) == 0;
        }
        break;
    default:
        break;
    }
    return 0;
}

static int cb_headers_complete(llhttp_t *p)
{
    http_conn_t *c = p->data;
    ioloop_http_request_t *req = c->req;
    if (!req || c->state != CONN_HEAD)
        return -1;
    /* The head ends after its last span, plus the byte after it (where a NUL
     * goes) and the request line's " HTTP/1.x" (request.c checks it). */
    size_t end = (size_t)req->url_off + req->url_len + 10;
    if (req->nhdrs) {
        http_hdr_t *h = &req->hdrs[req->nhdrs - 1];
        size_t e = (size_t)h->val_off + h->val_len;
        if ((size_t)h->name_off + h->name_len > e)
            e = (size_t)h->name_off + h->name_len;
        if (e > end)
            end = e;
    }
    end += 1;
    if (end > c->parse_len)
        end = c->parse_len;
    if (end > c->w->server->opts.max_header_size) {
        c->fail_status = 431; /* it arrived in one read, still too large */
        return -1;
    }
    /* The request's own copy of its head: its strings never point into the
     * stream, whose buffer moves as the body is consumed. */
    if (ioloop__hbuf_append(c->w, &req->head_copy, c->parse_base, end) != 0 ||
        ioloop__hbuf_reserve(c->w, &req->head_copy, 1) != 0) {
        c->fail_status = 503;
        return -1;
    }
    req->head_copy.data[end] = '\0';
    req->base = req->head_copy.data;
    req->headers_done = true;
    c->state = CONN_BODY;
    int st = ioloop__http_request_head_done(c, req);
    if (st) {
        c->fail_status = st;
        return -1;
    }
    ioloop__http_conn_send(c); /* a 100 Continue head_done queued (never tears down inline) */
    if (req->streaming && req->route->route.prepare) {
        /* The application's from here: it must finish it (on_close if the
         * client leaves before the body's end). Without prepare it becomes
         * the application's at its first on_body, so a client that leaves
         * before any body byte leaves nothing behind that no one could
         * finish (such a request was kept for good, and with it the server's
         * per-loop state after server_free: test_http_body under ASan). */
        req->user_owned = true;
        req->route->route.prepare(req, req->route->route.arg);
        if (c->state == CONN_DEAD || c->req != req)
            return -1; /* answered (or gone) already: stop here */
    }
    return 0;
}

static int cb_body(llhttp_t *p, const char *at, size_t len)
{
    http_conn_t *c = p->data;
    ioloop_http_request_t *req = c->req;
    if (!req || c->state != CONN_BODY)
        return -1;
    req->body_received += len;
    if (req->body_received > c->w->server->opts.max_body_size) {
        c->fail_status = 413;
        return -1;
    }
    if (req->fail_status)
        return 0; /* 404/405: read and drop */
    if (req->streaming) {
        req->user_owned = true;
        int rc = req->route->route.on_body(req, at, len, req->route->route.arg);
        if (c->state == CONN_DEAD || c->req != req)
            return -1;
        if (rc) {
            c->fail_status = 400;
            return -1;
        }
        return 0;
    }
    if (ioloop__hbuf_append(c->w, &req->body, at, len) != 0) {
        c->fail_status = 413;
        return -1;
    }
    return 0;
}

static int cb_message_complete(llhttp_t *p)
{
    http_conn_t *c = p->data;
    ioloop_http_request_t *req = c->req;
    if (!req || c->state != CONN_BODY)
        return -1;
    if (req->body.data) {
        if (ioloop__hbuf_reserve(c->w, &req->body, 1) != 0) {
            c->fail_status = 413;
            return -1;
        }
        req->body.data[req->body.len] = '\0';
    }
    req->complete = true;
    return HPE_PAUSED; /* one request at a time */
}

const llhttp_settings_t ioloop__http_settings = {
    .on_message_begin = cb_message_begin,
    .on_url = cb_url,
    .on_header_field = cb_header_field,
    .on_header_field_complete = cb_header_field_complete,
    .on_header_value = cb_header_value,
    .on_header_value_complete = cb_header_value_complete,
    .on_headers_complete = cb_headers_complete,
    .on_body = cb_body,
    .on_message_complete = cb_message_complete,
};
