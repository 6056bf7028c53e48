/* test_http_util.h — the client side of the HTTP suites: a server on a loop
 * in a background thread, and a raw-socket client that reads responses with
 * its own minimal parser (so the tests never trust the server's code).
 * The server runs on a runtime (one loop unless tsrv_init_loops says more)
 * behind the runtime listener.
 * Threading rule: the tsrv_* calls run on the test's main thread; handlers
 * run on the server's loop thread and talk to the test through atomics.
 * Everything is static inline: each suite includes it once.
 */
#ifndef TEST_HTTP_UTIL_H
#define TEST_HTTP_UTIL_H

#define _GNU_SOURCE
#include "ioloop/http.h"
#include "ioloop/runtime.h"
#include "test_util.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

typedef struct {
    ioloop_runtime_t *rt;
    ioloop_t *loop; /* the runtime's first (usually only) loop */
    ioloop_http_server_t *server;
    ioloop_listener_t *listener;
    int port;
    int64_t expect_live; /* live_connections left at stop, all loops (0 unless a test feeds fds itself) */
} tsrv_t;

/* Creates the server and a runtime of `loops` loops (routes are added by the
 * caller before tsrv_start or tsrv_serve). */
static inline void tsrv_init_loops(tsrv_t *t, const ioloop_http_server_options_t *opts, int loops)
{
    memset(t, 0, sizeof(*t));
    ioloop_runtime_options_t ro = {.loops = loops, .executor_threads = 2};
    assert_int_equal(ioloop_runtime_start(&ro, &t->rt), 0);
    t->loop = ioloop_runtime_loop(t->rt, 0);
    assert_int_equal(ioloop_http_server_new(opts, &t->server), 0);
    assert_non_null(t->server);
}

/* tsrv_init_loops with one loop. */
static inline void tsrv_init(tsrv_t *t, const ioloop_http_server_options_t *opts)
{
    tsrv_init_loops(t, opts, 1);
}

static inline void tsrv_route(tsrv_t *t, const char *pattern, ioloop_http_route_t route)
{
    assert_int_equal(ioloop_http_server_route(t->server, pattern, &route), 0);
}

/* Serves on 127.0.0.1 through the runtime listener, in that accept mode. */
static inline void tsrv_serve(tsrv_t *t, ioloop_accept_mode_t mode)
{
    assert_int_equal(ioloop_http_server_serve(t->server, t->rt, "127.0.0.1", 0, mode, &t->listener), 0);
    t->port = ioloop_listener_port(t->listener);
    assert_true(t->port > 0);
}

static inline void tsrv_start(tsrv_t *t)
{
    tsrv_serve(t, IOLOOP_ACCEPT_DEFAULT);
}

/* The documented order up to the server: stop the runtime, join, free the
 * listener and the server, then check that every connection the listener
 * handed over was reported closed exactly once. The loops are not closed yet
 * (tsrv_free_runtime): what is queued on them still runs then. */
static inline int64_t tsrv_live_connections(tsrv_t *t)
{
    int64_t live = 0;
    for (int i = 0; i < ioloop_runtime_size(t->rt); i++) {
        ioloop_stats_t st;
        ioloop_get_stats(ioloop_runtime_loop(t->rt, i), &st);
        live += st.live_connections;
    }
    return live;
}

static inline void tsrv_stop_server(tsrv_t *t)
{
    /* A client that closed just before this: its loop notices soon, not
     * at once (slowly under valgrind). Wait for it, bounded, before the stop
     * freezes the count. */
    for (int i = 0; i < 1000 && tsrv_live_connections(t) != t->expect_live; i++)
        tu_sleep_ms(5);
    ioloop_runtime_stop(t->rt);
    assert_int_equal(ioloop_runtime_join(t->rt), 0);
    ioloop_listener_free(t->listener);
    ioloop_http_server_free(t->server);
    t->server = NULL;
    assert_int_equal(tsrv_live_connections(t), t->expect_live);
}

static inline void tsrv_free_runtime(tsrv_t *t)
{
    ioloop_runtime_free(t->rt);
    t->rt = NULL;
}

static inline void tsrv_stop(tsrv_t *t)
{
    tsrv_stop_server(t);
    tsrv_free_runtime(t);
}

/* Makes a client socket (a socketpair end the test hands to the server, or
 * a connected one) blocking with a 5 s receive timeout: a server that never
 * answers fails the read instead of hanging the suite. */
static inline void tcli_blocking(int fd)
{
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
    struct timeval tv = {.tv_sec = 5};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
}

/* A blocking client socket with a 5 s receive timeout, or -1 if the
 * connect failed (refused: nothing listens there, or no longer). */
static inline int tcli_try_connect(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        close(fd);
        return -1;
    }
    tcli_blocking(fd);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    return fd;
}

/* tcli_try_connect that must connect. */
static inline int tcli_connect(int port)
{
    int fd = tcli_try_connect(port);
    assert_true(fd >= 0);
    return fd;
}

static inline void tcli_sendn(int fd, const void *data, size_t len)
{
    const char *p = data;
    while (len) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        assert_true(n > 0);
        p += n;
        len -= (size_t)n;
    }
}

static inline void tcli_send(int fd, const char *s)
{
    tcli_sendn(fd, s, strlen(s));
}

typedef struct {
    int status;
    char head[16384]; /* status line and headers, NUL-terminated */
    char *body;       /* de-chunked, NUL-terminated (malloc'd) */
    size_t body_len;
    bool chunked;
} tresp_t;

static inline void tresp_free(tresp_t *r)
{
    free(r->body);
    r->body = NULL;
}

/* Bytes the last tcli_response* call received, and the errno of a failed
 * recv (0 for EOF): tells "closed before answering" from "answer cut". */
static _Thread_local size_t tcli_got;
static _Thread_local int tcli_errno;

/* Reads one byte; 1, 0 on EOF, -1 on error/timeout. */
static inline int tcli_getc(int fd, char *ch)
{
    ssize_t n = recv(fd, ch, 1, 0);
    if (n == 1)
        tcli_got++;
    else
        tcli_errno = n == 0 ? 0 : errno;
    return n == 1 ? 1 : n == 0 ? 0 : -1;
}

static inline int tcli_line(int fd, char *buf, size_t cap)
{
    size_t n = 0;
    char ch;
    while (n + 1 < cap) {
        if (tcli_getc(fd, &ch) != 1)
            return -1;
        buf[n++] = ch;
        if (ch == '\n')
            break;
    }
    buf[n] = '\0';
    return (int)n;
}

/* The value of a response header (case-insensitive), copied into out; false if absent. */
static inline bool tresp_header(const tresp_t *r, const char *name, char *out, size_t cap)
{
    size_t nl = strlen(name);
    for (const char *line = strstr(r->head, "\r\n"); line && line[2]; line = strstr(line + 2, "\r\n")) {
        const char *l = line + 2;
        if (strncasecmp(l, name, nl) == 0 && l[nl] == ':') {
            const char *v = l + nl + 1;
            while (*v == ' ')
                v++;
            size_t vl = strcspn(v, "\r");
            if (vl >= cap)
                vl = cap - 1;
            memcpy(out, v, vl);
            out[vl] = '\0';
            return true;
        }
    }
    return false;
}

static inline bool tresp_has(const tresp_t *r, const char *name, const char *value)
{
    char v[256];
    return tresp_header(r, name, v, sizeof(v)) && strcasecmp(v, value) == 0;
}

/* Reads one response (skipping 1xx ones unless keep_1xx). no_body: the
 * request was HEAD. Returns 0, or -1 on EOF/timeout before a full response. */
static inline int tcli_response_ex(int fd, tresp_t *r, bool no_body, bool keep_1xx)
{
    memset(r, 0, sizeof(*r));
    tcli_got = 0;
    tcli_errno = 0;
again:;
    size_t n = 0;
    char line[8192];
    for (;;) {
        int l = tcli_line(fd, line, sizeof(line));
        if (l <= 0)
            return -1;
        if (n + (size_t)l + 1 < sizeof(r->head)) {
            memcpy(r->head + n, line, (size_t)l + 1);
            n += (size_t)l;
        }
        if (strcmp(line, "\r\n") == 0)
            break;
    }
    if (sscanf(r->head, "HTTP/1.%*d %d", &r->status) != 1)
        return -1;
    if (r->status < 200 && !keep_1xx)
        goto again;
    char v[64];
    size_t cap = 1024, len = 0;
    char *body = malloc(cap);
    assert_non_null(body);
    if (no_body || r->status < 200 || r->status == 204 || r->status == 304) {
        /* nothing */
    } else if (tresp_header(r, "Transfer-Encoding", v, sizeof(v))) {
        r->chunked = true;
        for (;;) {
            if (tcli_line(fd, line, sizeof(line)) <= 0)
                goto fail;
            size_t sz = strtoul(line, NULL, 16);
            if (sz == 0) {
                if (tcli_line(fd, line, sizeof(line)) <= 0) /* final CRLF (no trailers) */
                    goto fail;
                break;
            }
            while (len + sz + 1 > cap)
                body = realloc(body, cap *= 2);
            for (size_t i = 0; i < sz; i++)
                if (tcli_getc(fd, &body[len++]) != 1)
                    goto fail;
            if (tcli_line(fd, line, sizeof(line)) <= 0)
                goto fail;
        }
    } else if (tresp_header(r, "Content-Length", v, sizeof(v))) {
        size_t sz = strtoul(v, NULL, 10);
        while (len + sz + 1 > cap)
            body = realloc(body, cap *= 2);
        while (len < sz) {
            ssize_t k = recv(fd, body + len, sz - len, 0);
            if (k <= 0) {
                tcli_errno = k == 0 ? 0 : errno;
                goto fail;
            }
            tcli_got += (size_t)k;
            len += (size_t)k;
        }
    } else {
        for (;;) { /* close-delimited */
            while (len + 4096 + 1 > cap)
                body = realloc(body, cap *= 2);
            ssize_t k = recv(fd, body + len, 4096, 0);
            if (k < 0)
                goto fail;
            if (k == 0)
                break;
            len += (size_t)k;
        }
    }
    body[len] = '\0';
    r->body = body;
    r->body_len = len;
    return 0;
fail:
    free(body);
    return -1;
}

static inline int tcli_response(int fd, tresp_t *r)
{
    return tcli_response_ex(fd, r, false, false);
}

/* Reads one response from fd and asserts its body; a macro, so that a failure
 * names the test's line. */
#define TCLI_EXPECT_BODY(fd, expected_body)                                                                            \
    do {                                                                                                               \
        tresp_t expect_body_r_;                                                                                        \
        assert_int_equal(tcli_response((fd), &expect_body_r_), 0);                                                     \
        assert_string_equal(expect_body_r_.body, (expected_body));                                                     \
        tresp_free(&expect_body_r_);                                                                                   \
    } while (0)

/* Waits up to ms for the server to close: 1 on a clean EOF (extra bytes
 * before it are counted in *extra if not NULL), -1 on a reset, 0 if still open. */
static inline int tcli_closed(int fd, int ms, size_t *extra)
{
    int64_t end = tu_now_ns() + (int64_t)ms * 1000000;
    size_t got = 0;
    for (;;) {
        int left = (int)((end - tu_now_ns()) / 1000000);
        if (left <= 0)
            break;
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, left) <= 0)
            break;
        char buf[4096];
        ssize_t n = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
        if (n == 0) {
            if (extra)
                *extra = got;
            return 1;
        }
        if (n < 0 && (errno == ECONNRESET || errno == EPIPE))
            return -1;
        if (n > 0)
            got += (size_t)n;
    }
    if (extra)
        *extra = got;
    return 0;
}

/* One request on a fresh connection; returns the response (caller frees). */
static inline void tcli_request(int port, const char *raw, tresp_t *r)
{
    int fd = tcli_connect(port);
    tcli_send(fd, raw);
    assert_int_equal(tcli_response(fd, r), 0);
    close(fd);
}

/* Sends raw; expects `status`, Connection: close, then a clean close. */
static inline void tcli_expect_close(int port, const char *raw, size_t len, int status)
{
    int fd = tcli_connect(port);
    tcli_sendn(fd, raw, len);
    tresp_t r;
    assert_int_equal(tcli_response(fd, &r), 0);
    if (r.status != status)
        fprintf(stderr, "request:\n%.200s\nexpected %d, got:\n%s\n", raw, status, r.head);
    assert_int_equal(r.status, status);
    assert_true(tresp_has(&r, "Connection", "close"));
    assert_int_equal(tcli_closed(fd, 3000, NULL), 1);
    tresp_free(&r);
    close(fd);
}

/* A handler that answers "ok". */
static inline void th_ok(ioloop_http_request_t *req, void *arg)
{
    (void)arg;
    ioloop_http_response_send(req, 200, "text/plain", "ok", 2);
}

#endif
