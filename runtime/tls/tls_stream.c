/* tls_stream.c — the TLS transport under ioloop_stream: one SSL per
 * connection over two memory BIOs (ciphertext in: recv into a scratch
 * block, then the read BIO; out: the write BIO, sent with MSG_NOSIGNAL), the
 * handshake timeout, and the server/client factories (listener and connect
 * make_transport, ioloop_tls_stream_new).
 *
 * Threading rule: a session is used only on its stream's loop thread; the
 * scratch block is thread-local.
 *
 * Writes: iovecs are packed into records of up to 16 KiB (small buffers
 * copied into one staging record, large ones encrypted in place), and the
 * records of one writev leave in one send. A record that did not fully leave
 * holds its last plaintext byte back from the count returned, so the stream
 * keeps the write pending (done callbacks, shutdown and the write timeout
 * stay exact) until the ciphertext is on the wire.
 *
 * End of stream: close_notify, or a plain EOF after the handshake (curl and
 * browsers often skip close_notify on HTTP/1.1; Tornado reads it as a close
 * too), is IOLOOP_EOF; an EOF during a client's handshake is IOLOOP_ETLS.
 */
#define _GNU_SOURCE
#include "tls_internal.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <openssl/buffer.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>

enum {
    RECORD = 16384,         /* TLS's largest plaintext record */
    SCRATCH = 65536,        /* one recv of ciphertext */
    SEND_BATCH = 4 * 16413, /* ciphertext gathered before a send (4 full records) */
    BIO_KEEP = 4096         /* an empty memory BIO larger than this is replaced (idle streams hold little) */
};

typedef struct tls_session {
    SSL *ssl;
    BIO *rbio, *wbio; /* ours: ciphertext in, ciphertext out */
    ioloop_tls_context_t *ctx;
    ioloop__tls_peer_t *peer;
    ioloop_stream_t *stream;
    ioloop_t *loop;
    ioloop_timer_t handshake_timer;
    int fd;
    size_t held;           /* plaintext bytes encrypted but kept back from the count (see above) */
    bool write_wants_read; /* the last write stopped for ciphertext from the peer (handshake) */
    bool rbio_stale;       /* the read BIO holds only a partial record: not "pending" */
    bool handshake_done;
    bool eof; /* the socket's EOF was seen */
    bool renegotiating;
    bool failed; /* a protocol or verification failure: its session is not resumed */
} tls_session_t;

static _Thread_local char scratch[SCRATCH];      /* ciphertext in (and bytes dropped from the write BIO) */
static _Thread_local char staging_block[RECORD]; /* small plaintext buffers packed into one record */
static int session_index = -1;                   /* SSL ex_data slot of our tls_session_t */
static pthread_once_t index_once = PTHREAD_ONCE_INIT;

static void index_init(void)
{
    session_index = SSL_get_ex_new_index(0, NULL, NULL, NULL, NULL);
}

ioloop__tls_peer_t *ioloop__tls_session_peer(SSL *ssl)
{
    tls_session_t *session = session_index >= 0 ? SSL_get_ex_data(ssl, session_index) : NULL;
    return session ? session->peer : NULL;
}

/* ---- ciphertext to and from the socket ---------------------------------------- */

/* An empty memory BIO keeps the largest buffer it ever had, and its reset
 * clears the whole of it: past BIO_KEEP, a fresh BIO is cheaper and leaves
 * an idle stream nothing to hold. Returns false (keeping the old one) when
 * no memory. */
static bool bio_renew(tls_session_t *session, bool write_side)
{
    BIO *old = write_side ? session->wbio : session->rbio;
    BUF_MEM *mem = NULL;
    BIO_get_mem_ptr(old, &mem);
    if (!mem || mem->max <= BIO_KEEP)
        return false;
    BIO *fresh = BIO_new(BIO_s_mem());
    if (!fresh)
        return false;
    if (write_side) {
        SSL_set0_wbio(session->ssl, fresh); /* frees the old one */
        session->wbio = fresh;
    } else {
        BIO_set_mem_eof_return(fresh, -1);
        SSL_set0_rbio(session->ssl, fresh);
        session->rbio = fresh;
    }
    return true;
}

/* Sends what the write BIO holds. 0 when all left, -EAGAIN when the socket is
 * full (the rest stays), or a negative errno. */
static int flush_out(tls_session_t *session)
{
    char *data;
    long len;
    while ((len = BIO_get_mem_data(session->wbio, &data)) > 0) {
        ssize_t n = send(session->fd, data, (size_t)len, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return errno == EAGAIN || errno == EWOULDBLOCK ? -EAGAIN : -errno;
        }
        if (n == len) {
            if (!bio_renew(session, true))
                (void)BIO_reset(session->wbio);
            return 0;
        }
        /* Partly sent: drop those bytes from the BIO (a read into the scratch). */
        for (ssize_t dropped = 0; dropped < n;) {
            int chunk = (int)(n - dropped < SCRATCH ? n - dropped : SCRATCH);
            dropped += BIO_read(session->wbio, scratch, chunk);
        }
    }
    return 0;
}

/* One recv into the read BIO: >0 bytes, 0 EOF, -EAGAIN, or a negative errno. */
static ssize_t fill_in(tls_session_t *session)
{
    for (;;) {
        ssize_t n = recv(session->fd, scratch, SCRATCH, 0);
        if (n > 0) {
            BIO_write(session->rbio, scratch, (int)n);
            session->rbio_stale = false;
            return n;
        }
        if (n == 0) {
            session->eof = true;
            return 0;
        }
        if (errno != EINTR)
            return errno == EAGAIN || errno == EWOULDBLOCK ? -EAGAIN : -errno;
    }
}

/* ---- handshake and errors ------------------------------------------------------- */

static void handshake_finished(tls_session_t *session)
{
    session->handshake_done = true;
    /* A write that waited for the peer's flight can go now; when the flight
     * came through a read, the stream still waits for the write event, which
     * events() now asks for (no renegotiation: writes never need reads again). */
    session->write_wants_read = false;
    if (session->handshake_timer) {
        ioloop_remove_timeout(session->loop, session->handshake_timer);
        session->handshake_timer = 0;
    }
}

static void check_handshake(tls_session_t *session)
{
    if (!session->handshake_done && SSL_is_init_finished(session->ssl))
        handshake_finished(session);
}

static void handshake_expired(ioloop_t *loop, void *arg)
{
    (void)loop;
    tls_session_t *session = arg;
    session->handshake_timer = 0;
    ioloop__tls_set_error("TLS handshake timed out");
    ioloop_stream_abort(session->stream, -ETIMEDOUT);
}

/* A TLS 1.2 peer starting a second handshake: refused by closing (as nginx
 * does; SSL_OP_NO_RENEGOTIATION alone answers with a warning the peer may
 * ignore). */
static void info_cb(const SSL *ssl, int where, int ret)
{
    (void)ret;
    if (!(where & SSL_CB_HANDSHAKE_START) || SSL_version(ssl) >= TLS1_3_VERSION)
        return;
    tls_session_t *session = SSL_get_ex_data(ssl, session_index);
    if (session && session->handshake_done)
        session->renegotiating = true;
}

/* The error to end the stream with, for an SSL call that returned ret. */
static int failure(tls_session_t *session, int ret)
{
    (void)ret; /* SSL_get_error's kind adds nothing here: the queue and the verify result say why */
    session->failed = true;
    (void)flush_out(session); /* the alert OpenSSL queued tells the peer why */
    /* Memory BIOs: no system call fails inside OpenSSL, so SSL_ERROR_SYSCALL
     * with an empty queue is a protocol state it could not go on from. */
    long verify = SSL_get_verify_result(session->ssl);
    if (verify != X509_V_OK && (!session->ctx->server || session->ctx->verify != IOLOOP_TLS_VERIFY_DEFAULT)) {
        ioloop__tls_set_error("certificate verify failed: %s", X509_verify_cert_error_string(verify));
        ERR_clear_error();
        return IOLOOP_ECERT;
    }
    ioloop__tls_set_openssl_error(session->handshake_done ? "TLS error" : "TLS handshake failed");
    return IOLOOP_ETLS;
}

static ssize_t renegotiation_refused(void)
{
    ioloop__tls_set_error("TLS renegotiation refused");
    ERR_clear_error();
    return IOLOOP_ETLS;
}

/* The socket's EOF with no close_notify: see the file's comment. */
static ssize_t eof_result(tls_session_t *session)
{
    ERR_clear_error();
    if (!session->handshake_done && !session->ctx->server) {
        ioloop__tls_set_error("TLS handshake failed: connection closed by the server");
        return IOLOOP_ETLS;
    }
    return 0;
}

/* ---- the transport --------------------------------------------------------------- */

static ssize_t tls_read(void *arg, int fd, char *buf, size_t len)
{
    (void)fd;
    tls_session_t *session = arg;
    int sent = flush_out(session); /* handshake or ticket bytes still waiting */
    if (sent < 0 && sent != -EAGAIN)
        return sent;
    for (;;) {
        size_t n = 0;
        ERR_clear_error();
        int ret = SSL_read_ex(session->ssl, buf, len, &n);
        if (session->renegotiating)
            return renegotiation_refused();
        check_handshake(session);
        if (ret == 1) {
            sent = flush_out(session); /* TLS 1.3 tickets, key updates */
            if (sent < 0 && sent != -EAGAIN)
                return sent;
            return (ssize_t)n;
        }
        int kind = SSL_get_error(session->ssl, ret);
        if (kind == SSL_ERROR_ZERO_RETURN) {
            (void)flush_out(session);
            return 0; /* close_notify */
        }
        if (kind != SSL_ERROR_WANT_READ)
            return failure(session, ret);
        sent = flush_out(session); /* our handshake flight */
        if (sent < 0 && sent != -EAGAIN)
            return sent;
        if (session->eof)
            return eof_result(session);
        ssize_t got = fill_in(session);
        if (got == 0)
            return eof_result(session);
        if (got < 0) {
            if (got == -EAGAIN) {
                session->rbio_stale = true;
                if (!BIO_ctrl_pending(session->rbio))
                    bio_renew(session, false); /* idle until the peer speaks */
            }
            return got;
        }
    }
}

/* Encrypts len bytes into the write BIO as one record. 0, or the error. */
static int encrypt(tls_session_t *session, const void *data, size_t len, bool *need_read)
{
    for (;;) {
        size_t n = 0;
        ERR_clear_error();
        int ret = SSL_write_ex(session->ssl, data, len, &n);
        if (session->renegotiating)
            return (int)renegotiation_refused();
        check_handshake(session);
        if (ret == 1)
            return 0;
        int kind = SSL_get_error(session->ssl, ret);
        if (kind != SSL_ERROR_WANT_READ)
            return failure(session, ret);
        /* The handshake needs the peer: send our flight, read its answer. */
        int sent = flush_out(session);
        if (sent < 0 && sent != -EAGAIN)
            return sent;
        if (session->eof)
            return (int)eof_result(session) ? IOLOOP_ETLS : -EPIPE;
        ssize_t got = fill_in(session);
        if (got == 0)
            return eof_result(session) ? IOLOOP_ETLS : -EPIPE;
        if (got < 0) {
            if (got == -EAGAIN) {
                *need_read = true;
                session->rbio_stale = true;
            }
            return (int)got;
        }
    }
}

static ssize_t tls_writev(void *arg, int fd, const struct iovec *iov, int iovcnt)
{
    (void)fd;
    tls_session_t *session = arg;
    session->write_wants_read = false;
    int sent = flush_out(session);
    if (sent < 0)
        return sent; /* -EAGAIN: the last records have not left yet */
    if (session->held) {
        /* Those bytes' record is on the wire now. */
        size_t held = session->held;
        session->held = 0;
        return (ssize_t)held;
    }
    char *staging = NULL;
    size_t staged = 0, taken = 0;
    int i = 0;
    size_t off = 0; /* into iov[i] */
    int err = 0;
    bool need_read = false;
    while (!err) {
        while (i < iovcnt && off == iov[i].iov_len)
            i++, off = 0;
        if (i == iovcnt)
            break;
        const char *base = (const char *)iov[i].iov_base + off;
        size_t left = iov[i].iov_len - off;
        if (!staged && left >= RECORD) {
            /* A full record straight from the caller's buffer. */
            err = encrypt(session, base, RECORD, &need_read);
            if (!err) {
                off += RECORD;
                taken += RECORD;
            }
        } else {
            if (!staging)
                staging = staging_block;
            size_t chunk = left < RECORD - staged ? left : RECORD - staged;
            memcpy(staging + staged, base, chunk);
            staged += chunk;
            off += chunk;
            bool last = true;
            for (int j = i; j < iovcnt; j++)
                if (iov[j].iov_len > (j == i ? off : 0)) {
                    last = false;
                    break;
                }
            if (staged == RECORD || last) {
                err = encrypt(session, staging, staged, &need_read);
                if (!err) {
                    taken += staged;
                    staged = 0;
                }
            }
        }
        if (!err && BIO_ctrl_pending(session->wbio) >= SEND_BATCH) {
            sent = flush_out(session);
            if (sent < 0)
                break;
        }
    }
    /* Staged bytes not encrypted (the handshake waits): not taken. */
    if (err && err != -EAGAIN) {
        return err;
    }
    sent = flush_out(session);
    if (sent < 0 && sent != -EAGAIN)
        return sent;
    if (!taken) {
        session->write_wants_read = need_read;
        return -EAGAIN;
    }
    if (sent == -EAGAIN) {
        session->held = 1; /* the last record has not fully left: keep a byte pending */
        return (ssize_t)(taken - 1);
    }
    return (ssize_t)taken;
}

static int tls_shutdown(void *arg, int fd)
{
    tls_session_t *session = arg;
    if (session->handshake_done) {
        ERR_clear_error();
        (void)SSL_shutdown(session->ssl); /* queues close_notify; the peer's is not awaited */
        int sent = flush_out(session);
        if (sent < 0 && sent != -EAGAIN)
            return sent;
    }
    return shutdown(fd, SHUT_WR) < 0 ? -errno : 0;
}

static unsigned tls_events(void *arg, unsigned wanted)
{
    tls_session_t *session = arg;
    unsigned events = wanted & IOLOOP_READ;
    if (wanted & IOLOOP_WRITE)
        events |= session->write_wants_read ? IOLOOP_READ : IOLOOP_WRITE;
    /* Ciphertext waiting for room is sent by the next read or write: only
     * while the stream wants one (else WRITE would fire with nobody to call us). */
    if (wanted && BIO_ctrl_pending(session->wbio))
        events |= IOLOOP_WRITE;
    return events;
}

static size_t tls_pending(void *arg)
{
    tls_session_t *session = arg;
    size_t pending = (size_t)SSL_pending(session->ssl);
    if (!session->rbio_stale)
        pending += BIO_ctrl_pending(session->rbio);
    return pending;
}

static void tls_destroy(void *arg)
{
    tls_session_t *session = arg;
    if (!session)
        return;
    if (session->handshake_timer)
        ioloop_remove_timeout(session->loop, session->handshake_timer);
    /* SSL_free of a connection that sent no close_notify marks its session
     * not resumable (a truncation attack guard); a stream closed locally or
     * at the peer's EOF is not one, so keep its session (and its ticket). */
    if (session->handshake_done && !session->failed && !session->renegotiating)
        SSL_set_shutdown(session->ssl, SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN);
    SSL_free(session->ssl); /* frees both BIOs */
    ioloop_tls_context_free(session->ctx);
    free(session);
}

static int tls_attach(void *arg, ioloop_stream_t *stream)
{
    tls_session_t *session = arg;
    session->stream = stream;
    session->loop = ioloop_stream_loop(stream);
    return ioloop_call_later(session->loop, session->ctx->handshake_timeout, handshake_expired, session,
                             &session->handshake_timer);
}

static const ioloop_stream_transport_t tls_transport = {
    .name = "tls",
    .read = tls_read,
    .writev = tls_writev,
    .shutdown = tls_shutdown,
    .events = tls_events,
    .pending = tls_pending,
    .destroy = tls_destroy,
    .attach = tls_attach,
};

/* ---- making sessions -------------------------------------------------------------- */

static bool is_ip_literal(const char *name)
{
    unsigned char addr[16];
    return inet_pton(AF_INET, name, addr) == 1 || inet_pton(AF_INET6, name, addr) == 1;
}

static int session_new(ioloop_tls_context_t *ctx, ioloop__tls_peer_t *peer, int fd, tls_session_t **out)
{
    pthread_once(&index_once, index_init);
    if (session_index < 0)
        return -ENOMEM;
    tls_session_t *session = calloc(1, sizeof(*session));
    if (!session)
        return -ENOMEM;
    ERR_clear_error();
    session->fd = fd;
    session->ctx = ctx;
    session->peer = peer;
    session->ssl = SSL_new(ctx->ctxs[0]);
    session->rbio = BIO_new(BIO_s_mem());
    session->wbio = BIO_new(BIO_s_mem());
    if (!session->ssl || !session->rbio || !session->wbio) {
        BIO_free(session->rbio);
        BIO_free(session->wbio);
        SSL_free(session->ssl);
        free(session);
        ERR_clear_error();
        return -ENOMEM;
    }
    BIO_set_mem_eof_return(session->rbio, -1); /* empty: "retry", the socket says EOF */
    SSL_set_bio(session->ssl, session->rbio, session->wbio);
    SSL_set_ex_data(session->ssl, session_index, session);
    SSL_set_info_callback(session->ssl, info_cb);
    ioloop__tls_context_ref(ctx);
    int err = 0;
    if (ctx->server) {
        SSL_set_accept_state(session->ssl);
    } else {
        SSL_set_connect_state(session->ssl);
        const char *name = peer ? peer->name : NULL;
        if (name && !is_ip_literal(name) && !SSL_set_tlsext_host_name(session->ssl, name))
            err = -ENOMEM;
        if (!err && name && ctx->verify != IOLOOP_TLS_VERIFY_OFF) {
            X509_VERIFY_PARAM *param = SSL_get0_param(session->ssl);
            int ok =
                is_ip_literal(name) ? X509_VERIFY_PARAM_set1_ip_asc(param, name) : SSL_set1_host(session->ssl, name);
            if (ok != 1)
                err = -ENOMEM;
        }
        SSL_SESSION *resume = !err && peer ? ioloop__tls_peer_session(peer) : NULL;
        if (resume) {
            SSL_set_session(session->ssl, resume);
            SSL_SESSION_free(resume);
        }
    }
    if (err) {
        tls_destroy(session);
        ERR_clear_error();
        return err;
    }
    *out = session;
    return 0;
}

static int make_server(void *arg, int fd, ioloop_stream_options_t *opts)
{
    tls_session_t *session;
    int err = session_new(arg, NULL, fd, &session);
    if (err)
        return err;
    opts->transport = &tls_transport;
    opts->transport_ctx = session;
    return 0;
}

static int make_client(void *arg, int fd, ioloop_stream_options_t *opts)
{
    ioloop__tls_peer_t *peer = arg;
    tls_session_t *session;
    int err = session_new(peer->ctx, peer, fd, &session);
    if (err)
        return err;
    opts->transport = &tls_transport;
    opts->transport_ctx = session;
    return 0;
}

void ioloop_tls_server_options(ioloop_tls_context_t *ctx, ioloop_listener_options_t *opts)
{
    if (!ctx || !opts || !ctx->server)
        return;
    opts->make_transport = make_server;
    opts->make_transport_arg = ctx;
}

int ioloop_tls_client_options(ioloop_tls_context_t *ctx, const char *server_name, ioloop_tcp_connect_options_t *opts)
{
    if (!ctx || !opts || ctx->server || (!server_name && ctx->verify != IOLOOP_TLS_VERIFY_OFF) ||
        (server_name && !*server_name))
        return -EINVAL;
    ioloop__tls_peer_t *peer = ioloop__tls_peer_get(ctx, server_name);
    if (!peer)
        return -ENOMEM;
    opts->make_transport = make_client;
    opts->make_transport_arg = peer;
    return 0;
}

int ioloop_tls_stream_new(ioloop_t *loop, int fd, ioloop_tls_context_t *ctx, const char *server_name,
                          const ioloop_stream_options_t *opts, ioloop_stream_t **out)
{
    int err = 0;
    ioloop__tls_peer_t *peer = NULL;
    if (!ctx || (!ctx->server && !server_name && ctx->verify != IOLOOP_TLS_VERIFY_OFF))
        err = -EINVAL;
    else if (!ctx->server && !(peer = ioloop__tls_peer_get(ctx, server_name)))
        err = -ENOMEM;
    ioloop_stream_options_t stream_opts = opts ? *opts : (ioloop_stream_options_t){0};
    /* A transport in opts is replaced (and taken, as ioloop_stream_new takes it). */
    if (stream_opts.transport && stream_opts.transport->destroy)
        stream_opts.transport->destroy(stream_opts.transport_ctx);
    stream_opts.transport = NULL;
    stream_opts.transport_ctx = NULL;
    if (!err)
        err = ctx->server ? make_server(ctx, fd, &stream_opts) : make_client(peer, fd, &stream_opts);
    if (err) {
        if (fd >= 0)
            close(fd);
        if (out)
            *out = NULL;
        return err;
    }
    return ioloop_stream_new(loop, fd, &stream_opts, out);
}

/* ---- after the handshake ------------------------------------------------------------ */

static tls_session_t *session_of(const ioloop_stream_t *stream)
{
    if (!stream || ioloop_stream_closed(stream) || strcmp(ioloop_stream_transport_name(stream), "tls") != 0)
        return NULL;
    return ioloop_stream_transport_ctx(stream);
}

bool ioloop_tls_handshake_done(const ioloop_stream_t *stream)
{
    tls_session_t *session = session_of(stream);
    return session && session->handshake_done;
}

const char *ioloop_tls_stream_version(const ioloop_stream_t *stream)
{
    tls_session_t *session = session_of(stream);
    return session && session->handshake_done ? SSL_get_version(session->ssl) : NULL;
}

const char *ioloop_tls_stream_alpn(const ioloop_stream_t *stream)
{
    tls_session_t *session = session_of(stream);
    if (!session || !session->handshake_done)
        return NULL;
    const unsigned char *proto;
    unsigned len;
    SSL_get0_alpn_selected(session->ssl, &proto, &len);
    if (!len)
        return NULL;
    /* The selected protocol is one of the context's own (a server selects
     * from its list; a client accepts only from its offer): return ours. */
    ioloop_tls_context_t *ctx = session->ctx;
    for (int i = 0; i < ctx->nalpn; i++)
        if (strlen(ctx->alpn_names[i]) == len && memcmp(ctx->alpn_names[i], proto, len) == 0)
            return ctx->alpn_names[i];
    return NULL;
}

bool ioloop_tls_stream_resumed(const ioloop_stream_t *stream)
{
    tls_session_t *session = session_of(stream);
    return session && session->handshake_done && SSL_session_reused(session->ssl);
}
