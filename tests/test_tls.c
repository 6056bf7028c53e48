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
    ioloop_t *loop = tu_loop_new(NULL);
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
    ioloop_t *loop = tu_loop_new(NULL);
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
    ioloop_t *loop = tu_loop_new(NULL);
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
        ioloop_t *loop = tu_loop_new(NULL);
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
        loop = tu_loop_new(NULL);
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
    ioloop_t *loop = tu_loop_new(NULL);
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
    ioloop_t *loop = tu_loop_new(NULL);

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

/* OPTIONAL: no certificate is accepted, an untrusted one refused. */
static void test_client_certificate_optional(void **state)
{
    (void)state;
    ioloop_tls_cert_t cert = {certs.server, certs.key};
    ioloop_tls_options_t sopts = server_options(&cert);
    sopts.verify = IOLOOP_TLS_VERIFY_OPTIONAL;
    sopts.ca_file = certs.ca;
    server_t server;
    server_start(&server, &sopts);
    ioloop_t *loop = tu_loop_new(NULL);
    const char *files[] = {NULL, certs.client, certs.untrusted_client};
    for (int i = 0; i < 3; i++) {
        ioloop_tls_cert_t mine = {files[i], certs.key};
        ioloop_tls_options_t copts = {.certs = &mine, .ncerts = files[i] ? 1 : 0};
        ioloop_tls_context_t *cctx = client_context(&copts);
        client_t client = {0};
        client_run(loop, cctx, "localhost", server.port, &client);
        if (i < 2) {
            assert_string_equal(client.echo, "hello tls\n");
            client_finish(loop, &client);
        } else {
            assert_int_equal(client.close_error, IOLOOP_ETLS);
            assert_int_equal(wait_closed_count(&server, 3), 3);
            assert_int_equal(atomic_load(&server.last_error), IOLOOP_ECERT);
        }
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

/* ---- the stream's transport hooks (runtime side) ----------------------------------------- */

typedef struct {
    counting_t counts;
    int attaches, attach_result;
    ioloop_stream_t *attached;
    int reads_at_attach;
} attaching_t;

static int attaching_attach(void *ctx, ioloop_stream_t *stream)
{
    attaching_t *a = ctx;
    a->attaches++;
    a->attached = stream;
    a->reads_at_attach = a->counts.reads + a->counts.writevs;
    return a->attach_result;
}

static ssize_t attaching_read(void *ctx, int fd, char *buf, size_t len)
{
    return counting_read(&((attaching_t *)ctx)->counts, fd, buf, len);
}

static ssize_t attaching_writev(void *ctx, int fd, const struct iovec *iov, int iovcnt)
{
    return counting_writev(&((attaching_t *)ctx)->counts, fd, iov, iovcnt);
}

static int attaching_shutdown(void *ctx, int fd)
{
    return counting_shutdown(&((attaching_t *)ctx)->counts, fd);
}

static void attaching_destroy(void *ctx)
{
    counting_destroy(&((attaching_t *)ctx)->counts);
}

static const ioloop_stream_transport_t attaching_transport = {
    .name = "attaching",
    .read = attaching_read,
    .writev = attaching_writev,
    .shutdown = attaching_shutdown,
    .destroy = attaching_destroy,
    .attach = attaching_attach,
};

static void test_attach_hook(void **state)
{
    (void)state;
    ioloop_t *loop = tu_loop_new(NULL);
    int fds[2];
    tu_socketpair(fds);
    attaching_t a = {0};
    ioloop_stream_options_t opts = {.transport = &attaching_transport, .transport_ctx = &a};
    ioloop_stream_t *stream;
    assert_int_equal(ioloop_stream_new(loop, fds[0], &opts, &stream), 0);
    assert_int_equal(a.attaches, 1);
    assert_ptr_equal(a.attached, stream); /* once, with its stream, before any I/O */
    assert_int_equal(a.reads_at_attach, 0);
    assert_string_equal(ioloop_stream_transport_name(stream), "attaching");
    ioloop_stream_close(stream);
    run_for(loop, 5);
    assert_int_equal(a.counts.destroys, 1);
    assert_int_equal(a.attaches, 1);

    /* A failing attach fails ioloop_stream_new: the transport is destroyed, the fd closed. */
    a = (attaching_t){.attach_result = -EIO};
    assert_int_equal(ioloop_stream_new(loop, fds[1], &opts, &stream), -EIO);
    assert_null(stream);
    assert_int_equal(a.attaches, 1);
    assert_int_equal(a.counts.destroys, 1);
    assert_int_equal(fcntl(fds[1], F_GETFD), -1);
    assert_int_equal(errno, EBADF);

    /* The plain socket transport has its name too. */
    tu_socketpair(fds);
    assert_int_equal(ioloop_stream_new(loop, fds[0], NULL, &stream), 0);
    assert_string_equal(ioloop_stream_transport_name(stream), "socket");
    ioloop_stream_close(stream);
    close(fds[1]);
    run_for(loop, 5);
    assert_int_equal(ioloop_close(loop, false), 0);
}

static atomic_int makes, made_streams;

static int failing_make(void *arg, int fd, ioloop_stream_options_t *opts)
{
    (void)arg, (void)fd, (void)opts;
    atomic_fetch_add(&makes, 1);
    return -ENOMEM;
}

static void counted_stream(ioloop_t *loop, ioloop_stream_t *stream, const struct sockaddr *peer, socklen_t peer_len,
                           void *arg)
{
    (void)loop, (void)peer, (void)peer_len, (void)arg;
    atomic_fetch_add(&made_streams, 1);
    ioloop_stream_close(stream);
}

static void ignore_accept(ioloop_t *loop, int fd, const struct sockaddr *peer, socklen_t peer_len, void *arg)
{
    (void)loop, (void)peer, (void)peer_len, (void)arg;
    close(fd);
}

/* A listener's make_transport runs per connection; its failure closes that
 * connection, which never reaches on_stream nor the live count. */
static void test_listener_make_transport_failure(void **state)
{
    (void)state;
    ioloop_runtime_options_t ropts = {.loops = 1};
    ioloop_runtime_t *rt;
    assert_int_equal(ioloop_runtime_start(&ropts, &rt), 0);
    ioloop_listener_options_t lopts = {
        .address = "127.0.0.1", .on_accept = ignore_accept, .make_transport = failing_make};
    ioloop_listener_t *listener;
    assert_int_equal(ioloop_listener_start(rt, &lopts, &listener), -EINVAL); /* a transport is for streams */
    lopts.on_accept = NULL;
    lopts.on_stream = counted_stream;
    assert_int_equal(ioloop_listener_start(rt, &lopts, &listener), 0);
    for (int i = 0; i < 3; i++) {
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        struct sockaddr_in sin = {.sin_family = AF_INET,
                                  .sin_addr.s_addr = htonl(INADDR_LOOPBACK),
                                  .sin_port = htons((uint16_t)ioloop_listener_port(listener))};
        assert_int_equal(connect(fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
        char buf[8];
        assert_int_equal(read(fd, buf, sizeof(buf)), 0); /* closed by the server */
        close(fd);
    }
    assert_int_equal(atomic_load(&makes), 3);
    assert_int_equal(atomic_load(&made_streams), 0);
    ioloop_stats_t stats;
    ioloop_get_stats(ioloop_runtime_loop(rt, 0), &stats);
    assert_int_equal(stats.live_connections, 0);
    ioloop_listener_free(listener);
    ioloop_runtime_free(rt);
}

static void connect_result(ioloop_t *loop, int status, ioloop_stream_t *stream, void *arg)
{
    (void)loop;
    client_t *client = arg;
    client->connect_status = status;
    client->stream = stream;
    client->done++;
}

/* tcp_connect's make_transport: the winning connection's transport; a
 * failure reaches the callback (and the options' own ctx is dropped). */
static void test_connect_make_transport(void **state)
{
    (void)state;
    ioloop_tls_cert_t cert = {certs.server, certs.key};
    ioloop_tls_options_t sopts = server_options(&cert);
    server_t server;
    server_start(&server, &sopts);
    ioloop_t *loop = tu_loop_new(NULL);
    attaching_t given = {0};
    ioloop_tcp_connect_options_t opts = {.make_transport = failing_make,
                                         .stream = {.transport = &attaching_transport, .transport_ctx = &given}};
    client_t client = {0};
    int before = atomic_load(&makes);
    assert_int_equal(ioloop_tcp_connect(loop, "127.0.0.1", server.port, &opts, connect_result, &client, NULL), 0);
    assert_true(run_until(loop, &client.done, 1, 5000));
    assert_int_equal(client.connect_status, -ENOMEM);
    assert_null(client.stream);
    assert_int_equal(atomic_load(&makes), before + 1);
    assert_int_equal(given.counts.destroys, 1);
    /* The TLS factory replaces the given transport, which is dropped. */
    ioloop_tls_context_t *cctx = client_context(NULL);
    given = (attaching_t){0};
    assert_int_equal(ioloop_tls_client_options(cctx, "localhost", &opts), 0);
    client = (client_t){0};
    assert_int_equal(ioloop_tcp_connect(loop, "127.0.0.1", server.port, &opts, connect_result, &client, NULL), 0);
    assert_true(run_until(loop, &client.done, 1, 5000));
    assert_int_equal(client.connect_status, 0);
    assert_string_equal(ioloop_stream_transport_name(client.stream), "tls");
    assert_int_equal(given.counts.destroys, 1);
    assert_int_equal(given.attaches, 0);
    ioloop_stream_close(client.stream);
    run_for(loop, 5);
    ioloop_tls_context_free(cctx);
    assert_int_equal(ioloop_close(loop, false), 0);
    server_stop(&server);
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
        cmocka_unit_test(test_client_certificate_optional),
        cmocka_unit_test(test_context_errors),
        cmocka_unit_test(test_attach_hook),
        cmocka_unit_test(test_listener_make_transport_failure),
        cmocka_unit_test(test_connect_make_transport),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
