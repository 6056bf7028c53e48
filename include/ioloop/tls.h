/* tls.h — TLS on OpenSSL 3 as a stream transport (Tornado's ssl_options and
 * SSLIOStream): contexts with certificates chosen by SNI, verification,
 * ALPN and session tickets; server streams from a listener, client streams
 * from ioloop_tcp_connect. libioloop-tls (pkg-config ioloop-tls, CMake
 * ioloop::tls); libioloop itself never links OpenSSL.
 *
 * Threading rule: a context is built once (any thread) and then shared,
 * read-only, by every loop; a TLS session belongs to its stream's loop.
 *
 * Errors: 0 or a negative errno; IOLOOP_ETLS (protocol failure) and
 * IOLOOP_ECERT (verification failure) end a stream; ioloop_tls_error_message
 * names the OpenSSL reason ("certificate verify failed: self-signed
 * certificate").
 */
#ifndef IOLOOP_TLS_H
#define IOLOOP_TLS_H

#include "ioloop/runtime.h"
#include "ioloop/stream.h"

#include <stdbool.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct ioloop_tls_context ioloop_tls_context_t;

typedef enum {
    IOLOOP_TLS_VERSION_DEFAULT = 0, /* min: TLS 1.2; max: the newest (1.3) */
    IOLOOP_TLS_1_2,
    IOLOOP_TLS_1_3,
} ioloop_tls_version_t;

typedef enum {
    IOLOOP_TLS_VERIFY_DEFAULT = 0, /* client: verify the server (chain + host name); server: no client cert */
    IOLOOP_TLS_VERIFY_OFF,         /* client: accept any certificate (explicit, never the default) */
    IOLOOP_TLS_VERIFY_OPTIONAL,    /* server: ask for a client certificate, verify it if sent */
    IOLOOP_TLS_VERIFY_REQUIRE,     /* server: a verified client certificate is required */
} ioloop_tls_verify_t;

/* One certificate: a PEM chain (leaf first) and its PEM private key. */
typedef struct {
    const char *cert_file;
    const char *key_file;
} ioloop_tls_cert_t;

typedef struct {
    bool server;                  /* a server context (else a client one) */
    const ioloop_tls_cert_t *certs; /* server: the default first, then more, each chosen by SNI when the
                                       name matches its SAN/CN; client: an optional client certificate */
    int ncerts;
    const char *ca_file;          /* verification roots (PEM); client default: the system's store */
    const char *ca_dir;
    ioloop_tls_version_t min_version, max_version;
    const char *const *alpn;      /* protocols in preference order, e.g. {"http/1.1"} */
    int nalpn;
    bool no_session_tickets;      /* server: resumption by tickets is on unless this is set */
    ioloop_tls_verify_t verify;
    ioloop_time_t handshake_timeout; /* 0: 10 s; the stream ends with -ETIMEDOUT past it */
} ioloop_tls_options_t;

/* Builds a context. Any thread. 0 and *out, or -EINVAL (bad options),
 * -ENOENT (a file missing), IOLOOP_ETLS (OpenSSL refused a certificate, key
 * or setting: ioloop_tls_error_message names it), -ENOMEM. */
IOLOOP_API int ioloop_tls_context_new(const ioloop_tls_options_t *opts, ioloop_tls_context_t **out);
/* Drops the caller's reference; sessions still open keep it alive. Any thread. */
IOLOOP_API void ioloop_tls_context_free(ioloop_tls_context_t *ctx);

/* The message of the last TLS failure on this thread (a context that did not
 * build, a stream that ended with IOLOOP_ETLS or IOLOOP_ECERT: read it in the
 * close callback, which runs on that thread). "" when none. */
IOLOOP_API const char *ioloop_tls_error_message(void);

/* Server side: fills a listener's make_transport/make_transport_arg so
 * every accepted connection gets a TLS session on ctx (the handshake runs
 * with the stream's first I/O, within handshake_timeout). */
IOLOOP_API void ioloop_tls_server_options(ioloop_tls_context_t *ctx, ioloop_listener_options_t *opts);

/* Client side: fills opts->make_transport/make_transport_arg of a connect
 * so the stream handed out is TLS to server_name (SNI, and the name
 * verified unless the context says IOLOOP_TLS_VERIFY_OFF). server_name is
 * copied; NULL: no SNI and no name check (only with VERIFY_OFF, else -EINVAL). */
IOLOOP_API int ioloop_tls_client_options(ioloop_tls_context_t *ctx, const char *server_name,
                                         ioloop_tcp_connect_options_t *opts);

/* Wraps an fd in a TLS stream directly (server or client per ctx;
 * server_name as above for a client). Loop thread. */
IOLOOP_API int ioloop_tls_stream_new(ioloop_t *loop, int fd, ioloop_tls_context_t *ctx, const char *server_name,
                                     const ioloop_stream_options_t *opts, ioloop_stream_t **out);

/* After the handshake (NULL/false before, or on a plain stream): the
 * negotiated protocol version ("TLSv1.3"), ALPN protocol, whether the
 * session was resumed, and the peer certificate's subject. Loop thread. */
IOLOOP_API bool ioloop_tls_handshake_done(const ioloop_stream_t *stream);
IOLOOP_API const char *ioloop_tls_stream_version(const ioloop_stream_t *stream);
IOLOOP_API const char *ioloop_tls_stream_alpn(const ioloop_stream_t *stream);
IOLOOP_API bool ioloop_tls_stream_resumed(const ioloop_stream_t *stream);

#ifdef __cplusplus
}
#endif
#endif
