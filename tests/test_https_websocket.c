/* test_https_websocket.c — WebSocket over TLS: our server behind serve_with
 * with a TLS listener, our client on wss:// (TLS stream from
 * ioloop_tcp_connect, the name verified against the test CA): an echo with
 * compression, a close with its code; a server whose certificate the
 * client's roots do not cover fails with IOLOOP_ECERT (the default context,
 * the system's roots, and an explicit one without the test CA).
 */
#include "test_https_util.h"
#include "test_ws_util.h"

static void serve_tls(wsrv_t *s, ioloop_tls_context_t *server_ctx)
{
    s->echo = true;
    tsrv_init(&s->t, NULL);
    ioloop_websocket_route_t r = wsrv_route_defaults(s);
    r.options.compression = true;
    assert_int_equal(ioloop_http_websocket_route(s->t.server, "/ws", &r), 0);
    ioloop_listener_options_t o = {.address = "127.0.0.1"};
    ioloop_tls_server_options(server_ctx, &o);
    assert_int_equal(ioloop_http_server_serve_with(s->t.server, s->t.rt, &o, &s->t.listener), 0);
    s->t.port = ioloop_listener_port(s->t.listener);
}

static void test_wss_echo(void **state)
{
    (void)state;
    tcerts_t certs;
    tcerts_make(&certs);
    ioloop_tls_context_t *server_ctx = tcerts_server_context(&certs);
    ioloop_tls_context_t *client_ctx = tcerts_client_context(certs.ca, IOLOOP_TLS_VERSION_DEFAULT);
    wsrv_t s = {0};
    serve_tls(&s, server_ctx);
    char url[64];
    snprintf(url, sizeof(url), "wss://localhost:%d/ws", s.t.port);
    wcli_t c;
    ioloop_websocket_connect_options_t o = wcli_options(&c);
    o.tls = client_ctx;
    o.options.compression = true;
    assert_int_equal(wcli_connect(&c, url, &o), 0);
    assert_string_equal(ioloop_websocket_extensions(c.ws), "permessage-deflate");
    wcli_roundtrip(&c, IOLOOP_WS_TEXT, "over TLS", 8);
    size_t big = 200000;
    char *buf = malloc(big);
    for (size_t i = 0; i < big; i++)
        buf[i] = (char)(i * 7 % 253);
    wcli_roundtrip(&c, IOLOOP_WS_BINARY, buf, big);
    free(buf);
    assert_int_equal(ioloop_websocket_close(c.ws, 4100, "tls bye", 7), 0);
    wcli_run(&c, 10000);
    assert_true(c.done);
    assert_int_equal(c.close_code, 4100);
    wcli_finish(&c);
    assert_true(wait_count(&s.closes, 1, 5000));
    assert_int_equal(atomic_load(&s.last_close_code), 4100);

    /* roots without the test CA: the default context (the system's), then an explicit one */
    o.tls = NULL;
    assert_int_equal(wcli_connect(&c, url, &o), IOLOOP_ECERT);
    wcli_finish(&c);
    ioloop_tls_context_t *other_ctx = tcerts_client_context(NULL, IOLOOP_TLS_VERSION_DEFAULT);
    o.tls = other_ctx;
    assert_int_equal(wcli_connect(&c, url, &o), IOLOOP_ECERT);
    wcli_finish(&c);
    /* a plain ws:// client against the TLS port fails its handshake, never hangs */
    snprintf(url, sizeof(url), "ws://127.0.0.1:%d/ws", s.t.port);
    o.tls = NULL;
    o.connect_timeout = IOLOOP_SEC(3);
    assert_true(wcli_connect(&c, url, &o) < 0);
    wcli_finish(&c);

    wsrv_stop(&s);
    ioloop_tls_context_free(other_ctx);
    ioloop_tls_context_free(client_ctx);
    ioloop_tls_context_free(server_ctx);
    tcerts_remove(&certs);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_wss_echo),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
