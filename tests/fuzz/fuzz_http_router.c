/* fuzz_http_router.c — libFuzzer target: the router (http/router.c): route
 * patterns through PCRE2 compile, and request paths through matching and the
 * percent-decoding of path arguments.
 *
 * Threading rule: the fuzzer's thread; no loop is needed (the match data
 * and buffers come from a worker struct of this file's own).
 *
 * Input: the first byte's low bit picks the mode.
 *  0: the rest is a path (up to its first NUL), matched against a fixed table
 *     of literals and patterns like an application's (named, nested,
 *     optional and lazy groups).
 *  1: the rest is "pattern NUL path": the pattern becomes the only route of
 *     a fresh server (most fuzzed patterns fail to compile, which must be a
 *     clean -EINVAL with a message), and the path is matched against it.
 * Checks: a match fills exactly the route's groups, each argument a
 * NUL-terminated string inside the request's buffer and no longer than the
 * path; a named group reads the same string as its index; 0, 400 or 503 only.
 */
#define _GNU_SOURCE
#include "internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_CHECK(cond)                                                                                               \
    do {                                                                                                               \
        if (!(cond)) {                                                                                                 \
            fprintf(stderr, "fuzz_http_router: %s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);                 \
            abort();                                                                                                   \
        }                                                                                                              \
    } while (0)

enum { PATTERN_MAX = 256, PATH_MAX_LEN = 2048 };

static http_worker_t worker; /* buffers and match data only: never attached to a loop */
static ioloop_http_server_t *table;

static void unused_handler(ioloop_http_request_t *req, void *arg)
{
    (void)req, (void)arg;
}

static void make_table(void)
{
    static const char *const patterns[] = {
        "/",
        "/index.html",
        "/api/v1/status",
        "/user/(?P<id>[0-9]+)",
        "/user/(?P<id>[0-9]+)/(?P<tab>posts|likes)?",
        "/files/(.*)",
        "/lazy/(.*?)/(.*)",
        "/nest/((a|b)+)/(x)?(?P<tail>.*)",
        "/(?P<a>[^/]+)/(?P<b>[^/]+)/?$",
        "/re/[a-z]{2,4}-\\d+",
        "/many/(.)(.)(.)(.)(.)(.)(.)(.)(.)(.)(.)(.)(.)(.)(.)(.)",
    };
    FUZZ_CHECK(ioloop_http_server_new(NULL, &table) == 0);
    ioloop_http_route_t route = {.get = unused_handler};
    for (size_t i = 0; i < sizeof(patterns) / sizeof(patterns[0]); i++)
        FUZZ_CHECK(ioloop_http_server_route(table, patterns[i], &route) == 0);
}

/* Matches path against s and checks what the router filled in. */
static void match(const ioloop_http_server_t *s, const char *path)
{
    ioloop_http_request_t req;
    memset(&req, 0, sizeof(req));
    req.w = &worker;
    req.path = path;
    const http_route_t *route = NULL;
    int st = ioloop__http_router_match(s, &req, &route);
    FUZZ_CHECK(st == 0 || st == 400 || st == 503);
    if (st == 0 && route) {
        req.route = route;
        size_t path_len = strlen(path);
        FUZZ_CHECK(route->literal ? req.npargs == 0 && strcmp(route->pattern, path) == 0 : req.npargs == route->groups);
        for (int i = 0; i < req.npargs; i++) {
            const char *arg = req.pargs[i];
            FUZZ_CHECK(arg >= req.pbuf.data && arg < req.pbuf.data + req.pbuf.len);
            size_t len = strlen(arg);
            FUZZ_CHECK(arg + len < req.pbuf.data + req.pbuf.len && len <= path_len);
        }
        for (int i = 0; i < route->nnames; i++) {
            const char *named = ioloop_http_request_path_arg_named(&req, route->names[i]);
            FUZZ_CHECK(named != NULL);
            /* with duplicate names ((?J)), the first entry of the name wins */
            for (int j = 0; j < i; j++)
                if (strcmp(route->names[j], route->names[i]) == 0)
                    goto next;
            FUZZ_CHECK(named == req.pargs[route->name_group[i] - 1]);
        next:;
        }
    } else if (st == 0) {
        FUZZ_CHECK(req.npargs == 0);
    }
    ioloop__hbuf_release(&worker, &req.pbuf);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static char buf[PATTERN_MAX + PATH_MAX_LEN + 2];
    if (size < 1 || size - 1 > sizeof(buf) - 1)
        return 0;
    memcpy(buf, data + 1, size - 1);
    buf[size - 1] = '\0';
    if (!(data[0] & 1)) {
        if (!table)
            make_table();
        match(table, buf);
        return 0;
    }
    const char *pattern = buf;
    size_t plen = strlen(pattern);
    if (plen > PATTERN_MAX)
        return 0;
    const char *path = plen + 1 < size - 1 ? buf + plen + 1 : "/";
    ioloop_http_server_t *s;
    FUZZ_CHECK(ioloop_http_server_new(NULL, &s) == 0);
    ioloop_http_route_t route = {.get = unused_handler};
    int err = ioloop_http_server_route(s, pattern, &route);
    if (err == 0)
        match(s, path);
    else
        FUZZ_CHECK(err == -EINVAL && ioloop_http_server_last_error(s)[0] != '\0');
    ioloop_http_server_free(s);
    return 0;
}
