/* fuzz_http_harness.c — one loop and one HTTP server shared by every input
 * of a fuzz target, and the client side of a socketpair that feeds an input
 * to a new connection (fuzz_http_harness.h says how a run goes).
 *
 * Threading rule: the fuzzer's thread only; nothing here is thread-safe.
 *
 * Two servers with the same routes; the second is draining (an input's
 * first byte picks it), so the drain's paths meet hostile input too. The
 * routes cover what a request can reach: a literal GET, a collected body
 * (/echo), streamed ones (/stream with prepare, /upload without), a pattern
 * with a named and a nested group, a handler that finishes from a timer
 * (/later: the connection may be gone by then), one that flushes twice
 * before finishing (/flush: chunked, gzip'd when asked), /healthz; every
 * handler reads every accessor of its request (headers, arguments, path
 * arguments, remote IP through xheaders) so ASan sees those reads. Limits
 * are small (4 KiB heads, 64 KiB bodies) so short inputs reach 431 and 413.
 */
#define _GNU_SOURCE
#include "fuzz_http_harness.h"

#include "internal.h" /* http/: the worker's orphans, checked after each run */
#include "ioloop/http.h"
#include "ioloop/ioloop.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* Aborts with a message: the fuzzer records the input as a crash. */
#define FUZZ_CHECK(cond)                                                                                               \
    do {                                                                                                               \
        if (!(cond)) {                                                                                                 \
            fprintf(stderr, "fuzz_http_harness: %s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);                \
            abort();                                                                                                   \
        }                                                                                                              \
    } while (0)

static ioloop_t *loop;
static ioloop_http_server_t *servers[2]; /* [1] is draining, from the start */
static ioloop_http_server_t *server;     /* the one of the run in progress */

/* The run in progress (one at a time). */
static struct {
    const uint8_t *data;
    size_t size, off, segment;
    int fd;          /* the client's end, -1 once closed */
    bool want_write; /* waiting for room in the socket */
    bool shut;       /* SHUT_WR sent */
    bool vanish;     /* close instead of SHUT_WR */
    int pending;     /* deferred finishes (/later, /flush) not yet run */
    bool polling;    /* client EOF seen: waiting for the server to let go */
    int polls;
    ioloop_http_request_t *first; /* the first request any callback saw */
    bool first_done;
    char head[16]; /* the first response bytes */
    size_t head_len;
    fuzz_http_seen_t *seen;
} run;

static volatile size_t sink; /* reads of the request's strings land here */

static void touch_str(const char *s)
{
    if (s)
        sink += strlen(s);
}

/* Reads everything a handler can read of its request. */
static void touch(ioloop_http_request_t *req)
{
    touch_str(ioloop_http_request_method(req));
    touch_str(ioloop_http_request_path(req));
    touch_str(ioloop_http_request_query(req));
    touch_str(ioloop_http_request_uri(req));
    touch_str(ioloop_http_request_version(req));
    touch_str(ioloop_http_request_host(req));
    touch_str(ioloop_http_request_remote_ip(req));
    touch_str(ioloop_http_request_protocol(req));
    touch_str(ioloop_http_request_header(req, "content-type"));
    const char *name, *value;
    for (int i = 0; ioloop_http_request_header_at(req, i, &name, &value) == 0; i++) {
        touch_str(name);
        touch_str(value);
    }
    int nargs = ioloop_http_request_path_arg_count(req);
    FUZZ_CHECK(nargs >= 0 && nargs <= 16);
    for (int i = 0; i < nargs; i++)
        touch_str(ioloop_http_request_path_arg(req, i));
    touch_str(ioloop_http_request_path_arg_named(req, "id"));
    touch_str(ioloop_http_request_argument(req, "a", NULL));
    const char *values[8];
    int n = ioloop_http_request_arguments(req, "b", values, 8);
    for (int i = 0; i < n && i < 8; i++)
        touch_str(values[i]);
    size_t len = 0;
    const char *body = ioloop_http_request_body(req, &len);
    FUZZ_CHECK(body && body[len] == '\0' && len <= FUZZ_BODY_MAX);
}

static void seen_handler(ioloop_http_request_t *req)
{
    run.seen->requests++;
    if (!run.first)
        run.first = req;
    touch(req);
}

static void on_hello(ioloop_http_request_t *req, void *arg)
{
    (void)arg;
    seen_handler(req);
    ioloop_http_response_send(req, 200, "text/plain", "Hello, world", 12);
}

static void on_echo(ioloop_http_request_t *req, void *arg)
{
    (void)arg;
    bool first = !run.first;
    seen_handler(req);
    size_t len = 0;
    const char *body = ioloop_http_request_body(req, &len);
    if (first && !run.first_done) {
        memcpy(run.seen->first_body, body, len);
        run.seen->first_body_len = len;
        run.seen->first_body_done = true;
        run.first_done = true;
    }
    ioloop_http_response_send(req, 200, "text/plain", body, len);
}

/* The client left before the body's end: the method handler will never
 * run, and a request the application has seen (here, in prepare) is its to
 * finish (http.h: one never finished is never freed, and keeps the server's
 * per-loop state alive after ioloop_http_server_free). */
static void on_stream_closed(ioloop_http_request_t *req, void *arg)
{
    (void)arg;
    ioloop_http_response_finish(req);
}

static void on_stream_prepare(ioloop_http_request_t *req, void *arg)
{
    (void)arg;
    if (!run.first)
        run.first = req;
    ioloop_http_request_on_close(req, on_stream_closed, NULL);
    touch(req);
}

static int on_stream_body(ioloop_http_request_t *req, const char *data, size_t len, void *arg)
{
    (void)arg;
    FUZZ_CHECK(len > 0);
    if (req == run.first && !run.first_done) {
        FUZZ_CHECK(run.seen->first_body_len + len <= FUZZ_BODY_MAX);
        memcpy(run.seen->first_body + run.seen->first_body_len, data, len);
        run.seen->first_body_len += len;
    }
    return 0;
}

/* /upload streams without prepare: on_body is the first the handler sees. */
static int on_upload_body(ioloop_http_request_t *req, const char *data, size_t len, void *arg)
{
    (void)arg;
    FUZZ_CHECK(len > 0 && data != NULL);
    ioloop_http_request_on_close(req, on_stream_closed, NULL);
    return 0;
}

static void on_stream_done(ioloop_http_request_t *req, void *arg)
{
    (void)arg;
    bool first = req == run.first;
    seen_handler(req);
    if (first && !run.first_done) {
        run.seen->first_body_done = true;
        run.first_done = true;
    }
    char text[32];
    int n = snprintf(text, sizeof(text), "%zu", run.seen->first_body_len);
    ioloop_http_response_send(req, 200, "text/plain", text, (size_t)n);
}

static void check_done(ioloop_t *l, void *arg);

static void later_finish(ioloop_t *l, void *arg)
{
    (void)l;
    ioloop_http_request_t *req = arg;
    ioloop_http_response_write(req, "late", 4); /* -EPIPE if the client left: fine */
    ioloop_http_response_finish(req);
    run.pending--;
}

static void on_later(ioloop_http_request_t *req, void *arg)
{
    (void)arg;
    seen_handler(req);
    run.pending++;
    if (ioloop_call_later(loop, 0, later_finish, req, NULL) != 0)
        later_finish(loop, req);
}

static void flush_done(ioloop_http_request_t *req, int status, void *arg)
{
    (void)arg;
    if (status == 0 && ioloop_http_response_write(req, "second part of a streamed body\n", 31) == 0 &&
        ioloop_http_response_flush(req, NULL, NULL) == 0)
        ioloop_http_response_write(req, "end\n", 4);
    ioloop_http_response_finish(req);
    run.pending--;
}

static void on_flush(ioloop_http_request_t *req, void *arg)
{
    (void)arg;
    seen_handler(req);
    ioloop_http_response_header(req, "Content-Type", "text/plain");
    ioloop_http_response_write(req, "first part of a streamed body, long enough to be compressed\n", 60);
    run.pending++;
    if (ioloop_http_response_flush(req, flush_done, NULL) != 0) {
        ioloop_http_response_finish(req);
        run.pending--;
    }
}

static void on_user(ioloop_http_request_t *req, void *arg)
{
    (void)arg;
    seen_handler(req);
    const char *id = ioloop_http_request_path_arg_named(req, "id");
    FUZZ_CHECK(id != NULL);
    for (const char *p = id; *p; p++)
        FUZZ_CHECK(*p >= '0' && *p <= '9'); /* [0-9]+, and %-escapes are not digits */
    ioloop_http_response_send(req, 200, "text/plain", id, strlen(id));
}

static void quiet(ioloop_t *l, const char *what, int err, void *arg)
{
    (void)l, (void)what, (void)err, (void)arg;
}

/* At exit: the server and the loop go, so that LeakSanitizer's check at
 * exit sees as leaked whatever the runs lost (tools/fuzz runs with
 * -detect_leaks=0: the per-input check would run after nearly every input,
 * since the loop frees a closed fd's handler later, on liburcu's thread, and
 * costs 10x the execs/s; a leak on any path still grows until exit). */
static void teardown(void)
{
    ioloop_http_server_free(servers[0]);
    ioloop_http_server_free(servers[1]);
    ioloop_close(loop, true);
}

static void drained(ioloop_t *l, void *arg)
{
    (void)l, (void)arg;
}

static void setup(void)
{
    FUZZ_CHECK(ioloop_new(NULL, &loop) == 0);
    ioloop_set_error_hook(loop, quiet, NULL);
    ioloop_http_server_options_t opts = {
        .xheaders = true,
        .max_header_size = 4096,
        .max_body_size = FUZZ_BODY_MAX,
        .gzip = true,
        .gzip_min_length = 16,
    };
    FUZZ_CHECK(ioloop_http_server_new(&opts, &servers[0]) == 0);
    FUZZ_CHECK(ioloop_http_server_new(&opts, &servers[1]) == 0);
    atexit(teardown);
    const struct {
        const char *pattern;
        ioloop_http_route_t route;
    } routes[] = {
        {"/", {.get = on_hello}},
        {"/echo", {.post = on_echo, .put = on_echo, .get = on_echo, .patch = on_echo}},
        {"/stream",
         {.post = on_stream_done, .put = on_stream_done, .prepare = on_stream_prepare, .on_body = on_stream_body}},
        {"/upload", {.post = on_stream_done, .on_body = on_upload_body}},
        {"/later", {.get = on_later, .post = on_later}},
        {"/flush", {.get = on_flush, .post = on_flush, .delete_ = on_flush}},
        {"/user/(?P<id>[0-9]+)(/(.*))?", {.get = on_user, .options = on_user}},
    };
    for (size_t i = 0; i < sizeof(routes) / sizeof(routes[0]); i++)
        for (int k = 0; k < 2; k++)
            FUZZ_CHECK(ioloop_http_server_route(servers[k], routes[i].pattern, &routes[i].route) == 0);
    /* A drain stays on for good (every later connection gets its treatment:
     * Connection: close, idle ones closed after a grace), so it has a server
     * of its own. done runs at once: no connection yet. */
    for (int k = 0; k < 2; k++)
        FUZZ_CHECK(ioloop_http_server_health_route(servers[k], "/healthz") == 0);
    FUZZ_CHECK(ioloop_http_server_drain(servers[1], loop, 0, drained, NULL) == 0);
}

static void client_write(void);

static void write_next(ioloop_t *l, void *arg)
{
    (void)l, (void)arg;
    client_write();
}

static void client_close(void)
{
    if (run.fd < 0)
        return;
    ioloop_remove_handler(loop, run.fd);
    close(run.fd);
    run.fd = -1;
    if (!run.polling) {
        run.polling = true;
        ioloop_add_callback(loop, check_done, NULL);
    }
}

/* Sends the next segment (or everything), then SHUT_WR once all is out. */
static void client_write(void)
{
    if (run.fd < 0)
        return;
    while (run.off < run.size) {
        size_t n = run.size - run.off;
        if (run.segment && n > run.segment)
            n = run.segment;
        ssize_t w = send(run.fd, run.data + run.off, n, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (!run.want_write) {
                run.want_write = true;
                ioloop_update_handler(loop, run.fd, IOLOOP_READ | IOLOOP_WRITE);
            }
            return;
        }
        if (w < 0) { /* the server closed: the rest is never read */
            run.off = run.size;
            break;
        }
        run.off += (size_t)w;
        if (run.segment && run.off < run.size) {
            ioloop_add_callback(loop, write_next, NULL); /* the next one in the next iteration */
            return;
        }
    }
    if (run.want_write) {
        run.want_write = false;
        ioloop_update_handler(loop, run.fd, IOLOOP_READ);
    }
    if (run.vanish) {
        client_close(); /* gone: the server hears EOF, or EPIPE when it answers */
    } else if (!run.shut) {
        run.shut = true;
        shutdown(run.fd, SHUT_WR);
    }
}

static int on_client(ioloop_t *l, int fd, unsigned events, void *arg)
{
    (void)l, (void)arg;
    if (events & IOLOOP_WRITE)
        client_write();
    if (run.fd < 0)
        return 0;
    char buf[65536];
    for (;;) {
        ssize_t n = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
        if (n > 0) {
            if (run.head_len < sizeof(run.head)) {
                size_t k = sizeof(run.head) - run.head_len;
                if (k > (size_t)n)
                    k = (size_t)n;
                memcpy(run.head + run.head_len, buf, k);
                run.head_len += k;
            }
            run.seen->response_bytes += (size_t)n;
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
            break;
        client_close(); /* EOF, or a reset */
        break;
    }
    return 0;
}

/* Stops the loop once the server has let go of everything this run made. */
static void check_done(ioloop_t *l, void *arg)
{
    (void)arg;
    if (ioloop_http_server_connections(server, l) == 0 && run.pending == 0) {
        ioloop_stop(l);
        return;
    }
    /* The stream's close callback and deferred finishes run within a few
     * iterations: ask again in the next one. A connection that waits for a
     * timer of the server's (a drain's grace) is asked every millisecond
     * instead of spinning; one that never ends is a hang for libFuzzer's
     * -timeout. */
    if (++run.polls < 100 || ioloop_call_later(l, IOLOOP_MSEC(1), check_done, NULL, NULL) != 0)
        ioloop_add_callback(l, check_done, NULL);
}

void fuzz_http_run(const uint8_t *data, size_t size, size_t segment, unsigned flags, fuzz_http_seen_t *seen)
{
    if (!loop)
        setup();
    server = servers[(flags & FUZZ_HTTP_DRAINING) != 0];
    memset(seen, 0, offsetof(fuzz_http_seen_t, first_body));
    seen->response_bytes = 0;
    memset(&run, 0, sizeof(run));
    run.data = data;
    run.size = size;
    run.segment = segment;
    run.vanish = flags & FUZZ_HTTP_VANISH;
    run.seen = seen;
    int sv[2];
    FUZZ_CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) == 0);
    run.fd = sv[1];
    struct sockaddr_in peer = {.sin_family = AF_INET, .sin_port = htons(4242)};
    peer.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ioloop_http_server_accept(loop, sv[0], (const struct sockaddr *)&peer, sizeof(peer), server);
    FUZZ_CHECK(ioloop_add_handler(loop, run.fd, IOLOOP_READ, on_client, NULL) == 0);
    client_write();
    FUZZ_CHECK(ioloop_start(loop) == 0);
    FUZZ_CHECK(run.fd < 0 && run.pending == 0);
    run.first = NULL; /* a request this run lost must look lost to LeakSanitizer */
    /* Every request the handlers saw was finished: none may be left held
     * for the application (it would be kept for good). */
    http_worker_t *w = ioloop__http_worker(server, loop, false);
    FUZZ_CHECK(w == NULL || w->orphans == NULL);
    /* Whatever the server sent is HTTP/1.x responses, from the first byte. */
    if (run.head_len)
        FUZZ_CHECK(run.head_len >= 7 && memcmp(run.head, "HTTP/1.", 7) == 0);
}
