/* test_websocket_abuse.c — hostile WebSocket peers against our server, each
 * while another client is being served: invalid frames (reserved bits, bad
 * opcode, unmasked frame, invalid UTF-8, a control frame over 125 bytes, an
 * oversized and a compressed-bomb message) get the right close code and the
 * TCP end; a client that never reads sees the server's sends refused with
 * -ENOBUFS at a bounded output, then on_drain once it reads; a client
 * sending a frame a byte at a time does not delay the others; a reset in the
 * middle of a message ends that websocket (1006) and nothing else.
 */
#include "test_ws_util.h"

#include <zlib.h>

/* Sends one bad frame on a fresh websocket; expects its close code, then
 * the server's FIN; the other client still gets its echo. */
static void expect_failure(wsrv_t *s, int other, const uint8_t *frame, size_t len, int code)
{
    int fd = raw_open(s->t.port, "");
    tcli_sendn(fd, frame, len);
    assert_int_equal(raw_expect_close(fd), code);
    /* we answer the close as a client does; the server then ends TCP */
    raw_send(fd, true, 0, IOLOOP_WS_CLOSE, "\x03\xe8", 2);
    assert_int_equal(tcli_closed(fd, 8000, NULL), 1);
    close(fd);
    raw_echo(other, "still here");
}

static void test_invalid_frames(void **state)
{
    (void)state;
    wsrv_t s = {0};
    ioloop_websocket_route_t route = wsrv_route_defaults(&s);
    route.options.max_message_size = 1000;
    wsrv_start(&s, &route);
    int other = raw_open(s.t.port, "");
    raw_echo(other, "first");
    uint8_t buf[2048], big[1500];
    memset(big, 'a', sizeof(big));
    size_t n;
    n = raw_frame(buf, true, 0x40, IOLOOP_WS_TEXT, "rsv1", 4, true); /* RSV1 without compression */
    expect_failure(&s, other, buf, n, 1002);
    n = raw_frame(buf, true, 0x20, IOLOOP_WS_TEXT, "rsv2", 4, true);
    expect_failure(&s, other, buf, n, 1002);
    n = raw_frame(buf, true, 0, 0x3, "op3", 3, true);
    expect_failure(&s, other, buf, n, 1002);
    n = raw_frame(buf, true, 0, 0xb, "opb", 3, true);
    expect_failure(&s, other, buf, n, 1002);
    n = raw_frame(buf, true, 0, IOLOOP_WS_TEXT, "unmasked", 8, false);
    expect_failure(&s, other, buf, n, 1002);
    n = raw_frame(buf, true, 0, IOLOOP_WS_TEXT, "bad \xc0\xaf utf8", 12, true);
    expect_failure(&s, other, buf, n, 1007);
    n = raw_frame(buf, true, 0, IOLOOP_WS_PING, big, 126, true);
    expect_failure(&s, other, buf, n, 1002);
    n = raw_frame(buf, false, 0, IOLOOP_WS_PING, "frag", 4, true);
    expect_failure(&s, other, buf, n, 1002);
    n = raw_frame(buf, true, 0, IOLOOP_WS_CLOSE, "\x03\xed", 2, true); /* 1005 may not be sent */
    expect_failure(&s, other, buf, n, 1002);
    n = raw_frame(buf, true, 0, IOLOOP_WS_BINARY, big, 1001, true);
    expect_failure(&s, other, buf, n, 1009);
    n = raw_frame(buf, true, 0, 0, "cont", 4, true);
    expect_failure(&s, other, buf, n, 1002);
    assert_true(wait_count(&s.closes, 11, 5000));
    assert_int_equal(atomic_load(&s.messages), 12); /* only the other client's (its first echo and 11 more) */
    raw_send(other, true, 0, IOLOOP_WS_CLOSE, "\x03\xe8", 2);
    assert_int_equal(raw_expect_close(other), 1000);
    close(other);
    wsrv_stop(&s);
}

/* 64 MiB of zeros, deflated, against a 1 MiB limit: 1009, memory bounded. */
static void test_compressed_bomb(void **state)
{
    (void)state;
    wsrv_t s = {0};
    ioloop_websocket_route_t route = wsrv_route_defaults(&s);
    route.options.compression = true;
    route.options.max_message_size = 1u << 20;
    wsrv_start(&s, &route);
    int fd = raw_open(s.t.port, "Sec-WebSocket-Extensions: permessage-deflate\r\n");
    size_t big = 64u << 20;
    char *zeros = calloc(1, big);
    z_stream z = {0};
    assert_int_equal(deflateInit2(&z, 9, Z_DEFLATED, -15, 8, Z_DEFAULT_STRATEGY), Z_OK);
    size_t cap = deflateBound(&z, big);
    uint8_t *out = malloc(cap);
    z.next_in = (Bytef *)zeros;
    z.avail_in = (uInt)big;
    z.next_out = out;
    z.avail_out = (uInt)cap;
    assert_int_equal(deflate(&z, Z_SYNC_FLUSH), Z_OK);
    size_t zl = cap - z.avail_out - 4;
    deflateEnd(&z);
    free(zeros);
    uint8_t *frame = malloc(zl + 14);
    size_t n = raw_frame(frame, true, 0x40, IOLOOP_WS_BINARY, out, zl, true);
    tcli_sendn(fd, frame, n);
    assert_int_equal(raw_expect_close(fd), 1009);
    free(frame);
    free(out);
    close(fd);
    assert_true(wait_count(&s.closes, 1, 5000));
    assert_int_equal(atomic_load(&s.last_close_code), 1009);
    wsrv_stop(&s);
}

/* The server sends 64 KiB messages, and more at each drain, to a client
 * that does not read: once the kernel's buffers are full the sends stay
 * refused (-ENOBUFS) with the output bounded at the mark; another client is
 * served meanwhile; once the client reads, the drains (and sends) resume. */
static void test_never_reading_client(void **state)
{
    (void)state;
    wsrv_t s = {0};
    atomic_store(&s.flood, 65536);
    wsrv_start(&s, NULL);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int small = 8192;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small)); /* before connect: a small window */
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)s.t.port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    struct timeval tv = {.tv_sec = 5};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    tcli_send(fd, "GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n");
    assert_true(wait_count(&s.enobufs, 1, 5000));
    /* the kernel's buffers fill, then nothing moves: sent bytes stay put */
    size_t sent = 0;
    for (int i = 0; i < 100; i++) {
        tu_sleep_ms(50);
        size_t now = atomic_load(&s.flood_sent);
        if (now == sent && i > 4)
            break;
        sent = now;
    }
    assert_true(sent < (64u << 20)); /* held back, not the cap */
    tu_sleep_ms(200);
    assert_int_equal(atomic_load(&s.flood_sent), sent);
    int drains = atomic_load(&s.drains);
    /* the stream's mark (the HTTP server's 256 KiB) plus the one send that crossed it */
    size_t max = atomic_load(&s.max_buffered);
    assert_true(max >= 256u * 1024);
    assert_true(max < 256u * 1024 + 65536 + 64);
    /* another client is served meanwhile */
    int other = raw_open(s.t.port, "");
    raw_echo(other, "served");
    /* now read: the output drains, on_drain sends more */
    tresp_t r;
    assert_int_equal(tcli_response_ex(fd, &r, true, true), 0);
    assert_int_equal(r.status, 101);
    tresp_free(&r);
    size_t total = 0;
    while (total < sent) {
        uint8_t op, *d;
        size_t n;
        assert_int_equal(raw_recv(fd, NULL, &op, &d, &n), 0);
        assert_int_equal(op, IOLOOP_WS_BINARY);
        assert_int_equal(n, 65536);
        free(d);
        total += n;
    }
    assert_true(atomic_load(&s.drains) > drains);
    assert_true(atomic_load(&s.flood_sent) > sent);
    close(fd);
    close(other);
    wsrv_stop(&s);
}

/* One byte every 20 ms of a frame: the other client's echoes are not
 * delayed, and the slow frame arrives whole in the end. */
static void test_byte_at_a_time(void **state)
{
    (void)state;
    wsrv_t s = {0};
    wsrv_start(&s, NULL);
    int slow = raw_open(s.t.port, "");
    int other = raw_open(s.t.port, "");
    uint8_t buf[64];
    size_t n = raw_frame(buf, true, 0, IOLOOP_WS_TEXT, "slow", 4, true);
    for (size_t i = 0; i < n; i++) {
        tcli_sendn(slow, buf + i, 1);
        int64_t t0 = tu_now_ns();
        raw_echo(other, "fast");
        assert_true(tu_now_ns() - t0 < 2000000000LL); /* generous: a shared machine */
        tu_sleep_ms(20);
    }
    uint8_t op, *d;
    size_t dl;
    assert_int_equal(raw_recv(slow, NULL, &op, &d, &dl), 0);
    assert_int_equal(dl, 4);
    assert_memory_equal(d, "slow", 4);
    free(d);
    close(slow);
    close(other);
    wsrv_stop(&s);
}

/* A reset in the middle of a large message: that websocket ends (1006), its
 * partial message is freed, the others go on. */
static void test_reset_mid_message(void **state)
{
    (void)state;
    wsrv_t s = {0};
    wsrv_start(&s, NULL);
    int other = raw_open(s.t.port, "");
    int fd = raw_open(s.t.port, "");
    size_t len = 1u << 20;
    uint8_t *payload = calloc(1, len), *frame = malloc(len + 14);
    size_t n = raw_frame(frame, true, 0, IOLOOP_WS_BINARY, payload, len, true);
    tcli_sendn(fd, frame, n / 3);
    tu_sleep_ms(50);
    struct linger lg = {.l_onoff = 1, .l_linger = 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    close(fd); /* RST */
    assert_true(wait_count(&s.closes, 1, 5000));
    assert_int_equal(atomic_load(&s.last_close_code), IOLOOP_WS_CLOSE_ABNORMAL);
    raw_echo(other, "unaffected");
    free(payload);
    free(frame);
    close(other);
    wsrv_stop(&s);
}

static void close_on_request(ioloop_websocket_t *ws, int opcode, const char *data, size_t len, void *arg)
{
    (void)opcode, (void)len, (void)arg;
    if (strcmp(data, "close-me") == 0)
        assert_int_equal(ioloop_websocket_close(ws, IOLOOP_WS_CLOSE_NORMAL, "bye", 3), 0);
}

/* The server closes and the peer never answers the close frame: the
 * connection ends after close_timeout (not before), on_close says 1006. */
static void test_close_timeout(void **state)
{
    (void)state;
    wsrv_t s = {0};
    ioloop_websocket_route_t route = wsrv_route_defaults(&s);
    route.handlers.on_message = close_on_request;
    route.options.close_timeout = IOLOOP_MSEC(300);
    wsrv_start(&s, &route);
    int fd = raw_open(s.t.port, "");
    raw_send(fd, true, 0, IOLOOP_WS_TEXT, "close-me", 8);
    int64_t t0 = tu_now_ns();
    assert_int_equal(raw_expect_close(fd), 1000);
    assert_int_equal(tcli_closed(fd, 100, NULL), 0); /* still open: waiting for our close frame */
    assert_true(tcli_closed(fd, 5000, NULL) != 0);
    int64_t waited = tu_now_ns() - t0;
    assert_true(waited >= 250000000LL && waited < 4000000000LL);
    assert_true(wait_count(&s.closes, 1, 5000));
    assert_int_equal(atomic_load(&s.last_close_code), IOLOOP_WS_CLOSE_ABNORMAL);
    close(fd);
    wsrv_stop(&s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_invalid_frames),       cmocka_unit_test(test_compressed_bomb),
        cmocka_unit_test(test_never_reading_client), cmocka_unit_test(test_byte_at_a_time),
        cmocka_unit_test(test_reset_mid_message),    cmocka_unit_test(test_close_timeout),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
