/* test_tls_util.h — what the TLS suites share: the certificates, an echo
 * server behind our listener with a TLS context (a one-loop runtime), and
 * our client (ioloop_tcp_connect + ioloop_tls_client_options) sending one
 * line on a loop of the test's thread.
 *
 * Threading rule: the server's callbacks run on the runtime's loop thread
 * and only touch atomics and the server's mutex; the client and every
 * cmocka assertion run on the test's main thread.
 */
#ifndef IOLOOP_TEST_TLS_UTIL_H
#define IOLOOP_TEST_TLS_UTIL_H

#include "test_stream_util.h"
#include "tls_certs.h"

#include "ioloop/runtime.h"
#include "ioloop/tls.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>

static tls_certs_t certs; /* made by the suite's setup */

/* ---- the server: echo lines over TLS --------------------------------------------- */

typedef struct {
    atomic_int accepted, closed, echoed;
    atomic_int last_error;
    atomic_int timeouts; /* streams that ended with -ETIMEDOUT */
    pthread_mutex_t lock;
    char version[16], alpn[32], message[256];
    bool resumed;
    ioloop_runtime_t *rt;
    ioloop_listener_t *listener;
    ioloop_tls_context_t *ctx;
    int port;
} server_t;

static inline void server_closed(ioloop_stream_t *stream, int error, void *arg)
{
    (void)stream;
    server_t *server = arg;
    pthread_mutex_lock(&server->lock);
    snprintf(server->message, sizeof(server->message), "%s", ioloop_tls_error_message());
    pthread_mutex_unlock(&server->lock);
    atomic_store(&server->last_error, error);
    if (error == -ETIMEDOUT)
        atomic_fetch_add(&server->timeouts, 1);
    atomic_fetch_add(&server->closed, 1);
}

static inline void server_echo(ioloop_stream_t *stream, int status, const char *data, size_t len, void *arg)
{
    server_t *server = arg;
    if (status)
        return;
    pthread_mutex_lock(&server->lock);
    const char *version = ioloop_tls_stream_version(stream), *alpn = ioloop_tls_stream_alpn(stream);
    snprintf(server->version, sizeof(server->version), "%s", version ? version : "");
    snprintf(server->alpn, sizeof(server->alpn), "%s", alpn ? alpn : "");
    server->resumed = ioloop_tls_stream_resumed(stream);
    pthread_mutex_unlock(&server->lock);
    ioloop_stream_write(stream, data, len, NULL, NULL);
    atomic_fetch_add(&server->echoed, 1);
    ioloop_stream_read_until(stream, "\n", 1, 0, server_echo, server);
}

static inline void server_stream(ioloop_t *loop, ioloop_stream_t *stream, const struct sockaddr *peer,
                                 socklen_t peer_len, void *arg)
{
    (void)loop, (void)peer, (void)peer_len;
    server_t *server = arg;
    atomic_fetch_add(&server->accepted, 1);
    ioloop_stream_set_close_callback(stream, server_closed, server);
    ioloop_stream_read_until(stream, "\n", 1, 0, server_echo, server);
}

static inline void server_start(server_t *server, const ioloop_tls_options_t *opts)
{
    memset(server, 0, sizeof(*server));
    pthread_mutex_init(&server->lock, NULL);
    assert_int_equal(ioloop_tls_context_new(opts, &server->ctx), 0);
    ioloop_runtime_options_t ropts = {.loops = 1};
    assert_int_equal(ioloop_runtime_start(&ropts, &server->rt), 0);
    ioloop_listener_options_t lopts = {.address = "127.0.0.1", .on_stream = server_stream, .arg = server};
    ioloop_tls_server_options(server->ctx, &lopts);
    assert_int_equal(ioloop_listener_start(server->rt, &lopts, &server->listener), 0);
    server->port = ioloop_listener_port(server->listener);
}

static inline void server_stop(server_t *server)
{
    ioloop_listener_free(server->listener);
    ioloop_runtime_free(server->rt); /* ends the streams still open */
    ioloop_tls_context_free(server->ctx);
    pthread_mutex_destroy(&server->lock);
}

/* Waits (up to 5 s) until count server streams have ended; returns how many have. */
static inline int wait_closed_count(server_t *server, int count)
{
    for (int i = 0; i < 5000 && atomic_load(&server->closed) < count; i++)
        tu_sleep_ms(1);
    return atomic_load(&server->closed);
}

static inline ioloop_tls_options_t server_options(const ioloop_tls_cert_t *cert)
{
    return (ioloop_tls_options_t){.server = true, .certs = cert, .ncerts = 1};
}

/* ---- the client: one line, its echo ------------------------------------------------ */

typedef struct {
    ioloop_stream_t *stream;
    int connect_status;
    int done; /* echo received or closed */
    int closed, close_error;
    char echo[64];
    char message[256];
    char version[16], alpn[32];
    bool resumed;
    const char *line;
} client_t;

static inline void client_closed(ioloop_stream_t *stream, int error, void *arg)
{
    (void)stream;
    client_t *client = arg;
    client->closed++;
    client->close_error = error;
    snprintf(client->message, sizeof(client->message), "%s", ioloop_tls_error_message());
    client->stream = NULL;
    client->done++;
}

static inline void client_echo(ioloop_stream_t *stream, int status, const char *data, size_t len, void *arg)
{
    client_t *client = arg;
    if (status)
        return; /* the close callback tells */
    snprintf(client->echo, sizeof(client->echo), "%.*s", (int)len, data);
    const char *version = ioloop_tls_stream_version(stream), *alpn = ioloop_tls_stream_alpn(stream);
    snprintf(client->version, sizeof(client->version), "%s", version ? version : "");
    snprintf(client->alpn, sizeof(client->alpn), "%s", alpn ? alpn : "");
    client->resumed = ioloop_tls_stream_resumed(stream);
    client->done++;
}

static inline void client_connected(ioloop_t *loop, int status, ioloop_stream_t *stream, void *arg)
{
    (void)loop;
    client_t *client = arg;
    client->connect_status = status;
    if (status) {
        client->done++;
        return;
    }
    client->stream = stream;
    ioloop_stream_set_close_callback(stream, client_closed, client);
    assert_string_equal(ioloop_stream_transport_name(stream), "tls");
    assert_false(ioloop_tls_handshake_done(stream));
    const char *line = client->line ? client->line : "hello tls\n";
    /* The handshake may fail inside the write already: the close callback tells. */
    if (ioloop_stream_write(stream, line, strlen(line), NULL, NULL) == 0)
        ioloop_stream_read_until(stream, "\n", 1, 0, client_echo, client);
}

/* Connects to the server with ctx (server_name for SNI and verification),
 * sends a line and waits for its echo or the end. */
static inline void client_run(ioloop_t *loop, ioloop_tls_context_t *ctx, const char *server_name, int port,
                              client_t *client)
{
    ioloop_tcp_connect_options_t opts = {0};
    assert_int_equal(ioloop_tls_client_options(ctx, server_name, &opts), 0);
    assert_int_equal(ioloop_tcp_connect(loop, "127.0.0.1", port, &opts, client_connected, client, NULL), 0);
    assert_true(run_until(loop, &client->done, 1, 10000));
}

static inline void client_finish(ioloop_t *loop, client_t *client)
{
    if (client->stream) {
        ioloop_stream_close(client->stream);
        run_until(loop, &client->closed, 1, 5000);
    }
}

static inline ioloop_tls_context_t *client_context(const ioloop_tls_options_t *extra)
{
    ioloop_tls_options_t opts = extra ? *extra : (ioloop_tls_options_t){0};
    if (!opts.ca_file)
        opts.ca_file = certs.ca;
    ioloop_tls_context_t *ctx;
    assert_int_equal(ioloop_tls_context_new(&opts, &ctx), 0);
    return ctx;
}

#endif
