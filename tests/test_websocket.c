/* test_websocket.c — WebSocket end to end: our server (ioloop_http_websocket_route
 * on a one-loop runtime) against a raw-socket client and against our own
 * client (ioloop_websocket_connect on a private loop): the handshake and its
 * refusals, echo of text, binary and a large message, compression
 * negotiated, subprotocols, the origin hook, close codes both ways, the
 * keep-alive ping and its timeout, bytes that follow the handshake, and the
 * client's checks of a bad 101.
 */
#include "test_ws_util.h"

#define OPENSSL_SUPPRESS_DEPRECATED /* SHA1(): the simplest independent check */
#include <openssl/evp.h>
#include <openssl/sha.h>

static void url_of(char *out, size_t cap, int port)
{
    snprintf(out, cap, "ws://127.0.0.1:%d/ws", port);
}

static void test_raw_echo_and_close(void **state)
{
    (void)state;
    wsrv_t s = {0};
    wsrv_start(&s, NULL);
    int fd = raw_open(s.t.port, "");
    raw_echo(fd, "hello");
    /* the thread rule: from this (non-loop) thread the calls are refused */
    ioloop_websocket_t *ws = atomic_load(&s.last_ws);
    assert_int_equal(ioloop_websocket_send(ws, IOLOOP_WS_TEXT, "x", 1), -EPERM);
    assert_int_equal(ioloop_websocket_close(ws, 1000, NULL, 0), -EPERM);
    /* binary, fragmented, with a ping in the middle: pong first, then the message */
    raw_send(fd, false, 0, IOLOOP_WS_BINARY, "ab", 2);
    raw_send(fd, true, 0, IOLOOP_WS_PING, "p1", 2);
    raw_send(fd, true, 0, 0, "cd", 2);
    uint8_t op, *d;
    size_t n;
    assert_int_equal(raw_recv(fd, NULL, &op, &d, &n), 0);
    assert_int_equal(op, IOLOOP_WS_PONG);
    assert_memory_equal(d, "p1", 2);
    free(d);
    assert_int_equal(raw_recv(fd, NULL, &op, &d, &n), 0);
    assert_int_equal(op, IOLOOP_WS_BINARY);
    assert_int_equal(n, 4);
    assert_memory_equal(d, "abcd", 4);
    free(d);
    /* close 4001 "bye": the code is echoed, the server ends TCP, on_close hears it */
    raw_send(fd, true, 0, IOLOOP_WS_CLOSE,
             "\x0f\xa1"
             "bye",
             5);
    assert_int_equal(raw_expect_close(fd), 4001);
    assert_int_equal(tcli_closed(fd, 5000, NULL), 1);
    close(fd);
    assert_true(wait_count(&s.closes, 1, 5000));
    assert_int_equal(atomic_load(&s.last_close_code), 4001);
    assert_string_equal(s.last_reason, "bye");
    wsrv_stop(&s);
}

/* Frames sent in the same packet as the handshake reach the websocket. */
static void test_bytes_after_handshake(void **state)
{
    (void)state;
    wsrv_t s = {0};
    wsrv_start(&s, NULL);
    int fd = tcli_connect(s.t.port);
    char req[512];
    int n = snprintf(req, sizeof(req),
                     "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: WebSocket\r\nConnection: keep-alive, Upgrade\r\n"
                     "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n");
    uint8_t buf[600];
    memcpy(buf, req, (size_t)n);
    size_t len = (size_t)n + raw_frame(buf + n, true, 0, IOLOOP_WS_TEXT, "early", 5, true);
    tcli_sendn(fd, buf, len);
    tresp_t r;
    assert_int_equal(tcli_response_ex(fd, &r, true, true), 0);
    assert_int_equal(r.status, 101);
    assert_true(tresp_has(&r, "Upgrade", "websocket"));
    tresp_free(&r);
    uint8_t op, *d;
    size_t dl;
    assert_int_equal(raw_recv(fd, NULL, &op, &d, &dl), 0);
    assert_int_equal(dl, 5);
    assert_memory_equal(d, "early", 5);
    free(d);
    close(fd); /* no close frame: on_close 1006 */
    assert_true(wait_count(&s.closes, 1, 5000));
    assert_int_equal(atomic_load(&s.last_close_code), IOLOOP_WS_CLOSE_ABNORMAL);
    wsrv_stop(&s);
}

static void expect_refusal(int port, const char *headers, int status)
{
    int fd = tcli_connect(port);
    char req[1024];
    snprintf(req, sizeof(req), "%s\r\n", headers);
    tcli_send(fd, req);
    tresp_t r;
    assert_int_equal(tcli_response(fd, &r), 0);
    assert_int_equal(r.status, status);
    if (status == 426)
        assert_true(tresp_has(&r, "Sec-WebSocket-Version", "13"));
    tresp_free(&r);
    close(fd);
}

static void test_handshake_refused(void **state)
{
    (void)state;
    wsrv_t s = {0};
    wsrv_start(&s, NULL);
    const char *base = "Host: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n";
    char h[512];
    /* a plain GET */
    expect_refusal(s.t.port, "GET /ws HTTP/1.1\r\nHost: h\r\n", 400);
    /* no Connection: upgrade */
    expect_refusal(
        s.t.port,
        "GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n",
        400);
    /* version 8 */
    snprintf(h, sizeof(h),
             "GET /ws HTTP/1.1\r\n%sSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n", base);
    expect_refusal(s.t.port, h, 426);
    /* a key that is not 16 bytes of base64; none at all */
    snprintf(h, sizeof(h), "GET /ws HTTP/1.1\r\n%sSec-WebSocket-Key: c2hvcnQ=\r\nSec-WebSocket-Version: 13\r\n", base);
    expect_refusal(s.t.port, h, 400);
    snprintf(h, sizeof(h), "GET /ws HTTP/1.1\r\n%sSec-WebSocket-Version: 13\r\n", base);
    expect_refusal(s.t.port, h, 400);
    /* another origin than the host (Tornado's default rule) */
    snprintf(h, sizeof(h),
             "GET /ws HTTP/1.1\r\n%sOrigin: http://evil.example\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
             "Sec-WebSocket-Version: 13\r\n",
             base);
    expect_refusal(s.t.port, h, 403);
    /* POST: 405 */
    expect_refusal(s.t.port, "POST /ws HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n", 405);
    /* the same origin passes */
    snprintf(h, sizeof(h), "Origin: http://127.0.0.1:%d\r\n", s.t.port);
    int fd = raw_open(s.t.port, h);
    raw_echo(fd, "x");
    close(fd);
    assert_int_equal(atomic_load(&s.opens), 1);
    wsrv_stop(&s);
}

static bool origin_allow_example(ioloop_http_request_t *req, const char *origin, void *arg)
{
    (void)req, (void)arg;
    return origin && strcmp(origin, "https://app.example") == 0;
}

static const char *pick_chat(ioloop_http_request_t *req, const char *const *offered, int n, void *arg)
{
    (void)req, (void)arg;
    for (int i = 0; i < n; i++)
        if (strcmp(offered[i], "chat.v2") == 0)
            return offered[i];
    return NULL;
}

static void test_client_echo_compression_subprotocol(void **state)
{
    (void)state;
    wsrv_t s = {0};
    ioloop_websocket_route_t route = wsrv_route_defaults(&s);
    route.options.compression = true;
    route.options.max_message_size = 4u << 20;
    route.select_subprotocol = pick_chat;
    route.check_origin = origin_allow_example;
    wsrv_start(&s, &route);
    char url[64];
    url_of(url, sizeof(url), s.t.port);
    wcli_t c;
    ioloop_websocket_connect_options_t o = wcli_options(&c);
    static const char *const protos[] = {"chat.v1", "chat.v2"};
    static const char *const extra[] = {"X-Test: 1", NULL};
    o.subprotocols = protos;
    o.nsubprotocols = 2;
    o.origin = "https://app.example";
    o.headers = extra;
    o.options.compression = true;
    o.options.max_message_size = 4u << 20;
    assert_int_equal(wcli_connect(&c, url, &o), 0);
    assert_string_equal(ioloop_websocket_subprotocol(c.ws), "chat.v2");
    assert_non_null(ioloop_websocket_extensions(c.ws));
    assert_string_equal(ioloop_websocket_extensions(c.ws), "permessage-deflate");
    wcli_roundtrip(&c, IOLOOP_WS_TEXT, "hello", 5);
    wcli_roundtrip(&c, IOLOOP_WS_TEXT, "", 0);
    wcli_roundtrip(&c, IOLOOP_WS_BINARY, "\x00\x01\x02", 3);
    size_t big = 3u << 20;
    char *buf = malloc(big);
    for (size_t i = 0; i < big; i++)
        buf[i] = (char)(i % 251);
    wcli_roundtrip(&c, IOLOOP_WS_BINARY, buf, big);
    free(buf);
    /* a close with code and reason: both sides hear it */
    assert_int_equal(ioloop_websocket_close(c.ws, 4002, "done", 4), 0);
    assert_int_equal(ioloop_websocket_close(c.ws, 1000, NULL, 0), -EALREADY);
    assert_int_equal(ioloop_websocket_send(c.ws, IOLOOP_WS_TEXT, "late", 4), -EPIPE);
    wcli_run(&c, 10000);
    assert_true(c.done);
    assert_int_equal(c.close_code, 4002); /* the server echoes the code */
    assert_true(wait_count(&s.closes, 1, 5000));
    assert_int_equal(atomic_load(&s.last_close_code), 4002);
    assert_string_equal(s.last_reason, "done");
    wcli_finish(&c);

    /* a refused origin: the client hears -EPROTO (a 403 is no 101) */
    o.origin = "https://evil.example";
    assert_int_equal(wcli_connect(&c, url, &o), -EPROTO);
    wcli_finish(&c);
    wsrv_stop(&s);
}

/* The server closes: the client hears the code and the server ends TCP. */
static void close_from_server(ioloop_websocket_t *ws, int opcode, const char *data, size_t len, void *arg)
{
    (void)opcode, (void)len, (void)arg;
    if (strcmp(data, "bye") == 0)
        ioloop_websocket_close(ws, IOLOOP_WS_CLOSE_GOING_AWAY, "going", 5);
}

static void test_server_close_and_arguments(void **state)
{
    (void)state;
    wsrv_t s = {0};
    ioloop_websocket_route_t route = wsrv_route_defaults(&s);
    route.handlers.on_message = close_from_server;
    wsrv_start(&s, &route);
    char url[64];
    url_of(url, sizeof(url), s.t.port);
    wcli_t c;
    assert_int_equal(wcli_connect(&c, url, NULL), 0);
    assert_null(ioloop_websocket_subprotocol(c.ws));
    assert_null(ioloop_websocket_extensions(c.ws));
    assert_int_equal(ioloop_websocket_send(c.ws, IOLOOP_WS_PING, "x", 126), -EINVAL);
    assert_int_equal(ioloop_websocket_send(c.ws, IOLOOP_WS_CLOSE, "x", 1), -EINVAL);
    assert_int_equal(ioloop_websocket_send(c.ws, 3, "x", 1), -EINVAL);
    assert_int_equal(ioloop_websocket_close(c.ws, 1005, NULL, 0), -EINVAL);
    assert_int_equal(ioloop_websocket_close(c.ws, 999, NULL, 0), -EINVAL);
    assert_int_equal(ioloop_websocket_send(c.ws, IOLOOP_WS_TEXT, "bye", 3), 0);
    wcli_run(&c, 10000);
    assert_true(c.done);
    assert_int_equal(c.close_code, IOLOOP_WS_CLOSE_GOING_AWAY);
    assert_string_equal(c.close_reason, "going");
    assert_true(wait_count(&s.closes, 1, 5000));
    assert_int_equal(atomic_load(&s.last_close_code), IOLOOP_WS_CLOSE_GOING_AWAY); /* our client echoed it */
    wcli_finish(&c);
    wsrv_stop(&s);
}

/* Keep-alive: the server pings every 30 ms; our client answers and stays,
 * a raw client that never answers is dropped after the pong timeout. */
static void test_keepalive_ping_and_timeout(void **state)
{
    (void)state;
    wsrv_t s = {0};
    ioloop_websocket_route_t route = wsrv_route_defaults(&s);
    route.options.ping_interval = IOLOOP_MSEC(30);
    route.options.ping_timeout = IOLOOP_MSEC(300);
    wsrv_start(&s, &route);
    /* a client that answers: our own, kept open for 10 ping periods */
    char url[64];
    url_of(url, sizeof(url), s.t.port);
    wcli_t c;
    assert_int_equal(wcli_connect(&c, url, NULL), 0);
    wcli_run(&c, 400);
    assert_false(c.done); /* pongs kept it alive */
    wcli_roundtrip(&c, IOLOOP_WS_TEXT, "alive", 5);
    wcli_finish(&c);
    assert_true(wait_count(&s.closes, 1, 5000));
    /* a raw client that reads the pings and never answers: dropped (1006) */
    int fd = raw_open(s.t.port, "");
    uint8_t op, *d;
    size_t n;
    assert_int_equal(raw_recv(fd, NULL, &op, &d, &n), 0);
    assert_int_equal(op, IOLOOP_WS_PING);
    free(d);
    int64_t t0 = tu_now_ns();
    assert_int_equal(tcli_closed(fd, 5000, NULL), 1);
    assert_true(tu_now_ns() - t0 < 3000000000LL);
    assert_true(wait_count(&s.closes, 2, 5000));
    assert_int_equal(atomic_load(&s.last_close_code), IOLOOP_WS_CLOSE_ABNORMAL);
    close(fd);
    wsrv_stop(&s);
}

/* A graceful shutdown closes the websockets with 1001 and waits for their
 * close handshake; one that never answers is ended at the drain's timeout. */
static void test_shutdown_going_away(void **state)
{
    (void)state;
    wsrv_t s = {0};
    wsrv_start(&s, NULL);
    int polite = raw_open(s.t.port, "");
    int deaf = raw_open(s.t.port, "");
    raw_echo(polite, "before");
    raw_echo(deaf, "before");
    int64_t t0 = tu_now_ns();
    assert_int_equal(ioloop_http_server_shutdown(s.t.server, s.t.rt, s.t.listener, IOLOOP_MSEC(600)), 0);
    assert_int_equal(raw_expect_close(polite), IOLOOP_WS_CLOSE_GOING_AWAY);
    raw_send(polite, true, 0, IOLOOP_WS_CLOSE, "\x03\xe9", 2);
    assert_int_equal(tcli_closed(polite, 5000, NULL), 1); /* the server ended TCP after the handshake */
    assert_int_equal(raw_expect_close(deaf), IOLOOP_WS_CLOSE_GOING_AWAY);
    /* the deaf one never answers: the drain's timeout ends it, then the runtime stops */
    assert_int_equal(ioloop_runtime_join(s.t.rt), 0);
    int64_t took = tu_now_ns() - t0;
    assert_true(took >= 500000000LL && took < 5000000000LL);
    assert_true(tcli_closed(deaf, 5000, NULL) != 0);
    assert_int_equal(atomic_load(&s.closes), 2);
    close(polite);
    close(deaf);
    ioloop_listener_free(s.t.listener);
    ioloop_http_server_free(s.t.server);
    tsrv_free_runtime(&s.t);
}

/* ---- the client's checks against a fake server ------------------------------ */

typedef struct {
    int lfd, port;
    const char *response; /* "%s" gets the right accept key, or a literal */
    pthread_t thread;
} fake_t;

static void *fake_serve(void *arg)
{
    fake_t *f = arg;
    int fd = accept(f->lfd, NULL, NULL);
    if (fd < 0)
        return NULL;
    char buf[4096];
    size_t got = 0;
    while (got < sizeof(buf) - 1) {
        ssize_t k = recv(fd, buf + got, sizeof(buf) - 1 - got, 0);
        if (k <= 0)
            break;
        got += (size_t)k;
        buf[got] = 0;
        if (strstr(buf, "\r\n\r\n"))
            break;
    }
    char *key = strstr(buf, "Sec-WebSocket-Key: ");
    char accept_key[29] = "";
    if (key) { /* RFC 6455 4.2.2, computed here with OpenSSL directly (not the code under test) */
        char k[64];
        memcpy(k, key + 19, 24);
        strcpy(k + 24, "258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
        unsigned char md[20];
        SHA1((const unsigned char *)k, strlen(k), md);
        EVP_EncodeBlock((unsigned char *)accept_key, md, 20);
    }
    char resp[1024];
    snprintf(resp, sizeof(resp), f->response, accept_key);
    send(fd, resp, strlen(resp), MSG_NOSIGNAL);
    tu_sleep_ms(200);
    close(fd);
    return NULL;
}

static void fake_start(fake_t *f, const char *response)
{
    f->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(f->lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(listen(f->lfd, 4), 0);
    socklen_t sl = sizeof(sa);
    getsockname(f->lfd, (struct sockaddr *)&sa, &sl);
    f->port = ntohs(sa.sin_port);
    f->response = response;
    pthread_create(&f->thread, NULL, fake_serve, f);
}

static void fake_stop(fake_t *f)
{
    pthread_join(f->thread, NULL);
    close(f->lfd);
}

static int connect_fake(const char *response)
{
    fake_t f;
    fake_start(&f, response);
    char url[64];
    url_of(url, sizeof(url), f.port);
    wcli_t c;
    int rc = wcli_connect(&c, url, NULL);
    if (rc == 0)
        wcli_run(&c, 2000); /* the fake closes: on_close ends it */
    wcli_finish(&c);
    fake_stop(&f);
    return rc;
}

static void test_client_rejects_bad_handshakes(void **state)
{
    (void)state;
    const char *ok = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Accept: %s\r\n\r\n";
    assert_int_equal(connect_fake(ok), 0);
    assert_int_equal(connect_fake("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n%s"), -EPROTO);
    assert_int_equal(connect_fake("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                                  "Sec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\n\r\n%s"),
                     -EPROTO);
    assert_int_equal(connect_fake("HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n"
                                  "Sec-WebSocket-Accept: %s\r\n\r\n"),
                     -EPROTO);
    /* an extension or a subprotocol we did not offer */
    assert_int_equal(connect_fake("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                                  "Sec-WebSocket-Accept: %s\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n"),
                     -EPROTO);
    assert_int_equal(connect_fake("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                                  "Sec-WebSocket-Accept: %s\r\nSec-WebSocket-Protocol: x\r\n\r\n"),
                     -EPROTO);
    /* the server closes before answering */
    assert_int_equal(connect_fake(""), -EPROTO);
    /* bad URLs; a refused port */
    wcli_t c;
    /* (the HTTP client's schemes and any other are -EINVAL here, never -EPROTONOSUPPORT; a
     * fragment is refused, not dropped, even with no path before it) */
    const char *bad[] = {"http://x/",     "https://x/",  "ftp://x/",   "wsx://x/",      "ws://",
                         "ws://:80/",     "ws://h:0/",   "ws://[::1/", "ws://h:99999/", "ws://u@h/",
                         "ws://h/a#frag", "ws://h#frag", "ws://h/a b"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        assert_int_equal(wcli_connect(&c, bad[i], NULL), -EINVAL);
        wcli_finish(&c);
    }
    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bind(lfd, (struct sockaddr *)&sa, sizeof(sa));
    socklen_t sl = sizeof(sa);
    getsockname(lfd, (struct sockaddr *)&sa, &sl);
    char url[64];
    url_of(url, sizeof(url), ntohs(sa.sin_port));
    assert_int_equal(wcli_connect(&c, url, NULL), -ECONNREFUSED); /* bound, not listening */
    wcli_finish(&c);
    close(lfd);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_raw_echo_and_close),         cmocka_unit_test(test_bytes_after_handshake),
        cmocka_unit_test(test_handshake_refused),          cmocka_unit_test(test_client_echo_compression_subprotocol),
        cmocka_unit_test(test_server_close_and_arguments), cmocka_unit_test(test_keepalive_ping_and_timeout),
        cmocka_unit_test(test_shutdown_going_away),        cmocka_unit_test(test_client_rejects_bad_handshakes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
