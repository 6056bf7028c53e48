/* tls_certs.h — test certificates made at test time with the openssl
 * command (ECDSA P-256, never fetched): a CA, and leaf certificates signed by
 * it or not, each with its PEM key, in a fresh temporary directory.
 *
 * Threading rule: the test's main thread (it runs the openssl command).
 */
#ifndef IOLOOP_TESTS_TLS_CERTS_H
#define IOLOOP_TESTS_TLS_CERTS_H

#define TLS_CERTS_PATH 256

typedef struct {
    char dir[TLS_CERTS_PATH - 64]; /* room for a file name in the paths below */
    char ca[TLS_CERTS_PATH];       /* the CA certificate (verification roots) */
    char ca_key[TLS_CERTS_PATH];
    char key[TLS_CERTS_PATH];              /* the key of every leaf below */
    char server[TLS_CERTS_PATH];           /* "localhost" and 127.0.0.1 (SAN), by the CA */
    char other[TLS_CERTS_PATH];            /* "other.test" and "*.wild.test" (SAN), by the CA: a second SNI name */
    char expired[TLS_CERTS_PATH];          /* "localhost", by the CA, expired a day ago */
    char self_signed[TLS_CERTS_PATH];      /* "localhost", signed by its own key */
    char wrong_host[TLS_CERTS_PATH];       /* "wrong.example" only, by the CA */
    char client[TLS_CERTS_PATH];           /* a client certificate ("ioloop-client"), by the CA */
    char untrusted_client[TLS_CERTS_PATH]; /* a client certificate signed by its own key */
} tls_certs_t;

/* Makes them all under a new mkdtemp directory. 0, or -1 (openssl failed). */
int tls_certs_make(tls_certs_t *certs);
/* Removes the directory and its files. */
void tls_certs_remove(tls_certs_t *certs);

#endif
