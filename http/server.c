/* server.c — the HTTP server object: options, per-loop workers with their
 * buffer pools, Date cache and counters, accept (the runtime listener's
 * on_stream, or an fd handed to ioloop_http_server_accept), and the drain of
 * one loop.
 *
 * Threading rule: ioloop_http_server_new/route/free run on one thread while no
 * loop serves. A worker is created on its loop's thread on the first
 * connection there and pushed onto the server's list with a CAS; only that
 * loop's thread touches it afterwards (its counters are written there with
 * relaxed atomic stores, so other threads may read them). ioloop_http_server_free
 * kills the workers; a worker's struct outlives it while requests point at it
 * (see worker_free).
 */
#define _GNU_SOURCE
#include "internal.h"
#include "ioloop/runtime.h"

#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- buffers ------------------------------------------------------------ */

int ioloop__hbuf_reserve(http_worker_t *w, hbuf_t *b, size_t extra)
{
    if (b->cap - b->len >= extra && b->data)
        return 0;
    size_t need = b->len + extra;
    if (!b->data && need <= HTTP_BLOCK) {
        if (w->nblocks > 0) {
            b->data = w->blocks[--w->nblocks];
        } else if (!(b->data = malloc(HTTP_BLOCK))) {
            return -ENOMEM;
        }
        b->cap = HTTP_BLOCK;
        return 0;
    }
    size_t cap = b->cap ? b->cap : HTTP_BLOCK;
    while (cap < need)
        cap *= 2;
    char *p = realloc(b->data, cap);
    if (!p)
        return -ENOMEM;
    b->data = p;
    b->cap = cap;
    return 0;
}

int ioloop__hbuf_append(http_worker_t *w, hbuf_t *b, const void *data, size_t len)
{
    if (len == 0)
        return 0;
    int err = ioloop__hbuf_reserve(w, b, len);
    if (err)
        return err;
    memcpy(b->data + b->len, data, len);
    b->len += len;
    return 0;
}

/* Gives a block back to the pool (or frees an outgrown buffer). */
void ioloop__hbuf_release(http_worker_t *w, hbuf_t *b)
{
    if (!b->data)
        return;
    if (b->cap == HTTP_BLOCK && w->nblocks < HTTP_POOL_KEEP && !w->dead) {
        if (w->nblocks == w->blocks_cap) {
            int cap = w->blocks_cap ? w->blocks_cap * 2 : 16;
            char **n = realloc(w->blocks, (size_t)cap * sizeof(*n));
            if (!n)
                goto drop;
            w->blocks = n;
            w->blocks_cap = cap;
        }
        w->blocks[w->nblocks++] = b->data;
        b->data = NULL;
    }
drop:
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

/* ---- workers ------------------------------------------------------------ */

static void ws_gone(ioloop__ws_list_t *list);

http_worker_t *ioloop__http_worker(ioloop_http_server_t *s, ioloop_t *loop, bool create)
{
    /* The last lookup per thread: a thread runs one loop, and usually serves one server. */
    static _Thread_local ioloop_http_server_t *last_s;
    static _Thread_local uint64_t last_id;
    static _Thread_local http_worker_t *last_w;
    if (last_s == s && last_id == s->id && last_w->loop == loop)
        return last_w;
    http_worker_t *w = atomic_load_explicit(&s->workers, memory_order_acquire);
    for (; w; w = w->next)
        if (w->loop == loop)
            break;
    if (!w && create) {
        if (!(w = calloc(1, sizeof(*w))))
            return NULL;
        w->server = s;
        w->loop = loop;
        w->label_index = ioloop_runtime_index(loop); /* -ENOENT: the application's own loop */
        w->label_id = ioloop_id(loop);
        w->websockets.gone = ws_gone;
        w->next = atomic_load_explicit(&s->workers, memory_order_relaxed);
        while (!atomic_compare_exchange_weak_explicit(&s->workers, &w->next, w, memory_order_release,
                                                      memory_order_relaxed))
            ;
    }
    if (w) {
        last_s = s;
        last_id = s->id;
        last_w = w;
    }
    return w;
}

/* IMF-fixdate (RFC 9110 5.6.7) by hand: strftime's %a and %b follow LC_TIME,
 * and an embedder's setlocale must not change what goes on the wire. */
size_t ioloop__http_format_date(time_t t, char out[32])
{
    static const char days[7][4] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
    static const char months[12][4] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                       "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
    struct tm tm;
    if (!gmtime_r(&t, &tm) || tm.tm_year + 1900 < 0 || tm.tm_year + 1900 > 9999) {
        out[0] = '\0';
        return 0;
    }
    int year = tm.tm_year + 1900;
    char *p = out;
    memcpy(p, days[tm.tm_wday], 3);
    p += 3;
    *p++ = ',';
    *p++ = ' ';
    *p++ = (char)('0' + tm.tm_mday / 10);
    *p++ = (char)('0' + tm.tm_mday % 10);
    *p++ = ' ';
    memcpy(p, months[tm.tm_mon], 3);
    p += 3;
    *p++ = ' ';
    *p++ = (char)('0' + year / 1000);
    *p++ = (char)('0' + year / 100 % 10);
    *p++ = (char)('0' + year / 10 % 10);
    *p++ = (char)('0' + year % 10);
    *p++ = ' ';
    const int hms[3] = {tm.tm_hour, tm.tm_min, tm.tm_sec};
    for (int i = 0; i < 3; i++) {
        *p++ = (char)('0' + hms[i] / 10);
        *p++ = (char)('0' + hms[i] % 10);
        *p++ = i < 2 ? ':' : ' ';
    }
    memcpy(p, "GMT", 4);
    return (size_t)(p + 3 - out);
}

/* The Date header value, formatted again only when the second changes. */
const char *ioloop__http_date(http_worker_t *w)
{
    time_t now = time(NULL);
    if (now != w->date_sec) {
        ioloop__http_format_date(now, w->date);
        w->date_sec = now;
    }
    return w->date;
}

/* Frees the pooled memory; the struct itself only once no request points at it. */
static void worker_destroy(http_worker_t *w)
{
    assert(w->dead && w->live_reqs == 0 && !w->conns && !w->limbo);
    while (w->free_conns) {
        http_conn_t *c = w->free_conns;
        w->free_conns = c->next;
        free(c);
    }
    while (w->free_reqs) {
        ioloop_http_request_t *r = w->free_reqs;
        w->free_reqs = r->next_free;
        free(r->hdrs);
        free(r->args);
        free(r);
    }
    for (int i = 0; i < w->nblocks; i++)
        free(w->blocks[i]);
    free(w->blocks);
    ioloop__http_gzip_pool_free(w);
    free(w);
}

/* Callbacks queued on the loop before it stopped (a flush completion, an
 * executor job's completion that finishes its request) run in
 * ioloop_runtime_free, after this. So the worker does not free what they
 * point at: it closes its connections and marks itself dead; a request still
 * held (an orphan, or one with a completion queued) stays valid and keeps the
 * worker struct alive until it is finished, then frees itself
 * (ioloop__http_worker_release). A request the application never finishes
 * is never freed: nothing can tell that no callback holds it. */
static void worker_free(http_worker_t *w)
{
    w->dead = true;
    w->server = NULL; /* freed after this: a late request must not reach it */
    w->live_reqs++;   /* our own reference: closing a connection may put the last request */
    while (w->conns)
        ioloop__http_conn_close(w->conns);
    ioloop__http_worker_forget_conns(w);    /* their streams close after this, alone */
    ioloop__ws_list_forget(&w->websockets); /* websockets go on without the server */
    if (w->drain_timer)
        ioloop_remove_timeout(w->loop, w->drain_timer);
    w->drain_timer = 0;
    while (w->free_conns) {
        http_conn_t *c = w->free_conns;
        w->free_conns = c->next;
        free(c);
    }
    w->nfree_conns = 0;
    for (int i = 0; i < w->nblocks; i++)
        free(w->blocks[i]);
    w->nblocks = 0;
    pcre2_match_data_free(w->match);
    w->match = NULL;
    ioloop__http_worker_release(w);
}

void ioloop__http_worker_release(http_worker_t *w)
{
    assert(w->live_reqs > 0);
    if (--w->live_reqs == 0 && w->dead)
        worker_destroy(w);
}

/* ---- server ------------------------------------------------------------- */

int ioloop_http_server_new(const ioloop_http_server_options_t *opts, ioloop_http_server_t **out)
{
    static atomic_uint_fast64_t next_id = 1;
    *out = NULL;
    ioloop_http_server_t *s = calloc(1, sizeof(*s));
    if (!s)
        return -ENOMEM;
    s->id = atomic_fetch_add(&next_id, 1);
    if (opts)
        s->opts = *opts;
    if (ioloop__http_gzip_check_options(&s->opts) != 0 || s->opts.drain_delay < 0) {
        free(s);
        return -EINVAL;
    }
    if (!s->opts.max_header_size)
        s->opts.max_header_size = 64 * 1024;
    if (!s->opts.max_body_size)
        s->opts.max_body_size = 100 * 1024 * 1024;
    if (!s->opts.idle_connection_timeout)
        s->opts.idle_connection_timeout = IOLOOP_SEC(3600);
    if (!s->opts.header_timeout)
        s->opts.header_timeout = IOLOOP_SEC(60);
    atomic_init(&s->workers, NULL);
    *out = s;
    return 0;
}

int ioloop_http_server_route(ioloop_http_server_t *s, const char *pattern, const ioloop_http_route_t *route)
{
    if (!s || !pattern || !route)
        return -EINVAL;
    return ioloop__http_router_add(s, pattern, route);
}

void ioloop_http_server_free(ioloop_http_server_t *s)
{
    if (!s)
        return;
    ioloop__http_signals_unwatch(s);
    http_worker_t *w = atomic_load(&s->workers);
    while (w) {
        http_worker_t *next = w->next;
        worker_free(w);
        w = next;
    }
    ioloop__http_router_free(s);
    ioloop__http_static_free_all(s);
    ioloop__http_ws_routes_free(s);
    free(s);
}

/* ---- accepting ---------------------------------------------------------- */

/* The runtime's listener hands streams to on_stream; ioloop_http_server_accept
 * stays for an fd accepted elsewhere (it keeps runtime.h's on_accept shape). */
_Static_assert(_Generic(&ioloop_http_server_accept, ioloop_accept_fn : 1, default : 0),
               "ioloop_http_server_accept must be an ioloop_accept_fn");

void ioloop__http_server_on_stream(ioloop_t *loop, ioloop_stream_t *stream, const struct sockaddr *peer,
                                   socklen_t peer_len, void *arg)
{
    ioloop_http_server_t *s = arg;
    http_worker_t *w = ioloop__http_worker(s, loop, true);
    if (!w) {
        ioloop_stream_close(stream);
        return;
    }
    /* A connection that was queued when the drain began (a listener stop
     * accepts its backlog first) is served like the others: closing it
     * unread would reset the client. */
    ioloop__http_conn_start(w, stream, peer, peer_len, false);
}

void ioloop_http_server_accept(ioloop_t *loop, int fd, const struct sockaddr *peer, socklen_t peer_len, void *arg)
{
    ioloop_http_server_t *s = arg;
    http_worker_t *w = ioloop__http_worker(s, loop, true);
    ioloop_stream_options_t so;
    ioloop__http_stream_options(s, &so);
    ioloop_stream_t *stream;
    if (!w || ioloop_stream_new(loop, fd, &so, &stream) != 0) { /* stream_new closes fd on failure */
        if (!w)
            close(fd);
        ioloop_connection_closed(loop);
        return;
    }
    ioloop__http_conn_start(w, stream, peer, peer_len, true);
}

int ioloop_http_server_connections(const ioloop_http_server_t *s, ioloop_t *loop)
{
    http_worker_t *w = ioloop__http_worker((ioloop_http_server_t *)s, loop, false);
    return w ? w->nconns + w->websockets.count : 0;
}

/* ---- drain -------------------------------------------------------------- */

static void drain_check(http_worker_t *w)
{
    if (!w->draining || w->nconns > 0 || w->websockets.count > 0 || !w->drain_done || w->dead)
        return;
    if (w->drain_timer) {
        ioloop_remove_timeout(w->loop, w->drain_timer);
        w->drain_timer = 0;
    }
    ioloop_callback_fn done = w->drain_done;
    w->drain_done = NULL;
    /* Never inline: the caller may be deep inside a connection's teardown. */
    if (ioloop_add_callback(w->loop, done, w->drain_arg) != 0)
        done(w->loop, w->drain_arg);
}

void ioloop__http_worker_conn_gone(http_worker_t *w)
{
    drain_check(w);
}

/* A websocket of this worker ended: the drain may be complete. */
static void ws_gone(ioloop__ws_list_t *list)
{
    drain_check((http_worker_t *)((char *)list - offsetof(http_worker_t, websockets)));
}

static void drain_timeout(ioloop_t *loop, void *arg)
{
    (void)loop;
    http_worker_t *w = arg;
    w->drain_timer = 0;
    while (w->conns)
        ioloop__http_conn_close(w->conns);
    ioloop__ws_list_abort_all(&w->websockets); /* they unlink as their streams' close callbacks run */
    drain_check(w);
}

int ioloop_http_server_drain(ioloop_http_server_t *s, ioloop_t *loop, ioloop_time_t timeout, ioloop_callback_fn done,
                             void *arg)
{
    http_worker_t *w = ioloop__http_worker(s, loop, true);
    if (!w)
        return -ENOMEM;
    if (w->draining)
        return -EALREADY;
    w->draining = true;
    w->drain_done = done;
    w->drain_arg = arg;
    /* Idle keep-alive connections go after a short grace (a polite close:
     * FIN, then discard what the client may still send, so nobody sees a
     * reset); the others close once their response is out. */
    for (http_conn_t *c = w->conns; c; c = c->next)
        ioloop__http_conn_drain(c);
    ioloop__ws_list_close_all(&w->websockets, IOLOOP_WS_CLOSE_GOING_AWAY, "server shutting down");
    if (timeout > 0 && (w->nconns > 0 || w->websockets.count > 0))
        (void)ioloop_call_later(loop, timeout, drain_timeout, w, &w->drain_timer); /* only a closing loop fails */
    drain_check(w);
    return 0;
}
