/* test_http_proxy_protocol.c — the PROXY protocol on an HTTP server's listener
 * (proxy_protocol = REQUIRED through ioloop_http_server_serve_with): the
 * request's remote_ip and the access log carry the header's source (v1,
 * v2 IPv4, IPv6, unix, LOCAL keeps the real peer), a header split byte by
 * byte or sent with the request in one segment, and the refusals (absent,
 * bad signature, bad version, too long, malformed) that close the connection
 * before any response, while other clients are still served. Hostile peers:
 * a silent one and a byte-per-interval one (closed by the header timeout), a
 * reset mid-header, a never-reading client, and a handler that answers late.
 * Threading rule: the test thread drives raw-socket clients; the server runs
 * on a one-loop runtime (test_http_util.h).
 */
#define _GNU_SOURCE
#include "test_http_util.h"

#include <fcntl.h>
#include <sys/stat.h>

/* Answers with the request's remote address. */
static void echo_ip(ioloop_http_request_t *req, void *arg)
{
    (void)arg;
    const char *ip = ioloop_http_request_remote_ip(req);
    ioloop_http_response_send(req, 200, "text/plain", ip, strlen(ip));
}

static void late_finish(ioloop_t *loop, void *arg)
{
    (void)loop;
    echo_ip(arg, NULL);
}

/* Answers the same, 50 ms later, from a timer. */
static void echo_ip_late(ioloop_http_request_t *req, void *arg)
{
    (void)arg;
    assert_int_equal(ioloop_call_later(ioloop_http_request_loop(req), IOLOOP_MSEC(50), late_finish, req, NULL), 0);
}

static void start_proxied(tsrv_t *t, ioloop_time_t timeout, ioloop_http_access_log_t *log)
{
    tsrv_init(t, NULL);
    tsrv_route(t, "/ip", (ioloop_http_route_t){.get = echo_ip});
    tsrv_route(t, "/late", (ioloop_http_route_t){.get = echo_ip_late});
    if (log)
        ioloop_http_server_set_log(t->server, ioloop_http_access_log_hook, log);
    ioloop_listener_options_t o = {
        .address = "127.0.0.1", .proxy_protocol = IOLOOP_PROXY_PROTOCOL_REQUIRED, .proxy_timeout = timeout};
    assert_int_equal(ioloop_http_server_serve_with(t->server, t->rt, &o, &t->listener), 0);
    t->port = ioloop_listener_port(t->listener);
}

static const char GET_IP[] = "GET /ip HTTP/1.1\r\nHost: x\r\n\r\n";

/* Sends header (hlen bytes) then GET /ip; expects body `ip`. */
static void expect_ip(int port, const void *header, size_t hlen, const char *ip)
{
    int fd = tcli_connect(port);
    tcli_sendn(fd, header, hlen);
    tcli_send(fd, GET_IP);
    TCLI_EXPECT_BODY(fd, ip);
    /* keep-alive: the next request on the connection needs no new header */
    tcli_send(fd, GET_IP);
    TCLI_EXPECT_BODY(fd, ip);
    close(fd);
}

/* A connection that sends `bytes` and must be closed with no response. */
static void expect_refused(int port, const void *bytes, size_t len)
{
    int fd = tcli_connect(port);
    tcli_sendn(fd, bytes, len);
    size_t extra = 99;
    int closed = tcli_closed(fd, 3000, &extra);
    assert_true(closed != 0); /* closed (a reset is fine: the request was unread) */
    if (closed == 1)
        assert_int_equal(extra, 0); /* and nothing was answered */
    close(fd);
}

static void test_v1_and_v2_addresses(void **state)
{
    (void)state;
    tsrv_t t;
    start_proxied(&t, 0, NULL);
    const char *v1 = "PROXY TCP4 192.0.2.7 198.51.100.1 56324 80\r\n";
    expect_ip(t.port, v1, strlen(v1), "192.0.2.7");
    const char *v1_6 = "PROXY TCP6 2001:db8::7 2001:db8::1 56324 80\r\n";
    expect_ip(t.port, v1_6, strlen(v1_6), "2001:db8::7");
    const char *unknown = "PROXY UNKNOWN\r\n";
    expect_ip(t.port, unknown, strlen(unknown), "127.0.0.1"); /* the real peer */

    unsigned char buf[300];
    unsigned char in4[12] = {203, 0, 113, 9, 127, 0, 0, 1, 0x30, 0x39, 0x00, 0x50};
    expect_ip(t.port, buf, tu_proxy_v2_header(buf, 0x21, 0x11, in4, sizeof(in4)), "203.0.113.9");
    unsigned char in6[36] = {0};
    inet_pton(AF_INET6, "2001:db8::42", in6);
    inet_pton(AF_INET6, "::1", in6 + 16);
    expect_ip(t.port, buf, tu_proxy_v2_header(buf, 0x21, 0x21, in6, sizeof(in6)), "2001:db8::42");
    unsigned char un[216] = {0};
    strcpy((char *)un, "/run/client.sock");
    strcpy((char *)un + 108, "/run/server.sock");
    expect_ip(t.port, buf, tu_proxy_v2_header(buf, 0x21, 0x31, un, sizeof(un)), ""); /* a unix peer has no IP */
    expect_ip(t.port, buf, tu_proxy_v2_header(buf, 0x20, 0x31, un, sizeof(un)), "127.0.0.1"); /* LOCAL over unix */
    expect_ip(t.port, buf, tu_proxy_v2_header(buf, 0x20, 0x00, NULL, 0), "127.0.0.1");        /* LOCAL health check */
    tsrv_stop(&t);
}

/* Byte by byte, each its own segment and (with the pause) its own read. */
static void test_split_byte_by_byte(void **state)
{
    (void)state;
    tsrv_t t;
    start_proxied(&t, 0, NULL);
    const char *v1 = "PROXY TCP4 192.0.2.8 198.51.100.1 1234 80\r\n";
    unsigned char in4[12] = {198, 18, 0, 1, 127, 0, 0, 1, 0x30, 0x39, 0x00, 0x50};
    unsigned char v2[64];
    size_t v2len = tu_proxy_v2_header(v2, 0x21, 0x11, in4, sizeof(in4));
    for (int round = 0; round < 2; round++) {
        const unsigned char *h = round ? v2 : (const unsigned char *)v1;
        size_t len = round ? v2len : strlen(v1);
        int fd = tcli_connect(t.port);
        for (size_t i = 0; i < len; i++) {
            tcli_sendn(fd, h + i, 1);
            tu_sleep_ms(2);
        }
        tcli_send(fd, GET_IP);
        TCLI_EXPECT_BODY(fd, round ? "198.18.0.1" : "192.0.2.8");
        close(fd);
    }
    /* The header and the request in one segment: the request is not lost. */
    char both[256];
    snprintf(both, sizeof(both), "%s%s", v1, GET_IP);
    int fd = tcli_connect(t.port);
    tcli_send(fd, both);
    TCLI_EXPECT_BODY(fd, "192.0.2.8");
    close(fd);
    tsrv_stop(&t);
}

static void test_refusals_and_others_served(void **state)
{
    (void)state;
    tsrv_t t;
    start_proxied(&t, 0, NULL);
    int bystander = tcli_connect(t.port); /* mid-header while the refusals happen */
    tcli_send(bystander, "PROXY TCP4 192.0.2.9 ");

    expect_refused(t.port, GET_IP, strlen(GET_IP)); /* absent */
    const char *badsig = "PROXX TCP4 192.0.2.7 198.51.100.1 1 2\r\nGET / HTTP/1.1\r\n\r\n";
    expect_refused(t.port, badsig, strlen(badsig));
    const char *malformed = "PROXY TCP4 192.0.2.700 198.51.100.1 1 2\r\n";
    expect_refused(t.port, malformed, strlen(malformed));
    char longline[200];
    memcpy(longline, "PROXY UNKNOWN ", 14);
    memset(longline + 14, 'a', sizeof(longline) - 14); /* no CRLF within 107 bytes */
    expect_refused(t.port, longline, sizeof(longline));
    unsigned char buf[64], in4[12] = {0};
    expect_refused(t.port, buf, tu_proxy_v2_header(buf, 0x11, 0x11, in4, sizeof(in4))); /* version 1 in a v2 header */
    expect_refused(t.port, buf, tu_proxy_v2_header(buf, 0x23, 0x11, in4, sizeof(in4))); /* command 3 */
    tu_proxy_v2_header(buf, 0x21, 0x11, in4, sizeof(in4));
    buf[14] = 0x08, buf[15] = 0x00; /* declares 2048 bytes: over the limit, refused from the preamble */
    expect_refused(t.port, buf, 16);
    static const unsigned char hello[] = {0x16, 0x03, 0x01, 0x00, 0x05, 0x01, 0x00, 0x00, 0x01, 0x00};
    expect_refused(t.port, hello, sizeof(hello)); /* TLS straight at a PROXY listener */

    /* The bystander finishes its header and is served; so is a fresh client. */
    tcli_send(bystander, "198.51.100.1 1 2\r\n");
    tcli_send(bystander, GET_IP);
    TCLI_EXPECT_BODY(bystander, "192.0.2.9");
    close(bystander);
    const char *v1 = "PROXY TCP4 192.0.2.10 198.51.100.1 1 2\r\n";
    expect_ip(t.port, v1, strlen(v1), "192.0.2.10");
    tsrv_stop(&t); /* checks live_connections is back to 0: every refused one was counted and released */
}

static void test_timeout_silent_and_slow(void **state)
{
    (void)state;
    tsrv_t t;
    start_proxied(&t, IOLOOP_MSEC(300), NULL);
    int silent = tcli_connect(t.port);
    int slow = tcli_connect(t.port);
    int64_t t0 = tu_now_ns();
    /* One byte every 40 ms: always making progress, never done in time (the
     * timeout covers the whole header, not the gap between bytes). */
    const char *v1 = "PROXY TCP4 192.0.2.7 198.51.100.1 56324 80\r\n";
    size_t sent = 0;
    for (; sent < strlen(v1) - 2; sent++) {
        if (send(slow, v1 + sent, 1, MSG_NOSIGNAL) != 1)
            break; /* closed under us: the timeout hit */
        tu_sleep_ms(40);
    }
    assert_true(sent < strlen(v1) - 2);
    assert_true(tcli_closed(slow, 5000, NULL) != 0);
    assert_true(tcli_closed(silent, 5000, NULL) != 0);
    int64_t took = tu_now_ns() - t0;
    assert_true(took >= IOLOOP_MSEC(250)); /* not before the timeout... */
    assert_true(took < IOLOOP_SEC(5));     /* ...and well before the default 10 s */
    close(silent);
    close(slow);
    /* A peer that resets halfway through its header. */
    int reset = tcli_connect(t.port);
    tcli_send(reset, "PROXY TCP4 1");
    struct linger lg = {.l_onoff = 1, .l_linger = 0};
    setsockopt(reset, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    close(reset);
    expect_ip(t.port, v1, strlen(v1), "192.0.2.7");
    tsrv_stop(&t);
}

/* A client that pipelines requests behind its header and never reads; another
 * is served meanwhile; a late handler sees the carried address too. */
static void test_never_reading_and_late_handler(void **state)
{
    (void)state;
    tsrv_t t;
    start_proxied(&t, 0, NULL);
    int hog = tcli_connect(t.port);
    const char *v1 = "PROXY TCP4 192.0.2.11 198.51.100.1 1 2\r\n";
    tcli_send(hog, v1);
    fcntl(hog, F_SETFL, O_NONBLOCK);
    for (int i = 0; i < 20000; i++)
        if (send(hog, GET_IP, strlen(GET_IP), MSG_NOSIGNAL) <= 0)
            break; /* the server stopped reading (bounded output): our buffer filled */
    int fd = tcli_connect(t.port);
    const char *v1b = "PROXY TCP4 192.0.2.12 198.51.100.1 1 2\r\n";
    tcli_send(fd, v1b);
    tcli_send(fd, "GET /late HTTP/1.1\r\nHost: x\r\n\r\n");
    TCLI_EXPECT_BODY(fd, "192.0.2.12");
    close(fd);
    close(hog);
    tsrv_stop(&t);
}

static void test_access_log_carries_address(void **state)
{
    (void)state;
    char path[] = "/tmp/ioloop-proxy-log-XXXXXX";
    int tmp = mkstemp(path);
    assert_true(tmp >= 0);
    close(tmp);
    ioloop_http_access_log_t *log;
    assert_int_equal(ioloop_http_access_log_open(path, IOLOOP_HTTP_LOG_COMMON, &log), 0);
    tsrv_t t;
    start_proxied(&t, 0, log);
    const char *v1 = "PROXY TCP4 192.0.2.77 198.51.100.1 1 2\r\n";
    expect_ip(t.port, v1, strlen(v1), "192.0.2.77");
    tsrv_stop(&t);
    ioloop_http_access_log_close(log);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    char line[512];
    int lines = 0;
    while (fgets(line, sizeof(line), f)) {
        if (strncmp(line, "192.0.2.77 - - [", 16) != 0)
            fail_msg("log line without the carried address: %s", line);
        lines++;
    }
    fclose(f);
    unlink(path);
    assert_int_equal(lines, 2);
}

/* A connection still sending its header when the shutdown begins becomes a
 * connection of the server and is answered, then closed cleanly by the
 * drain, before the runtime stops; meanwhile ioloop_listener_pending counts it. */
static void test_shutdown_waits_for_headers(void **state)
{
    (void)state;
    tsrv_t t;
    start_proxied(&t, IOLOOP_SEC(5), NULL);
    int fd = tcli_connect(t.port);
    tcli_send(fd, "PROXY TCP4 192.0.2.9 ");
    int64_t until = tu_now_ns() + IOLOOP_SEC(5);
    while (ioloop_listener_pending(t.listener, t.loop) != 1 && tu_now_ns() < until)
        tu_sleep_ms(2);
    assert_int_equal(ioloop_listener_pending(t.listener, t.loop), 1);
    assert_int_equal(ioloop_http_server_shutdown(t.server, t.rt, t.listener, IOLOOP_SEC(5)), 0);
    tu_sleep_ms(150); /* a drain that did not wait would have stopped the runtime by now */
    tcli_send(fd, "198.51.100.1 1 2\r\n");
    tcli_send(fd, GET_IP);
    tresp_t r;
    assert_int_equal(tcli_response(fd, &r), 0);
    assert_string_equal(r.body, "192.0.2.9");
    tresp_free(&r);
    assert_int_equal(tcli_closed(fd, 3000, NULL), 1); /* then the drain closes it, cleanly */
    assert_int_equal(ioloop_runtime_join(t.rt), 0);   /* the shutdown stopped it */
    assert_int_equal(ioloop_listener_pending(t.listener, t.loop), 0);
    close(fd);
    tsrv_stop(&t);
}

/* The option's rules: needs on_stream, a known value. */
static void test_options(void **state)
{
    (void)state;
    tsrv_t t;
    tsrv_init(&t, NULL);
    ioloop_listener_t *l = NULL;
    ioloop_listener_options_t o = {.address = "127.0.0.1",
                                   .proxy_protocol = IOLOOP_PROXY_PROTOCOL_REQUIRED,
                                   .on_accept = ioloop_http_server_accept,
                                   .arg = t.server};
    assert_int_equal(ioloop_listener_start(t.rt, &o, &l), -EINVAL); /* a raw fd cannot be read through a stream */
    o.proxy_protocol = (ioloop_proxy_protocol_t)7;
    o.on_accept = NULL;
    assert_int_equal(ioloop_http_server_serve_with(t.server, t.rt, &o, &l), -EINVAL);
    /* Off (the default): a PROXY line is just a bad request. */
    tsrv_route(&t, "/ip", (ioloop_http_route_t){.get = echo_ip});
    tsrv_start(&t);
    int fd = tcli_connect(t.port);
    tcli_send(fd, "PROXY TCP4 192.0.2.7 198.51.100.1 1 2\r\n");
    tcli_send(fd, GET_IP);
    tresp_t r;
    assert_int_equal(tcli_response(fd, &r), 0);
    assert_int_equal(r.status, 400);
    tresp_free(&r);
    close(fd);
    tsrv_stop(&t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_v1_and_v2_addresses),
        cmocka_unit_test(test_split_byte_by_byte),
        cmocka_unit_test(test_refusals_and_others_served),
        cmocka_unit_test(test_timeout_silent_and_slow),
        cmocka_unit_test(test_never_reading_and_late_handler),
        cmocka_unit_test(test_access_log_carries_address),
        cmocka_unit_test(test_shutdown_waits_for_headers),
        cmocka_unit_test(test_options),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
