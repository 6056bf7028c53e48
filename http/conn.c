/* conn.c — one HTTP/1.1 connection on an ioloop_stream: its life cycle, the
 * state machine that decides reading and parsing, handing responses to the
 * stream, keep-alive, timeouts, the half-close and the polite close. parse.c
 * holds the llhttp glue and the parse loop.
 *
 * Threading rule: everything here runs on the connection's loop thread.
 *
 * States: HEAD -> BODY -> HANDLER -> HEAD (keep-alive) ... -> LINGER -> DEAD.
 * Sending is the stream's business, not a state. After every entry point
 * (stream data, write completion, drain, finish, timer) conn_update decides:
 * parse only in HEAD/BODY while the stream's output is writable, and let the
 * stream read only while the parser could use the bytes (HANDLER reads one
 * block ahead, to hear a client leave). So a client that pipelines without
 * reading holds at most the stream's input limit, its output mark and one
 * response (http/README.md, "Connections", has the numbers).
 *
 * A closed connection is marked DEAD at once and freed by its stream's close
 * callback, which never runs inline: no frame on the stack sees freed memory.
 */
#define _GNU_SOURCE
#include "internal.h"

#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

static void conn_update(http_conn_t *c);
static void linger_start(http_conn_t *c);

static ioloop_time_t now_of(const http_conn_t *c)
{
    return ioloop_time(c->w->loop);
}

static size_t input_len(const http_conn_t *c)
{
    size_t len = 0;
    ioloop_stream_peek(c->stream, &len);
    return len;
}

/* Everything formatted so far has reached the kernel. */
static bool output_done(const http_conn_t *c)
{
    return c->out.len == 0 && !c->file_pending && ioloop_stream_write_queue_size(c->stream) == 0;
}

static bool conn_idle(const http_conn_t *c)
{
    return c->state == CONN_HEAD && !c->req && input_len(c) == 0 && output_done(c);
}

/* ---- deadlines ------------------------------------------------------------ */

static void on_timer(ioloop_t *loop, void *arg);

/* One timer per connection, re-armed only when the deadline moves earlier; a
 * timer that fires early just re-arms for the current deadline (0: none). */
static void set_deadline(http_conn_t *c, ioloop_time_t t)
{
    c->deadline = t;
    if (!t || (c->timer && c->timer_at <= t))
        return;
    if (c->timer)
        ioloop_remove_timeout(c->w->loop, c->timer);
    (void)ioloop_call_at(c->w->loop, t, on_timer, c, &c->timer); /* fails only on a closing loop */
    c->timer_at = t;
}

static void on_timer(ioloop_t *loop, void *arg)
{
    http_conn_t *c = arg;
    c->timer = 0;
    if (!c->deadline || c->state == CONN_DEAD)
        return;
    if (c->deadline > ioloop_time(loop)) {
        set_deadline(c, c->deadline);
        return;
    }
    if (c->w->draining && conn_idle(c)) {
        linger_start(c); /* the drain's grace for an idle connection is over */
        conn_update(c);
    } else {
        ioloop__http_conn_close(c); /* idle, slow head or body, or the linger is over */
    }
}

/* ---- life cycle ----------------------------------------------------------- */

static void list_remove(http_conn_t **head, http_conn_t *c)
{
    if (c->prev)
        c->prev->next = c->next;
    else
        *head = c->next;
    if (c->next)
        c->next->prev = c->prev;
    c->next = c->prev = NULL;
}

static void list_push(http_conn_t **head, http_conn_t *c)
{
    c->prev = NULL;
    c->next = *head;
    if (*head)
        (*head)->prev = c;
    *head = c;
}

void ioloop__http_conn_enter(http_conn_t *c)
{
    c->busy++;
}

void ioloop__http_conn_leave(http_conn_t *c)
{
    c->busy--;
    assert(c->busy >= 0);
}

/* The request in progress loses its connection: an application that holds it
 * hears on_close (its head is its own copy, so it stays readable); one it
 * never saw is recycled. */
static void detach_request(http_conn_t *c)
{
    ioloop_http_request_t *req = c->req;
    c->req = NULL;
    if (!req)
        return;
    req->c = NULL;
    req->closed = true;
    if (req->user_owned && !req->finished) {
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

/* The part of a close that cannot wait for the stream's close callback. */
static void conn_teardown(http_conn_t *c)
{
    http_worker_t *w = c->w;
    c->state = CONN_DEAD;
    if (c->timer) {
        ioloop_remove_timeout(w->loop, c->timer);
        c->timer = 0;
    }
    list_remove(&w->conns, c);
    list_push(&w->closing, c);
    w->nconns--;
    if (c->report_close) /* ioloop_http_server_accept's contract (a listener stream counts itself) */
        ioloop_connection_closed(w->loop);
    detach_request(c);
    ioloop__hbuf_release(w, &c->out);
    if (c->file_pending) { /* never handed to the stream */
        close(c->file_fd);
        c->file_pending = false;
    }
    ioloop__http_worker_conn_gone(w);
}

void ioloop__http_conn_close(http_conn_t *c)
{
    if (c->state == CONN_DEAD)
        return;
    conn_teardown(c);
    ioloop_stream_close(c->stream);
}

static void on_stream_close(ioloop_stream_t *stream, int error, void *arg)
{
    (void)stream;
    (void)error; /* a reset or a timeout is a normal end for a client */
    http_conn_t *c = arg;
    if (c->state != CONN_DEAD)
        conn_teardown(c);
    http_worker_t *w = c->w;
    if (!w) { /* the server is gone (ioloop__http_worker_forget_conns) */
        free(c);
        return;
    }
    list_remove(&w->closing, c);
    if (w->nfree_conns < HTTP_POOL_KEEP) {
        c->next = w->free_conns;
        w->free_conns = c;
        w->nfree_conns++;
    } else {
        free(c);
    }
}

void ioloop__http_worker_forget_conns(http_worker_t *w)
{
    while (w->closing) {
        http_conn_t *c = w->closing;
        list_remove(&w->closing, c);
        c->w = NULL;
    }
}

void ioloop__http_stream_options(const ioloop_http_server_t *s, ioloop_stream_options_t *out)
{
    /* The input holds at most a head in progress (431 beyond max_header_size)
     * and one read behind it; body bytes are consumed as they are parsed. */
    *out = (ioloop_stream_options_t){
        .max_buffer_size = s->opts.max_header_size + HTTP_BLOCK,
        .max_write_buffer_size = HTTP_WRITE_MARK,
        .write_timeout = s->opts.idle_connection_timeout, /* a client that stops reading */
        .half_close = true,
    };
}

static void on_data(ioloop_stream_t *stream, int status, void *arg);
static void on_drain(ioloop_stream_t *stream, int status, void *arg);

void ioloop__http_conn_start(http_worker_t *w, ioloop_stream_t *stream, const struct sockaddr *peer, socklen_t peer_len,
                             bool report_close)
{
    http_conn_t *c = w->free_conns;
    if (c) {
        w->free_conns = c->next;
        w->nfree_conns--;
    } else if (!(c = malloc(sizeof(*c)))) {
        ioloop_stream_close(stream);
        if (report_close)
            ioloop_connection_closed(w->loop);
        return;
    }
    memset(c, 0, sizeof(*c));
    llhttp_init(&c->parser, HTTP_REQUEST, &ioloop__http_settings);
    c->parser.data = c;
    c->w = w;
    c->stream = stream;
    c->report_close = report_close;
    /* Asked once per connection, not per request: the transport never changes. */
    const char *transport = ioloop_stream_transport_name(stream);
    c->tls = transport && strcmp(transport, "tls") == 0;
    c->state = CONN_HEAD;
    if (peer && peer_len <= sizeof(c->peer)) {
        memcpy(&c->peer, peer, peer_len);
        c->peer_len = peer_len;
    }
    list_push(&w->conns, c);
    w->nconns++;
    HTTP_STAT_INC(w, st_connections);
    ioloop_stream_set_close_callback(stream, on_stream_close, c);
    ioloop_stream_set_drain_callback(stream, on_drain, c);
    (void)ioloop_stream_set_nodelay(stream, true); /* -ENOTSUP on a unix socket: fine */
    if (ioloop_stream_read_start(stream, on_data, c) != 0) {
        ioloop__http_conn_close(c);
        return;
    }
    c->reading = true;
    set_deadline(c, now_of(c) + w->server->opts.idle_connection_timeout);
    if (w->draining) /* accepted from the backlog as the drain began */
        ioloop__http_conn_drain(c);
}

/* ---- drain and the polite close -------------------------------------------- */

/* An idle keep-alive connection gets a short grace before the drain closes
 * it: a busy client's next request is usually already on its way, and is
 * better answered (with Connection: close) than met by a closed socket. A
 * connection that has sent nothing yet (taken from the backlog by the
 * listener's stop) gets a longer one: its client connected to send a
 * request, and closing it would fail that request (seen once in 400
 * restarts under load: tools/deploy/restart-under-load). */
void ioloop__http_conn_drain(http_conn_t *c)
{
    if (conn_idle(c)) {
        set_deadline(c, now_of(c) + (c->got_data ? HTTP_DRAIN_GRACE : HTTP_DRAIN_FIRST_GRACE));
    } else if (c->state == CONN_HEAD && !c->req && input_len(c) == 0) {
        c->close_after = true; /* a keep-alive response still going out: then close */
        conn_update(c);
    }
}

/* Closing right after a response could reset the connection (RST) if the
 * client's next bytes are unread, and an RST can destroy the response in the
 * client's receive queue. So: FIN once the output is out (the stream's
 * shutdown), read and discard until the client's EOF, at most HTTP_LINGER
 * from when the output went. A request still being parsed is dropped. */
static void linger_start(http_conn_t *c)
{
    if (c->req && !c->req->user_owned) {
        ioloop__http_request_put(c->req);
        c->req = NULL;
    }
    c->state = CONN_LINGER;
    c->fail_status = -1;
    set_deadline(c, 0);
    ioloop__http_conn_send(c); /* whatever is left in out goes before the FIN (conn_step) */
    c->update_again = true;
}

/* ---- writing -------------------------------------------------------------- */

static void on_written(ioloop_stream_t *stream, int status, void *arg);

/* Asks for a call once what is queued now has left: a zero-length write's
 * done. Responses are written without one (most go out at once, and a done
 * costs a deferred callback each); only a waiting flush and the close need
 * to know. While c->out waits for room, the drain callback tells instead. */
static void watch_output(http_conn_t *c)
{
    if (c->watching || c->out.len || ioloop_stream_write_queue_size(c->stream) == 0)
        return;
    if (ioloop_stream_write(c->stream, NULL, 0, on_written, c) == 0)
        c->watching = true;
}

static void maybe_flushed(http_conn_t *c)
{
    if (!c->req || !c->req->flush_waiting)
        return;
    if (output_done(c))
        ioloop__http_response_drained(c->req); /* posts the handler's completion */
    else
        watch_output(c);
}

static void on_written(ioloop_stream_t *stream, int status, void *arg)
{
    (void)stream;
    http_conn_t *c = arg;
    c->watching = false;
    if (c->state == CONN_DEAD || status != 0)
        return; /* the stream ended: its close callback follows */
    maybe_flushed(c);
    if (c->state == CONN_LINGER || c->eof)
        conn_update(c);
}

/* A file body left for the kernel (or the stream ended): its fd is ours to close. */
static void file_sent(ioloop_stream_t *stream, int status, void *arg)
{
    (void)stream, (void)status;
    close((int)(intptr_t)arg);
}

/* The pending file goes right after c->out (already handed over). 0, 1 to
 * wait for the drain (the output is at its mark), or the error. */
static int send_file(http_conn_t *c)
{
    int err = ioloop_stream_write_file(c->stream, c->file_fd, c->file_off, c->file_len, file_sent,
                                       (void *)(intptr_t)c->file_fd);
    if (err == -ENOBUFS)
        return 1; /* refused: the drain callback brings us back */
    c->file_pending = false;
    if (err)
        close(c->file_fd);
    return err;
}

void ioloop__http_conn_send(http_conn_t *c)
{
    if (c->state == CONN_DEAD)
        return;
    if (c->out.len == 0 && !c->file_pending) {
        maybe_flushed(c);
        return;
    }
    if (!ioloop_stream_writable(c->stream))
        return; /* the drain callback brings us back */
    if (c->out.len == 0) { /* only the file was left (refused at the mark) */
        int ferr = send_file(c);
        if (ferr < 0)
            ioloop_stream_close(c->stream); /* its close callback tears down, as below */
        else if (ferr == 0)
            maybe_flushed(c);
        return;
    }
    /* A copy (the stream coalesces small ones into its blocks); an outgrown
     * buffer (a large response) is given back at once. */
    int err = ioloop_stream_write(c->stream, c->out.data, c->out.len, NULL, NULL);
    c->out.len = 0;
    if (!c->req || c->state == CONN_LINGER || c->out.cap > HTTP_BLOCK)
        ioloop__hbuf_release(c->w, &c->out); /* an idle connection holds no block */
    if (!err && c->file_pending && send_file(c) < 0)
        err = -EPIPE;
    if (err) {
        /* The stream ended (or no memory): its close callback tears the
         * connection down later. Never here: a caller (100-continue in head
         * handling, a flush) still uses the request that teardown would
         * recycle. */
        ioloop_stream_close(c->stream);
        return;
    }
    if (c->corked)
        c->wrote_corked = true;
    else
        HTTP_STAT_INC(c->w, st_sends);
    maybe_flushed(c);
}

static void on_drain(ioloop_stream_t *stream, int status, void *arg)
{
    (void)stream;
    http_conn_t *c = arg;
    if (c->state == CONN_DEAD || status != 0)
        return;
    ioloop__http_conn_send(c);
    maybe_flushed(c);
    conn_update(c);
}

void ioloop__http_conn_response_done(http_conn_t *c)
{
    if (c->state == CONN_DEAD)
        return;
    assert(!c->req);
    /* A keep-alive response that went out as the drain began: nothing more
     * is buffered, so this connection goes (a pipelined request already here
     * is still answered, with close). */
    if (c->w->draining && input_len(c) == 0)
        c->close_after = true;
    if (c->state != CONN_LINGER)
        c->state = CONN_HEAD;
    ioloop__http_conn_send(c);
    conn_update(c);
}

/* ---- the state machine ---------------------------------------------------- */

/* An error found while parsing: its response, then the polite close. */
static void answer_error(http_conn_t *c)
{
    int status = c->fail_status;
    c->fail_status = -1;
    detach_request(c);
    size_t before = c->out.len;
    if (ioloop__http_error_bytes(c->w, &c->out, status) != 0) {
        ioloop__http_conn_close(c);
        return;
    }
    ioloop__http_metrics_error(c->w, status, c->out.len - before);
    linger_start(c);
}

/* The client's EOF with nothing left to parse: the requests it sent before
 * were answered (or are being answered); end once the output is out. A
 * request cut in the middle is dropped (its handler, if it saw it, hears
 * on_close). */
static void input_ended(http_conn_t *c)
{
    if (c->req && c->req->user_owned) {
        ioloop__http_conn_close(c);
        return;
    }
    linger_start(c);
}

static void conn_step(http_conn_t *c)
{
    switch (c->state) {
    case CONN_HEAD:
    case CONN_BODY:
        if (c->fail_status > 0) {
            answer_error(c);
            return;
        }
        if (c->close_after && c->state == CONN_HEAD) {
            linger_start(c);
            return;
        }
        if (c->fail_status == 0) {
            ioloop_stream_cork(c->stream);
            c->corked = true;
            ioloop__http_conn_parse(c);
            c->corked = false;
            if (c->wrote_corked) {
                c->wrote_corked = false;
                HTTP_STAT_INC(c->w, st_sends);
            }
            ioloop_stream_uncork(c->stream);
        }
        if (c->state == CONN_DEAD)
            return;
        if (c->fail_status > 0 || (c->close_after && c->state == CONN_HEAD)) {
            c->update_again = true;
            return;
        }
        if (c->eof && (c->state == CONN_HEAD || c->state == CONN_BODY) && input_len(c) <= c->parsed)
            input_ended(c);
        return;
    case CONN_HANDLER:
        /* An EOF before the response started: the client went away (on_close).
         * Once it has started, it is finished: a real close shows as a write
         * error, and a half-closed HTTP/1.0 client gets its close-delimited
         * body whole. */
        if (c->eof && c->req && !c->req->headers_sent)
            ioloop__http_conn_close(c);
        return;
    case CONN_LINGER:
        ioloop_stream_consume(c->stream, input_len(c));
        if (!c->shut && c->out.len == 0 && !c->file_pending) {
            watch_output(c); /* before the shutdown refuses writes */
            c->shut = true;
            if (ioloop_stream_shutdown(c->stream) != 0) {
                ioloop__http_conn_close(c);
                return;
            }
        }
        if (output_done(c)) {
            if (c->eof)
                ioloop__http_conn_close(c);
            else if (!c->deadline)
                set_deadline(c, now_of(c) + HTTP_LINGER);
        } /* else the watch (or the drain) brings us back */
        return;
    default:
        return;
    }
}

/* Read interest and the deadline, from the state. */
static void conn_interest(http_conn_t *c)
{
    const ioloop_http_server_options_t *o = &c->w->server->opts;
    bool read = false;
    switch (c->state) {
    case CONN_HEAD:
    case CONN_BODY:
        read = !c->eof && c->fail_status == 0 && ioloop_stream_writable(c->stream);
        if (c->state == CONN_BODY)
            set_deadline(c, o->body_timeout ? c->req->start + o->body_timeout : now_of(c) + o->idle_connection_timeout);
        else if (c->req)
            set_deadline(c, c->req->start + o->header_timeout);
        else if (!c->w->draining)
            set_deadline(c, now_of(c) + o->idle_connection_timeout);
        break;
    case CONN_HANDLER:
        read = !c->eof && input_len(c) < HTTP_BLOCK; /* one block ahead: hear the client leave */
        set_deadline(c, 0);
        break;
    case CONN_LINGER:
        read = !c->eof;
        break;
    default:
        return;
    }
    if (read && !c->reading)
        ioloop_stream_resume(c->stream);
    else if (!read && c->reading)
        ioloop_stream_pause(c->stream);
    c->reading = read;
}

/* The one decision function: called after every entry point. */
static void conn_update(http_conn_t *c)
{
    if (c->updating) {
        c->update_again = true; /* a finish inside a handler inside the parse loop */
        return;
    }
    c->updating = true;
    do {
        c->update_again = false;
        conn_step(c);
    } while (c->update_again && c->state != CONN_DEAD);
    c->updating = false;
    if (c->state != CONN_DEAD)
        conn_interest(c);
}

static void on_data(ioloop_stream_t *stream, int status, void *arg)
{
    (void)stream;
    http_conn_t *c = arg;
    if (c->state == CONN_DEAD)
        return;
    if (status == IOLOOP_EOF) {
        c->eof = true;
    } else if (status != 0) {
        ioloop__http_conn_close(c);
        return;
    } else {
        c->got_data = true;
    }
    conn_update(c);
}

/* White-box (tests/test_http_conn.c): the largest input and output any
 * connection of s holds on `loop` (its thread). */
void ioloop__http_conn_memory(ioloop_http_server_t *s, ioloop_t *loop, size_t *in_max, size_t *out_max)
{
    *in_max = *out_max = 0;
    http_worker_t *w = ioloop__http_worker(s, loop, false);
    for (http_conn_t *c = w ? w->conns : NULL; c; c = c->next) {
        size_t in = input_len(c), out = ioloop_stream_write_queue_size(c->stream) + c->out.cap;
        if (in > *in_max)
            *in_max = in;
        if (out > *out_max)
            *out_max = out;
    }
}

/* ---- hand-off to another protocol (the WebSocket upgrade) ------------------ */

/* A connection that gave its stream away: freed in a later callback (the
 * frames that called the upgrade still hold it), like a closed one. */
static void upgraded_free(ioloop_t *loop, void *arg)
{
    (void)loop;
    http_conn_t *c = arg;
    http_worker_t *w = c->w;
    if (w)
        list_remove(&w->closing, c);
    free(c);
}

int ioloop__http_conn_upgrade(ioloop_http_request_t *req, const void *head, size_t len, ioloop__http_upgrade_fn take,
                              void *arg)
{
    http_conn_t *c = req->c;
    if (!c || c->state != CONN_HANDLER || c->req != req || req->finished) {
        ioloop_http_response_finish(req);
        return -EPIPE;
    }
    ioloop_stream_t *stream = c->stream;
    int err = ioloop_stream_write(stream, head, len, NULL, NULL);
    if (err) {
        ioloop_http_response_finish(req); /* the stream ended: its close tears down */
        return err;
    }
    /* The connection lets go: no callback of the stream reaches it again. */
    ioloop_stream_read_stop(stream);
    ioloop_stream_set_close_callback(stream, NULL, NULL);
    ioloop_stream_set_drain_callback(stream, NULL, NULL);
    if (!c->reading)
        ioloop_stream_resume(stream);
    c->req = NULL;
    conn_teardown(c); /* DEAD, off the worker's list, timer gone; the stream stays open */
    req->status = 101;
    req->wire_bytes = len;
    take(stream, req, arg); /* the request is still readable here */
    req->finished = true;
    ioloop__http_metrics_finished(req);
    ioloop__http_log_request(req, true);
    ioloop__http_request_put(req);
    if (ioloop_add_callback(c->w->loop, upgraded_free, c) != 0)
        upgraded_free(c->w->loop, c); /* the loop is closing: nothing on the stack reads c after us */
    return 0;
}
