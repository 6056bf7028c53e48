/* test_https_util.h — what the HTTPS suites share: a test CA and a server
 * certificate made at test time with the openssl command (ECDSA P-256, the
 * leaf for DNS:localhost and IP:127.0.0.1; as tests/checks/tls_certs.py), and
 * a blocking fetch through our own TLS client (ioloop_tcp_connect with
 * ioloop_tls_client_options) on a loop the calling thread runs.
 * Threading rule: every call here runs on the test's main thread; the fetch
 * runs its own loop there until the stream has closed.
 * Everything is static inline: each suite includes it once.
 */
#ifndef TEST_HTTPS_UTIL_H
#define TEST_HTTPS_UTIL_H

#define _GNU_SOURCE
#include "ioloop/stream.h"
#include "ioloop/tls.h"
#include "test_util.h"
#include "tls_certs.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* The CA and the leaf ("localhost", 127.0.0.1) of tests/helpers/tls_certs. */
typedef struct {
    tls_certs_t all;
    const char *dir, *ca, *cert, *key;
} tcerts_t;

static inline void tcerts_make(tcerts_t *c)
{
    assert_int_equal(tls_certs_make(&c->all), 0);
    c->dir = c->all.dir;
    c->ca = c->all.ca;
    c->cert = c->all.server;
    c->key = c->all.key;
}

static inline void tcerts_remove(tcerts_t *c)
{
    tls_certs_remove(&c->all);
}

static inline ioloop_tls_context_t *tcerts_server_context(const tcerts_t *c)
{
    ioloop_tls_cert_t cert = {.cert_file = c->cert, .key_file = c->key};
    ioloop_tls_options_t o = {.server = true, .certs = &cert, .ncerts = 1};
    ioloop_tls_context_t *ctx = NULL;
    int err = ioloop_tls_context_new(&o, &ctx);
    if (err)
        fail_msg("server context: %s %s", ioloop_strerror(err), ioloop_tls_error_message());
    return ctx;
}

/* A client context trusting ca (NULL: the system's store), up to max_version. */
static inline ioloop_tls_context_t *tcerts_client_context(const char *ca, ioloop_tls_version_t max_version)
{
    ioloop_tls_options_t o = {.ca_file = ca, .max_version = max_version};
    ioloop_tls_context_t *ctx = NULL;
    int err = ioloop_tls_context_new(&o, &ctx);
    if (err)
        fail_msg("client context: %s %s", ioloop_strerror(err), ioloop_tls_error_message());
    return ctx;
}

/* ---- a blocking fetch over our TLS client --------------------------------- */

typedef struct {
    const char *request;
    size_t stop_after; /* >0: once this many bytes arrived, reset the connection (SO_LINGER 0) */
    int connect_status;
    int write_status; /* the request's ioloop_stream_write */
    int read_status;  /* the consumer's end: IOLOOP_EOF, the error, or 1 after our reset */
    int close_error;
    char version[16];
    char *data; /* what arrived (NUL-terminated), caller frees */
    size_t len;
    char tls_message[256];
} tfetch_t;

static inline void tfetch_on_close(ioloop_stream_t *stream, int error, void *arg)
{
    tfetch_t *f = arg;
    f->close_error = error;
    if (error == IOLOOP_ETLS || error == IOLOOP_ECERT)
        snprintf(f->tls_message, sizeof(f->tls_message), "%s", ioloop_tls_error_message());
    ioloop_stop(ioloop_stream_loop(stream));
}

static inline void tfetch_keep(tfetch_t *f, ioloop_stream_t *stream)
{
    if (!f->version[0] && ioloop_tls_handshake_done(stream)) {
        const char *v = ioloop_tls_stream_version(stream);
        snprintf(f->version, sizeof(f->version), "%s", v ? v : "");
    }
}

static inline void tfetch_on_data(ioloop_stream_t *stream, int status, void *arg)
{
    tfetch_t *f = arg;
    tfetch_keep(f, stream);
    size_t len;
    const char *data = ioloop_stream_peek(stream, &len);
    if (len) {
        char *grown = realloc(f->data, f->len + len + 1);
        if (!grown) {
            ioloop_stream_close(stream);
            return;
        }
        f->data = grown;
        memcpy(f->data + f->len, data, len);
        f->len += len;
        f->data[f->len] = '\0';
        ioloop_stream_consume(stream, len);
    }
    if (status != 0) { /* the end: IOLOOP_EOF or the error (the close callback follows) */
        if (f->read_status != 1)
            f->read_status = status;
        return;
    }
    if (f->stop_after && f->len >= f->stop_after) {
        struct linger lg = {.l_onoff = 1, .l_linger = 0};
        (void)setsockopt(ioloop_stream_fd(stream), SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
        f->read_status = 1; /* we ended it */
        ioloop_stream_close(stream);
    }
}

static inline void tfetch_on_connect(ioloop_t *loop, int status, ioloop_stream_t *stream, void *arg)
{
    tfetch_t *f = arg;
    f->connect_status = status;
    if (status != 0) {
        ioloop_stop(loop);
        return;
    }
    ioloop_stream_set_close_callback(stream, tfetch_on_close, f);
    /* The handshake may already have failed (a client starts it at once):
     * then both calls are refused and the close callback tells why. No
     * assert here: a failure must not jump out of the running loop. */
    f->write_status = ioloop_stream_write(stream, f->request, strlen(f->request), NULL, NULL);
    if (f->write_status == 0 && ioloop_stream_read_start(stream, tfetch_on_data, f) != 0)
        ioloop_stream_close(stream);
}

/* Connects to 127.0.0.1:port over TLS to server_name with ctx, sends
 * f->request and reads until the stream ends. Runs a loop of its own. */
static inline void tfetch(tfetch_t *f, int port, ioloop_tls_context_t *ctx, const char *server_name)
{
    f->connect_status = f->write_status = f->read_status = f->close_error = 99;
    f->data = NULL;
    f->len = 0;
    f->version[0] = f->tls_message[0] = '\0';
    ioloop_t *loop = tu_loop_new(NULL);
    assert_non_null(loop);
    ioloop_tcp_connect_options_t co = {.timeout = IOLOOP_SEC(10), .stream = {.idle_timeout = IOLOOP_SEC(20)}};
    assert_int_equal(ioloop_tls_client_options(ctx, server_name, &co), 0);
    assert_int_equal(ioloop_tcp_connect(loop, "127.0.0.1", port, &co, tfetch_on_connect, f, NULL), 0);
    assert_int_equal(ioloop_start(loop), 0);
    assert_int_equal(ioloop_close(loop, false), 0);
}

#endif
