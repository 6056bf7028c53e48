/* test_https_server.c — the HTTP server over TLS (serve_with +
 * ioloop_tls_server_options), driven by our TLS client: requests say
 * "https" on TLS 1.3 and 1.2; pipelined requests in one TLS write are all
 * answered; clients that reset mid-response (a large one) leave no
 * connection, request or byte behind (ASan/valgrind see the rest) and the
 * server keeps serving; plain HTTP sent to the TLS port is closed cleanly
 * (a FIN, not a reset) and the server keeps serving.
 * Threading rule: the server runs on a one-loop runtime's thread; the client
 * runs its own loop on the test's thread (test_https_util.h).
 */
#include "test_http_util.h"
#include "test_https_util.h"

static tsrv_t srv;
static tcerts_t certs;
static ioloop_tls_context_t *server_ctx, *client_ctx, *client12_ctx;

enum { BIG = 8 << 20 };
static char *big_body;

static void proto(ioloop_http_request_t *req, void *arg)
{
    (void)arg;
    const char *p = ioloop_http_request_protocol(req);
    ioloop_http_response_send(req, 200, "text/plain", p, strlen(p));
}

static void big(ioloop_http_request_t *req, void *arg)
{
    (void)arg;
    ioloop_http_response_send(req, 200, "application/octet-stream", big_body, BIG);
}

static int group_setup(void **state)
{
    (void)state;
    tcerts_make(&certs);
    server_ctx = tcerts_server_context(&certs);
    client_ctx = tcerts_client_context(certs.ca, IOLOOP_TLS_VERSION_DEFAULT);
    client12_ctx = tcerts_client_context(certs.ca, IOLOOP_TLS_1_2);
    big_body = malloc(BIG);
    assert_non_null(big_body);
    memset(big_body, 'b', BIG);
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    ioloop_tls_context_free(server_ctx);
    ioloop_tls_context_free(client_ctx);
    ioloop_tls_context_free(client12_ctx);
    free(big_body);
    tcerts_remove(&certs);
    return 0;
}

static int setup(void **state)
{
    (void)state;
    tsrv_init(&srv, NULL);
    tsrv_route(&srv, "/", (ioloop_http_route_t){.get = proto});
    tsrv_route(&srv, "/big", (ioloop_http_route_t){.get = big});
    ioloop_listener_options_t o = {.address = "127.0.0.1"};
    ioloop_tls_server_options(server_ctx, &o);
    assert_int_equal(ioloop_http_server_serve_with(srv.server, srv.rt, &o, &srv.listener), 0);
    srv.port = ioloop_listener_port(srv.listener);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    tsrv_stop(&srv);
    return 0;
}

/* Waits (bounded) until the server's loop has no live connection. */
static void wait_no_connections(void)
{
    ioloop_stats_t st;
    for (int i = 0; i < 500; i++) {
        ioloop_get_stats(srv.loop, &st);
        if (st.live_connections == 0)
            return;
        tu_sleep_ms(10);
    }
    fail_msg("%lld connections still open", (long long)st.live_connections);
}

static void expect_https(ioloop_tls_context_t *ctx, const char *version)
{
    tfetch_t f = {.request = "GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"};
    tfetch(&f, srv.port, ctx, "localhost");
    assert_int_equal(f.connect_status, 0);
    assert_int_equal(f.read_status, IOLOOP_EOF);
    assert_string_equal(f.version, version);
    assert_non_null(f.data);
    assert_non_null(strstr(f.data, "HTTP/1.1 200 OK\r\n"));
    const char *body = strstr(f.data, "\r\n\r\n");
    assert_non_null(body);
    assert_string_equal(body + 4, "https");
    free(f.data);
}

static void test_requests_say_https(void **state)
{
    (void)state;
    expect_https(client_ctx, "TLSv1.3");
    expect_https(client12_ctx, "TLSv1.2");
}

static void test_pipelined_in_one_record(void **state)
{
    (void)state;
    tfetch_t f = {.request = "GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"
                             "GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"
                             "GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"};
    tfetch(&f, srv.port, client_ctx, "localhost");
    assert_int_equal(f.read_status, IOLOOP_EOF);
    int answered = 0;
    for (const char *p = f.data; p && (p = strstr(p, "HTTP/1.1 200 OK\r\n")); p++)
        answered++;
    assert_int_equal(answered, 3);
    free(f.data);
}

/* Three clients, each resetting after 256 KiB of an 8 MiB response: the
 * server drops each connection with whatever it had queued (ASan and
 * valgrind check that nothing leaks), and goes on serving. */
static void test_client_resets_mid_response(void **state)
{
    (void)state;
    for (int i = 0; i < 3; i++) {
        tfetch_t f = {.request = "GET /big HTTP/1.1\r\nHost: localhost\r\n\r\n", .stop_after = 256 << 10};
        tfetch(&f, srv.port, client_ctx, "localhost");
        assert_int_equal(f.connect_status, 0);
        assert_int_equal(f.read_status, 1); /* we reset it mid-response */
        assert_true(f.len >= 256 << 10 && f.len < BIG);
        free(f.data);
    }
    wait_no_connections();
    expect_https(client_ctx, "TLSv1.3");
}

/* Plain HTTP to the TLS port: not a ClientHello, so the handshake fails and
 * the connection closes; with a FIN (a reset could be what the client sees
 * first), and the server goes on serving. */
static void test_plain_http_closes_cleanly(void **state)
{
    (void)state;
    for (int i = 0; i < 3; i++) {
        int fd = tcli_connect(srv.port);
        tcli_send(fd, "GET / HTTP/1.1\r\nHost: localhost\r\n\r\n");
        size_t extra = 0;
        assert_int_equal(tcli_closed(fd, 5000, &extra), 1);
        close(fd);
    }
    wait_no_connections();
    expect_https(client_ctx, "TLSv1.3");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_requests_say_https, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pipelined_in_one_record, setup, teardown),
        cmocka_unit_test_setup_teardown(test_client_resets_mid_response, setup, teardown),
        cmocka_unit_test_setup_teardown(test_plain_http_closes_cleanly, setup, teardown),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
