/* test_tls.c — TLS streams (libioloop-tls): an echo server behind our
 * listener (make_transport) on a one-loop runtime, our client
 * (ioloop_tcp_connect + ioloop_tls_client_options) on a loop of the test's
 * own thread: versions forced, ALPN, SNI, session resumption, client
 * certificates, refused server certificates, and context errors.
 *
 * Threading rule: the server's callbacks run on the runtime's loop thread
 * and only touch atomics and the server's mutex; the client and every
 * cmocka assertion run on the test's main thread. Certificates are made at
 * setup with the openssl command (tests/helpers/tls_certs.c).
 */
#include "test_tls_util.h"

/* ---- echo, versions, ALPN ---------------------------------------------------------- */

static void echo_with_version(ioloop_tls_version_t version, const char *name)
{
    ioloop_tls_cert_t cert = {certs.server, certs.key};
    ioloop_tls_options_t sopts = server_options(&cert);
    sopts.min_version = sopts.max_version = version;
    server_t server;
    server_start(&server, &sopts);
    ioloop_t *loop = ioloop_new(NULL);
    ioloop_tls_context_t *cctx = client_context(NULL);
    client_t client = {0};
    client_run(loop, cctx, "localhost", server.port, &client);
    assert_int_equal(client.connect_status, 0);
    assert_string_equal(client.echo, "hello tls\n");
    assert_string_equal(client.version, name);
    assert_string_equal(client.alpn, "");
    client_finish(loop, &client);
    assert_int_equal(client.close_error, 0);
    pthread_mutex_lock(&server.lock);
    assert_string_equal(server.version, name);
    pthread_mutex_unlock(&server.lock);
    ioloop_tls_context_free(cctx);
    assert_int_equal(ioloop_close(loop, false), 0);
    server_stop(&server);
}

static void test_echo_tls13(void **state)
{
    (void)state;
    echo_with_version(IOLOOP_TLS_1_3, "TLSv1.3");
}

static void test_echo_tls12(void **state)
{
    (void)state;
    echo_with_version(IOLOOP_TLS_1_2, "TLSv1.2");
}

static void test_alpn_negotiated(void **state)
{
    (void)state;
    ioloop_tls_cert_t cert = {certs.server, certs.key};
    ioloop_tls_options_t sopts = server_options(&cert);
    const char *server_protocols[] = {"h2", "http/1.1"};
    sopts.alpn = server_protocols;
    sopts.nalpn = 2;
    server_t server;
    server_start(&server, &sopts);
    ioloop_t *loop = ioloop_new(NULL);
    const char *client_protocols[] = {"http/1.1", "spdy/1"};
    ioloop_tls_options_t copts = {.alpn = client_protocols, .nalpn = 2};
    ioloop_tls_context_t *cctx = client_context(&copts);
    client_t client = {0};
    client_run(loop, cctx, "localhost", server.port, &client);
    assert_string_equal(client.echo, "hello tls\n");
    assert_string_equal(client.alpn, "http/1.1"); /* the only common one */
    pthread_mutex_lock(&server.lock);
    assert_string_equal(server.alpn, "http/1.1");
    pthread_mutex_unlock(&server.lock);
    client_finish(loop, &client);
    ioloop_tls_context_free(cctx);
    assert_int_equal(ioloop_close(loop, false), 0);
    server_stop(&server);
}

/* Two certificates: the client verifies the name it asked for, so a wrong
 * choice fails the handshake (IOLOOP_ECERT). */
static void test_sni_picks_certificate(void **state)
{
    (void)state;
    ioloop_tls_cert_t two[] = {{certs.server, certs.key}, {certs.other, certs.key}};
    ioloop_tls_options_t sopts = {.server = true, .certs = two, .ncerts = 2};
    server_t server;
    server_start(&server, &sopts);
    ioloop_t *loop = ioloop_new(NULL);
    ioloop_tls_context_t *cctx = client_context(NULL);
    const char *names[] = {"localhost", "other.test", "a.wild.test", "127.0.0.1"};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        client_t client = {0};
        client_run(loop, cctx, names[i], server.port, &client);
        assert_string_equal(client.echo, "hello tls\n");
        client_finish(loop, &client);
    }
    /* An unknown name gets the default (localhost) certificate: refused by name. */
    client_t client = {0};
    client_run(loop, cctx, "unknown.test", server.port, &client);
    assert_int_equal(client.close_error, IOLOOP_ECERT);
    assert_non_null(strstr(client.message, "certificate verify failed"));
    ioloop_tls_context_free(cctx);
    assert_int_equal(ioloop_close(loop, false), 0);
    server_stop(&server);
}

static void test_session_resumed_by_ticket(void **state)
{
    (void)state;
    ioloop_tls_version_t versions[] = {IOLOOP_TLS_1_3, IOLOOP_TLS_1_2};
    for (int v = 0; v < 2; v++) {
        ioloop_tls_cert_t cert = {certs.server, certs.key};
        ioloop_tls_options_t sopts = server_options(&cert);
        sopts.max_version = versions[v];
        server_t server;
        server_start(&server, &sopts);
        ioloop_t *loop = ioloop_new(NULL);
        ioloop_tls_context_t *cctx = client_context(NULL);
        for (int i = 0; i < 2; i++) {
            client_t client = {0};
            client_run(loop, cctx, "localhost", server.port, &client);
            assert_string_equal(client.echo, "hello tls\n");
            assert_int_equal(client.resumed, i == 1);
            pthread_mutex_lock(&server.lock);
            assert_int_equal(server.resumed, i == 1);
            pthread_mutex_unlock(&server.lock);
            client_finish(loop, &client);
        }
        ioloop_tls_context_free(cctx);
        assert_int_equal(ioloop_close(loop, false), 0);
        server_stop(&server);
        /* Tickets off: no resumption. */
        sopts.no_session_tickets = true;
        server_start(&server, &sopts);
        loop = ioloop_new(NULL);
        cctx = client_context(NULL);
        for (int i = 0; i < 2; i++) {
            client_t client = {0};
            client_run(loop, cctx, "localhost", server.port, &client);
            assert_string_equal(client.echo, "hello tls\n");
            assert_false(client.resumed);
            client_finish(loop, &client);
        }
        ioloop_tls_context_free(cctx);
        assert_int_equal(ioloop_close(loop, false), 0);
        server_stop(&server);
    }
}

/* ---- verification ---------------------------------------------------------------- */

static void refused_with(const char *cert_file, const char *name, const char *reason)
{
    ioloop_tls_cert_t cert = {cert_file, certs.key};
    ioloop_tls_options_t sopts = server_options(&cert);
    server_t server;
    server_start(&server, &sopts);
    ioloop_t *loop = ioloop_new(NULL);
    ioloop_tls_context_t *cctx = client_context(NULL);
    client_t client = {0};
    client_run(loop, cctx, name, server.port, &client);
    assert_int_equal(client.connect_status, 0);
    assert_int_equal(client.close_error, IOLOOP_ECERT);
    assert_string_equal(client.echo, "");
    if (!strstr(client.message, reason))
        fail_msg("message \"%s\" lacks \"%s\"", client.message, reason);
    assert_string_equal(ioloop_strerror(IOLOOP_ECERT), "certificate verification failed");
    /* The same with verification off: accepted. */
    ioloop_tls_options_t off = {.verify = IOLOOP_TLS_VERIFY_OFF};
    ioloop_tls_context_t *lax = client_context(&off);
    client_t accepted = {0};
    client_run(loop, lax, name, server.port, &accepted);
    assert_string_equal(accepted.echo, "hello tls\n");
    client_finish(loop, &accepted);
    ioloop_tls_context_free(lax);
    ioloop_tls_context_free(cctx);
    assert_int_equal(ioloop_close(loop, false), 0);
    server_stop(&server);
}

static void test_self_signed_refused(void **state)
{
    (void)state;
    refused_with(certs.self_signed, "localhost", "certificate verify failed: self-signed certificate");
}

static void test_expired_refused(void **state)
{
    (void)state;
    refused_with(certs.expired, "localhost", "certificate verify failed: certificate has expired");
}

static void test_wrong_host_refused(void **state)
{
    (void)state;
    refused_with(certs.wrong_host, "localhost", "certificate verify failed: hostname mismatch");
}

static void test_client_certificate_required(void **state)
{
    (void)state;
    ioloop_tls_cert_t cert = {certs.server, certs.key};
    ioloop_tls_options_t sopts = server_options(&cert);
    sopts.verify = IOLOOP_TLS_VERIFY_REQUIRE;
    sopts.ca_file = certs.ca;
    server_t server;
    server_start(&server, &sopts);
    ioloop_t *loop = ioloop_new(NULL);

    ioloop_tls_cert_t mine = {certs.client, certs.key};
    ioloop_tls_options_t with = {.certs = &mine, .ncerts = 1};
    ioloop_tls_context_t *cctx = client_context(&with);
    client_t client = {0};
    client_run(loop, cctx, "localhost", server.port, &client);
    assert_string_equal(client.echo, "hello tls\n");
    client_finish(loop, &client);
    ioloop_tls_context_free(cctx);

    const char *refused[] = {NULL, certs.untrusted_client};
    for (int i = 0; i < 2; i++) {
        ioloop_tls_cert_t other = {refused[i], certs.key};
        ioloop_tls_options_t without = {.certs = &other, .ncerts = refused[i] ? 1 : 0};
        cctx = client_context(&without);
        client_t nocert = {0};
        for (int wait = 0; wait < 5000 && atomic_load(&server.closed) < atomic_load(&server.accepted); wait++)
            tu_sleep_ms(1); /* the last one's end is counted */
        int closed_before = atomic_load(&server.closed);
        client_run(loop, cctx, "localhost", server.port, &nocert);
        assert_int_equal(nocert.close_error, IOLOOP_ETLS); /* the server's alert */
        assert_string_equal(nocert.echo, "");
        for (int wait = 0; wait < 5000 && atomic_load(&server.closed) == closed_before; wait++)
            tu_sleep_ms(1);
        if (atomic_load(&server.last_error) != (i == 0 ? IOLOOP_ETLS : IOLOOP_ECERT))
            fail_msg("case %d: server ended with %d (%s)", i, atomic_load(&server.last_error), server.message);
        ioloop_tls_context_free(cctx);
    }
    assert_int_equal(ioloop_close(loop, false), 0);
    server_stop(&server);
}

/* ---- contexts ------------------------------------------------------------------------ */

static void test_context_errors(void **state)
{
    (void)state;
    ioloop_tls_context_t *ctx = (void *)1;
    assert_int_equal(ioloop_tls_context_new(NULL, &ctx), -EINVAL);
    assert_null(ctx);
    ioloop_tls_options_t none = {.server = true};
    assert_int_equal(ioloop_tls_context_new(&none, &ctx), -EINVAL); /* a server needs a certificate */
    ioloop_tls_cert_t missing = {"/nonexistent/cert.pem", certs.key};
    ioloop_tls_options_t opts = server_options(&missing);
    assert_int_equal(ioloop_tls_context_new(&opts, &ctx), -ENOENT);
    assert_non_null(strstr(ioloop_tls_error_message(), "/nonexistent/cert.pem"));
    /* A key that is not the certificate's. */
    ioloop_tls_cert_t mismatch = {certs.server, certs.ca_key};
    opts = server_options(&mismatch);
    assert_int_equal(ioloop_tls_context_new(&opts, &ctx), IOLOOP_ETLS);
    if (!strstr(ioloop_tls_error_message(), "key values mismatch"))
        fail_msg("message: %s", ioloop_tls_error_message());
    /* A key file that is not a key. */
    ioloop_tls_cert_t garbage = {certs.server, certs.ca};
    opts = server_options(&garbage);
    assert_int_equal(ioloop_tls_context_new(&opts, &ctx), IOLOOP_ETLS);
    assert_true(strlen(ioloop_tls_error_message()) > 0);
    /* verify=off is for clients; OPTIONAL/REQUIRE for servers (with roots). */
    ioloop_tls_options_t client = {.verify = IOLOOP_TLS_VERIFY_REQUIRE};
    assert_int_equal(ioloop_tls_context_new(&client, &ctx), -EINVAL);
    ioloop_tls_cert_t good = {certs.server, certs.key};
    opts = server_options(&good);
    opts.verify = IOLOOP_TLS_VERIFY_REQUIRE;
    assert_int_equal(ioloop_tls_context_new(&opts, &ctx), -EINVAL);
    opts.verify = IOLOOP_TLS_VERIFY_OFF;
    assert_int_equal(ioloop_tls_context_new(&opts, &ctx), -EINVAL);
    /* A client without a name needs verify=off. */
    client = (ioloop_tls_options_t){0};
    assert_int_equal(ioloop_tls_context_new(&client, &ctx), 0);
    ioloop_tcp_connect_options_t copts = {0};
    assert_int_equal(ioloop_tls_client_options(ctx, NULL, &copts), -EINVAL);
    assert_null(copts.make_transport);
    ioloop_tls_context_free(ctx);
    assert_string_equal(ioloop_strerror(IOLOOP_ETLS), "TLS failure");
}

static int setup(void **state)
{
    (void)state;
    return tls_certs_make(&certs);
}

static int teardown(void **state)
{
    (void)state;
    tls_certs_remove(&certs);
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_echo_tls13),
        cmocka_unit_test(test_echo_tls12),
        cmocka_unit_test(test_alpn_negotiated),
        cmocka_unit_test(test_sni_picks_certificate),
        cmocka_unit_test(test_session_resumed_by_ticket),
        cmocka_unit_test(test_self_signed_refused),
        cmocka_unit_test(test_expired_refused),
        cmocka_unit_test(test_wrong_host_refused),
        cmocka_unit_test(test_client_certificate_required),
        cmocka_unit_test(test_context_errors),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
