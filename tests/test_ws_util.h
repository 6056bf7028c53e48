/* test_ws_util.h — the WebSocket suites' helpers: an echo server on a
 * one-loop runtime (tsrv_t) that records what its handlers saw, a raw-socket
 * client that does the handshake and writes and reads frames with its own
 * minimal code (so the tests never trust the code under test), and our own
 * client driven on a private loop in the test thread.
 * Threading rule: wsrv_* and raw_* run on the test's thread; the server's
 * handlers run on its loop thread and report through atomics.
 * Everything is static inline: each suite includes it once.
 */
#ifndef TEST_WS_UTIL_H
#define TEST_WS_UTIL_H

#define _GNU_SOURCE /* before any system header (test_http_util.h needs it) */

#include "ioloop/websocket.h"
#include "test_http_util.h"

#include <sys/resource.h>

/* ---- the server ----------------------------------------------------------- */

typedef struct {
    tsrv_t t;
    atomic_int opens, closes, messages, drains, enobufs;
    atomic_int last_close_code;
    char last_reason[128];
    atomic_size_t max_buffered;
    bool echo;        /* echo every message */
    atomic_int flood; /* >0: the first websocket is flooded with messages of this size (<= 64 KiB) */
    int flood_size;
    atomic_size_t flood_sent;
    ioloop_websocket_t *flood_ws;
    _Atomic(ioloop_websocket_t *) last_ws; /* the last one opened (for the thread-rule check) */
    atomic_int late_sends_accepted;        /* sends from on_close that were not refused (must stay 0) */
} wsrv_t;

/* Flood: sends messages of s->flood_size until the stream refuses one
 * (-ENOBUFS), and again at each drain, up to 64 MiB in all. */
static inline void wsrv_flood(wsrv_t *s, ioloop_websocket_t *ws)
{
    static char buf[65536];
    int rc = 0;
    while (atomic_load(&s->flood_sent) < (64u << 20) &&
           (rc = ioloop_websocket_send(ws, IOLOOP_WS_BINARY, buf, (size_t)s->flood_size)) == 0) {
        atomic_fetch_add(&s->flood_sent, (size_t)s->flood_size);
        size_t b = ioloop_websocket_buffered(ws);
        if (b > atomic_load(&s->max_buffered))
            atomic_store(&s->max_buffered, b);
    }
    if (rc == -ENOBUFS)
        atomic_fetch_add(&s->enobufs, 1);
}

static inline void wsrv_on_open(ioloop_websocket_t *ws, ioloop_http_request_t *req, void *arg)
{
    (void)req;
    wsrv_t *s = arg;
    atomic_store(&s->last_ws, ws);
    atomic_fetch_add(&s->opens, 1);
    int size = atomic_exchange(&s->flood, 0); /* the first websocket only */
    if (size > 0) {
        s->flood_size = size;
        s->flood_ws = ws;
        wsrv_flood(s, ws);
    }
}

static inline void wsrv_on_message(ioloop_websocket_t *ws, int opcode, const char *data, size_t len, void *arg)
{
    wsrv_t *s = arg;
    atomic_fetch_add(&s->messages, 1);
    if (s->echo && (ioloop_websocket_send(ws, opcode, data, len) != 0 || !ioloop_websocket_writable(ws)))
        ioloop_websocket_pause(ws);
}

static inline void wsrv_on_close(ioloop_websocket_t *ws, int code, const char *reason, size_t len, void *arg)
{
    wsrv_t *s = arg;
    if (ws == s->flood_ws)
        s->flood_ws = NULL;
    /* a late handler: sending or closing once it ended is refused, never a crash */
    if (ioloop_websocket_send(ws, IOLOOP_WS_TEXT, "late", 4) != -EPIPE ||
        ioloop_websocket_close(ws, 1000, NULL, 0) != -EALREADY)
        atomic_fetch_add(&s->late_sends_accepted, 1);
    snprintf(s->last_reason, sizeof(s->last_reason), "%.*s", (int)len, reason);
    atomic_store(&s->last_close_code, code);
    atomic_fetch_add(&s->closes, 1);
}

static inline void wsrv_on_drain(ioloop_websocket_t *ws, void *arg)
{
    wsrv_t *s = arg;
    atomic_fetch_add(&s->drains, 1);
    if (ws == s->flood_ws)
        wsrv_flood(s, ws);
    ioloop_websocket_resume(ws);
}

static inline ioloop_websocket_route_t wsrv_route_defaults(wsrv_t *s)
{
    return (ioloop_websocket_route_t){
        .handlers = {.on_open = wsrv_on_open,
                     .on_message = wsrv_on_message,
                     .on_close = wsrv_on_close,
                     .on_drain = wsrv_on_drain},
        .arg = s,
    };
}

/* Starts an echo server on /ws with route (NULL: the defaults). */
static inline void wsrv_start(wsrv_t *s, const ioloop_websocket_route_t *route)
{
    s->echo = true;
    tsrv_init(&s->t, NULL);
    ioloop_websocket_route_t r = route ? *route : wsrv_route_defaults(s);
    assert_int_equal(ioloop_http_websocket_route(s->t.server, "/ws", &r), 0);
    tsrv_start(&s->t);
}

/* Waits (bounded) until *counter reaches n. */
static inline bool wait_count(atomic_int *counter, int n, int ms)
{
    int64_t end = tu_now_ns() + (int64_t)ms * 1000000;
    while (atomic_load(counter) < n) {
        if (tu_now_ns() > end)
            return false;
        tu_sleep_ms(2);
    }
    return true;
}

/* Waits until every websocket the server opened has closed, then stops. */
static inline void wsrv_stop(wsrv_t *s)
{
    assert_true(wait_count(&s->closes, atomic_load(&s->opens), 10000));
    assert_int_equal(atomic_load(&s->late_sends_accepted), 0);
    tsrv_stop(&s->t);
}

/* ---- the raw client -------------------------------------------------------- */

/* Connects and upgrades /ws (extra: more header lines, "" for none);
 * asserts the 101. */
static inline int raw_open(int port, const char *extra)
{
    int fd = tcli_connect(port);
    char req[1024];
    snprintf(req, sizeof(req),
             "GET /ws HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
             "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n%s\r\n",
             port, extra);
    tcli_send(fd, req);
    tresp_t r;
    assert_int_equal(tcli_response_ex(fd, &r, true, true), 0);
    assert_int_equal(r.status, 101);
    assert_true(tresp_has(&r, "Sec-WebSocket-Accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="));
    tresp_free(&r);
    return fd;
}

/* A masked frame, as a client sends it (rsv: the bits as in the first byte). */
static inline size_t raw_frame(uint8_t *out, bool fin, uint8_t rsv, uint8_t opcode, const void *data, size_t len,
                               bool masked)
{
    static const uint8_t mask[4] = {0x37, 0xfa, 0x21, 0x3d};
    size_t n = 0;
    out[n++] = (uint8_t)((fin ? 0x80 : 0) | rsv | opcode);
    uint8_t m = masked ? 0x80 : 0;
    if (len < 126) {
        out[n++] = (uint8_t)(m | len);
    } else if (len <= 0xffff) {
        out[n++] = m | 126;
        out[n++] = (uint8_t)(len >> 8);
        out[n++] = (uint8_t)len;
    } else {
        out[n++] = m | 127;
        for (int i = 7; i >= 0; i--)
            out[n++] = (uint8_t)((uint64_t)len >> (8 * i));
    }
    if (masked) {
        memcpy(out + n, mask, 4);
        n += 4;
    }
    for (size_t i = 0; i < len; i++)
        out[n + i] = ((const uint8_t *)data)[i] ^ (masked ? mask[i & 3] : 0);
    return n + len;
}

static inline void raw_send(int fd, bool fin, uint8_t rsv, uint8_t opcode, const void *data, size_t len)
{
    uint8_t *buf = malloc(len + 14);
    size_t n = raw_frame(buf, fin, rsv, opcode, data, len, true);
    tcli_sendn(fd, buf, n);
    free(buf);
}

static inline int raw_read_full(int fd, void *buf, size_t n)
{
    size_t got = 0;
    while (got < n) {
        ssize_t r = recv(fd, (char *)buf + got, n - got, 0);
        if (r <= 0)
            return -1;
        got += (size_t)r;
    }
    return 0;
}

/* Reads one server frame (unmasked): opcode, payload into a malloc'd *data. -1 at EOF. */
static inline int raw_recv(int fd, uint8_t *fin_rsv, uint8_t *opcode, uint8_t **data, size_t *len)
{
    uint8_t h[2];
    if (raw_read_full(fd, h, 2) != 0)
        return -1;
    if (fin_rsv)
        *fin_rsv = h[0] & 0xf0;
    *opcode = h[0] & 0x0f;
    assert_false(h[1] & 0x80); /* a server never masks */
    uint64_t n = h[1] & 0x7f;
    if (n == 126) {
        uint8_t e[2];
        assert_int_equal(raw_read_full(fd, e, 2), 0);
        n = (uint64_t)e[0] << 8 | e[1];
    } else if (n == 127) {
        uint8_t e[8];
        assert_int_equal(raw_read_full(fd, e, 8), 0);
        n = 0;
        for (int i = 0; i < 8; i++)
            n = n << 8 | e[i];
    }
    *data = malloc((size_t)n + 1);
    assert_int_equal(raw_read_full(fd, *data, (size_t)n), 0);
    (*data)[n] = 0;
    *len = (size_t)n;
    return 0;
}

/* Reads frames until a close frame: its code (1005 if none), -1 on EOF first. */
static inline int raw_expect_close(int fd)
{
    for (;;) {
        uint8_t op, *d;
        size_t n;
        if (raw_recv(fd, NULL, &op, &d, &n) != 0)
            return -1;
        int code = n >= 2 ? d[0] << 8 | d[1] : 1005;
        free(d);
        if (op == IOLOOP_WS_CLOSE)
            return code;
    }
}

/* Sends text and expects it echoed. */
static inline void raw_echo(int fd, const char *text)
{
    raw_send(fd, true, 0, IOLOOP_WS_TEXT, text, strlen(text));
    uint8_t op, *d;
    size_t n;
    assert_int_equal(raw_recv(fd, NULL, &op, &d, &n), 0);
    assert_int_equal(op, IOLOOP_WS_TEXT);
    assert_int_equal(n, strlen(text));
    assert_memory_equal(d, text, n);
    free(d);
}

/* ---- our own client on a private loop ---------------------------------------- */

typedef struct {
    ioloop_t *loop;
    ioloop_websocket_t *ws;
    int status; /* the connect's */
    bool connected, done;
    int close_code;
    char close_reason[128];
    int messages, pongs, drains;
    int last_opcode;
    char *last; /* the last message (malloc'd) */
    size_t last_len;
    int stop_after; /* stop the loop after this many messages (0: at close) */
} wcli_t;

static inline void wcli_on_message(ioloop_websocket_t *ws, int opcode, const char *data, size_t len, void *arg)
{
    (void)ws;
    wcli_t *c = arg;
    c->messages++;
    c->last_opcode = opcode;
    free(c->last);
    c->last = malloc(len + 1);
    memcpy(c->last, data, len + 1);
    c->last_len = len;
    if (c->stop_after && c->messages >= c->stop_after)
        ioloop_stop(c->loop);
}

static inline void wcli_on_close(ioloop_websocket_t *ws, int code, const char *reason, size_t len, void *arg)
{
    (void)ws;
    wcli_t *c = arg;
    c->close_code = code;
    snprintf(c->close_reason, sizeof(c->close_reason), "%.*s", (int)len, reason);
    c->done = true;
    c->ws = NULL;
    ioloop_stop(c->loop);
}

static inline void wcli_on_pong(ioloop_websocket_t *ws, const char *data, size_t len, void *arg)
{
    (void)ws, (void)data, (void)len;
    wcli_t *c = arg;
    c->pongs++;
}

static inline void wcli_on_connect(ioloop_t *loop, int status, ioloop_websocket_t *ws, void *arg)
{
    wcli_t *c = arg;
    c->status = status;
    c->ws = ws;
    c->connected = status == 0;
    if (status != 0)
        c->done = true;
    ioloop_stop(loop);
}

static inline ioloop_websocket_connect_options_t wcli_options(wcli_t *c)
{
    return (ioloop_websocket_connect_options_t){
        .handlers = {.on_message = wcli_on_message, .on_close = wcli_on_close, .on_pong = wcli_on_pong},
        .arg = c,
        .connect_timeout = IOLOOP_SEC(5),
    };
}

/* Runs the client's loop until something stops it (bounded by ms). */
static inline void wcli_stop_loop(ioloop_t *loop, void *arg)
{
    (void)arg;
    ioloop_stop(loop);
}

static inline void wcli_run(wcli_t *c, int ms)
{
    ioloop_timer_t t;
    assert_int_equal(ioloop_call_later(c->loop, IOLOOP_MSEC(ms), wcli_stop_loop, NULL, &t), 0);
    ioloop_start(c->loop);
    ioloop_remove_timeout(c->loop, t);
}

/* Connects to url with opts (NULL: defaults); returns the connect status. */
static inline int wcli_connect(wcli_t *c, const char *url, const ioloop_websocket_connect_options_t *opts)
{
    memset(c, 0, sizeof(*c));
    assert_int_equal(ioloop_new(NULL, &c->loop), 0);
    ioloop_websocket_connect_options_t o = opts ? *opts : wcli_options(c);
    o.arg = c;
    int rc = ioloop_websocket_connect(c->loop, url, &o, wcli_on_connect, c);
    if (rc != 0)
        return rc;
    wcli_run(c, 10000);
    return c->status;
}

/* Sends and waits for the next message (bounded). */
static inline void wcli_roundtrip(wcli_t *c, int opcode, const void *data, size_t len)
{
    int before = c->messages;
    assert_int_equal(ioloop_websocket_send(c->ws, opcode, data, len), 0);
    c->stop_after = before + 1;
    wcli_run(c, 20000);
    assert_int_equal(c->messages, before + 1);
    assert_int_equal(c->last_opcode, opcode);
    assert_int_equal(c->last_len, len);
    assert_memory_equal(c->last, data, len);
}

/* Closes (if open), runs until on_close, frees the loop. */
static inline void wcli_finish(wcli_t *c)
{
    if (c->ws && !c->done) {
        ioloop_websocket_close(c->ws, IOLOOP_WS_CLOSE_NORMAL, NULL, 0);
        c->stop_after = 0;
        wcli_run(c, 10000);
    }
    ioloop_close(c->loop, true);
    free(c->last);
    c->last = NULL;
}

#endif
