/* test_tls_abuse.c — TLS streams against bad and real peers: plain HTTP to
 * the TLS port, garbage, truncated and dribbled ClientHellos (the handshake
 * timeout), peers vanishing mid-handshake and mid-response, a TLS 1.2
 * renegotiation, small writes packed into records, and our client against
 * `openssl s_server` (TLS 1.2 and 1.3).
 *
 * Threading rule: the server runs on a one-loop runtime (test_tls_util.h);
 * raw peers are blocking sockets (and OpenSSL clients) on the test's thread
 * or on a helper thread that only writes; cmocka asserts on the main thread.
 */
#include "test_tls_util.h"

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

/* ---- raw peers ------------------------------------------------------------------------ */

static int raw_connect(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    struct sockaddr_in sin = {
        .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK), .sin_port = htons((uint16_t)port)};
    assert_int_equal(connect(fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
    struct timeval tv = {.tv_sec = 5};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    return fd;
}

/* Reads until the server closes (EOF or reset). The milliseconds it took,
 * or -1 if it did not within the receive timeout. */
static int64_t wait_closed(int fd, int64_t since)
{
    char buf[4096];
    for (;;) {
        ssize_t n = read(fd, buf, sizeof(buf));
        if (n > 0)
            continue; /* an alert */
        if (n == 0 || errno == ECONNRESET)
            return (tu_now_ns() - since) / 1000000;
        if (errno != EINTR)
            return -1;
    }
}

/* A real ClientHello, from an OpenSSL client over memory BIOs. */
static size_t client_hello(unsigned char *out, size_t cap)
{
    SSL_CTX *sctx = SSL_CTX_new(TLS_client_method());
    SSL *ssl = SSL_new(sctx);
    BIO *rbio = BIO_new(BIO_s_mem()), *wbio = BIO_new(BIO_s_mem());
    SSL_set_bio(ssl, rbio, wbio);
    SSL_set_tlsext_host_name(ssl, "localhost");
    assert_true(SSL_connect(ssl) <= 0); /* waits for the server */
    int len = BIO_read(wbio, out, (int)cap);
    assert_true(len > 100);
    SSL_free(ssl);
    SSL_CTX_free(sctx);
    return (size_t)len;
}

static int wait_server_closed(server_t *server, int count)
{
    for (int i = 0; i < 5000 && atomic_load(&server->closed) < count; i++)
        tu_sleep_ms(1);
    return atomic_load(&server->closed);
}

static void served_meanwhile(server_t *server, ioloop_t *loop, ioloop_tls_context_t *cctx)
{
    client_t client = {0};
    client_run(loop, cctx, "localhost", server->port, &client);
    assert_string_equal(client.echo, "hello tls\n");
    client_finish(loop, &client);
}

/* ---- bad input ------------------------------------------------------------------------- */

static void test_plain_http_closed(void **state)
{
    (void)state;
    ioloop_tls_cert_t cert = {certs.server, certs.key};
    ioloop_tls_options_t sopts = server_options(&cert);
    server_t server;
    server_start(&server, &sopts);
    int fd = raw_connect(server.port);
    static const char request[] = "GET / HTTP/1.1\r\nHost: localhost\r\n\r\n";
    assert_int_equal(write(fd, request, sizeof(request) - 1), (ssize_t)sizeof(request) - 1);
    int64_t took = wait_closed(fd, tu_now_ns());
    assert_true(took >= 0 && took < 2000); /* at once, not at the handshake timeout */
    close(fd);
    assert_int_equal(wait_server_closed(&server, 1), 1);
    assert_int_equal(atomic_load(&server.last_error), IOLOOP_ETLS);
    pthread_mutex_lock(&server.lock);
    if (!strstr(server.message, "http request"))
        fail_msg("message: %s", server.message);
    pthread_mutex_unlock(&server.lock);
    ioloop_t *loop = tu_loop_new(NULL);
    ioloop_tls_context_t *cctx = client_context(NULL);
    served_meanwhile(&server, loop, cctx); /* still serving */
    ioloop_tls_context_free(cctx);
    assert_int_equal(ioloop_close(loop, false), 0);
    server_stop(&server);
}

typedef struct {
    int fd;
    const unsigned char *data;
    size_t len;
    int sent;
} dribble_t;

/* Writes one byte every 100 ms until all is sent or the server closes. */
static void *dribble(void *arg)
{
    dribble_t *d = arg;
    for (size_t i = 0; i < d->len; i++) {
        if (send(d->fd, d->data + i, 1, MSG_NOSIGNAL) != 1)
            break;
        d->sent++;
        tu_sleep_ms(100);
    }
    return NULL;
}

static void test_handshake_timeout(void **state)
{
    (void)state;
    ioloop_tls_cert_t cert = {certs.server, certs.key};
    ioloop_tls_options_t sopts = server_options(&cert);
    sopts.handshake_timeout = IOLOOP_MSEC(300);
    server_t server;
    server_start(&server, &sopts);
    unsigned char hello[2048];
    size_t hello_len = client_hello(hello, sizeof(hello));

    int64_t start = tu_now_ns();
    int silent = raw_connect(server.port);    /* connects, says nothing */
    int truncated = raw_connect(server.port); /* half a ClientHello */
    assert_int_equal(write(truncated, hello, hello_len / 2), (ssize_t)(hello_len / 2));
    dribble_t slow = {.fd = raw_connect(server.port), .data = hello, .len = hello_len};
    pthread_t thread;
    assert_int_equal(pthread_create(&thread, NULL, dribble, &slow), 0);
    int garbage = raw_connect(server.port);
    unsigned char junk[512];
    for (size_t i = 0; i < sizeof(junk); i++)
        junk[i] = (unsigned char)(i * 7 + 3);
    assert_int_equal(write(garbage, junk, sizeof(junk)), (ssize_t)sizeof(junk));
    assert_true(wait_closed(garbage, start) < 2000); /* a bad record: closed at once */

    /* Another client is served while they hang. */
    ioloop_t *loop = tu_loop_new(NULL);
    ioloop_tls_context_t *cctx = client_context(NULL);
    served_meanwhile(&server, loop, cctx);

    int fds[] = {silent, truncated, slow.fd};
    for (int i = 0; i < 3; i++) {
        int64_t took = wait_closed(fds[i], start);
        if (took < 250 || took > 3000)
            fail_msg("connection %d closed after %lld ms (timeout 300 ms)", i, (long long)took);
    }
    pthread_join(thread, NULL);
    assert_true(slow.sent >= 2 && (size_t)slow.sent < hello_len); /* it was still dribbling */
    for (int i = 0; i < 3; i++)
        close(fds[i]);
    close(garbage);
    assert_int_equal(wait_server_closed(&server, 5), 5);
    assert_int_equal(atomic_load(&server.timeouts), 3); /* the garbage one failed at once */
    ioloop_tls_context_free(cctx);
    assert_int_equal(ioloop_close(loop, false), 0);
    server_stop(&server);
}

/* ---- an OpenSSL client of our own (blocking) ------------------------------------------- */

typedef struct {
    SSL_CTX *sctx;
    SSL *ssl;
    int fd;
    int records; /* application-data records received after the handshake */
    bool counting;
} raw_tls_t;

static void count_records(int write_p, int version, int content_type, const void *buf, size_t len, SSL *ssl, void *arg)
{
    (void)version, (void)ssl;
    raw_tls_t *raw = arg;
    if (!write_p && raw->counting && content_type == SSL3_RT_HEADER && len >= 1 &&
        ((const unsigned char *)buf)[0] == SSL3_RT_APPLICATION_DATA)
        raw->records++;
}

static void raw_tls_connect(raw_tls_t *raw, int fd, int version)
{
    memset(raw, 0, sizeof(*raw));
    raw->fd = fd;
    raw->sctx = SSL_CTX_new(TLS_client_method());
    SSL_CTX_set_min_proto_version(raw->sctx, version);
    SSL_CTX_set_max_proto_version(raw->sctx, version);
    SSL_CTX_load_verify_locations(raw->sctx, certs.ca, NULL);
    SSL_CTX_set_verify(raw->sctx, SSL_VERIFY_PEER, NULL);
    raw->ssl = SSL_new(raw->sctx);
    SSL_set_fd(raw->ssl, fd);
    SSL_set_tlsext_host_name(raw->ssl, "localhost");
    SSL_set1_host(raw->ssl, "localhost");
    SSL_set_msg_callback(raw->ssl, count_records);
    SSL_set_msg_callback_arg(raw->ssl, raw);
    if (SSL_connect(raw->ssl) != 1)
        fail_msg("raw TLS connect failed: %s", ERR_reason_error_string(ERR_get_error()));
    raw->counting = true;
}

static void raw_tls_free(raw_tls_t *raw)
{
    SSL_free(raw->ssl);
    SSL_CTX_free(raw->sctx);
    close(raw->fd);
    ERR_clear_error();
}

static void test_renegotiation_refused(void **state)
{
    (void)state;
    ioloop_tls_cert_t cert = {certs.server, certs.key};
    ioloop_tls_options_t sopts = server_options(&cert);
    server_t server;
    server_start(&server, &sopts);
    raw_tls_t raw;
    raw_tls_connect(&raw, raw_connect(server.port), TLS1_2_VERSION);
    char buf[64];
    assert_int_equal(SSL_write(raw.ssl, "one\n", 4), 4);
    assert_int_equal(SSL_read(raw.ssl, buf, sizeof(buf)), 4);
    /* A client-initiated renegotiation: the server closes. */
    assert_int_equal(SSL_renegotiate(raw.ssl), 1);
    int ret = SSL_do_handshake(raw.ssl);
    if (ret == 1) /* sent its ClientHello; the answer comes with the next read */
        ret = SSL_read(raw.ssl, buf, sizeof(buf));
    assert_true(ret <= 0);
    raw_tls_free(&raw);
    assert_int_equal(wait_server_closed(&server, 1), 1);
    assert_int_equal(atomic_load(&server.last_error), IOLOOP_ETLS);
    pthread_mutex_lock(&server.lock);
    assert_non_null(strstr(server.message, "renegotiation"));
    pthread_mutex_unlock(&server.lock);
    ioloop_t *loop = tu_loop_new(NULL);
    ioloop_tls_context_t *cctx = client_context(NULL);
    served_meanwhile(&server, loop, cctx);
    ioloop_tls_context_free(cctx);
    assert_int_equal(ioloop_close(loop, false), 0);
    server_stop(&server);
}

/* Clients that leave mid-handshake and mid-response: every server stream
 * ends (and ASan/valgrind see nothing left). */
static void test_peers_vanish(void **state)
{
    (void)state;
    ioloop_tls_cert_t cert = {certs.server, certs.key};
    ioloop_tls_options_t sopts = server_options(&cert);
    server_t server;
    server_start(&server, &sopts);
    unsigned char hello[2048];
    size_t hello_len = client_hello(hello, sizeof(hello));
    for (int i = 0; i < 5; i++) {
        int fd = raw_connect(server.port);
        assert_int_equal(write(fd, hello, hello_len), (ssize_t)hello_len);
        if (i % 2) {
            char buf[256];
            assert_true(read(fd, buf, sizeof(buf)) > 0); /* the server's flight started */
        }
        close(fd);
    }
    assert_int_equal(wait_server_closed(&server, 5), 5);
    /* Mid-response: a 4 MiB line is echoed to a client that reads one record and resets. */
    for (int i = 0; i < 3; i++) {
        raw_tls_t raw;
        raw_tls_connect(&raw, raw_connect(server.port), i == 1 ? TLS1_2_VERSION : TLS1_3_VERSION);
        size_t big = 4 << 20;
        char *line = malloc(big);
        memset(line, 'x', big - 1);
        line[big - 1] = '\n';
        size_t off = 0;
        while (off < big) {
            int n = SSL_write(raw.ssl, line + off, (int)(big - off < 65536 ? big - off : 65536));
            if (n <= 0)
                break;
            off += (size_t)n;
            if (atomic_load(&server.echoed) > 5 + i)
                break;
        }
        char buf[16384];
        assert_true(SSL_read(raw.ssl, buf, sizeof(buf)) > 0);
        struct linger hard = {.l_onoff = 1, .l_linger = 0};
        setsockopt(raw.fd, SOL_SOCKET, SO_LINGER, &hard, sizeof(hard));
        raw_tls_free(&raw);
        free(line);
    }
    assert_int_equal(wait_server_closed(&server, 8), 8);
    assert_int_equal(atomic_load(&server.accepted), 8);
    server_stop(&server);
}

/* The peer's EOF: after the handshake, with or without close_notify, the
 * server's stream ends with IOLOOP_EOF (clients often skip close_notify);
 * during our client's handshake it is IOLOOP_ETLS. */
static void test_eof_endings(void **state)
{
    (void)state;
    ioloop_tls_cert_t cert = {certs.server, certs.key};
    ioloop_tls_options_t sopts = server_options(&cert);
    server_t server;
    server_start(&server, &sopts);
    for (int i = 0; i < 2; i++) {
        raw_tls_t raw;
        raw_tls_connect(&raw, raw_connect(server.port), TLS1_3_VERSION);
        char buf[16];
        assert_int_equal(SSL_write(raw.ssl, "eof\n", 4), 4);
        assert_int_equal(SSL_read(raw.ssl, buf, sizeof(buf)), 4);
        if (i == 1)
            assert_true(SSL_shutdown(raw.ssl) >= 0); /* close_notify */
        raw_tls_free(&raw);
        assert_int_equal(wait_server_closed(&server, i + 1), i + 1);
        assert_int_equal(atomic_load(&server.last_error), IOLOOP_EOF);
    }
    server_stop(&server);

    /* A "server" that accepts and closes at once. */
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(sin);
    assert_int_equal(bind(lfd, (struct sockaddr *)&sin, sizeof(sin)), 0);
    assert_int_equal(listen(lfd, 4), 0);
    getsockname(lfd, (struct sockaddr *)&sin, &len);
    ioloop_t *loop = tu_loop_new(NULL);
    ioloop_tls_context_t *cctx = client_context(NULL);
    ioloop_tcp_connect_options_t opts = {0};
    assert_int_equal(ioloop_tls_client_options(cctx, "localhost", &opts), 0);
    client_t client = {0};
    assert_int_equal(ioloop_tcp_connect(loop, "127.0.0.1", ntohs(sin.sin_port), &opts, client_connected, &client, NULL),
                     0);
    int fd = accept(lfd, NULL, NULL); /* blocking: the connect is in the kernel's queue already */
    assert_true(fd >= 0);
    close(fd);
    assert_true(run_until(loop, &client.closed, 1, 5000));
    assert_int_equal(client.close_error, IOLOOP_ETLS);
    assert_non_null(strstr(client.message, "closed by the server"));
    close(lfd);
    ioloop_tls_context_free(cctx);
    assert_int_equal(ioloop_close(loop, false), 0);
}

/* ---- records ------------------------------------------------------------------------------ */

typedef struct {
    int fd;
    int version;
    size_t expect;
    int records;
    size_t got;
} record_peer_t;

static void *record_peer(void *arg)
{
    record_peer_t *peer = arg;
    raw_tls_t raw;
    raw_tls_connect(&raw, peer->fd, peer->version);
    char buf[65536];
    while (peer->got < peer->expect) {
        int n = SSL_read(raw.ssl, buf, sizeof(buf));
        if (n <= 0)
            break;
        peer->got += (size_t)n;
    }
    peer->records = raw.records;
    raw_tls_free(&raw);
    return NULL;
}

static void released(void *data, void *arg)
{
    (void)data;
    (*(int *)arg)++;
}

/* Ten 100-byte writes corked leave as one record; five 8000-byte ones as
 * three (16 KiB, 16 KiB, the rest), not one record per buffer. */
static void test_small_writes_one_record(void **state)
{
    (void)state;
    ioloop_tls_cert_t cert = {certs.server, certs.key};
    ioloop_tls_options_t sopts = server_options(&cert);
    sopts.no_session_tickets = true; /* no ticket records to count */
    ioloop_tls_context_t *ctx;
    assert_int_equal(ioloop_tls_context_new(&sopts, &ctx), 0);
    struct {
        size_t size;
        int count, records;
    } cases[] = {{100, 10, 1}, {8000, 5, 3}};
    int versions[] = {TLS1_3_VERSION, TLS1_2_VERSION};
    for (int v = 0; v < 2; v++) {
        for (int c = 0; c < 2; c++) {
            ioloop_t *loop = tu_loop_new(NULL);
            int fds[2];
            tcp_pair(fds);
            fcntl(fds[1], F_SETFL, fcntl(fds[1], F_GETFL) & ~O_NONBLOCK);
            record_peer_t peer = {
                .fd = fds[1], .version = versions[v], .expect = cases[c].size * (size_t)cases[c].count};
            pthread_t thread;
            assert_int_equal(pthread_create(&thread, NULL, record_peer, &peer), 0);
            ioloop_stream_t *stream;
            assert_int_equal(ioloop_tls_stream_new(loop, fds[0], ctx, NULL, NULL, &stream), 0);
            char *data = malloc(cases[c].size);
            memset(data, 'r', cases[c].size);
            int releases = 0;
            ioloop_stream_cork(stream);
            for (int i = 0; i < cases[c].count; i++)
                assert_int_equal(ioloop_stream_write_borrowed(stream, data, cases[c].size, released, &releases), 0);
            ioloop_stream_uncork(stream);
            assert_true(run_until(loop, &releases, cases[c].count, 5000));
            pthread_join(thread, NULL);
            assert_int_equal(peer.got, peer.expect);
            if (peer.records != cases[c].records)
                fail_msg("%d x %zu bytes: %d records, want %d", cases[c].count, cases[c].size, peer.records,
                         cases[c].records);
            ioloop_stream_close(stream);
            run_for(loop, 5);
            free(data);
            assert_int_equal(ioloop_close(loop, false), 0);
        }
    }
    ioloop_tls_context_free(ctx);
}

/* ---- back-pressure: both ends on one loop, small socket buffers ------------------------------ */

typedef struct {
    size_t got;
    bool bad;
    int eof;
    int dones, done_status;
} bulk_t;

static void bulk_read(ioloop_stream_t *stream, int status, const char *data, size_t len, void *arg)
{
    bulk_t *bulk = arg;
    for (size_t i = 0; i < len; i++)
        if (data[i] != (char)((bulk->got + i) % 251))
            bulk->bad = true;
    bulk->got += len;
    if (status) {
        bulk->eof++;
        return;
    }
    ioloop_stream_read_bytes(stream, 1 << 20, true, bulk_read, bulk);
}

static void bulk_done(ioloop_stream_t *stream, int status, void *arg)
{
    (void)stream;
    bulk_t *bulk = arg;
    bulk->dones++;
    bulk->done_status = status;
}

/* 8 MiB each way at once (far past the socket buffers; tiny buffers would
 * make both directions crawl on TCP's persist timer, with plain sockets
 * too): records cut by partial sends, writes held back until their ciphertext left, and every byte
 * arriving in order; then close_notify and EOF at both ends. */
static void test_bulk_both_ways(void **state)
{
    (void)state;
    ioloop_tls_cert_t cert = {certs.server, certs.key};
    ioloop_tls_options_t sopts = server_options(&cert);
    ioloop_tls_context_t *sctx, *cctx = client_context(NULL);
    assert_int_equal(ioloop_tls_context_new(&sopts, &sctx), 0);
    for (int v = 0; v < 2; v++) {
        ioloop_t *loop = tu_loop_new(NULL);
        int fds[2];
        tcp_pair(fds);
        ioloop_stream_options_t half = {.half_close = true, .max_write_buffer_size = 16 << 20};
        ioloop_stream_t *client, *server;
        assert_int_equal(ioloop_tls_stream_new(loop, fds[0], cctx, "localhost", &half, &client), 0);
        assert_int_equal(ioloop_tls_stream_new(loop, fds[1], sctx, NULL, &half, &server), 0);
        size_t total = 8 << 20;
        char *data = malloc(total);
        for (size_t i = 0; i < total; i++)
            data[i] = (char)(i % 251);
        bulk_t at_server = {0}, at_client = {0};
        ioloop_stream_t *ends[] = {client, server};
        bulk_t *readers[] = {&at_client, &at_server};
        bulk_t *writers[] = {&at_server, &at_client}; /* done counts kept with the peer's reader */
        for (int e = 0; e < 2; e++) {
            assert_int_equal(ioloop_stream_read_bytes(ends[e], 1 << 20, true, bulk_read, readers[e]), 0);
            /* In uneven pieces, mixed small and large. */
            for (size_t off = 0, piece = 1; off < total; off += piece, piece = piece * 7 % 100003 + 1) {
                if (piece > total - off)
                    piece = total - off;
                assert_int_equal(ioloop_stream_write(ends[e], data + off, piece, bulk_done, writers[e]), 0);
                if (v == 1 && ioloop_stream_write_queue_size(ends[e]) > (1 << 20))
                    break; /* v=1: just what fits under the mark, then shutdown */
            }
            assert_int_equal(ioloop_stream_shutdown(ends[e]), 0);
        }
        int both = 0;
        for (int i = 0; i < 500 && both < 2; i++) {
            run_for(loop, 10);
            both = (at_client.eof > 0) + (at_server.eof > 0);
        }
        if (both != 2)
            fail_msg("v=%d stalled: client got %zu eof %d, server got %zu eof %d, queues %zu %zu, handshakes %d %d", v,
                     at_client.got, at_client.eof, at_server.got, at_server.eof, ioloop_stream_write_queue_size(client),
                     ioloop_stream_write_queue_size(server), ioloop_tls_handshake_done(client),
                     ioloop_tls_handshake_done(server));
        assert_false(at_client.bad);
        assert_false(at_server.bad);
        if (v == 0) {
            assert_int_equal(at_client.got, total);
            assert_int_equal(at_server.got, total);
        }
        assert_int_equal(at_client.done_status, 0);
        assert_int_equal(at_server.done_status, 0);
        ioloop_stream_close(client);
        ioloop_stream_close(server);
        run_for(loop, 5);
        free(data);
        assert_int_equal(ioloop_close(loop, false), 0);
    }
    ioloop_tls_context_free(cctx);
    ioloop_tls_context_free(sctx);
}

/* ---- our client against openssl s_server ---------------------------------------------------- */

/* A port for openssl s_server, which binds [::]:port: one below the kernel's
 * ephemeral range (32768 up), where the other suites' thousands of client
 * connections would take it between this check and s_server's bind. */
static int free_port(void)
{
    for (int attempt = 0; attempt < 1000; attempt++) {
        int port = 20000 + (int)((unsigned)rand() % 12000);
        int fd = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
        struct sockaddr_in6 sin6 = {.sin6_family = AF_INET6, .sin6_addr = IN6ADDR_ANY_INIT,
                                    .sin6_port = htons((uint16_t)port)};
        bool free = fd >= 0 && bind(fd, (struct sockaddr *)&sin6, sizeof(sin6)) == 0;
        if (fd >= 0)
            close(fd);
        if (free)
            return port;
    }
    fail_msg("no free port in 20000..31999");
    return -1;
}

typedef struct {
    int done, status;
    char head[64];
} www_t;

static void www_read(ioloop_stream_t *stream, int status, const char *data, size_t len, void *arg)
{
    (void)stream;
    www_t *www = arg;
    www->status = status;
    snprintf(www->head, sizeof(www->head), "%.*s", (int)(len < 20 ? len : 20), data);
    www->done++;
}

static void www_connected(ioloop_t *loop, int status, ioloop_stream_t *stream, void *arg)
{
    (void)loop;
    www_t *www = arg;
    if (status) {
        www->status = status;
        www->done++;
        return;
    }
    static const char request[] = "GET / HTTP/1.0\r\n\r\n";
    ioloop_stream_write(stream, request, sizeof(request) - 1, NULL, NULL);
    ioloop_stream_read_until_close(stream, www_read, www);
}

static void test_client_against_s_server(void **state)
{
    (void)state;
    const char *versions[] = {"-tls1_3", "-tls1_2"};
    int retries = 0;
    for (int v = 0; v < 2; v++) {
        int port = free_port();
        char port_text[16];
        snprintf(port_text, sizeof(port_text), "%d", port);
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
            int null = open("/dev/null", O_RDWR);
            dup2(null, 0), dup2(null, 1), dup2(null, 2);
            execlp("openssl", "openssl", "s_server", "-accept", port_text, "-cert", certs.server, "-key", certs.key,
                   versions[v], "-www", "-quiet", (char *)NULL);
            _exit(127);
        }
        /* Ready when it accepts: up to 30 s, a loaded 2-core machine starts
         * openssl slowly. A child that exited (the port was taken between
         * free_port and its bind) is retried on another port. */
        bool up = false, exited = false;
        for (int i = 0; i < 3000 && !up && !exited; i++) {
            int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
            struct sockaddr_in sin = {
                .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK), .sin_port = htons((uint16_t)port)};
            up = connect(fd, (struct sockaddr *)&sin, sizeof(sin)) == 0;
            close(fd);
            if (!up) {
                exited = waitpid(pid, NULL, WNOHANG) == pid;
                tu_sleep_ms(10);
            }
        }
        if (exited && ++retries < 5) {
            v--;
            continue;
        }
        assert_false(exited);
        assert_true(up);
        ioloop_t *loop = tu_loop_new(NULL);
        ioloop_tls_context_t *cctx = client_context(NULL);
        ioloop_tcp_connect_options_t opts = {0};
        assert_int_equal(ioloop_tls_client_options(cctx, "localhost", &opts), 0);
        www_t www = {0};
        assert_int_equal(ioloop_tcp_connect(loop, "127.0.0.1", port, &opts, www_connected, &www, NULL), 0);
        assert_true(run_until(loop, &www.done, 1, 10000));
        kill(pid, SIGTERM);
        waitpid(pid, NULL, 0);
        if (www.status != 0 || strncmp(www.head, "HTTP/1.0 200 ok", 15) != 0)
            fail_msg("%s: status %d (%s), head \"%s\"", versions[v], www.status, ioloop_tls_error_message(), www.head);
        run_for(loop, 5);
        ioloop_tls_context_free(cctx);
        assert_int_equal(ioloop_close(loop, false), 0);
    }
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
    srand((unsigned)getpid()); /* the epoll and poll runs pick different ports */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_plain_http_closed),     cmocka_unit_test(test_handshake_timeout),
        cmocka_unit_test(test_renegotiation_refused), cmocka_unit_test(test_peers_vanish),
        cmocka_unit_test(test_eof_endings),           cmocka_unit_test(test_small_writes_one_record),
        cmocka_unit_test(test_bulk_both_ways),        cmocka_unit_test(test_client_against_s_server),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
