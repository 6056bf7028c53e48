/* test_https_fetch.c — ioloop_http_fetch over TLS against our HTTPS server
 * (serve_with + ioloop_tls_server_options) with a test CA: verified with
 * ca_file, by name and by IP; refused by default (the system's roots do not
 * know the CA), for a certificate of another host, and for an expired one,
 * each with the reason in words; accepted with validate_cert_off; keep-alive
 * reuse over one TLS session; a caller's own context; a redirect from http
 * to https; and a TLS server that never finishes its handshake (the request
 * timeout ends it).
 * Threading rule: the servers run on one-loop runtimes' threads; the client
 * loop on the test's thread.
 */
#include "test_http_client_util.h"
#include "test_http_util.h"
#include "test_https_util.h"

static tcerts_t certs;
static tsrv_t srv, plain;
static ioloop_t *loop;
static const char *server_cert; /* the certificate the next setup serves */
static ioloop_tls_context_t *server_ctx;

static void h_hello(ioloop_http_request_t *req, void *arg)
{
    (void)arg;
    ioloop_http_response_send(req, 200, "text/plain", ioloop_http_request_protocol(req), 5);
}

static void h_to_https(ioloop_http_request_t *req, void *arg)
{
    (void)arg;
    char to[96];
    snprintf(to, sizeof(to), "https://localhost:%d/hello", srv.port);
    ioloop_http_response_status(req, 302);
    ioloop_http_response_header(req, "Location", to);
    ioloop_http_response_finish(req);
}

static int group_setup(void **state)
{
    (void)state;
    tcerts_make(&certs);
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    tcerts_remove(&certs);
    return 0;
}

static int setup(void **state)
{
    (void)state;
    ioloop_tls_cert_t cert = {.cert_file = server_cert ? server_cert : certs.cert, .key_file = certs.key};
    ioloop_tls_options_t to = {.server = true, .certs = &cert, .ncerts = 1};
    assert_int_equal(ioloop_tls_context_new(&to, &server_ctx), 0);
    ioloop_tls_context_t *ctx = server_ctx;
    tsrv_init(&srv, NULL);
    tsrv_route(&srv, "/hello", (ioloop_http_route_t){.get = h_hello});
    ioloop_listener_options_t o = {.address = "127.0.0.1"};
    ioloop_tls_server_options(ctx, &o);
    assert_int_equal(ioloop_http_server_serve_with(srv.server, srv.rt, &o, &srv.listener), 0);
    srv.port = ioloop_listener_port(srv.listener);
    tsrv_init(&plain, NULL);
    tsrv_route(&plain, "/to-https", (ioloop_http_route_t){.get = h_to_https});
    tsrv_start(&plain);
    assert_int_equal(ioloop_new(NULL, &loop), 0);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    assert_int_equal(ioloop_close(loop, false), 0);
    tsrv_stop(&srv);
    tsrv_stop(&plain);
    ioloop_tls_context_free(server_ctx);
    server_cert = NULL;
    return 0;
}

static const char *surl(const char *host, const char *path)
{
    static char buf[4][128];
    static int i;
    char *b = buf[i++ % 4];
    snprintf(b, 128, "https://%s:%d%s", host, srv.port, path);
    return b;
}

static void test_verified_by_name_and_ip(void **state)
{
    (void)state;
    const char *hosts[] = {"localhost", "127.0.0.1"};
    for (int i = 0; i < 2; i++) {
        tres_t r;
        cfetch(loop, &(ioloop_http_client_request_t){.url = surl(hosts[i], "/hello"), .ca_file = certs.ca}, &r);
        if (r.error)
            fail_msg("%s: %s", hosts[i], r.text);
        assert_int_equal(r.status, 200);
        assert_string_equal(r.body, "https");
        tres_free(&r);
    }
}

static void test_unknown_ca_refused_by_default(void **state)
{
    (void)state;
    tres_t r;
    cget(loop, surl("localhost", "/hello"), &r);
    assert_int_equal(r.error, IOLOOP_ECERT);
    assert_non_null(strstr(r.text, "certificate"));
    assert_int_equal(r.status, 0);
    tres_free(&r);
    /* explicitly off: accepted */
    cfetch(loop, &(ioloop_http_client_request_t){.url = surl("localhost", "/hello"), .validate_cert_off = true}, &r);
    assert_int_equal(r.error, 0);
    assert_int_equal(r.status, 200);
    tres_free(&r);
}

static int setup_wrong_host(void **state)
{
    server_cert = certs.all.wrong_host;
    return setup(state);
}

static int setup_expired(void **state)
{
    server_cert = certs.all.expired;
    return setup(state);
}

static void test_refused_certificate(void **state)
{
    (void)state;
    tres_t r;
    cfetch(loop, &(ioloop_http_client_request_t){.url = surl("localhost", "/hello"), .ca_file = certs.ca}, &r);
    assert_int_equal(r.error, IOLOOP_ECERT);
    assert_non_null(strstr(r.text, "certificate"));
    tres_free(&r);
    /* the refused connection was not pooled: the next fetch fails the same way, not with a stale error */
    cfetch(loop, &(ioloop_http_client_request_t){.url = surl("localhost", "/hello"), .ca_file = certs.ca}, &r);
    assert_int_equal(r.error, IOLOOP_ECERT);
    tres_free(&r);
}

static void test_keep_alive_over_tls(void **state)
{
    (void)state;
    ioloop_tls_context_t *ctx = tcerts_client_context(certs.ca, IOLOOP_TLS_VERSION_DEFAULT);
    for (int i = 0; i < 3; i++) {
        tres_t r;
        cfetch(loop, &(ioloop_http_client_request_t){.url = surl("localhost", "/hello"), .tls_context = ctx}, &r);
        assert_int_equal(r.error, 0);
        assert_int_equal(r.timing.reused, i > 0);
        tres_free(&r);
    }
    ioloop_http_client_stats_t st;
    ioloop_http_client_get_stats(loop, &st);
    assert_int_equal(st.connections_opened, 1);
    assert_int_equal(st.connections_reused, 2);
    ioloop_tls_context_free(ctx); /* the pooled connection keeps it alive */
    tres_t r;
    cfetch(loop, &(ioloop_http_client_request_t){.url = surl("localhost", "/hello"), .ca_file = certs.ca}, &r);
    assert_int_equal(r.error, 0);
    assert_false(r.timing.reused); /* another TLS context: another pool key */
    tres_free(&r);
}

static void test_redirect_http_to_https(void **state)
{
    (void)state;
    char u[96];
    snprintf(u, sizeof(u), "http://127.0.0.1:%d/to-https", plain.port);
    tres_t r;
    cfetch(loop, &(ioloop_http_client_request_t){.url = u, .follow_redirects = true, .ca_file = certs.ca}, &r);
    if (r.error)
        fail_msg("%s", r.text);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "https");
    assert_string_equal(r.url, surl("localhost", "/hello"));
    tres_free(&r);
}

static void test_handshake_that_never_ends(void **state)
{
    (void)state;
    /* accepts, reads nothing (the ClientHello is no HTTP head) and never answers */
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(sa);
    assert_int_equal(bind(lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(listen(lfd, 8), 0);
    assert_int_equal(getsockname(lfd, (struct sockaddr *)&sa, &len), 0);
    char u[64];
    snprintf(u, sizeof(u), "https://127.0.0.1:%d/", ntohs(sa.sin_port));
    tres_t r;
    cfetch(loop, &(ioloop_http_client_request_t){.url = u, .ca_file = certs.ca, .request_timeout = IOLOOP_MSEC(300)},
           &r);
    assert_int_equal(r.error, -ETIME);
    tres_free(&r);
    close(lfd);
}

int main(void)
{
#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)
    const struct CMUnitTest tests[] = {
        T(test_verified_by_name_and_ip),
        T(test_unknown_ca_refused_by_default),
        cmocka_unit_test_setup_teardown(test_refused_certificate, setup_wrong_host, teardown),
        cmocka_unit_test_setup_teardown(test_refused_certificate, setup_expired, teardown),
        T(test_keep_alive_over_tls),
        T(test_redirect_http_to_https),
        T(test_handshake_that_never_ends),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
