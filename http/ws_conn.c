/* ws_conn.c — one WebSocket connection on an ioloop_stream, either side:
 * reading through the frame reader, sending (masked on the client side,
 * compressed when negotiated), automatic pongs, keep-alive pings with a pong
 * timeout, the close handshake with its timeout, failing the connection on a
 * protocol error, back-pressure (-ENOBUFS, then on_drain) and the end.
 *
 * Closing (RFC 6455 7): whoever sends the first close frame waits for the
 * other's; the server then ends the TCP connection (FIN once the close frame
 * is out, then waits for the client's EOF), the client waits for the
 * server's EOF. A protocol error sends its close code and does the same,
 * discarding the input. close_timeout bounds all of it. on_close runs from
 * the stream's close callback, so never inline inside a call.
 *
 * Threading rule: everything on the stream's loop thread.
 */
#define _GNU_SOURCE
#include "ws_internal.h"

#include <assert.h>
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

enum { WS_OPEN, WS_CLOSING, WS_CLOSED };

struct ioloop_websocket {
    ioloop_stream_t *stream;
    ioloop_t *loop;
    pthread_t owner;         /* the loop's thread, where the websocket was made: the calls check it (-EPERM) */
    ioloop__ws_list_t *list; /* the server's, on this loop (NULL for a client, or once the server is gone) */
    ioloop_websocket_t *list_prev, *list_next;
    bool server;
    uint8_t state;
    ioloop_websocket_options_t opts;
    ioloop_websocket_handlers_t h;
    void *arg, *user_data;
    ioloop__ws_reader_t reader;
    ioloop__ws_deflate_t deflate;
    char *subprotocol, *extensions;
    /* closing */
    bool close_sent, close_received, eof;
    int peer_code; /* the peer's close code (1005 if none) once close_received */
    char peer_reason[126];
    size_t peer_reason_len;
    int fail_code;                       /* the code we failed the connection with (1002, 1007, 1009, 1011) */
    uint8_t pending_close[2 + 125 + 14]; /* a close frame refused at the mark: sent at the drain */
    size_t pending_close_len;
    ioloop_timer_t close_timer;
    /* keep-alive */
    ioloop_timer_t ping_timer;
    bool ping_outstanding;
    ioloop_time_t ping_sent_at;
    /* sending */
    uint8_t *scratch; /* the compressed or masked payload of a send */
    size_t scratch_cap;
};

/* ---- timers ----------------------------------------------------------------- */

/* A timer, or 0 if the loop refused it (closing): the timeout then never
 * fires, and the loop's close ends the stream anyway. */
static ioloop_timer_t arm(ioloop_websocket_t *ws, ioloop_time_t delay, ioloop_callback_fn fn)
{
    ioloop_timer_t t = 0;
    (void)ioloop_call_later(ws->loop, delay, fn, ws, &t);
    return t;
}

static void disarm(ioloop_websocket_t *ws, ioloop_timer_t *t)
{
    if (*t)
        ioloop_remove_timeout(ws->loop, *t);
    *t = 0;
}

/* ---- writing frames ----------------------------------------------------------- */

static int scratch_reserve(ioloop_websocket_t *ws, size_t n)
{
    if (ws->scratch_cap >= n)
        return 0;
    uint8_t *p = realloc(ws->scratch, n);
    if (!p)
        return -ENOMEM;
    ws->scratch = p;
    ws->scratch_cap = n;
    return 0;
}

/* A large message's scratch goes back; a small one stays for the next send. */
static void scratch_trim(ioloop_websocket_t *ws)
{
    if (ws->scratch_cap > (256u << 10)) {
        free(ws->scratch);
        ws->scratch = NULL;
        ws->scratch_cap = 0;
    }
}

/* One frame: header + payload (payload may already be in ws->scratch). */
static int write_frame(ioloop_websocket_t *ws, uint8_t opcode, uint8_t rsv, const void *data, size_t len)
{
    uint8_t hdr[14], mask[4];
    const uint8_t *payload = data;
    if (!ws->server) {
        /* The masked copy: small frames in a per-thread buffer (the stream
         * copies it before writev returns), larger ones in the scratch. */
        static _Thread_local uint8_t small[16384];
        uint8_t *dst = small;
        ioloop__ws_random(mask, 4);
        if (payload == ws->scratch || len > sizeof(small)) {
            if (payload != ws->scratch && scratch_reserve(ws, len) != 0)
                return -ENOMEM;
            dst = ws->scratch;
        }
        ioloop__ws_mask(dst, payload, len, mask, 0);
        payload = dst;
    }
    size_t hl = ioloop__ws_frame_header(hdr, true, rsv, opcode, len, ws->server ? NULL : mask);
    struct iovec iov[2] = {{hdr, hl}, {(void *)payload, len}};
    return ioloop_stream_writev(ws->stream, iov, len ? 2 : 1, NULL, NULL);
}

/* A close frame, queued even at the mark (then at the drain). */
static void send_close_frame(ioloop_websocket_t *ws, int code, const char *reason, size_t len)
{
    uint8_t body[125];
    size_t n = 0;
    if (code) {
        body[0] = (uint8_t)(code >> 8);
        body[1] = (uint8_t)code;
        if (len > 123)
            len = 123;
        if (len)
            memcpy(body + 2, reason, len);
        n = 2 + len;
    }
    ws->close_sent = true;
    if (ioloop_stream_writable(ws->stream)) {
        write_frame(ws, IOLOOP_WS_CLOSE, 0, body, n);
        return;
    }
    /* Frame it now (masked now for a client: the drain only copies it out). */
    uint8_t mask[4];
    ioloop__ws_random(mask, 4);
    size_t hl = ioloop__ws_frame_header(ws->pending_close, true, 0, IOLOOP_WS_CLOSE, n, ws->server ? NULL : mask);
    if (ws->server)
        memcpy(ws->pending_close + hl, body, n);
    else
        ioloop__ws_mask(ws->pending_close + hl, body, n, mask, 0);
    ws->pending_close_len = hl + n;
}

/* ---- the end -------------------------------------------------------------- */

static void on_close_timer(ioloop_t *loop, void *arg)
{
    (void)loop;
    ioloop_websocket_t *ws = arg;
    ws->close_timer = 0;
    ioloop_stream_close(ws->stream); /* the peer did not finish the handshake in time */
}

/* Both close frames are out (or we failed): the server ends TCP, the client
 * waits for it; either way within close_timeout. */
static void closing_step(ioloop_websocket_t *ws)
{
    if (ws->state != WS_CLOSING)
        return;
    if (ws->eof) {
        ioloop_stream_close(ws->stream);
        return;
    }
    if (ws->server && (ws->close_received || ws->fail_code) && !ws->pending_close_len)
        (void)ioloop_stream_shutdown(ws->stream); /* FIN after the close frame; -EPIPE if already */
}

static void start_closing(ioloop_websocket_t *ws)
{
    if (ws->state != WS_OPEN)
        return;
    ws->state = WS_CLOSING;
    disarm(ws, &ws->ping_timer);
    ioloop_stream_resume(ws->stream); /* the peer's close frame must be heard, even if the application paused */
    ws->close_timer = arm(ws, ws->opts.close_timeout, on_close_timer);
}

/* Fails the connection (RFC 6455 7.1.7) with a close code. */
static void fail(ioloop_websocket_t *ws, int code, const char *reason)
{
    if (ws->state == WS_CLOSED)
        return;
    if (!ws->fail_code && !ws->close_received)
        ws->fail_code = code;
    bool was_open = ws->state == WS_OPEN;
    start_closing(ws);
    if (was_open || !ws->close_sent)
        send_close_frame(ws, code, reason, reason ? strlen(reason) : 0);
    closing_step(ws);
}

static void on_stream_close(ioloop_stream_t *stream, int error, void *arg)
{
    (void)stream, (void)error;
    ioloop_websocket_t *ws = arg;
    ws->state = WS_CLOSED;
    disarm(ws, &ws->ping_timer);
    disarm(ws, &ws->close_timer);
    int code = IOLOOP_WS_CLOSE_ABNORMAL;
    const char *reason = "";
    size_t rlen = 0;
    if (ws->close_received) {
        code = ws->peer_code;
        reason = ws->peer_reason;
        rlen = ws->peer_reason_len;
    } else if (ws->fail_code) {
        code = ws->fail_code;
    }
    if (ws->h.on_close)
        ws->h.on_close(ws, code, reason, rlen, ws->arg);
    ioloop__ws_list_t *list = ws->list;
    if (list) {
        if (ws->list_prev)
            ws->list_prev->list_next = ws->list_next;
        else
            list->head = ws->list_next;
        if (ws->list_next)
            ws->list_next->list_prev = ws->list_prev;
        list->count--;
    }
    ioloop__ws_reader_free(&ws->reader);
    ioloop__ws_deflate_free(&ws->deflate);
    free(ws->scratch);
    free(ws->subprotocol);
    free(ws->extensions);
    free(ws);
    if (list && list->gone)
        list->gone(list); /* a drain may be waiting for this one */
}

/* ---- reading ---------------------------------------------------------------- */

static int on_event(void *arg, int opcode, const uint8_t *data, size_t len)
{
    ioloop_websocket_t *ws = arg;
    switch (opcode) {
    case IOLOOP_WS_TEXT:
    case IOLOOP_WS_BINARY:
        if (ws->state == WS_OPEN && ws->h.on_message)
            ws->h.on_message(ws, opcode, (const char *)data, len, ws->arg);
        return 0;
    case IOLOOP_WS_PING:
        if (ws->state == WS_OPEN && ioloop_stream_writable(ws->stream))
            write_frame(ws, IOLOOP_WS_PONG, 0, data, len); /* a peer that does not read loses pongs, not memory */
        return 0;
    case IOLOOP_WS_PONG:
        ws->ping_outstanding = false;
        if (ws->state == WS_OPEN && ws->h.on_pong)
            ws->h.on_pong(ws, (const char *)data, len, ws->arg);
        return 0;
    case IOLOOP_WS_CLOSE:
        ws->close_received = true;
        ws->peer_code = len >= 2 ? data[0] << 8 | data[1] : IOLOOP_WS_CLOSE_NO_STATUS;
        ws->peer_reason_len = len >= 2 ? len - 2 : 0;
        if (ws->peer_reason_len)
            memcpy(ws->peer_reason, data + 2, ws->peer_reason_len);
        ws->peer_reason[ws->peer_reason_len] = '\0';
        if (!ws->close_sent) { /* echo the code (RFC 6455 5.5.1) */
            start_closing(ws);
            send_close_frame(ws, len >= 2 ? ws->peer_code : 0, NULL, 0);
        }
        closing_step(ws);
        return 1; /* nothing after a close frame is read */
    default:
        return 0;
    }
}

static void on_data(ioloop_stream_t *stream, int status, void *arg)
{
    ioloop_websocket_t *ws = arg;
    if (ws->state == WS_CLOSED)
        return;
    if (status != 0) {
        if (status == IOLOOP_EOF) {
            ws->eof = true;
            if (ws->state == WS_CLOSING) {
                closing_step(ws);
                return;
            }
        }
        ioloop_stream_close(stream); /* the peer went away without a close frame: 1006 */
        return;
    }
    size_t len = 0;
    const char *data = ioloop_stream_peek(stream, &len);
    if (ws->close_received || ws->reader.error) {
        ioloop_stream_consume(stream, len); /* after the close frame, or a failure: discarded */
        return;
    }
    ssize_t used = ioloop__ws_reader_feed(&ws->reader, data, len, on_event, ws);
    if (ws->state == WS_CLOSED)
        return;
    if (used < 0) {
        ioloop_stream_consume(stream, len);
        fail(ws, ws->reader.error, ws->reader.reason);
        return;
    }
    ioloop_stream_consume(stream, (size_t)used);
}

static void on_drain(ioloop_stream_t *stream, int status, void *arg)
{
    (void)stream;
    ioloop_websocket_t *ws = arg;
    if (status != 0 || ws->state == WS_CLOSED)
        return;
    if (ws->pending_close_len) {
        ioloop_stream_write(ws->stream, ws->pending_close, ws->pending_close_len, NULL, NULL);
        ws->pending_close_len = 0;
        closing_step(ws);
        return;
    }
    if (ws->state == WS_OPEN) {
        if (ws->h.on_drain)
            ws->h.on_drain(ws, ws->arg);
    }
}

/* ---- keep-alive ------------------------------------------------------------- */

static void on_ping_timer(ioloop_t *loop, void *arg)
{
    ioloop_websocket_t *ws = arg;
    ws->ping_timer = 0;
    if (ws->state != WS_OPEN)
        return;
    ioloop_time_t now = ioloop_time(loop);
    if (ws->ping_outstanding) {
        if (now - ws->ping_sent_at >= ws->opts.ping_timeout) {
            ioloop_stream_close(ws->stream); /* no pong in time: the peer is gone (1006) */
            return;
        }
        ws->ping_timer = arm(ws, ws->ping_sent_at + ws->opts.ping_timeout - now, on_ping_timer);
        return;
    }
    if (now - ws->ping_sent_at < ws->opts.ping_interval) {
        ws->ping_timer = arm(ws, ws->ping_sent_at + ws->opts.ping_interval - now, on_ping_timer);
        return;
    }
    /* The ping is queued even above the mark: it is how a peer that stopped
     * reading is found (no pong: dropped). */
    write_frame(ws, IOLOOP_WS_PING, 0, "ioloop", 6);
    ws->ping_outstanding = true;
    ws->ping_sent_at = now;
    ioloop_time_t next =
        ws->opts.ping_timeout < ws->opts.ping_interval ? ws->opts.ping_timeout : ws->opts.ping_interval;
    ws->ping_timer = arm(ws, next, on_ping_timer);
}

/* ---- creating ---------------------------------------------------------------- */

int ioloop__ws_new(ioloop_stream_t *stream, bool server, const ioloop_websocket_options_t *opts,
                   const ioloop_websocket_handlers_t *handlers, void *arg, const ioloop__ws_deflate_t *deflate,
                   const char *subprotocol, const char *extensions, ioloop_websocket_t **out)
{
    ioloop_websocket_t *ws = calloc(1, sizeof(*ws));
    if (!ws) {
        ioloop_stream_close(stream);
        return -ENOMEM;
    }
    ws->stream = stream;
    ws->loop = ioloop_stream_loop(stream);
    ws->owner = pthread_self();
    ws->server = server;
    ws->opts = *opts;
    if (!ws->opts.max_message_size)
        ws->opts.max_message_size = 10u << 20;
    if (!ws->opts.close_timeout)
        ws->opts.close_timeout = IOLOOP_SEC(5);
    if (!ws->opts.ping_timeout)
        ws->opts.ping_timeout = ws->opts.ping_interval;
    if (handlers)
        ws->h = *handlers;
    ws->arg = arg;
    if (deflate && deflate->enabled)
        ws->deflate = *deflate;
    if ((subprotocol && !(ws->subprotocol = strdup(subprotocol))) ||
        (extensions && !(ws->extensions = strdup(extensions)))) {
        free(ws->subprotocol);
        free(ws);
        ioloop_stream_close(stream);
        return -ENOMEM;
    }
    ioloop__ws_reader_init(&ws->reader, server, ws->opts.max_message_size, &ws->deflate);
    ioloop_stream_set_close_callback(stream, on_stream_close, ws);
    ioloop_stream_set_drain_callback(stream, on_drain, ws);
    ioloop_stream_set_timeouts(stream, 0, 0, 0); /* liveness is the keep-alive pings' business */
    (void)ioloop_stream_set_nodelay(stream, true);
    *out = ws;
    return 0;
}

void ioloop__ws_start(ioloop_websocket_t *ws)
{
    if (ws->state == WS_CLOSED)
        return;
    if (ioloop_stream_read_start(ws->stream, on_data, ws) != 0) {
        ioloop_stream_close(ws->stream);
        return;
    }
    if (ws->opts.ping_interval > 0 && ws->state == WS_OPEN) {
        ws->ping_sent_at = ioloop_time(ws->loop);
        ws->ping_timer = arm(ws, ws->opts.ping_interval, on_ping_timer);
    }
}

/* ---- a server's list ---------------------------------------------------------- */

void ioloop__ws_list_add(ioloop__ws_list_t *list, ioloop_websocket_t *ws)
{
    assert(!ws->list);
    ws->list = list;
    ws->list_prev = NULL;
    ws->list_next = list->head;
    if (list->head)
        list->head->list_prev = ws;
    list->head = ws;
    list->count++;
}

void ioloop__ws_list_close_all(ioloop__ws_list_t *list, int code, const char *reason)
{
    for (ioloop_websocket_t *ws = list->head; ws; ws = ws->list_next)
        if (ws->state == WS_OPEN) {
            start_closing(ws);
            send_close_frame(ws, code, reason, strlen(reason));
        }
}

void ioloop__ws_list_abort_all(ioloop__ws_list_t *list)
{
    for (ioloop_websocket_t *ws = list->head; ws; ws = ws->list_next)
        ioloop_stream_close(ws->stream); /* the close callbacks (and the unlinking) come later */
}

void ioloop__ws_list_forget(ioloop__ws_list_t *list)
{
    while (list->head) {
        ioloop_websocket_t *ws = list->head;
        list->head = ws->list_next;
        ws->list = NULL;
        ws->list_prev = ws->list_next = NULL;
    }
    list->count = 0;
}

/* ---- the public calls -------------------------------------------------------- */

static bool on_owner(const ioloop_websocket_t *ws)
{
    return pthread_equal(pthread_self(), ws->owner);
}

int ioloop_websocket_send(ioloop_websocket_t *ws, int opcode, const void *data, size_t len)
{
    if (!ws || (len && !data))
        return -EINVAL;
    bool control = opcode == IOLOOP_WS_PING || opcode == IOLOOP_WS_PONG;
    if (!control && opcode != IOLOOP_WS_TEXT && opcode != IOLOOP_WS_BINARY)
        return -EINVAL;
    if (control && len > 125)
        return -EINVAL;
    if (!on_owner(ws))
        return -EPERM;
    if (ws->state != WS_OPEN)
        return -EPIPE;
    if (!ioloop_stream_writable(ws->stream))
        return -ENOBUFS; /* the stream calls on_drain once the output has gone */
    int err;
    if (!control && ws->deflate.enabled) {
        size_t clen = 0;
        err = ioloop__ws_deflate_message(&ws->deflate, data, len, &ws->scratch, &ws->scratch_cap, &clen);
        if (!err)
            err = write_frame(ws, (uint8_t)opcode, 0x40, ws->scratch, clen);
    } else {
        err = write_frame(ws, (uint8_t)opcode, 0, data, len);
    }
    scratch_trim(ws);
    return err;
}

int ioloop_websocket_close(ioloop_websocket_t *ws, int code, const char *reason, size_t len)
{
    if (!ws)
        return -EINVAL;
    if (code && (code < 1000 || code > 4999 || (code >= 1004 && code <= 1006) || code == 1015))
        return -EINVAL;
    if (len > 123 || (len && !reason) || (!code && len))
        return -EINVAL;
    if (!on_owner(ws))
        return -EPERM;
    if (ws->state != WS_OPEN)
        return -EALREADY;
    start_closing(ws);
    send_close_frame(ws, code, reason, len);
    return 0;
}

bool ioloop_websocket_writable(const ioloop_websocket_t *ws)
{
    return ws && ws->state == WS_OPEN && ioloop_stream_writable(ws->stream);
}

void ioloop_websocket_pause(ioloop_websocket_t *ws)
{
    if (ws && on_owner(ws) && ws->state != WS_CLOSED)
        ioloop_stream_pause(ws->stream);
}

void ioloop_websocket_resume(ioloop_websocket_t *ws)
{
    if (ws && on_owner(ws) && ws->state != WS_CLOSED)
        ioloop_stream_resume(ws->stream);
}

size_t ioloop_websocket_buffered(const ioloop_websocket_t *ws)
{
    return ws && ws->state != WS_CLOSED ? ioloop_stream_write_queue_size(ws->stream) : 0;
}

ioloop_t *ioloop_websocket_loop(const ioloop_websocket_t *ws)
{
    return ws ? ws->loop : NULL;
}

const char *ioloop_websocket_subprotocol(const ioloop_websocket_t *ws)
{
    return ws ? ws->subprotocol : NULL;
}

const char *ioloop_websocket_extensions(const ioloop_websocket_t *ws)
{
    return ws ? ws->extensions : NULL;
}

void ioloop_websocket_set_user_data(ioloop_websocket_t *ws, void *data)
{
    if (ws)
        ws->user_data = data;
}

void *ioloop_websocket_user_data(const ioloop_websocket_t *ws)
{
    return ws ? ws->user_data : NULL;
}
