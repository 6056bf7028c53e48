/* test_http_client_util.h — what the HTTP client suites share: a blocking
 * fetch on a loop the test's thread runs (the response copied out of the
 * callback), a hostile raw-socket server on its own thread that answers each
 * connection with a scripted behaviour (free ports and peer processes:
 * tu_free_port, tu_spawn, tu_kill in test_util.h).
 * Threading rule: cfetch runs on the test's main thread;
 * the hostile server's thread touches only its own sockets and atomics.
 * Everything is static inline: each suite includes it once.
 */
#ifndef TEST_HTTP_CLIENT_UTIL_H
#define TEST_HTTP_CLIENT_UTIL_H

#define _GNU_SOURCE
#include "ioloop/http_client.h"
#include "test_util.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

/* ---- a blocking fetch -------------------------------------------------------------- */

typedef struct {
    bool done;
    int error;
    char text[256];
    int status;
    char reason[64];
    char *body;
    size_t body_len;
    char url[512];
    int redirects;
    char headers[8192]; /* "name: value\n" per header, in order */
    int nheaders;
    ioloop_http_client_timing_t timing;
    ioloop_t *loop;
    bool stop; /* stop the loop in the callback */
} tres_t;

static inline void tres_free(tres_t *r)
{
    free(r->body);
    r->body = NULL;
}

static inline void tres_cb(ioloop_t *loop, const ioloop_http_client_response_t *resp, void *arg)
{
    tres_t *r = arg;
    assert_false(r->done); /* exactly once */
    r->done = true;
    r->error = ioloop_http_client_response_error(resp);
    snprintf(r->text, sizeof(r->text), "%s", ioloop_http_client_response_error_text(resp));
    r->status = ioloop_http_client_response_status(resp);
    snprintf(r->reason, sizeof(r->reason), "%s", ioloop_http_client_response_reason(resp));
    size_t len = 0;
    const char *body = ioloop_http_client_response_body(resp, &len);
    r->body = malloc(len + 1);
    assert_non_null(r->body);
    memcpy(r->body, body, len);
    r->body[len] = '\0';
    r->body_len = len;
    snprintf(r->url, sizeof(r->url), "%s", ioloop_http_client_response_effective_url(resp));
    r->redirects = ioloop_http_client_response_redirects(resp);
    r->nheaders = ioloop_http_client_response_header_count(resp);
    size_t off = 0;
    const char *name, *value;
    for (int i = 0; ioloop_http_client_response_header_at(resp, i, &name, &value) == 0; i++)
        off += (size_t)snprintf(r->headers + off, off < sizeof(r->headers) ? sizeof(r->headers) - off : 0, "%s: %s\n",
                                name, value);
    ioloop_http_client_response_timing(resp, &r->timing);
    if (r->stop)
        ioloop_stop(loop);
}

static inline void tguard(ioloop_t *loop, void *arg)
{
    (void)arg;
    ioloop_stop(loop);
}

/* One fetch, run to its callback. */
static inline void cfetch(ioloop_t *loop, const ioloop_http_client_request_t *req, tres_t *r)
{
    memset(r, 0, sizeof(*r));
    r->stop = true;
    int rc = ioloop_http_fetch(loop, req, tres_cb, r, NULL);
    assert_int_equal(rc, 0);
    ioloop_timer_t guard = 0;
    assert_int_equal(ioloop_call_later(loop, IOLOOP_SEC(20), tguard, NULL, &guard), 0);
    ioloop_start(loop);
    ioloop_remove_timeout(loop, guard);
    assert_true(r->done);
}

static inline void cget(ioloop_t *loop, const char *url, tres_t *r)
{
    cfetch(loop, &(ioloop_http_client_request_t){.url = url}, r);
}

/* Waits for n results (each with stop = false except the counter). */
typedef struct {
    tres_t *r;
    int n;
} twait_t;

static inline void twait_cb(ioloop_t *loop, void *arg)
{
    twait_t *w = arg;
    for (int i = 0; i < w->n; i++)
        if (!w->r[i].done) {
            ioloop_call_later(loop, IOLOOP_MSEC(1), twait_cb, w, NULL);
            return;
        }
    ioloop_stop(loop);
}

static inline void twait(ioloop_t *loop, tres_t *r, int n)
{
    twait_t w = {r, n};
    ioloop_call_later(loop, IOLOOP_MSEC(1), twait_cb, &w, NULL);
    ioloop_timer_t guard = 0;
    assert_int_equal(ioloop_call_later(loop, IOLOOP_SEC(20), tguard, NULL, &guard), 0);
    ioloop_start(loop);
    ioloop_remove_timeout(loop, guard);
    for (int i = 0; i < n; i++)
        assert_true(r[i].done);
}

/* Runs the loop for ms. */
static inline void tspin(ioloop_t *loop, int ms)
{
    ioloop_call_later(loop, IOLOOP_MSEC(ms), tguard, NULL, NULL);
    ioloop_start(loop);
}

/* ---- a hostile server: raw sockets, one scripted behaviour per connection -------- */

typedef struct hsrv hsrv_t;
/* Runs on the server's thread for one accepted connection (fd blocking, the
 * request head already read into head). Closes nothing: the server does. */
typedef void (*hsrv_fn)(hsrv_t *srv, int fd, const char *head, int index);

struct hsrv {
    int lfd, port;
    pthread_t thread;
    hsrv_fn fn;
    atomic_int connections, requests;
    atomic_bool stop;
    void *arg;
};

static inline void hsend(int fd, const void *data, size_t len)
{
    const char *p = data;
    while (len) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        if (n <= 0)
            return;
        p += n;
        len -= (size_t)n;
    }
}

static inline void hsends(int fd, const char *s)
{
    hsend(fd, s, strlen(s));
}

/* Reads a request head (until CRLFCRLF) into buf; false on EOF/error/timeout. */
static inline bool hread_head(int fd, char *buf, size_t cap)
{
    size_t n = 0;
    while (n + 1 < cap) {
        ssize_t r = recv(fd, buf + n, 1, 0);
        if (r <= 0)
            return false;
        n++;
        buf[n] = '\0';
        if (n >= 4 && memcmp(buf + n - 4, "\r\n\r\n", 4) == 0)
            return true;
    }
    return false;
}

static inline void *hsrv_main(void *arg)
{
    hsrv_t *srv = arg;
    while (!atomic_load(&srv->stop)) {
        struct pollfd pfd = {.fd = srv->lfd, .events = POLLIN};
        if (poll(&pfd, 1, 50) <= 0)
            continue;
        int fd = accept4(srv->lfd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0)
            continue;
        int index = atomic_fetch_add(&srv->connections, 1);
        struct timeval tv = {.tv_sec = 10};
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
        char head[16384];
        if (hread_head(fd, head, sizeof(head))) {
            atomic_fetch_add(&srv->requests, 1);
            srv->fn(srv, fd, head, index);
        }
        close(fd);
    }
    return NULL;
}

/* Listens on 127.0.0.1 (or ::1 with ipv6: false if the host has no IPv6) and serves. */
static inline bool hsrv_start_family(hsrv_t *srv, hsrv_fn fn, void *arg, bool ipv6)
{
    memset(srv, 0, sizeof(*srv));
    srv->fn = fn;
    srv->arg = arg;
    srv->lfd = socket(ipv6 ? AF_INET6 : AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (srv->lfd < 0 && ipv6)
        return false;
    assert_true(srv->lfd >= 0);
    int one = 1;
    setsockopt(srv->lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    socklen_t len;
    if (ipv6) {
        struct sockaddr_in6 *sa = (struct sockaddr_in6 *)&ss;
        sa->sin6_family = AF_INET6;
        sa->sin6_addr = in6addr_loopback;
        len = sizeof(*sa);
    } else {
        struct sockaddr_in *sa = (struct sockaddr_in *)&ss;
        sa->sin_family = AF_INET;
        sa->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        len = sizeof(*sa);
    }
    if (bind(srv->lfd, (struct sockaddr *)&ss, len) != 0 && ipv6) {
        close(srv->lfd);
        return false;
    }
    assert_int_equal(listen(srv->lfd, 64), 0);
    assert_int_equal(getsockname(srv->lfd, (struct sockaddr *)&ss, &len), 0);
    srv->port = ntohs(ipv6 ? ((struct sockaddr_in6 *)&ss)->sin6_port : ((struct sockaddr_in *)&ss)->sin_port);
    assert_int_equal(pthread_create(&srv->thread, NULL, hsrv_main, srv), 0);
    return true;
}

static inline void hsrv_start(hsrv_t *srv, hsrv_fn fn, void *arg)
{
    hsrv_start_family(srv, fn, arg, false);
}

static inline void hsrv_stop(hsrv_t *srv)
{
    atomic_store(&srv->stop, true);
    pthread_join(srv->thread, NULL);
    close(srv->lfd);
}

#endif
