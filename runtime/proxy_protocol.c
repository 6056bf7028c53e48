/* proxy_protocol.c — parses a PROXY protocol header, v1 (text) or v2
 * (binary), as HAProxy's proxy-protocol.txt defines them; limits in
 * proxy_protocol.h.
 *
 * Threading rule: pure function, any thread.
 *
 * Strictness (the header decides whose address the application logs, so
 * anything doubtful is refused): a prefix that cannot become a signature is
 * refused at once (a client that speaks HTTP straight to a PROXY listener is
 * closed on its first bytes, not after a timeout); v1 wants single spaces,
 * CRLF, numeric addresses of the family it names and ports without leading
 * zeros; v2 wants version 2, command LOCAL or PROXY, a STREAM transport for
 * a known family, an address block as long as the family needs and TLVs
 * that exactly fill the rest. v1 UNKNOWN, v2 LOCAL and v2 AF_UNSPEC carry no
 * address: `local` is set and the connection keeps its real peer (the spec's
 * rule). TLV contents are not interpreted.
 */
#define _GNU_SOURCE
#include "proxy_protocol.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <string.h>
#include <sys/un.h>

static const char v1_sig[] = "PROXY ";
static const unsigned char v2_sig[12] = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};

/* ---- v1 ------------------------------------------------------------------ */

/* A decimal port, 0..65535, without sign or leading zero. */
static int v1_port(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 5 || (n > 1 && s[0] == '0'))
        return -1;
    int v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    return v <= 65535 ? v : -1;
}

static int v1_address(int family, const char *ip, int port, struct sockaddr_storage *ss, socklen_t *len)
{
    memset(ss, 0, sizeof(*ss));
    if (family == AF_INET) {
        struct sockaddr_in *in = (struct sockaddr_in *)ss;
        if (inet_pton(AF_INET, ip, &in->sin_addr) != 1)
            return -EPROTO;
        in->sin_family = AF_INET;
        in->sin_port = htons((uint16_t)port);
        *len = sizeof(*in);
    } else {
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;
        if (inet_pton(AF_INET6, ip, &in6->sin6_addr) != 1)
            return -EPROTO;
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons((uint16_t)port);
        *len = sizeof(*in6);
    }
    return 0;
}

static ssize_t parse_v1(const unsigned char *p, size_t len, ioloop__proxy_header_t *out)
{
    size_t scan = len < IOLOOP__PROXY_V1_MAX ? len : IOLOOP__PROXY_V1_MAX;
    size_t end = 0; /* index of the LF */
    bool found = false;
    for (size_t i = sizeof(v1_sig) - 1; i < scan; i++) {
        if (p[i] == '\n') {
            end = i;
            found = true;
            break;
        }
        if (p[i] == '\r' && i + 1 < len && p[i + 1] != '\n')
            return -EPROTO; /* a CR that does not end the line */
        if (p[i] != '\r' && (p[i] < 0x20 || p[i] > 0x7e))
            return -EPROTO; /* the line is printable ASCII */
    }
    if (!found)
        return len >= IOLOOP__PROXY_V1_MAX ? -EMSGSIZE : 0;
    if (p[end - 1] != '\r')
        return -EPROTO;
    /* The fields, between "PROXY " and CRLF, as a C string. */
    char line[IOLOOP__PROXY_V1_MAX + 1];
    size_t n = end - 1 - (sizeof(v1_sig) - 1);
    memcpy(line, p + sizeof(v1_sig) - 1, n);
    line[n] = '\0';

    ioloop__proxy_header_t h = {.version = 1};
    if (strcmp(line, "UNKNOWN") == 0 || strncmp(line, "UNKNOWN ", 8) == 0) {
        h.local = true; /* the rest of the line is to be ignored */
        *out = h;
        return (ssize_t)end + 1;
    }
    char *field[5];
    int nf = 0;
    for (char *s = line;;) {
        if (nf == 5)
            return -EPROTO;
        field[nf++] = s;
        char *sp = strchr(s, ' ');
        if (!sp)
            break;
        *sp = '\0';
        s = sp + 1;
    }
    if (nf != 5)
        return -EPROTO;
    for (int i = 0; i < 5; i++)
        if (!*field[i])
            return -EPROTO; /* two spaces in a row */
    int family;
    if (strcmp(field[0], "TCP4") == 0)
        family = AF_INET;
    else if (strcmp(field[0], "TCP6") == 0)
        family = AF_INET6;
    else
        return -EPROTO;
    int sport = v1_port(field[3]), dport = v1_port(field[4]);
    if (sport < 0 || dport < 0)
        return -EPROTO;
    if (v1_address(family, field[1], sport, &h.src, &h.src_len) != 0 ||
        v1_address(family, field[2], dport, &h.dst, &h.dst_len) != 0)
        return -EPROTO;
    *out = h;
    return (ssize_t)end + 1;
}

/* ---- v2 ------------------------------------------------------------------ */

enum { V2_LOCAL = 0x0, V2_PROXY = 0x1 };
enum { AF2_UNSPEC = 0x0, AF2_INET = 0x1, AF2_INET6 = 0x2, AF2_UNIX = 0x3 };
enum { TP2_UNSPEC = 0x0, TP2_STREAM = 0x1 };

static void v2_unix(const unsigned char *path, struct sockaddr_storage *ss, socklen_t *len)
{
    struct sockaddr_un *un = (struct sockaddr_un *)ss;
    memset(ss, 0, sizeof(*ss));
    un->sun_family = AF_UNIX;
    _Static_assert(sizeof(un->sun_path) >= 108, "v2 carries 108-byte unix paths");
    memcpy(un->sun_path, path, 108);
    if (path[0]) /* a path: up to its NUL; an abstract name: all of it (padding included) */
        *len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strnlen(un->sun_path, 108));
    else
        *len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 108);
}

static ssize_t parse_v2(const unsigned char *p, size_t len, ioloop__proxy_header_t *out)
{
    if (len < 16)
        return 0;
    if (p[12] >> 4 != 2)
        return -EPROTO;
    unsigned cmd = p[12] & 0x0f;
    if (cmd != V2_LOCAL && cmd != V2_PROXY)
        return -EPROTO;
    size_t plen = (size_t)p[14] << 8 | p[15];
    if (plen > IOLOOP__PROXY_V2_MAX - 16)
        return -EMSGSIZE;
    if (len < 16 + plen)
        return 0;
    ioloop__proxy_header_t h = {.version = 2};
    const unsigned char *a = p + 16;
    unsigned family = p[13] >> 4, transport = p[13] & 0x0f;
    if (cmd == V2_LOCAL || family == AF2_UNSPEC) {
        /* No address: the spec has the receiver skip the block unread. */
        h.local = true;
        *out = h;
        return (ssize_t)(16 + plen);
    }
    if (transport != TP2_STREAM)
        return -EPROTO; /* a listener is a stream socket: UDP or unknown is inconsistent */
    size_t alen;
    switch (family) {
    case AF2_INET: {
        alen = 12;
        if (plen < alen)
            return -EPROTO;
        struct sockaddr_in *s = (struct sockaddr_in *)&h.src, *d = (struct sockaddr_in *)&h.dst;
        s->sin_family = d->sin_family = AF_INET;
        memcpy(&s->sin_addr, a, 4);
        memcpy(&d->sin_addr, a + 4, 4);
        memcpy(&s->sin_port, a + 8, 2);
        memcpy(&d->sin_port, a + 10, 2);
        h.src_len = h.dst_len = sizeof(struct sockaddr_in);
        break;
    }
    case AF2_INET6: {
        alen = 36;
        if (plen < alen)
            return -EPROTO;
        struct sockaddr_in6 *s = (struct sockaddr_in6 *)&h.src, *d = (struct sockaddr_in6 *)&h.dst;
        s->sin6_family = d->sin6_family = AF_INET6;
        memcpy(&s->sin6_addr, a, 16);
        memcpy(&d->sin6_addr, a + 16, 16);
        memcpy(&s->sin6_port, a + 32, 2);
        memcpy(&d->sin6_port, a + 34, 2);
        h.src_len = h.dst_len = sizeof(struct sockaddr_in6);
        break;
    }
    case AF2_UNIX:
        alen = 216;
        if (plen < alen)
            return -EPROTO;
        v2_unix(a, &h.src, &h.src_len);
        v2_unix(a + 108, &h.dst, &h.dst_len);
        break;
    default:
        return -EPROTO;
    }
    /* TLVs: type (1), length (2, big-endian), value; they fill the rest exactly. */
    for (size_t off = alen; off < plen;) {
        if (plen - off < 3)
            return -EPROTO;
        size_t vlen = (size_t)a[off + 1] << 8 | a[off + 2];
        if (plen - off - 3 < vlen)
            return -EPROTO;
        off += 3 + vlen;
    }
    *out = h;
    return (ssize_t)(16 + plen);
}

/* ---- either -------------------------------------------------------------- */

ssize_t ioloop__proxy_header_parse(const void *buf, size_t len, ioloop__proxy_header_t *out)
{
    const unsigned char *p = buf;
    if (len == 0)
        return 0;
    if (!buf || !out)
        return -EINVAL;
    if (p[0] == 'P') {
        size_t n = len < sizeof(v1_sig) - 1 ? len : sizeof(v1_sig) - 1;
        if (memcmp(p, v1_sig, n) != 0)
            return -EPROTO;
        return n < sizeof(v1_sig) - 1 ? 0 : parse_v1(p, len, out);
    }
    size_t n = len < sizeof(v2_sig) ? len : sizeof(v2_sig);
    if (memcmp(p, v2_sig, n) != 0)
        return -EPROTO;
    return parse_v2(p, len, out);
}
