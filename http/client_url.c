/* client_url.c — the client URLs: "http[s]://host[:port][/path][?query]" (and
 * the WebSocket client's "ws[s]://", same grammar, its own scheme pair) split
 * into the parts a request needs (host without brackets for an IPv6 literal,
 * port, target), and a redirect's Location resolved against the URL it came
 * from (RFC 3986 5.2, without dot-segment removal: the server gets the path it
 * named). Also the small growable buffer the client uses.
 *
 * Threading rule: none (pure functions on the caller's memory).
 *
 * Refused (-EINVAL): a missing host, a bad port, userinfo ("user@host": its
 * credentials would otherwise be dropped silently), and any space or control
 * character (a request line that could be split).
 */
#define _GNU_SOURCE
#include "client_internal.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

int ioloop__cbuf_reserve(cbuf_t *b, size_t more)
{
    if (b->len + more <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + more)
        cap *= 2;
    char *data = realloc(b->data, cap);
    if (!data)
        return -ENOMEM;
    b->data = data;
    b->cap = cap;
    return 0;
}

int ioloop__cbuf_append(cbuf_t *b, const void *data, size_t len)
{
    if (ioloop__cbuf_reserve(b, len + 1) != 0)
        return -ENOMEM;
    if (len)
        memcpy(b->data + b->len, data, len);
    b->len += len;
    b->data[b->len] = '\0';
    return 0;
}

int ioloop__cbuf_printf(cbuf_t *b, const char *fmt, ...)
{
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        size_t room = b->cap - b->len;
        int n = vsnprintf(b->cap ? b->data + b->len : NULL, room, fmt, ap);
        va_end(ap);
        if (n < 0)
            return -EINVAL;
        if ((size_t)n < room) {
            b->len += (size_t)n;
            return 0;
        }
        if (ioloop__cbuf_reserve(b, (size_t)n + 1) != 0)
            return -ENOMEM;
    }
}

/* text past "<scheme>://" when it starts so (case-insensitively), else NULL */
static const char *after_scheme(const char *text, const char *scheme)
{
    size_t n = strlen(scheme);
    if (strncasecmp(text, scheme, n) != 0 || strncmp(text + n, "://", 3) != 0)
        return NULL;
    return text + n + 3;
}

int ioloop__client_url_parse_as(client_url_t *url, const char *text, const char *plain, const char *tls)
{
    size_t n = strlen(text);
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)text[i];
        if (ch <= 0x20 || ch == 0x7f)
            return -EINVAL;
    }
    const char *rest;
    if ((rest = after_scheme(text, plain)) != NULL) {
        url->tls = false;
    } else if ((rest = after_scheme(text, tls)) != NULL) {
        url->tls = true;
    } else {
        return strstr(text, "://") ? -EPROTONOSUPPORT : -EINVAL;
    }
    size_t auth_len = strcspn(rest, "/?#");
    const char *path = rest + auth_len;
    if (memchr(rest, '@', auth_len))
        return -EINVAL;
    /* text: "host\0/target\0", the target without its fragment */
    url->text.len = 0;
    const char *host = rest, *port = NULL;
    size_t host_len;
    url->ipv6 = false;
    if (*rest == '[') {
        const char *close = memchr(rest, ']', auth_len);
        if (!close)
            return -EINVAL;
        host = rest + 1;
        host_len = (size_t)(close - host);
        if (close + 1 < path) {
            if (close[1] != ':')
                return -EINVAL;
            port = close + 2;
        }
        if (host_len == 0 || strspn(host, "0123456789abcdefABCDEF:.%") < host_len)
            return -EINVAL;
        url->ipv6 = true;
    } else {
        const char *colon = memchr(rest, ':', auth_len);
        host_len = colon ? (size_t)(colon - rest) : auth_len;
        if (colon)
            port = colon + 1;
    }
    if (host_len == 0 || host_len > 253)
        return -EINVAL;
    url->port = url->tls ? 443 : 80;
    url->default_port = true;
    if (port) {
        size_t plen = (size_t)(path - port);
        if (plen == 0 || plen > 5 || strspn(port, "0123456789") < plen)
            return -EINVAL;
        int p = atoi(port);
        if (p < 1 || p > 65535)
            return -EINVAL;
        url->default_port = p == url->port;
        url->port = p;
    }
    size_t target_len = strcspn(path, "#");
    if (ioloop__cbuf_reserve(&url->text, host_len + target_len + 4) != 0)
        return -ENOMEM;
    char *t = url->text.data;
    memcpy(t, host, host_len);
    t[host_len] = '\0';
    char *target = t + host_len + 1;
    if (target_len == 0 || path[0] == '?')
        *target++ = '/';
    memcpy(target, path, target_len);
    target[target_len] = '\0';
    url->text.len = (size_t)(target + target_len - t) + 1;
    url->host = t;
    url->target = t + host_len + 1;
    return 0;
}

int ioloop__client_url_parse(client_url_t *url, const char *text)
{
    return ioloop__client_url_parse_as(url, text, "http", "https");
}

int ioloop__client_url_resolve(client_url_t *out, const client_url_t *base, const char *location)
{
    cbuf_t abs = {0};
    int rc;
    const char *scheme = base->tls ? "https" : "http";
    if (strncasecmp(location, "http://", 7) == 0 || strncasecmp(location, "https://", 8) == 0) {
        rc = ioloop__cbuf_append(&abs, location, strlen(location));
    } else if (location[0] == '/' && location[1] == '/') {
        rc = ioloop__cbuf_printf(&abs, "%s:%s", scheme, location);
    } else if (strstr(location, "://") && strcspn(location, "/?#") > strcspn(location, ":")) {
        rc = -EPROTONOSUPPORT; /* another scheme */
    } else {
        const char *open = base->ipv6 ? "[" : "", *close = base->ipv6 ? "]" : "";
        rc = ioloop__cbuf_printf(&abs, "%s://%s%s%s:%d", scheme, open, base->host, close, base->port);
        if (rc == 0 && location[0] == '/') {
            rc = ioloop__cbuf_append(&abs, location, strlen(location));
        } else if (rc == 0 && (location[0] == '?' || location[0] == '\0' || location[0] == '#')) {
            size_t path_len = strcspn(base->target, "?");
            rc = ioloop__cbuf_append(&abs, base->target, path_len);
            if (rc == 0)
                rc = ioloop__cbuf_append(&abs, location, strlen(location));
        } else if (rc == 0) {
            size_t path_len = strcspn(base->target, "?");
            const char *slash = base->target;
            for (size_t i = 0; i < path_len; i++)
                if (base->target[i] == '/')
                    slash = base->target + i;
            rc = ioloop__cbuf_append(&abs, base->target, (size_t)(slash - base->target) + 1);
            if (rc == 0)
                rc = ioloop__cbuf_append(&abs, location, strlen(location));
        }
    }
    if (rc == 0)
        rc = ioloop__client_url_parse(out, abs.data);
    free(abs.data);
    return rc;
}
