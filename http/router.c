/* router.c — path → route: literal paths through an open-addressing hash
 * (one hash and one strcmp per request), patterns as PCRE2 regular
 * expressions (Python's syntax: \d, (?P<name>...), lazy quantifiers), JIT
 * compiled, under Tornado's PathMatches rules: '$' is appended unless the
 * pattern already ends with one, and the match is anchored at the start
 * (re.match). Patterns are tried in the order they were added, after the
 * literals.
 *
 * Threading rule: routes are added on one thread before serving; matching is
 * read-only and runs on any loop thread concurrently (compiled code is shared,
 * the JIT uses the machine stack), each worker with its own match data.
 */
#define _GNU_SOURCE
#include "internal.h"

#include <assert.h>
#include <errno.h>
#include <stdio.h>
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

/* Compiles r->pattern as Tornado would (re.compile(pattern + "$" unless it
 * ends with "$"), matched with re.match: anchored at the start) and reads its
 * group names. On failure the server's last_error quotes pattern and reason. */
static int compile_pattern(ioloop_http_server_t *s, http_route_t *r)
{
    size_t len = strlen(r->pattern);
    bool add_dollar = len == 0 || r->pattern[len - 1] != '$';
    char *re = malloc(len + 2);
    if (!re)
        return -ENOMEM;
    memcpy(re, r->pattern, len);
    if (add_dollar)
        re[len++] = '$';
    re[len] = '\0';
    int code = 0;
    PCRE2_SIZE at = 0;
    r->code = pcre2_compile((PCRE2_SPTR)re, len, PCRE2_ANCHORED, &code, &at, NULL);
    free(re);
    if (!r->code) {
        if (code == PCRE2_ERROR_NOMEMORY)
            return -ENOMEM;
        char msg[160];
        if (pcre2_get_error_message(code, (PCRE2_UCHAR *)msg, sizeof(msg)) < 0)
            snprintf(msg, sizeof(msg), "PCRE2 error %d", code);
        snprintf(s->last_error, sizeof(s->last_error), "route pattern \"%s\" does not compile: %s at offset %zu",
                 r->pattern, msg, (size_t)at);
        return -EINVAL;
    }
    uint32_t groups = 0, names = 0, entry = 0;
    PCRE2_SPTR table = NULL;
    pcre2_pattern_info(r->code, PCRE2_INFO_CAPTURECOUNT, &groups);
    if (groups > HTTP_MAX_PATH_ARGS) {
        snprintf(s->last_error, sizeof(s->last_error), "route pattern \"%s\" has %u groups, more than %d", r->pattern,
                 groups, HTTP_MAX_PATH_ARGS);
        return -EINVAL;
    }
    r->groups = (int)groups;
    /* No JIT (a platform without it, or no executable memory): the
     * interpreter gives the same answers, slower. */
    r->jit = pcre2_jit_compile(r->code, PCRE2_JIT_COMPLETE) == 0;
    pcre2_pattern_info(r->code, PCRE2_INFO_NAMECOUNT, &names);
    pcre2_pattern_info(r->code, PCRE2_INFO_NAMEENTRYSIZE, &entry);
    pcre2_pattern_info(r->code, PCRE2_INFO_NAMETABLE, &table);
    /* Each entry: the group number (2 bytes, big-endian), then the NUL-terminated name. */
    for (uint32_t i = 0; i < names && i < HTTP_MAX_PATH_ARGS; i++) {
        PCRE2_SPTR e = table + (size_t)i * entry;
        r->names[i] = (const char *)e + 2;
        r->name_group[i] = (int)((e[0] << 8) | e[1]);
    }
    r->nnames = (int)(names < HTTP_MAX_PATH_ARGS ? names : HTTP_MAX_PATH_ARGS);
    return 0;
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
    int err = r->literal ? lit_add(s, r) : compile_pattern(s, r);
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
        pcre2_code_free(r->code);
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
static int take_args(const http_route_t *r, const PCRE2_SIZE *m, ioloop_http_request_t *req)
{
    const char *path = req->path;
    size_t need = 0;
    for (int g = 1; g <= r->groups; g++)
        if (m[2 * g] != PCRE2_UNSET)
            need += m[2 * g + 1] - m[2 * g];
    need += (size_t)r->groups + 1;
    /* pbuf may already hold an absolute-form target's host: follow it if it moves. */
    const char *old = req->pbuf.data;
    if (ioloop__hbuf_reserve(req->w, &req->pbuf, need) != 0)
        return 503;
    if (old && req->pbuf.data != old && req->host >= old && req->host < old + req->pbuf.len)
        req->host = req->pbuf.data + (req->host - old);
    req->npargs = 0;
    for (int g = 1; g <= r->groups; g++) {
        char *dst = req->pbuf.data + req->pbuf.len;
        size_t n = 0;
        if (m[2 * g] != PCRE2_UNSET) /* an unmatched group reads as "" */
            n = ioloop__http_unquote(dst, path + m[2 * g], m[2 * g + 1] - m[2 * g], false);
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
    size_t len = 0;
    for (int k = 0; k < s->nroutes; k++) {
        const http_route_t *r = s->routes[k];
        if (r->literal)
            continue;
        /* Match data per worker, made on its first pattern match: none per request. */
        http_worker_t *w = req->w;
        if (!w->match && !(w->match = pcre2_match_data_create(HTTP_MAX_PATH_ARGS + 1, NULL)))
            return 503;
        if (!len)
            len = strlen(path);
        /* pcre2_match takes the JIT path itself when the code was JIT compiled. */
        if (pcre2_match(r->code, (PCRE2_SPTR)path, len, 0, 0, w->match, NULL) < 0)
            continue; /* PCRE2_ERROR_NOMATCH, or a limit hit: no match either way */
        int st = take_args(r, pcre2_get_ovector_pointer(w->match), req);
        if (!st)
            *out = r;
        return st;
    }
    return 0;
}

const char *ioloop_http_request_path_arg_named(const ioloop_http_request_t *req, const char *name)
{
    if (req->finished || !req->route || !name)
        return NULL;
    const http_route_t *r = req->route;
    for (int i = 0; i < r->nnames; i++)
        if (strcmp(r->names[i], name) == 0)
            return r->name_group[i] <= req->npargs ? req->pargs[r->name_group[i] - 1] : NULL;
    return NULL;
}

const char *ioloop_http_server_last_error(const ioloop_http_server_t *s)
{
    return s->last_error;
}

int ioloop__http_route_jit(const ioloop_http_server_t *s, const char *pattern)
{
    uint32_t has_jit = 0;
    if (pcre2_config(PCRE2_CONFIG_JIT, &has_jit) < 0 || !has_jit)
        return -ENOTSUP;
    for (int i = 0; i < s->nroutes; i++)
        if (!s->routes[i]->literal && strcmp(s->routes[i]->pattern, pattern) == 0)
            return s->routes[i]->jit ? 1 : 0;
    return 0;
}

void ioloop__http_router_free(ioloop_http_server_t *s)
{
    for (int i = 0; i < s->nroutes; i++) {
        pcre2_code_free(s->routes[i]->code);
        free(s->routes[i]->pattern);
        free(s->routes[i]);
    }
    free(s->routes);
    free(s->lit);
}

/* The value of a hex digit, or -1. */
int ioloop__http_hexval(char ch)
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
            int hi = ioloop__http_hexval(src[i + 1]), lo = ioloop__http_hexval(src[i + 2]);
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
