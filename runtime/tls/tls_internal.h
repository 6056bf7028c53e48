/* tls_internal.h — what the files of libioloop-tls share: the context's
 * structure, the client's per-server-name entries, the error message
 * setters, and the one libioloop internal the transport calls.
 *
 * Threading rule: see tls_context.c (context: shared, read-only after
 * building; entries under ctx->lock) and tls_stream.c (a session: its
 * stream's loop thread).
 */
#ifndef IOLOOP_TLS_INTERNAL_H
#define IOLOOP_TLS_INTERNAL_H

#include "ioloop/tls.h"

#include <pthread.h>
#include <stdatomic.h>

#include <openssl/ssl.h>

/* A client's server name: the SNI/verified name and its last session.
 * Owned by the context (freed with it), so make_transport_arg needs no
 * destructor. */
typedef struct ioloop__tls_peer {
    struct ioloop__tls_peer *next;
    ioloop_tls_context_t *ctx;
    char *name; /* NULL: no SNI, no name check (VERIFY_OFF only) */
    SSL_SESSION *session;
} ioloop__tls_peer_t;

struct ioloop_tls_context {
    atomic_int refs;
    bool server;
    ioloop_tls_verify_t verify;
    ioloop_time_t handshake_timeout;
    SSL_CTX **ctxs; /* server: one per certificate, the default first; client: one */
    int nctx;
    unsigned char *alpn_wire; /* length-prefixed protocols */
    unsigned alpn_len;
    char **alpn_names; /* the same, as strings */
    int nalpn;
    pthread_mutex_t lock; /* peers and their sessions */
    ioloop__tls_peer_t *peers;
};

void ioloop__tls_set_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void ioloop__tls_set_openssl_error(const char *what);
void ioloop__tls_context_ref(ioloop_tls_context_t *ctx);
ioloop__tls_peer_t *ioloop__tls_peer_get(ioloop_tls_context_t *ctx, const char *server_name);
/* The peer's last session with a reference for the caller, or NULL. */
SSL_SESSION *ioloop__tls_peer_session(ioloop__tls_peer_t *peer);
/* The peer entry of a client SSL made by tls_stream.c (NULL otherwise). */
ioloop__tls_peer_t *ioloop__tls_session_peer(SSL *ssl);

#endif
