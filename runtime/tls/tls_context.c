/* tls_context.c — ioloop_tls_context_t: the SSL_CTXs of a TLS context (one
 * per server certificate, chosen by SNI; one for a client), their settings
 * (versions, ALPN, tickets, verification), the client's per-server-name
 * entries (SNI name + the last session, for resumption), and the thread's
 * last TLS error message.
 *
 * Threading rule: a context is built on any thread, then read-only and
 * shared by every loop (OpenSSL's SSL_CTX is thread-safe for SSL_new); its
 * reference count is atomic; the client entries and their sessions are
 * guarded by the context's mutex. The error message is thread-local.
 *
 * One SSL_CTX shared by all loops (not one per loop): see the report in
 * runtime/tls/README.md for the measurement.
 */
#define _GNU_SOURCE
#include "tls_internal.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/x509v3.h>

/* ---- the thread's last error ----------------------------------------------- */

static _Thread_local char error_message[256];

const char *ioloop_tls_error_message(void)
{
    return error_message;
}

void ioloop__tls_set_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(error_message, sizeof(error_message), fmt, ap);
    va_end(ap);
}

/* The prefix, then the reason of OpenSSL's oldest queued error (the cause,
 * not its consequences); the queue is emptied. */
void ioloop__tls_set_openssl_error(const char *what)
{
    unsigned long code = ERR_get_error();
    if (code) {
        char reason[160];
        const char *text = ERR_reason_error_string(code);
        if (!text) {
            ERR_error_string_n(code, reason, sizeof(reason));
            text = reason;
        }
        ioloop__tls_set_error("%s: %s", what, text);
    } else {
        ioloop__tls_set_error("%s", what);
    }
    ERR_clear_error();
}

/* ---- SNI and ALPN (server) ------------------------------------------------- */

/* Picks the certificate whose SAN DNS names (wildcards allowed; the CN when
 * there is no SAN) match the client's SNI name; the first one otherwise. */
static int servername_cb(SSL *ssl, int *alert, void *arg)
{
    (void)alert;
    ioloop_tls_context_t *ctx = arg;
    const char *name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
    if (!name || ctx->nctx < 2)
        return SSL_TLSEXT_ERR_OK;
    for (int i = 0; i < ctx->nctx; i++) {
        X509 *cert = SSL_CTX_get0_certificate(ctx->ctxs[i]);
        if (cert && X509_check_host(cert, name, 0, 0, NULL) == 1) {
            if (i > 0)
                SSL_set_SSL_CTX(ssl, ctx->ctxs[i]);
            return SSL_TLSEXT_ERR_OK;
        }
    }
    return SSL_TLSEXT_ERR_OK;
}

static int alpn_select_cb(SSL *ssl, const unsigned char **out, unsigned char *outlen, const unsigned char *in,
                          unsigned inlen, void *arg)
{
    (void)ssl;
    ioloop_tls_context_t *ctx = arg;
    unsigned char *chosen;
    /* Our preference order, among the client's protocols; no overlap: no ALPN. */
    if (SSL_select_next_proto(&chosen, outlen, ctx->alpn_wire, ctx->alpn_len, in, inlen) != OPENSSL_NPN_NEGOTIATED)
        return SSL_TLSEXT_ERR_NOACK;
    *out = chosen;
    return SSL_TLSEXT_ERR_OK;
}

/* ---- client sessions (resumption) ------------------------------------------ */

static int new_session_cb(SSL *ssl, SSL_SESSION *session)
{
    ioloop__tls_peer_t *peer = ioloop__tls_session_peer(ssl);
    if (!peer)
        return 0;
    ioloop_tls_context_t *ctx = peer->ctx;
    pthread_mutex_lock(&ctx->lock);
    SSL_SESSION *old = peer->session;
    peer->session = session; /* we keep the reference OpenSSL hands us */
    pthread_mutex_unlock(&ctx->lock);
    if (old)
        SSL_SESSION_free(old);
    return 1;
}

SSL_SESSION *ioloop__tls_peer_session(ioloop__tls_peer_t *peer)
{
    pthread_mutex_lock(&peer->ctx->lock);
    SSL_SESSION *session = peer->session;
    if (session)
        SSL_SESSION_up_ref(session);
    pthread_mutex_unlock(&peer->ctx->lock);
    return session;
}

ioloop__tls_peer_t *ioloop__tls_peer_get(ioloop_tls_context_t *ctx, const char *server_name)
{
    pthread_mutex_lock(&ctx->lock);
    ioloop__tls_peer_t *peer = ctx->peers;
    while (peer && !(server_name ? peer->name && strcmp(peer->name, server_name) == 0 : !peer->name))
        peer = peer->next;
    if (!peer && (peer = calloc(1, sizeof(*peer))) != NULL) {
        peer->ctx = ctx;
        if (server_name && !(peer->name = strdup(server_name))) {
            free(peer);
            peer = NULL;
        } else {
            peer->next = ctx->peers;
            ctx->peers = peer;
        }
    }
    pthread_mutex_unlock(&ctx->lock);
    return peer;
}

/* ---- building --------------------------------------------------------------- */

static int version_of(ioloop_tls_version_t version, int fallback)
{
    switch (version) {
    case IOLOOP_TLS_1_2:
        return TLS1_2_VERSION;
    case IOLOOP_TLS_1_3:
        return TLS1_3_VERSION;
    default:
        return fallback;
    }
}

static int file_check(const char *path, bool dir)
{
    struct stat st;
    if (stat(path, &st) < 0) {
        ioloop__tls_set_error("%s: %s", path, strerror(errno));
        return -errno;
    }
    if (dir != S_ISDIR(st.st_mode)) {
        ioloop__tls_set_error("%s: %s", path, dir ? "not a directory" : "is a directory");
        return -EINVAL;
    }
    return 0;
}

static int fail_openssl(const char *what)
{
    ioloop__tls_set_openssl_error(what);
    return IOLOOP_ETLS;
}

/* One SSL_CTX with every setting of opts (and certificate cert, if any). */
static int build_ssl_ctx(ioloop_tls_context_t *ctx, const ioloop_tls_options_t *opts, const ioloop_tls_cert_t *cert,
                         SSL_CTX **out)
{
    SSL_CTX *sctx = SSL_CTX_new(opts->server ? TLS_server_method() : TLS_client_method());
    if (!sctx)
        return fail_openssl("SSL_CTX_new");
    *out = sctx;
    int min = version_of(opts->min_version, TLS1_2_VERSION), max = version_of(opts->max_version, 0);
    if (!SSL_CTX_set_min_proto_version(sctx, min) || !SSL_CTX_set_max_proto_version(sctx, max))
        return fail_openssl("TLS versions");
    /* Renegotiation is refused (TLS 1.3 has none); unexpected EOF is read as
     * EOF by the transport itself; compression never. */
    SSL_CTX_set_options(sctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION | SSL_OP_CIPHER_SERVER_PREFERENCE);
    SSL_CTX_set_mode(sctx,
                     SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER | SSL_MODE_RELEASE_BUFFERS);
    if (cert) {
        int err;
        if ((err = file_check(cert->cert_file, false)) || (err = file_check(cert->key_file, false)))
            return err;
        if (SSL_CTX_use_certificate_chain_file(sctx, cert->cert_file) != 1)
            return fail_openssl(cert->cert_file);
        if (SSL_CTX_use_PrivateKey_file(sctx, cert->key_file, SSL_FILETYPE_PEM) != 1)
            return fail_openssl(cert->key_file);
        if (SSL_CTX_check_private_key(sctx) != 1)
            return fail_openssl("certificate and key");
    }
    if (opts->ca_file || opts->ca_dir) {
        if (SSL_CTX_load_verify_locations(sctx, opts->ca_file, opts->ca_dir) != 1)
            return fail_openssl("CA");
    } else if (!opts->server && opts->verify != IOLOOP_TLS_VERIFY_OFF) {
        SSL_CTX_set_default_verify_paths(sctx);
    }
    if (opts->server) {
        static const unsigned char id_context[] = "ioloop";
        SSL_CTX_set_session_id_context(sctx, id_context, sizeof(id_context) - 1);
        /* Resumption is by tickets only: no server-side cache (a lock every
         * loop would share); with tickets off there is none. */
        SSL_CTX_set_session_cache_mode(sctx, SSL_SESS_CACHE_OFF);
        if (opts->no_session_tickets)
            SSL_CTX_set_options(sctx, SSL_OP_NO_TICKET);
        SSL_CTX_set_num_tickets(sctx, opts->no_session_tickets ? 0 : 1);
        SSL_CTX_set_tlsext_servername_callback(sctx, servername_cb);
        SSL_CTX_set_tlsext_servername_arg(sctx, ctx);
        if (ctx->alpn_len)
            SSL_CTX_set_alpn_select_cb(sctx, alpn_select_cb, ctx);
        if (opts->verify == IOLOOP_TLS_VERIFY_OPTIONAL || opts->verify == IOLOOP_TLS_VERIFY_REQUIRE) {
            int mode =
                SSL_VERIFY_PEER | (opts->verify == IOLOOP_TLS_VERIFY_REQUIRE ? SSL_VERIFY_FAIL_IF_NO_PEER_CERT : 0);
            SSL_CTX_set_verify(sctx, mode, NULL);
            if (opts->ca_file) {
                STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(opts->ca_file);
                if (names)
                    SSL_CTX_set_client_CA_list(sctx, names);
            }
        }
    } else {
        SSL_CTX_set_verify(sctx, opts->verify == IOLOOP_TLS_VERIFY_OFF ? SSL_VERIFY_NONE : SSL_VERIFY_PEER, NULL);
        if (ctx->alpn_len && SSL_CTX_set_alpn_protos(sctx, ctx->alpn_wire, ctx->alpn_len) != 0)
            return fail_openssl("ALPN");
        /* Sessions are kept per server name by new_session_cb, not in OpenSSL's cache. */
        SSL_CTX_set_session_cache_mode(sctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
        SSL_CTX_sess_set_new_cb(sctx, new_session_cb);
    }
    return 0;
}

static int alpn_wire(ioloop_tls_context_t *ctx, const ioloop_tls_options_t *opts)
{
    size_t total = 0;
    for (int i = 0; i < opts->nalpn; i++) {
        size_t len = opts->alpn[i] ? strlen(opts->alpn[i]) : 0;
        if (len == 0 || len > 255)
            return -EINVAL;
        total += 1 + len;
    }
    if (!total)
        return 0;
    if (total > 65535 || !(ctx->alpn_wire = malloc(total)))
        return total > 65535 ? -EINVAL : -ENOMEM;
    unsigned char *p = ctx->alpn_wire;
    for (int i = 0; i < opts->nalpn; i++) {
        size_t len = strlen(opts->alpn[i]);
        *p++ = (unsigned char)len;
        memcpy(p, opts->alpn[i], len);
        p += len;
    }
    ctx->alpn_len = (unsigned)total;
    if (!(ctx->alpn_names = calloc((size_t)opts->nalpn, sizeof(*ctx->alpn_names))))
        return -ENOMEM;
    for (; ctx->nalpn < opts->nalpn; ctx->nalpn++)
        if (!(ctx->alpn_names[ctx->nalpn] = strdup(opts->alpn[ctx->nalpn])))
            return -ENOMEM;
    return 0;
}

static void context_destroy(ioloop_tls_context_t *ctx)
{
    for (int i = 0; i < ctx->nctx; i++)
        SSL_CTX_free(ctx->ctxs[i]);
    free(ctx->ctxs);
    while (ctx->peers) {
        ioloop__tls_peer_t *peer = ctx->peers;
        ctx->peers = peer->next;
        if (peer->session)
            SSL_SESSION_free(peer->session);
        free(peer->name);
        free(peer);
    }
    free(ctx->alpn_wire);
    for (int i = 0; i < ctx->nalpn; i++)
        free(ctx->alpn_names[i]);
    free(ctx->alpn_names);
    pthread_mutex_destroy(&ctx->lock);
    free(ctx);
}

int ioloop_tls_context_new(const ioloop_tls_options_t *opts, ioloop_tls_context_t **out)
{
    if (out)
        *out = NULL;
    if (!opts || !out || opts->ncerts < 0 || (opts->ncerts && !opts->certs) || (opts->server && opts->ncerts < 1) ||
        (!opts->server && opts->ncerts > 1) || opts->nalpn < 0 || (opts->nalpn && !opts->alpn) ||
        opts->handshake_timeout < 0 || (unsigned)opts->verify > IOLOOP_TLS_VERIFY_REQUIRE ||
        (unsigned)opts->min_version > IOLOOP_TLS_1_3 || (unsigned)opts->max_version > IOLOOP_TLS_1_3 ||
        (opts->min_version && opts->max_version && opts->min_version > opts->max_version) ||
        (opts->server && opts->verify == IOLOOP_TLS_VERIFY_OFF) ||
        (!opts->server && (opts->verify == IOLOOP_TLS_VERIFY_OPTIONAL || opts->verify == IOLOOP_TLS_VERIFY_REQUIRE)))
        return -EINVAL;
    for (int i = 0; i < opts->ncerts; i++)
        if (!opts->certs[i].cert_file || !opts->certs[i].key_file)
            return -EINVAL;
    if (opts->server && opts->verify != IOLOOP_TLS_VERIFY_DEFAULT && !opts->ca_file && !opts->ca_dir)
        return -EINVAL; /* client certificates need roots to be verified against */
    int err;
    if ((opts->ca_file && (err = file_check(opts->ca_file, false))) ||
        (opts->ca_dir && (err = file_check(opts->ca_dir, true))))
        return err;
    ERR_clear_error();
    ioloop_tls_context_t *ctx = calloc(1, sizeof(*ctx));
    if (!ctx)
        return -ENOMEM;
    pthread_mutex_init(&ctx->lock, NULL);
    atomic_init(&ctx->refs, 1);
    ctx->server = opts->server;
    ctx->verify = opts->verify;
    ctx->handshake_timeout = opts->handshake_timeout ? opts->handshake_timeout : IOLOOP_SEC(10);
    int nctx = opts->server ? opts->ncerts : 1;
    err = alpn_wire(ctx, opts);
    if (!err && !(ctx->ctxs = calloc((size_t)nctx, sizeof(*ctx->ctxs))))
        err = -ENOMEM;
    for (int i = 0; !err && i < nctx; i++) {
        err = build_ssl_ctx(ctx, opts, opts->ncerts ? &opts->certs[i] : NULL, &ctx->ctxs[i]);
        if (ctx->ctxs[i])
            ctx->nctx = i + 1;
    }
    if (err) {
        context_destroy(ctx);
        return err;
    }
    *out = ctx;
    return 0;
}

void ioloop__tls_context_ref(ioloop_tls_context_t *ctx)
{
    atomic_fetch_add_explicit(&ctx->refs, 1, memory_order_relaxed);
}

void ioloop_tls_context_free(ioloop_tls_context_t *ctx)
{
    if (ctx && atomic_fetch_sub_explicit(&ctx->refs, 1, memory_order_acq_rel) == 1)
        context_destroy(ctx);
}
