/* test_http_serve_with.c — ioloop_http_server_serve_with: every listener
 * option reaches the listener (address, backlog, mode, the streams' limits
 * and transport), the server's own on_stream/arg win over the caller's, a
 * stream limit too small for a request head is raised, and a connection
 * whose transport is named "tls" serves requests that say "https" (a
 * pass-through transport stands in for TLS, so this needs no OpenSSL).
 * Threading rule: the server runs on a one-loop runtime's thread; the test
 * talks to it through sockets and atomics.
 */
#include "test_http_util.h"

static tsrv_t srv;

/* Answers the request's protocol ("http" / "https"). */
static void proto(ioloop_http_request_t *req, void *arg)
{
    (void)arg;
    const char *p = ioloop_http_request_protocol(req);
    ioloop_http_response_send(req, 200, "text/plain", p, strlen(p));
}

static void bogus_accept(ioloop_t *loop, int fd, const struct sockaddr *peer, socklen_t peer_len, void *arg)
{
    (void)loop, (void)fd, (void)peer, (void)peer_len, (void)arg;
    fail_msg("the caller's on_accept must be ignored");
}

static void start_with(const ioloop_listener_options_t *o)
{
    tsrv_init(&srv, NULL);
    tsrv_route(&srv, "/", (ioloop_http_route_t){.get = proto});
    assert_int_equal(ioloop_http_server_serve_with(srv.server, srv.rt, o, &srv.listener), 0);
    srv.port = ioloop_listener_port(srv.listener);
    assert_true(srv.port > 0);
}

static void test_listener_options_reach_the_listener(void **state)
{
    (void)state;
    int bogus_arg;
    ioloop_listener_options_t o = {
        .address = "127.0.0.1",
        .backlog = 16,
        .mode = IOLOOP_ACCEPT_DISPATCH,
        .on_accept = bogus_accept, /* the server's on_stream replaces both */
        .arg = &bogus_arg,
    };
    start_with(&o);
    assert_int_equal(ioloop_listener_mode(srv.listener), IOLOOP_ACCEPT_DISPATCH);
    tresp_t r;
    tcli_request(srv.port, "GET / HTTP/1.1\r\nHost: x\r\n\r\n", &r);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "http");
    tresp_free(&r);
    tsrv_stop(&srv);
}

/* The caller's idle_timeout (200 ms) applies to the streams, where the
 * server's own default would keep an idle connection for an hour. */
static void test_stream_options_reach_the_streams(void **state)
{
    (void)state;
    ioloop_listener_options_t o = {.address = "127.0.0.1", .stream = {.idle_timeout = IOLOOP_MSEC(200)}};
    start_with(&o);
    int fd = tcli_connect(srv.port);
    tcli_send(fd, "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    TCLI_EXPECT_BODY(fd, "http");
    int64_t t0 = tu_now_ns();
    assert_int_equal(tcli_closed(fd, 4000, NULL), 1);
    int64_t waited_ms = (tu_now_ns() - t0) / 1000000;
    assert_true(waited_ms >= 100); /* not at once: after the idle time */
    close(fd);
    tsrv_stop(&srv);
}

/* A max_buffer_size below a request head would stall every large head
 * (reading stops at the limit, no error): the server raises it. */
static void test_small_input_limit_is_raised(void **state)
{
    (void)state;
    ioloop_listener_options_t o = {.address = "127.0.0.1", .stream = {.max_buffer_size = 64}};
    start_with(&o);
    char req[9000];
    char filler[8001];
    memset(filler, 'a', sizeof(filler) - 1);
    filler[sizeof(filler) - 1] = '\0';
    snprintf(req, sizeof(req), "GET / HTTP/1.1\r\nHost: x\r\nX-Filler: %s\r\n\r\n", filler);
    tresp_t r;
    tcli_request(srv.port, req, &r);
    assert_int_equal(r.status, 200);
    tresp_free(&r);
    tsrv_stop(&srv);
}

/* ---- the transport's name decides the protocol -------------------------- */

static ioloop_stream_transport_t fake_tls, other_transport; /* copies of the socket transport, renamed */
static atomic_int made;

static int make_fake(void *arg, int fd, ioloop_stream_options_t *opts)
{
    (void)fd;
    atomic_fetch_add(&made, 1);
    opts->transport = arg;
    opts->transport_ctx = NULL;
    return 0;
}

static void expect_protocol(const ioloop_stream_transport_t *t, const char *expected)
{
    atomic_store(&made, 0);
    ioloop_listener_options_t o = {
        .address = "127.0.0.1", .make_transport = make_fake, .make_transport_arg = (void *)t};
    start_with(&o);
    int fd = tcli_connect(srv.port);
    /* Keep-alive: every request on the connection says the same. */
    tcli_send(fd, "GET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n");
    TCLI_EXPECT_BODY(fd, expected);
    TCLI_EXPECT_BODY(fd, expected);
    close(fd);
    assert_int_equal(atomic_load(&made), 1);
    tsrv_stop(&srv);
}

static void test_tls_transport_says_https(void **state)
{
    (void)state;
    expect_protocol(&fake_tls, "https");
}

static void test_other_transport_says_http(void **state)
{
    (void)state;
    expect_protocol(&other_transport, "http");
}

/* X-Forwarded-Proto does not turn a TLS connection into "http": the bytes
 * did arrive encrypted. */
static void test_xheaders_do_not_downgrade(void **state)
{
    (void)state;
    ioloop_http_server_options_t so = {.xheaders = true};
    tsrv_init(&srv, &so);
    tsrv_route(&srv, "/", (ioloop_http_route_t){.get = proto});
    ioloop_listener_options_t o = {
        .address = "127.0.0.1", .make_transport = make_fake, .make_transport_arg = &fake_tls};
    assert_int_equal(ioloop_http_server_serve_with(srv.server, srv.rt, &o, &srv.listener), 0);
    srv.port = ioloop_listener_port(srv.listener);
    tresp_t r;
    tcli_request(srv.port, "GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-Proto: http\r\n\r\n", &r);
    assert_string_equal(r.body, "https");
    tresp_free(&r);
    tsrv_stop(&srv);
}

static void test_bad_arguments(void **state)
{
    (void)state;
    tsrv_init(&srv, NULL);
    ioloop_listener_options_t o = {.address = "127.0.0.1"};
    ioloop_listener_t *l = NULL;
    assert_int_equal(ioloop_http_server_serve_with(NULL, srv.rt, &o, &l), -EINVAL);
    assert_int_equal(ioloop_http_server_serve_with(srv.server, NULL, &o, &l), -EINVAL);
    assert_int_equal(ioloop_http_server_serve_with(srv.server, srv.rt, NULL, &l), -EINVAL);
    assert_int_equal(ioloop_http_server_serve_with(srv.server, srv.rt, &o, NULL), -EINVAL);
    /* A listener error comes back as is. */
    o.address = "not an address";
    assert_true(ioloop_http_server_serve_with(srv.server, srv.rt, &o, &l) < 0);
    ioloop_http_server_free(srv.server);
    tsrv_free_runtime(&srv);
}

int main(void)
{
    fake_tls = ioloop_stream_transport_socket;
    fake_tls.name = "tls";
    other_transport = ioloop_stream_transport_socket;
    other_transport.name = "counting";
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_listener_options_reach_the_listener),
        cmocka_unit_test(test_stream_options_reach_the_streams),
        cmocka_unit_test(test_small_input_limit_is_raised),
        cmocka_unit_test(test_tls_transport_says_https),
        cmocka_unit_test(test_other_transport_says_http),
        cmocka_unit_test(test_xheaders_do_not_downgrade),
        cmocka_unit_test(test_bad_arguments),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
