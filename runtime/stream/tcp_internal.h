/* tcp_internal.h — the seam between tcp_connect.c and resolve.c (host names
 * to addresses), and tcp_connect.c's entry for white-box tests (a connect to
 * a prepared address list, as if a lookup had returned it).
 *
 * Threading rule: the loop's thread (as ioloop_tcp_connect), except where a
 * declaration says "any thread".
 */
#ifndef IOLOOP_RUNTIME_TCP_INTERNAL_H
#define IOLOOP_RUNTIME_TCP_INTERNAL_H

#include "internal.h"
#include "ioloop/stream.h"

#include <netdb.h>
#include <sys/socket.h>

/* ---- resolve.c -------------------------------------------------------------- */

typedef struct ioloop__lookup ioloop__lookup_t;

/* A lookup's outcome: status 0 and the addresses (valid during the call
 * only), or IOLOOP_ENONAME / IOLOOP_EDNS / -ENOMEM, -ECANCELED (the pool shut
 * down before it started), -ESHUTDOWN (the loop closed first). */
typedef void (*ioloop__lookup_fn)(void *arg, int status, const struct addrinfo *list);

/* 1 and the address (port 0) for an IPv4/IPv6 literal ("[::1]" too); 0 for a
 * name to look up; IOLOOP_ENONAME for RFC 6761 "invalid" names; -EAFNOSUPPORT
 * for a literal outside `family` (AF_UNSPEC: any). Any thread. */
int ioloop__resolve_literal(const char *host, int family, struct sockaddr_storage *ss, socklen_t *len);
/* getaddrinfo's error as ours: IOLOOP_ENONAME, IOLOOP_EDNS or -ENOMEM. Any thread. */
int ioloop__resolve_error(int gai_err);
/* Resolves host (SOCK_STREAM; `family`, or AF_UNSPEC for both) with
 * getaddrinfo on the executor; fn runs exactly once, later, on the loop
 * thread, unless abandoned first. 0, or -ENOMEM. */
int ioloop__lookup_start(ioloop_t *loop, const char *host, int family, ioloop__lookup_fn fn, void *arg,
                         ioloop__lookup_t **out);
/* fn will not run; the lookup finishes on its pool thread and is freed. */
void ioloop__lookup_abandon(ioloop__lookup_t *lookup);
/* Lookups not freed yet, in the process (tests: none leaks, even when
 * abandoned or cut off by a close). Any thread. */
int ioloop__lookups_live(void);

/* ---- tcp_connect.c ---------------------------------------------------------- */

/* ioloop_tcp_connect to the addresses of `list`, filtered and ordered (the
 * families interleaved) as a lookup's would be; port 0 keeps each address's
 * own port. Same returns. */
int ioloop__tcp_connect_addresses(ioloop_t *loop, const struct addrinfo *list, int port,
                                  const ioloop_tcp_connect_options_t *opts, ioloop_tcp_connect_fn cb, void *arg,
                                  ioloop_tcp_connect_t **out);

#endif
