/* proxy_protocol.h — the PROXY protocol header parser (HAProxy's
 * proxy-protocol.txt, versions 1 and 2): a pure function over bytes, shared by
 * the listener (listener_proxy.c) and the fuzz target. Internal, not API.
 *
 * Threading rule: none; no state, no allocation, any thread.
 *
 * Limits: a v1 line is at most 107 bytes with its CRLF (the spec's bound);
 * a v2 header at most IOLOOP__PROXY_V2_MAX bytes: the 16-byte preamble plus
 * 1024 bytes of addresses and TLVs (the largest address block, two unix
 * paths, is 216 bytes; the rest leaves room for HAProxy's SSL, unique-id and
 * cloud TLVs). A longer declared length is refused at once, from the
 * preamble alone.
 */
#ifndef IOLOOP_RUNTIME_PROXY_PROTOCOL_H
#define IOLOOP_RUNTIME_PROXY_PROTOCOL_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>
#include <sys/types.h>

enum {
    IOLOOP__PROXY_V1_MAX = 107,
    IOLOOP__PROXY_V2_MAX = 16 + 1024,
    IOLOOP__PROXY_MAX = IOLOOP__PROXY_V2_MAX, /* the most bytes a header can take */
};

typedef struct {
    int version; /* 1 or 2 */
    bool local;  /* v2 LOCAL, v1 UNKNOWN, or v2 AF_UNSPEC: no address carried, keep the real peer's */
    struct sockaddr_storage src, dst;
    socklen_t src_len, dst_len; /* 0 when local */
} ioloop__proxy_header_t;

/* Parses the PROXY header at the start of buf[0, len). Returns the bytes it
 * takes (> 0) and fills *out; 0 when buf is a valid beginning of a header
 * that needs more bytes (len 0 included); -EPROTO for a bad signature, a bad
 * version or command, a malformed line, address or TLV list; -EMSGSIZE for a
 * header longer than the limits above. Only the bytes it returns belong to
 * the header: what follows is the connection's payload. *out is written only
 * on success. */
ssize_t ioloop__proxy_header_parse(const void *buf, size_t len, ioloop__proxy_header_t *out);

#endif
