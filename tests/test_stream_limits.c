/* test_stream_limits.c — ioloop_stream's buffers under volume: a 3 MiB
 * read_bytes (growth), 100,000 pipelined lines through read_until across
 * block boundaries (compaction keeps every byte in order), a consumer that
 * does not consume stops reading at max_buffer_size (bounded, not closed)
 * and goes on once it consumes, and streams left open on a runtime's loops
 * are ended (-ESHUTDOWN) by ioloop_runtime_free.
 *
 * Threading rule: loops run on the test's main thread, except the runtime
 * test's, whose callbacks only count (atomics); assertions stay on the main
 * thread.
 */
#define _GNU_SOURCE
#include "test_stream_util.h"

#include "ioloop/runtime.h"

#include <stdatomic.h>
#include <stdio.h>
#include <sys/ioctl.h>

/* ---- a peer that writes a long pattern as the socket allows ------------------ */

typedef struct {
    int fd;
    size_t total, sent;
    size_t line; /* lines mode: next line number */
    size_t lines;
    char pending[64];
    size_t pending_len, pending_off;
} writer_t;

static unsigned char pattern_byte(size_t i)
{
    return (unsigned char)((i * 7 + (i >> 11)) & 0xff);
}

static void write_pattern(ioloop_t *loop, void *arg)
{
    writer_t *w = arg;
    while (w->sent < w->total) {
        unsigned char buf[8192];
        size_t n = w->total - w->sent < sizeof(buf) ? w->total - w->sent : sizeof(buf);
        for (size_t i = 0; i < n; i++)
            buf[i] = pattern_byte(w->sent + i);
        ssize_t k = write(w->fd, buf, n);
        if (k <= 0)
            break;
        w->sent += (size_t)k;
    }
    if (w->sent < w->total)
        ioloop_call_later(loop, IOLOOP_MSEC(1), write_pattern, w, NULL);
}

static void write_lines(ioloop_t *loop, void *arg)
{
    writer_t *w = arg;
    for (;;) {
        if (w->pending_off == w->pending_len) {
            if (w->line == w->lines)
                return;
            w->pending_len = (size_t)snprintf(w->pending, sizeof(w->pending), "line %06zu\n", w->line++);
            w->pending_off = 0;
        }
        ssize_t k = write(w->fd, w->pending + w->pending_off, w->pending_len - w->pending_off);
        if (k <= 0)
            break;
        w->pending_off += (size_t)k;
    }
    ioloop_call_later(loop, IOLOOP_MSEC(1), write_lines, w, NULL);
}

typedef struct {
    int reads, status, bad;
    size_t len;
} big_t;

static void big_read(ioloop_stream_t *stream, int status, const char *data, size_t len, void *arg)
{
    (void)stream;
    big_t *b = arg;
    b->reads++;
    b->status = status;
    b->len = len;
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)data[i] != pattern_byte(i))
            b->bad++;
}

static void test_read_bytes_grows(void **state)
{
    (void)state;
    enum { TOTAL = 3 << 20 };
    int fds[2];
    tu_socketpair(fds);
    ioloop_t *loop = tu_loop_new(NULL);
    ioloop_stream_t *stream;
    assert_int_equal(ioloop_stream_new(loop, fds[0], NULL, &stream), 0);
    big_t b = {0};
    assert_int_equal(ioloop_stream_read_bytes(stream, TOTAL, false, big_read, &b), 0);
    writer_t w = {.fd = fds[1], .total = TOTAL};
    ioloop_call_later(loop, 0, write_pattern, &w, NULL);
    assert_true(run_until(loop, &b.reads, 1, 20000));
    assert_int_equal(b.status, 0);
    assert_int_equal(b.len, TOTAL);
    assert_int_equal(b.bad, 0);
    ioloop_close(loop, false);
    close(fds[1]);
}

typedef struct {
    int lines, bad;
    ioloop_stream_t *stream;
} lines_t;

static void line_read(ioloop_stream_t *stream, int status, const char *data, size_t len, void *arg)
{
    lines_t *l = arg;
    if (status)
        return;
    char want[32];
    int n = snprintf(want, sizeof(want), "line %06d\n", l->lines);
    if ((size_t)n != len || memcmp(want, data, len) != 0)
        l->bad++;
    l->lines++;
    ioloop_stream_read_until(stream, "\n", 1, 64, line_read, l);
}

static void test_pipelined_lines_in_order(void **state)
{
    (void)state;
    enum { LINES = 100000 };
    int fds[2];
    tu_socketpair(fds);
    ioloop_t *loop = tu_loop_new(NULL);
    ioloop_stream_t *stream;
    assert_int_equal(ioloop_stream_new(loop, fds[0], NULL, &stream), 0);
    lines_t l = {0};
    assert_int_equal(ioloop_stream_read_until(stream, "\n", 1, 64, line_read, &l), 0);
    writer_t w = {.fd = fds[1], .lines = LINES};
    ioloop_call_later(loop, 0, write_lines, &w, NULL);
    assert_true(run_until(loop, &l.lines, LINES, 30000));
    assert_int_equal(l.bad, 0);
    ioloop_close(loop, false);
    close(fds[1]);
}

/* ---- a consumer that holds the input: reading stops at the limit ------------- */

typedef struct {
    int calls;
    size_t seen;
    bool consume;
} hold_t;

static void hold_consumer(ioloop_stream_t *stream, int status, void *arg)
{
    hold_t *h = arg;
    if (status)
        return;
    h->calls++;
    ioloop_stream_peek(stream, &h->seen);
    if (h->consume)
        ioloop_stream_consume(stream, h->seen);
}

static void test_consumer_stops_reading_at_limit(void **state)
{
    (void)state;
    int fds[2];
    tu_socketpair(fds);
    ioloop_t *loop = tu_loop_new(NULL);
    ioloop_stream_t *stream;
    rec_t rec = {0};
    ioloop_stream_options_t opts = {.max_buffer_size = 100};
    assert_int_equal(ioloop_stream_new(loop, fds[0], &opts, &stream), 0);
    ioloop_stream_set_close_callback(stream, rec_close, &rec);
    hold_t h = {0};
    assert_int_equal(ioloop_stream_read_start(stream, hold_consumer, &h), 0);
    char junk[1000];
    memset(junk, 'q', sizeof(junk));
    assert_int_equal(write(fds[1], junk, sizeof(junk)), (ssize_t)sizeof(junk));
    assert_true(run_until(loop, &h.calls, 1, 5000));
    run_for(loop, 30);
    assert_int_equal(h.seen, 100); /* never more than the limit */
    int unread = 0;
    ioctl(fds[0], FIONREAD, &unread);
    assert_int_equal(unread, 900);
    assert_int_equal(rec.closes, 0); /* not an error in consumer form */
    /* It consumes: reading goes on, up to the limit each time. */
    h.consume = true;
    ioloop_stream_consume(stream, 100);
    assert_true(run_until(loop, &h.calls, 10, 5000));
    ioctl(fds[0], FIONREAD, &unread);
    assert_int_equal(unread, 0);
    ioloop_close(loop, false);
    close(fds[1]);
    assert_int_equal(rec.closes, 1);
}

/* ---- ioloop_runtime_free ends streams left open -------------------------------- */

typedef struct {
    int fd;
    _Atomic int made, closes, close_error;
} rt_probe_t;

static void rt_closed(ioloop_stream_t *stream, int error, void *arg)
{
    (void)stream;
    rt_probe_t *p = arg;
    atomic_store(&p->close_error, error);
    atomic_fetch_add(&p->closes, 1);
}

static void ignore_read(ioloop_stream_t *stream, int status, const char *data, size_t len, void *arg)
{
    (void)stream, (void)status, (void)data, (void)len, (void)arg;
}

static void rt_make_stream(ioloop_t *loop, void *arg)
{
    rt_probe_t *p = arg;
    ioloop_stream_t *stream;
    if (ioloop_stream_new(loop, p->fd, NULL, &stream) != 0)
        return;
    ioloop_stream_set_close_callback(stream, rt_closed, p);
    ioloop_stream_read_until(stream, "\n", 1, 0, ignore_read, NULL);
    atomic_store(&p->made, 1);
}

static void test_runtime_free_ends_streams(void **state)
{
    (void)state;
    int fds[2];
    tu_socketpair(fds);
    ioloop_runtime_options_t ropts = {.loops = 1};
    ioloop_runtime_t *rt;
    assert_int_equal(ioloop_runtime_start(&ropts, &rt), 0);
    rt_probe_t p = {.fd = fds[0]};
    assert_int_equal(ioloop_add_callback(ioloop_runtime_loop(rt, 0), rt_make_stream, &p), 0);
    while (!atomic_load(&p.made))
        tu_sleep_ms(1);
    ioloop_runtime_free(rt);
    assert_int_equal(atomic_load(&p.closes), 1);
    assert_int_equal(atomic_load(&p.close_error), -ESHUTDOWN);
    char c;
    assert_int_equal(read(fds[1], &c, 1), 0); /* its fd was closed */
    close(fds[1]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_read_bytes_grows),
        cmocka_unit_test(test_pipelined_lines_in_order),
        cmocka_unit_test(test_consumer_stops_reading_at_limit),
        cmocka_unit_test(test_runtime_free_ends_streams),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
