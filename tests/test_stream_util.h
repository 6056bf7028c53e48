/* test_stream_util.h — what the stream suites share: a recorder for every
 * stream callback, run-until-a-condition, TCP loopback pairs, and a counting
 * transport double (over the socket transport).
 *
 * Threading rule: everything here runs on the test's main thread, which runs
 * the loop; cmocka asserts only there.
 */
#ifndef IOLOOP_TEST_STREAM_UTIL_H
#define IOLOOP_TEST_STREAM_UTIL_H

#define _GNU_SOURCE
#include "test_util.h"

#include "ioloop/stream.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* ---- a recorder for the callbacks of one stream ---------------------------- */

typedef struct {
    int reads;          /* read callbacks */
    int read_status;    /* the last one's */
    char data[1 << 16]; /* the last one's bytes */
    size_t len;
    int closes, close_error;
    int dones, done_errors, last_done_status;
    int releases;
    int drains;
    int consumer_calls, consumer_status;
} rec_t;

static inline void rec_read(ioloop_stream_t *stream, int status, const char *data, size_t len, void *arg)
{
    (void)stream;
    rec_t *rec = arg;
    rec->reads++;
    rec->read_status = status;
    rec->len = len < sizeof(rec->data) ? len : sizeof(rec->data);
    if (len)
        memcpy(rec->data, data, rec->len);
}

static inline void rec_close(ioloop_stream_t *stream, int error, void *arg)
{
    (void)stream;
    rec_t *rec = arg;
    rec->closes++;
    rec->close_error = error;
}

static inline void rec_done(ioloop_stream_t *stream, int status, void *arg)
{
    (void)stream;
    rec_t *rec = arg;
    rec->dones++;
    rec->last_done_status = status;
    if (status)
        rec->done_errors++;
}

static inline void rec_release(void *data, void *arg)
{
    (void)data;
    ((rec_t *)arg)->releases++;
}

static inline void rec_drain(ioloop_stream_t *stream, int status, void *arg)
{
    (void)stream, (void)status;
    ((rec_t *)arg)->drains++;
}

/* ---- running until something happened -------------------------------------- */

typedef struct {
    const int *counter;
    int target;
    ioloop_time_t deadline;
    bool reached;
} waiter_t;

static inline void wait_tick(ioloop_t *loop, void *arg)
{
    waiter_t *w = arg;
    if (*w->counter >= w->target) {
        w->reached = true;
        ioloop_stop(loop);
    } else if (ioloop_time(loop) >= w->deadline) {
        ioloop_stop(loop);
    } else {
        ioloop_call_later(loop, IOLOOP_MSEC(1), wait_tick, w, NULL);
    }
}

/* Runs loop until *counter >= target (checked every ms) or ms passed.
 * Returns whether it was reached. */
static inline bool run_until(ioloop_t *loop, const int *counter, int target, int ms)
{
    waiter_t w = {.counter = counter, .target = target, .deadline = tu_now_ns() + IOLOOP_MSEC(ms)};
    /* the loop clock is CLOCK_MONOTONIC, as tu_now_ns */
    ioloop_call_later(loop, 0, wait_tick, &w, NULL);
    ioloop_start(loop);
    return w.reached;
}

/* Runs the loop for about ms (a few iterations at least). */
static inline void run_for(ioloop_t *loop, int ms)
{
    int never = 0;
    run_until(loop, &never, 1, ms);
}

/* ---- sockets -------------------------------------------------------------- */

/* A connected TCP pair over loopback: fds[0] and fds[1], non-blocking. */
static inline void tcp_pair(int fds[2])
{
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(lfd >= 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(lfd, (struct sockaddr *)&sin, sizeof(sin)), 0);
    assert_int_equal(listen(lfd, 4), 0);
    socklen_t len = sizeof(sin);
    assert_int_equal(getsockname(lfd, (struct sockaddr *)&sin, &len), 0);
    fds[0] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_int_equal(connect(fds[0], (struct sockaddr *)&sin, sizeof(sin)), 0);
    fds[1] = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    assert_true(fds[1] >= 0);
    close(lfd);
    int flags = fcntl(fds[0], F_GETFL);
    fcntl(fds[0], F_SETFL, flags | O_NONBLOCK);
}

/* Makes the kernel buffers of fd small, so back-pressure shows quickly. */
static inline void small_buffers(int fd)
{
    int size = 4096;
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, sizeof(size));
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof(size));
}

/* Reads everything fd has now (non-blocking); returns the count. */
static inline size_t drain_fd(int fd, char *out, size_t cap)
{
    size_t total = 0;
    char scratch[65536];
    for (;;) {
        char *dst = out && total < cap ? out + total : scratch;
        size_t room = out && total < cap ? cap - total : sizeof(scratch);
        ssize_t n = read(fd, dst, room);
        if (n <= 0)
            break;
        total += (size_t)n;
    }
    return total;
}

/* ---- a transport double: the socket transport, counted -------------------- */

typedef struct {
    int reads, writevs, shutdowns, destroys;
    int last_iovcnt;
    size_t bytes_written;
    size_t max_read_len; /* the largest len a read asked for */
} counting_t;

static inline ssize_t counting_read(void *ctx, int fd, char *buf, size_t len)
{
    counting_t *c = ctx;
    c->reads++;
    if (len > c->max_read_len)
        c->max_read_len = len;
    return ioloop_stream_transport_socket.read(NULL, fd, buf, len);
}

static inline ssize_t counting_writev(void *ctx, int fd, const struct iovec *iov, int iovcnt)
{
    counting_t *c = ctx;
    c->writevs++;
    c->last_iovcnt = iovcnt;
    ssize_t n = ioloop_stream_transport_socket.writev(NULL, fd, iov, iovcnt);
    if (n > 0)
        c->bytes_written += (size_t)n;
    return n;
}

static inline int counting_shutdown(void *ctx, int fd)
{
    ((counting_t *)ctx)->shutdowns++;
    return ioloop_stream_transport_socket.shutdown(NULL, fd);
}

static inline void counting_destroy(void *ctx)
{
    ((counting_t *)ctx)->destroys++;
}

static const ioloop_stream_transport_t counting_transport = {
    .name = "counting",
    .read = counting_read,
    .writev = counting_writev,
    .shutdown = counting_shutdown,
    .destroy = counting_destroy,
};

#endif
