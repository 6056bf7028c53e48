/* tcp_internal.h — tcp_connect.c's seam for white-box tests: a connect to
 * a prepared address list, as if a lookup had returned it.
 * Threading rule: as ioloop_tcp_connect (the loop's thread).
 */
#ifndef IOLOOP_RUNTIME_TCP_INTERNAL_H
#define IOLOOP_RUNTIME_TCP_INTERNAL_H

#include "internal.h"
#include "ioloop/stream.h"

#include <netdb.h>

/* ioloop_tcp_connect to the addresses of `list`, filtered and ordered (the
 * families interleaved) as a lookup's would be; port 0 keeps each address's
 * own port. Same returns. */
int ioloop__tcp_connect_addresses(ioloop_t *loop, const struct addrinfo *list, int port,
                                  const ioloop_tcp_connect_options_t *opts, ioloop_tcp_connect_fn cb, void *arg,
                                  ioloop_tcp_connect_t **out);

#endif
