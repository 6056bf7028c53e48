/* tls_certs.c — see tls_certs.h: runs one shell script of openssl commands
 * in a temporary directory (about 15 commands, ~0.1 s).
 *
 * Threading rule: the test's main thread.
 */
#define _GNU_SOURCE
#include "tls_certs.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char script[] =
    "set -e\n"
    "cd \"$1\"\n"
    "exec 2>openssl.log\n"
    "openssl ecparam -name prime256v1 -genkey -noout -out ca.key\n"
    "openssl req -x509 -new -key ca.key -subj /CN=ioloop-test-ca -days 30 -out ca.pem\n"
    "openssl ecparam -name prime256v1 -genkey -noout -out leaf.key\n"
    "openssl ecparam -name prime256v1 -genkey -noout -out self.key\n"
    "sign() { # name cn days san\n"
    "  openssl req -new -key leaf.key -subj \"/CN=$2\" -out \"$1.csr\"\n"
    "  printf '%s\\n' \"$4\" > \"$1.ext\"\n"
    "  openssl x509 -req -in \"$1.csr\" -CA ca.pem -CAkey ca.key -CAcreateserial -days \"$3\" -extfile \"$1.ext\" "
    "-out \"$1.pem\"\n"
    "}\n"
    "sign server localhost 30 'subjectAltName=DNS:localhost,IP:127.0.0.1'\n"
    "sign other other.test 30 'subjectAltName=DNS:other.test,DNS:*.wild.test'\n"
    "sign expired localhost -1 'subjectAltName=DNS:localhost,IP:127.0.0.1'\n"
    "sign wrong wrong.example 30 'subjectAltName=DNS:wrong.example'\n"
    "sign client ioloop-client 30 'extendedKeyUsage=clientAuth'\n"
    "openssl req -x509 -new -key leaf.key -subj /CN=localhost -days 30 "
    "-addext 'subjectAltName=DNS:localhost,IP:127.0.0.1' -out self.pem\n"
    "openssl req -x509 -new -key leaf.key -subj /CN=ioloop-client -days 30 -out untrusted-client.pem\n";

static void path(char *out, const char *dir, const char *name)
{
    snprintf(out, TLS_CERTS_PATH, "%s/%s", dir, name);
}

int tls_certs_make(tls_certs_t *certs)
{
    memset(certs, 0, sizeof(*certs));
    const char *tmp = getenv("TMPDIR");
    snprintf(certs->dir, sizeof(certs->dir), "%s/ioloop-tls-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(certs->dir))
        return -1;
    char script_path[TLS_CERTS_PATH + 16];
    snprintf(script_path, sizeof(script_path), "%s/make.sh", certs->dir);
    FILE *file = fopen(script_path, "w");
    if (!file)
        return -1;
    fputs(script, file);
    fclose(file);
    char command[2 * TLS_CERTS_PATH + 32];
    snprintf(command, sizeof(command), "sh '%s' '%s'", script_path, certs->dir);
    if (system(command) != 0) {
        fprintf(stderr, "tls_certs: openssl failed, see %s/openssl.log\n", certs->dir);
        return -1;
    }
    path(certs->ca, certs->dir, "ca.pem");
    path(certs->ca_key, certs->dir, "ca.key");
    path(certs->key, certs->dir, "leaf.key");
    path(certs->server, certs->dir, "server.pem");
    path(certs->other, certs->dir, "other.pem");
    path(certs->expired, certs->dir, "expired.pem");
    path(certs->self_signed, certs->dir, "self.pem");
    path(certs->wrong_host, certs->dir, "wrong.pem");
    path(certs->client, certs->dir, "client.pem");
    path(certs->untrusted_client, certs->dir, "untrusted-client.pem");
    return 0;
}

void tls_certs_remove(tls_certs_t *certs)
{
    if (!certs->dir[0] || strlen(certs->dir) < 18 ||
        strncmp(certs->dir + strlen(certs->dir) - 18, "/ioloop-tls-", 12) != 0)
        return; /* only a directory made by tls_certs_make */
    char command[TLS_CERTS_PATH + 16];
    snprintf(command, sizeof(command), "rm -rf '%s'", certs->dir);
    if (system(command) != 0)
        fprintf(stderr, "tls_certs: could not remove %s\n", certs->dir);
    certs->dir[0] = '\0';
}
