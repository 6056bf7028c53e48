/* router.c — path → route: literal paths through an open-addressing hash
 * (one hash and one strcmp per request), patterns as POSIX extended regular
 * expressions anchored at both ends (Tornado's URLSpec appends '$' and matches
 * from the start), tried in the order they were added, after the literals.
 *
 * Threading rule: routes are added on one thread before serving; matching is
 * read-only and runs on any loop thread concurrently.
 */
#define _GNU_SOURCE
#include "internal.h"

#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

static uint32_t hash_path(const char *s)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 16777619u;
    return h;
}

static bool is_literal(const char *pattern)
{
    return strpbrk(pattern, "[]()*+?{}|^$\\") == NULL;
}

static int lit_insert(http_route_t **slots, unsigned mask, http_route_t *r)
{
    for (unsigned i = hash_path(r->pattern) & mask;; i = (i + 1) & mask) {
        if (!slots[i]) {
            slots[i] = r;
            return 0;
        }
        if (strcmp(slots[i]->pattern, r->pattern) == 0)
            return -EEXIST;
    }
}

static int lit_add(ioloop_http_server_t *s, http_route_t *r)
{
    if ((unsigned)(s->nlit + 1) * 2 > s->lit_mask + 1 || !s->lit) {
        unsigned size = s->lit ? (s->lit_mask + 1) * 2 : 16;
        http_route_t **slots = calloc(size, sizeof(*slots));
        if (!slots)
            return -ENOMEM;
        for (unsigned i = 0; s->lit && i <= s->lit_mask; i++)
            if (s->lit[i])
                lit_insert(slots, size - 1, s->lit[i]);
        free(s->lit);
        s->lit = slots;
        s->lit_mask = size - 1;
    }
    int err = lit_insert(s->lit, s->lit_mask, r);
    if (!err)
        s->nlit++;
    return err;
}

int ioloop__http_router_add(ioloop_http_server_t *s, const char *pattern, const ioloop_http_route_t *route)
{
    http_route_t *r = calloc(1, sizeof(*r));
    if (!r || !(r->pattern = strdup(pattern))) {
        free(r);
        return -ENOMEM;
    }
    r->route = *route;
    r->literal = is_literal(pattern);
    int err = 0;
    if (r->literal) {
        err = lit_add(s, r);
    } else {
        /* "^(" pattern ")$": group 1 is the whole match, the user's groups follow. */
        size_t len = strlen(pattern);
        const char *p = pattern;
        if (*p == '^')
            p++, len--;
        if (len && p[len - 1] == '$' && (len < 2 || p[len - 2] != '\\'))
            len--;
        char *re = malloc(len + 5);
        if (!re) {
            err = -ENOMEM;
        } else {
            memcpy(re, "^(", 2);
            memcpy(re + 2, p, len);
            memcpy(re + 2 + len, ")$", 3);
            if (regcomp(&r->re, re, REG_EXTENDED) != 0) {
                err = -EINVAL;
            } else if (r->re.re_nsub - 1 > HTTP_MAX_PATH_ARGS) {
                regfree(&r->re);
                err = -EINVAL;
            } else {
                r->groups = (int)r->re.re_nsub - 1;
            }
            free(re);
        }
    }
    if (!err && s->nroutes == s->routes_cap) {
        int cap = s->routes_cap ? s->routes_cap * 2 : 8;
        http_route_t **n = realloc(s->routes, (size_t)cap * sizeof(*n));
        if (!n)
            err = -ENOMEM;
        else {
            s->routes = n;
            s->routes_cap = cap;
        }
    }
    if (err) {
        if (!r->literal && err != -EINVAL)
            regfree(&r->re);
        free(r->pattern);
        free(r);
        return err;
    }
    s->routes[s->nroutes++] = r;
    return 0;
}

/* Decodes the groups of match m into req->pargs. Groups may nest (and so
 * overlap), so the room is the sum of their lengths, reserved at once (the
 * pointers handed out never move). */
static int take_args(const http_route_t *r, const regmatch_t *m, ioloop_http_request_t *req)
{
    const char *path = req->path;
    size_t need = 0;
    for (int g = 0; g < r->groups; g++)
        if (m[g + 2].rm_so >= 0)
            need += (size_t)(m[g + 2].rm_eo - m[g + 2].rm_so);
    need += (size_t)r->groups + 1;
    /* pbuf may already hold an absolute-form target's host: follow it if it moves. */
    const char *old = req->pbuf.data;
    if (ioloop__hbuf_reserve(req->w, &req->pbuf, need) != 0)
        return 503;
    if (old && req->pbuf.data != old && req->host >= old && req->host < old + req->pbuf.len)
        req->host = req->pbuf.data + (req->host - old);
    req->npargs = 0;
    for (int g = 0; g < r->groups; g++) {
        char *dst = req->pbuf.data + req->pbuf.len;
        size_t n = 0;
        if (m[g + 2].rm_so >= 0)
            n = ioloop__http_unquote(dst, path + m[g + 2].rm_so, (size_t)(m[g + 2].rm_eo - m[g + 2].rm_so), false);
        else
            *dst = '\0';
        if (memchr(dst, '\0', n))
            return 400; /* %00: a C string would end there, silently */
        req->pbuf.len += n + 1;
        req->pargs[req->npargs++] = dst;
    }
    assert(req->pbuf.len <= req->pbuf.cap);
    return 0;
}

int ioloop__http_router_match(const ioloop_http_server_t *s, ioloop_http_request_t *req, const http_route_t **out)
{
    const char *path = req->path;
    *out = NULL;
    if (s->lit) {
        for (unsigned i = hash_path(path) & s->lit_mask; s->lit[i]; i = (i + 1) & s->lit_mask) {
            if (strcmp(s->lit[i]->pattern, path) == 0) {
                *out = s->lit[i];
                return 0;
            }
        }
    }
    for (int k = 0; k < s->nroutes; k++) {
        const http_route_t *r = s->routes[k];
        if (r->literal)
            continue;
        regmatch_t m[HTTP_MAX_PATH_ARGS + 2];
        if (regexec(&r->re, path, (size_t)r->groups + 2, m, 0) != 0)
            continue;
        int st = take_args(r, m, req);
        if (!st)
            *out = r;
        return st;
    }
    return 0;
}

void ioloop__http_router_free(ioloop_http_server_t *s)
{
    for (int i = 0; i < s->nroutes; i++) {
        if (!s->routes[i]->literal)
            regfree(&s->routes[i]->re);
        free(s->routes[i]->pattern);
        free(s->routes[i]);
    }
    free(s->routes);
    free(s->lit);
}

static int hexval(char ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F')
        return ch - 'A' + 10;
    return -1;
}

size_t ioloop__http_unquote(char *dst, const char *src, size_t len, bool plus_space)
{
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        char ch = src[i];
        if (ch == '%' && i + 2 < len) {
            int hi = hexval(src[i + 1]), lo = hexval(src[i + 2]);
            if (hi >= 0 && lo >= 0) {
                dst[o++] = (char)(hi * 16 + lo);
                i += 2;
                continue;
            }
        }
        dst[o++] = plus_space && ch == '+' ? ' ' : ch;
    }
    dst[o] = '\0';
    return o;
}
