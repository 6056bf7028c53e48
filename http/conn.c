/* conn.c — one HTTP/1.1 connection: reading, the llhttp glue, pipelining in
 * order, keep-alive, timeouts and the polite (lingering) close.
 *
 * Threading rule: everything here runs on the connection's loop thread.
 *
 * How a request flows: bytes are appended to c->in and fed to llhttp, whose
 * callbacks record spans as offsets into c->in (zero copy; offsets survive the
 * buffer growing while a large head arrives). on_message_complete pauses the
 * parser, so exactly one request is parsed at a time; its handler runs, and
 * pipelined bytes behind it wait in c->in, unparsed, until the response has
 * been finished (and written, if the socket was full). Then the leftover is moved to the front and parsing
 * resumes: responses leave strictly in request order. A response finished
 * while pipelined bytes wait is not sent at once: the responses of one read
 * are batched into one send (see can_batch).
 *
 * Body bytes the parser has consumed are dropped from c->in at once (they were
 * copied into the request's body or streamed to the handler), so a large body
 * never grows the read buffer.
 *
 * Re-entrancy: a handler may finish inside its call, and a close may happen in
 * the middle of anything. c->busy counts the frames on the stack that use c; a
 * closed connection is only marked dead, and freed when the last frame leaves.
 */
#define _GNU_SOURCE
#include "internal.h"
#include "ioloop/runtime.h"

#include <errno.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static void conn_process(http_conn_t *c);
static void after_response(http_conn_t *c);

static ioloop_time_t now_of(http_conn_t *c)
{
    return ioloop_time(c->w->loop);
}

/* ---- interest, deadlines ------------------------------------------------ */

static void set_events(http_conn_t *c, unsigned events)
{
    if (events != c->events && c->state != CONN_DEAD) {
        ioloop_update_handler(c->w->loop, c->fd, events);
        c->events = events;
    }
}

static void on_timer(ioloop_t *loop, void *arg);
static void linger_start(http_conn_t *c);

static bool conn_idle(const http_conn_t *c)
{
    return !c->req && c->in.len == 0 && c->out_off == c->out.len && !c->resp_done_pending;
}

/* One timer per connection, re-armed only when the deadline moves earlier; a
 * timer that fires early just re-arms for the current deadline (0: none). */
static void set_deadline(http_conn_t *c, ioloop_time_t t)
{
    c->deadline = t;
    if (!t || (c->timer && c->timer_at <= t))
        return;
    if (c->timer)
        ioloop_remove_timeout(c->w->loop, c->timer);
    c->timer = ioloop_call_at(c->w->loop, t, on_timer, c);
    c->timer_at = t;
}

static void on_timer(ioloop_t *loop, void *arg)
{
    http_conn_t *c = arg;
    c->timer = 0;
    if (!c->deadline)
        return;
    if (c->deadline > ioloop_time(loop)) {
        set_deadline(c, c->deadline);
        return;
    }
    ioloop__http_conn_enter(c);
    if (c->w->draining && c->state == CONN_OPEN && conn_idle(c))
        linger_start(c); /* the drain's grace for an idle connection is over */
    else
        ioloop__http_conn_close(c); /* idle, slow head/body, stalled writer, long linger */
    ioloop__http_conn_leave(c);
}

/* ---- life cycle --------------------------------------------------------- */

static void conn_free(http_conn_t *c)
{
    http_worker_t *w = c->w;
    ioloop__hbuf_release(w, &c->in);
    ioloop__hbuf_release(w, &c->out);
    if (w->nfree_conns < HTTP_POOL_KEEP) {
        c->next = w->free_conns;
        w->free_conns = c;
        w->nfree_conns++;
    } else {
        free(c);
    }
}

void ioloop__http_conn_enter(http_conn_t *c)
{
    c->busy++;
}

void ioloop__http_conn_leave(http_conn_t *c)
{
    if (--c->busy == 0 && c->state == CONN_DEAD)
        conn_free(c);
}

/* The request in progress loses its connection: an application that holds it
 * hears on_close (and keeps a readable head); one it never saw is recycled. */
static void detach_request(http_conn_t *c)
{
    ioloop_http_request_t *req = c->req;
    c->req = NULL;
    if (req) {
        req->c = NULL;
        req->closed = true;
        if (req->user_owned && !req->finished) {
            /* The application still holds req: its head must stay readable. */
            req->owned_in = c->in;
            c->in = (hbuf_t){0};
            ioloop__http_response_abort(req);
            if (req->on_close)
                req->on_close(req, req->on_close_arg);
            if (!req->finished) { /* kept until finish, or until server_free */
                http_worker_t *w = c->w;
                req->orphan_next = w->orphans;
                req->orphan_prev = NULL;
                if (w->orphans)
                    w->orphans->orphan_prev = req;
                w->orphans = req;
                req->orphaned = true;
            }
        } else if (!req->user_owned) {
            ioloop__http_request_put(req);
        }
    }
}

void ioloop__http_conn_close(http_conn_t *c)
{
    if (c->state == CONN_DEAD)
        return;
    http_worker_t *w = c->w;
    c->state = CONN_DEAD;
    ioloop_remove_handler(w->loop, c->fd);
    close(c->fd);
    if (c->timer) {
        ioloop_remove_timeout(w->loop, c->timer);
        c->timer = 0;
    }
    if (c->prev)
        c->prev->next = c->next;
    else
        w->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    c->next = c->prev = NULL;
    w->nconns--;
    /* the runtime listener counted it in live_connections (DISPATCH balances on it) */
    ioloop_connection_closed(w->loop);

    detach_request(c);
    if (c->busy == 0)
        conn_free(c);
    ioloop__http_worker_conn_gone(w);
}

static int on_event(ioloop_t *loop, int fd, unsigned events, void *arg);

void ioloop__http_conn_start(http_worker_t *w, int fd, const struct sockaddr *peer, socklen_t peer_len)
{
    http_conn_t *c = w->free_conns;
    if (c) {
        w->free_conns = c->next;
        w->nfree_conns--;
    } else if (!(c = malloc(sizeof(*c)))) {
        close(fd);
        ioloop_connection_closed(w->loop);
        return;
    }
    memset(c, 0, sizeof(*c));
    llhttp_init(&c->parser, HTTP_REQUEST, &ioloop__http_settings);
    c->parser.data = c;
    c->w = w;
    c->fd = fd;
    if (peer && peer_len <= sizeof(c->peer)) {
        memcpy(&c->peer, peer, peer_len);
        c->peer_len = peer_len;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (ioloop_add_handler(w->loop, fd, IOLOOP_READ, on_event, c) != 0) {
        close(fd);
        ioloop_connection_closed(w->loop);
        conn_free(c);
        return;
    }
    c->events = IOLOOP_READ;
    c->next = w->conns;
    if (w->conns)
        w->conns->prev = c;
    w->conns = c;
    w->nconns++;
    HTTP_STAT_INC(w, st_connections);
    set_deadline(c, ioloop_time(w->loop) + w->server->opts.idle_connection_timeout);
    if (w->draining) /* accepted from the backlog as the drain began */
        ioloop__http_conn_drain(c);
}

/* ---- drain ---------------------------------------------------------------- */

/* An idle keep-alive connection gets a short grace before the drain closes
 * it: a busy client's next request is usually already on its way, and is
 * better answered (with Connection: close) than met by a closed socket. */
void ioloop__http_conn_drain(http_conn_t *c)
{
    if (c->state == CONN_OPEN && conn_idle(c))
        set_deadline(c, now_of(c) + HTTP_DRAIN_GRACE);
}

/* ---- lingering close ---------------------------------------------------- */

/* Closing right after a response could reset the connection (RST) if the
 * client's next bytes are unread, and an RST can destroy the response in the
 * client's receive queue. So: FIN first, read and discard until the client
 * closes too, at most HTTP_LINGER. */
static void linger_start(http_conn_t *c)
{
    ioloop__hbuf_release(c->w, &c->in);
    c->parsed = c->hdr_end = 0;
    shutdown(c->fd, SHUT_WR);
    c->state = CONN_LINGER;
    set_events(c, IOLOOP_READ);
    set_deadline(c, now_of(c) + HTTP_LINGER);
}

static void linger_read(http_conn_t *c)
{
    for (int i = 0; i < 16; i++) {
        ssize_t n = recv(c->fd, c->w->discard, sizeof(c->w->discard), 0);
        if (n > 0)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
            return;
        ioloop__http_conn_close(c);
        return;
    }
}

/* ---- writing ------------------------------------------------------------ */

void ioloop__http_conn_send(http_conn_t *c)
{
    if (c->state != CONN_OPEN)
        return;
    while (c->out_off < c->out.len) {
        ssize_t n = send(c->fd, c->out.data + c->out_off, c->out.len - c->out_off, MSG_NOSIGNAL);
        HTTP_STAT_INC(c->w, st_sends);
        if (n > 0) {
            c->out_off += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            set_events(c, c->events | IOLOOP_WRITE);
            /* A client that stops reading is closed like an idle one. */
            set_deadline(c, now_of(c) + c->w->server->opts.idle_connection_timeout);
            return;
        }
        ioloop__http_conn_close(c); /* EPIPE, ECONNRESET: a normal close */
        return;
    }
    ioloop__hbuf_release(c->w, &c->out);
    c->out_off = 0;
    if (c->events & IOLOOP_WRITE)
        set_events(c, c->events & ~(unsigned)IOLOOP_WRITE);
    if (c->resp_done_pending) {
        c->resp_done_pending = false;
        after_response(c);
    } else if (c->req && c->req->user_owned) {
        ioloop__http_response_drained(c->req);
    } else if (!c->processing) {
        conn_process(c);
    }
}

/* Pipelining: a response finished while conn_process runs, with more request
 * bytes already waiting in c->in, is held back in c->out and the next request
 * is parsed at once; conn_process sends the batch in one call when the input
 * is used up, a handler goes asynchronous, or HTTP_BATCH bytes wait. Never
 * while the socket is full (back-pressure), nor for a response that closes. */
static bool can_batch(const http_conn_t *c)
{
    return c->processing && !c->in_execute && !c->close_after && c->state == CONN_OPEN && c->in.len > c->parsed &&
           !(c->events & IOLOOP_WRITE) && c->out.len - c->out_off < HTTP_BATCH;
}

void ioloop__http_conn_response_done(http_conn_t *c)
{
    if (can_batch(c)) {
        after_response(c);
        return;
    }
    c->resp_done_pending = true;
    ioloop__http_conn_send(c);
}

/* The previous response is out: close, or make room and parse what follows. */
static void after_response(http_conn_t *c)
{
    if (c->state != CONN_OPEN)
        return;
    if (c->in_execute) {
        c->deferred_done = true; /* llhttp is still reading c->in */
        return;
    }
    if (c->close_after || (c->w->draining && c->parsed == c->in.len)) {
        /* (draining: a keep-alive response that went out as the drain began;
         * a pipelined request already here is still answered, with close) */
        linger_start(c);
        return;
    }
    size_t left = c->in.len - c->parsed;
    if (left && c->parsed)
        memmove(c->in.data, c->in.data + c->parsed, left);
    c->in.len = left;
    c->parsed = c->hdr_end = 0;
    if (!left)
        ioloop__hbuf_release(c->w, &c->in);
    if (c->reading_paused) {
        c->reading_paused = false;
        set_events(c, c->events | IOLOOP_READ);
    }
    if (!c->processing)
        conn_process(c);
}

/* ---- parsing ------------------------------------------------------------ */

static void dispatch(http_conn_t *c, ioloop_http_request_t *req)
{
    req->dispatched = true;
    req->user_owned = true;
    set_deadline(c, 0);
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

/* A head that (nearly) filled the buffer leaves little room for the body
 * behind it, and the body would trickle in a few bytes per read. Before any
 * application code has seen the request, the buffer may still move: grow it
 * and move the head's pointers along. (llhttp keeps no pointer into its input
 * between two llhttp_execute calls.) */
static const char *moved(const char *p, const char *from, size_t len, const char *to)
{
    return p >= from && p < from + len ? to + (p - from) : p;
}

static void make_body_room(http_conn_t *c, ioloop_http_request_t *req)
{
    const char *from = c->in.data;
    size_t len = c->in.len;
    if (ioloop__hbuf_reserve(c->w, &c->in, HTTP_BLOCK) != 0 || c->in.data == from)
        return;
    const char *to = c->in.data;
    req->base = to;
    req->uri = moved(req->uri, from, len, to);
    req->path = moved(req->path, from, len, to);
    req->query = moved(req->query, from, len, to);
    req->host = moved(req->host, from, len, to);
}

static void conn_process(http_conn_t *c)
{
    const ioloop_http_server_options_t *o = &c->w->server->opts;
    c->processing = true;
again:
    while (c->state == CONN_OPEN && !c->fail_status) {
        if (c->req && c->req->dispatched)
            break; /* the handler has it; finish brings us back */
        if (c->out_off < c->out.len && ((c->events & IOLOOP_WRITE) || c->out.len - c->out_off >= HTTP_BATCH))
            break; /* the previous responses are still going out, or enough for one send */
        size_t avail = c->in.len - c->parsed;
        if (avail == 0)
            break;
        c->in_execute = true;
        llhttp_errno_t err = llhttp_execute(&c->parser, c->in.data + c->parsed, avail);
        c->in_execute = false;
        if (c->state != CONN_OPEN)
            break;
        if (err == HPE_OK) {
            c->parsed = c->in.len;
            ioloop_http_request_t *req = c->req;
            if (req && req->headers_done && !req->complete) {
                c->in.len = c->parsed = c->hdr_end; /* consumed body bytes go */
                if (c->in.cap - c->hdr_end < HTTP_BLOCK / 4 && !req->user_owned)
                    make_body_room(c, req);
                /* the body has body_timeout (else the idle timeout between reads) */
                set_deadline(c,
                             o->body_timeout ? req->start + o->body_timeout : now_of(c) + o->idle_connection_timeout);
            } else if (req && !req->headers_done) {
                if (c->in.len > o->max_header_size) {
                    c->fail_status = 431;
                    break;
                }
                set_deadline(c, req->start + o->header_timeout);
            }
        } else if (err == HPE_PAUSED) {
            c->parsed = (size_t)(llhttp_get_error_pos(&c->parser) - c->in.data);
            llhttp_resume(&c->parser);
            if (c->deferred_done) {
                c->deferred_done = false;
                after_response(c);
                continue;
            }
            if (c->req && c->req->complete) {
                HTTP_STAT_INC(c->w, st_requests);
                dispatch(c, c->req);
            }
        } else {
            if (c->deferred_done) { /* the handler answered early, then we stopped */
                c->deferred_done = false;
                c->fail_status = -1;
                after_response(c);
                break;
            }
            if (!c->fail_status)
                c->fail_status = 400;
        }
    }
    if (c->state == CONN_OPEN && c->fail_status <= 0 && c->out_off < c->out.len && !(c->events & IOLOOP_WRITE)) {
        ioloop__http_conn_send(c); /* a batch of pipelined responses */
        if (c->state == CONN_OPEN && c->out_off == c->out.len && !c->fail_status && c->in.len > c->parsed &&
            !(c->req && c->req->dispatched))
            goto again; /* it stopped at HTTP_BATCH bytes: parse the rest */
    }
    c->processing = false;
    if (c->state != CONN_OPEN)
        return;
    if (c->fail_status > 0) {
        int st = c->fail_status;
        c->fail_status = -1; /* parse no more */
        detach_request(c);
        if (ioloop__http_error_bytes(c->w, &c->out, st) != 0) {
            ioloop__http_conn_close(c);
            return;
        }
        c->close_after = true;
        ioloop__http_conn_response_done(c);
        return;
    }
    if (!c->req && c->in.len == c->parsed && c->out_off == c->out.len && !c->resp_done_pending) {
        ioloop__hbuf_release(c->w, &c->in);
        c->parsed = c->hdr_end = 0;
        set_deadline(c, now_of(c) + o->idle_connection_timeout);
    }
}

/* ---- reading ------------------------------------------------------------ */

static void conn_read(http_conn_t *c, unsigned events)
{
    const ioloop_http_server_options_t *o = &c->w->server->opts;
    if (ioloop__hbuf_reserve(c->w, &c->in, 1) != 0) {
        ioloop__http_conn_close(c);
        return;
    }
    if (c->in.len == c->in.cap) {
        /* Grow only while the head arrives: once it is complete, the request's
         * strings point into this buffer and it must not move. (Body bytes
         * are dropped as they are parsed, and the head's own final CRLFs
         * always leave room behind it, so the body never finds it full.) */
        bool in_head = !c->req || !c->req->headers_done;
        if (in_head && c->in.cap <= o->max_header_size && ioloop__hbuf_reserve(c->w, &c->in, c->in.cap) == 0) {
            /* grown */
        } else {
            /* Pipelined bytes fill the buffer while a handler runs: stop
             * reading until its response is out (back-pressure). */
            if (events & IOLOOP_ERROR)
                ioloop__http_conn_close(c);
            else {
                c->reading_paused = true;
                set_events(c, c->events & ~(unsigned)IOLOOP_READ);
            }
            return;
        }
    }
    ssize_t n = recv(c->fd, c->in.data + c->in.len, c->in.cap - c->in.len, 0);
    if (n > 0) {
        c->in.len += (size_t)n;
        if (!(c->req && c->req->dispatched) && !c->processing)
            conn_process(c);
        return;
    }
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
        if (c->in.len == 0 && !c->req)
            ioloop__hbuf_release(c->w, &c->in);
        return;
    }
    /* EOF or an error: the client went away (a request in flight hears of
     * it through its on_close callback). */
    ioloop__http_conn_close(c);
}

static int on_event(ioloop_t *loop, int fd, unsigned events, void *arg)
{
    (void)loop;
    (void)fd;
    http_conn_t *c = arg;
    ioloop__http_conn_enter(c);
    if (c->state == CONN_LINGER) {
        linger_read(c);
    } else {
        if ((events & IOLOOP_WRITE) && c->state == CONN_OPEN)
            ioloop__http_conn_send(c);
        if ((events & (IOLOOP_READ | IOLOOP_ERROR)) && c->state == CONN_OPEN)
            conn_read(c, events);
    }
    ioloop__http_conn_leave(c);
    return 0;
}

/* ---- llhttp callbacks ---------------------------------------------------- */

static int cb_message_begin(llhttp_t *p)
{
    http_conn_t *c = p->data;
    if (c->state != CONN_OPEN)
        return -1;
    ioloop_http_request_t *req = ioloop__http_request_get(c->w);
    if (!req) {
        c->fail_status = 503;
        return -1;
    }
    req->c = c;
    req->start = now_of(c);
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
        req->url_off = (uint32_t)(at - c->in.data);
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
        *h = (http_hdr_t){.name_off = (uint32_t)(at - c->in.data), .name_len = (uint32_t)len};
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
    const unsigned char *n = (const unsigned char *)c->in.data + h->name_off;
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
    http_hdr_t *h = &req->hdrs[req->nhdrs - 1];
    if (!h->val_len)
        h->val_off = (uint32_t)(at - c->in.data);
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
    const unsigned char *v = (const unsigned char *)c->in.data + h->val_off;
    while (h->val_len && (v[h->val_len - 1] == ' ' || v[h->val_len - 1] == '\t'))
        h->val_len--;
    for (uint32_t i = 0; i < h->val_len; i++) {
        if ((v[i] < 0x20 && v[i] != '\t') || v[i] == 0x7f) {
            c->fail_status = 400;
            return -1;
        }
    }
    const char *name = c->in.data + h->name_off;
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
    if (!req || c->state != CONN_OPEN)
        return -1;
    /* Everything up to the last span's end (and the byte after it, where a
     * NUL goes) is the head; later bytes may be overwritten. */
    uint32_t end = req->url_off + req->url_len;
    if (req->nhdrs) {
        http_hdr_t *h = &req->hdrs[req->nhdrs - 1];
        uint32_t e = h->val_off + h->val_len;
        if (h->name_off + h->name_len > e)
            e = h->name_off + h->name_len;
        if (e > end)
            end = e;
    }
    c->hdr_end = end + 1;
    if (c->hdr_end > c->w->server->opts.max_header_size) {
        c->fail_status = 431; /* it arrived in one read, still too large */
        return -1;
    }
    req->headers_done = true;
    int st = ioloop__http_request_head_done(c, req);
    if (st) {
        c->fail_status = st;
        return -1;
    }
    if (req->streaming) {
        req->user_owned = true;
        if (req->route->route.prepare)
            req->route->route.prepare(req, req->route->route.arg);
        if (c->state != CONN_OPEN || c->req != req)
            return -1; /* answered (or gone) already: stop here */
    }
    return 0;
}

static int cb_body(llhttp_t *p, const char *at, size_t len)
{
    http_conn_t *c = p->data;
    ioloop_http_request_t *req = c->req;
    if (!req || c->state != CONN_OPEN)
        return -1;
    req->body_received += len;
    if (req->body_received > c->w->server->opts.max_body_size) {
        c->fail_status = 413;
        return -1;
    }
    if (req->fail_status)
        return 0; /* 404/405: read and drop */
    if (req->streaming) {
        int rc = req->route->route.on_body(req, at, len, req->route->route.arg);
        if (c->state != CONN_OPEN || c->req != req)
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
    if (!req || c->state != CONN_OPEN)
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
