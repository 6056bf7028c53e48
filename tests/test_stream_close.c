/* test_stream_close.c — how ioloop_stream ends, and that its close callback
 * runs exactly once in every path: peer reset (SO_LINGER 0, with a read
 * pending, while idle, while writing), local close, close from inside a read callback,
 * EOF (a pending read gets what was buffered), a hang-up nobody reads (no
 * spinning), idle/read/write timeouts (-ETIMEDOUT), a transport's abort, the loop's close
 * (-ESHUTDOWN); half-close both ways; the listener's on_stream with its own
 * connection accounting; and 10,000 streams open at once.
 *
 * Threading rule: loops run on the test's main thread, except the runtime's
 * in the listener test, whose callbacks only count (atomics); assertions
 * stay on the main thread.
 */
#define _GNU_SOURCE
#include "test_stream_util.h"

#include "ioloop/runtime.h"

#include <stdatomic.h>
#include <stdio.h>
#include <sys/resource.h>

static ioloop_stream_t *new_stream(ioloop_t *loop, int fd, const ioloop_stream_options_t *opts, rec_t *rec)
{
    ioloop_stream_t *stream;
    assert_int_equal(ioloop_stream_new(loop, fd, opts, &stream), 0);
    ioloop_stream_set_close_callback(stream, rec_close, rec);
    return stream;
}

static void reset_close(int fd)
{
    struct linger lg = {.l_onoff = 1, .l_linger = 0};
    assert_int_equal(setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg)), 0);
    close(fd);
}

/* ---- peer reset ------------------------------------------------------------ */

static void test_peer_reset_with_read_pending(void **state)
{
    (void)state;
    int fds[2];
    tcp_pair(fds);
    ioloop_t *loop = tu_loop_new(NULL);
    rec_t rec = {0};
    ioloop_stream_t *stream = new_stream(loop, fds[1], NULL, &rec);
    assert_int_equal(ioloop_stream_read_until(stream, "\n", 1, 0, rec_read, &rec), 0);
    assert_int_equal(write(fds[0], "half a line", 11), 11);
    run_for(loop, 10);
    reset_close(fds[0]);
    assert_true(run_until(loop, &rec.closes, 1, 5000));
    assert_int_equal(rec.close_error, -ECONNRESET);
    assert_int_equal(rec.reads, 1);
    assert_int_equal(rec.read_status, -ECONNRESET);
    assert_int_equal(rec.len, 11); /* what was buffered comes with the error */
    run_for(loop, 10);
    assert_int_equal(rec.closes, 1);
    ioloop_close(loop, false);
}

/* Reset while nothing is read or written: a stream that wants nothing is not
 * polled (as libuv's), so the reset is noticed by the next read, and the end
 * comes once, with the error. */
static void test_peer_reset_while_idle(void **state)
{
    (void)state;
    int fds[2];
    tcp_pair(fds);
    ioloop_t *loop = tu_loop_new(NULL);
    rec_t rec = {0};
    ioloop_stream_t *stream = new_stream(loop, fds[1], NULL, &rec);
    reset_close(fds[0]);
    run_for(loop, 20);
    assert_int_equal(rec.closes, 0);
    assert_int_equal(ioloop_stream_read_bytes(stream, 1, true, rec_read, &rec), 0);
    assert_true(run_until(loop, &rec.closes, 1, 5000));
    assert_int_equal(rec.close_error, -ECONNRESET);
    assert_int_equal(rec.read_status, -ECONNRESET);
    ioloop_close(loop, false);
    assert_int_equal(rec.closes, 1);
}

/* Reset while writing to a peer that does not read: the error event (or the
 * next send) names it. */
static void test_peer_reset_while_writing(void **state)
{
    (void)state;
    int fds[2];
    tcp_pair(fds);
    small_buffers(fds[1]);
    ioloop_t *loop = tu_loop_new(NULL);
    rec_t rec = {0};
    ioloop_stream_options_t opts = {.max_write_buffer_size = 8 << 20};
    ioloop_stream_t *stream = new_stream(loop, fds[1], &opts, &rec);
    static char big[4 << 20];
    assert_int_equal(ioloop_stream_write(stream, big, sizeof(big), rec_done, &rec), 0);
    run_for(loop, 20);
    assert_true(ioloop_stream_write_queue_size(stream) > 0);
    reset_close(fds[0]);
    assert_true(run_until(loop, &rec.closes, 1, 5000));
    assert_true(rec.close_error == -ECONNRESET || rec.close_error == -EPIPE);
    assert_int_equal(rec.dones, 1);
    assert_int_equal(rec.last_done_status, rec.close_error);
    ioloop_close(loop, false);
    assert_int_equal(rec.closes, 1);
}

/* ---- local close, and close from inside a read callback -------------------- */

static void test_local_close(void **state)
{
    (void)state;
    int fds[2];
    tu_socketpair(fds);
    ioloop_t *loop = tu_loop_new(NULL);
    rec_t rec = {0};
    ioloop_stream_t *stream = new_stream(loop, fds[0], NULL, &rec);
    assert_int_equal(ioloop_stream_read_until(stream, "\n", 1, 0, rec_read, &rec), 0);
    run_for(loop, 5);
    ioloop_stream_close(stream);
    assert_true(ioloop_stream_closed(stream));
    assert_int_equal(ioloop_stream_error(stream), 0);
    assert_int_equal(ioloop_stream_write(stream, "x", 1, NULL, NULL), -EPIPE);
    assert_int_equal(ioloop_stream_shutdown(stream), -EPIPE);
    assert_int_equal(rec.closes, 0);
    assert_true(run_until(loop, &rec.closes, 1, 5000));
    assert_int_equal(rec.close_error, 0);
    assert_int_equal(rec.read_status, -ECANCELED);
    char c;
    assert_int_equal(read(fds[1], &c, 1), 0); /* our fd is closed: the peer sees EOF */
    ioloop_close(loop, false);
    assert_int_equal(rec.closes, 1);
    close(fds[1]);
}

typedef struct {
    rec_t rec;
    int write_after_close;
} closer_t;

static void close_in_read(ioloop_stream_t *stream, int status, const char *data, size_t len, void *arg)
{
    closer_t *c = arg;
    rec_read(stream, status, data, len, &c->rec);
    if (status)
        return;
    ioloop_stream_close(stream);
    ioloop_stream_close(stream);
    c->write_after_close = ioloop_stream_write(stream, "x", 1, NULL, NULL);
    assert_int_equal(ioloop_stream_read_until(stream, "\n", 1, 0, close_in_read, c), -EPIPE);
}

static void test_close_inside_read_callback(void **state)
{
    (void)state;
    int fds[2];
    tu_socketpair(fds);
    ioloop_t *loop = tu_loop_new(NULL);
    closer_t c = {0};
    ioloop_stream_t *stream = new_stream(loop, fds[0], NULL, &c.rec);
    assert_int_equal(ioloop_stream_read_until(stream, "\n", 1, 0, close_in_read, &c), 0);
    assert_int_equal(write(fds[1], "one\ntwo\n", 8), 8);
    assert_true(run_until(loop, &c.rec.closes, 1, 5000));
    assert_int_equal(c.rec.reads, 1);
    assert_int_equal(c.rec.close_error, 0);
    assert_int_equal(c.write_after_close, -EPIPE);
    run_for(loop, 10);
    assert_int_equal(c.rec.closes, 1);
    ioloop_close(loop, false);
    close(fds[1]);
}

/* ---- EOF --------------------------------------------------------------------- */

static void test_eof_gives_pending_read_the_data(void **state)
{
    (void)state;
    int fds[2];
    tu_socketpair(fds);
    ioloop_t *loop = tu_loop_new(NULL);
    rec_t rec = {0};
    ioloop_stream_t *stream = new_stream(loop, fds[0], NULL, &rec);
    assert_int_equal(ioloop_stream_read_until(stream, "\n", 1, 0, rec_read, &rec), 0);
    assert_int_equal(write(fds[1], "line\npartial", 12), 12);
    close(fds[1]);
    /* The first read is satisfied; the stream waits for a second one. */
    assert_true(run_until(loop, &rec.reads, 1, 5000));
    assert_int_equal(rec.read_status, 0);
    assert_int_equal(rec.len, 5);
    assert_int_equal(rec.closes, 0);
    assert_int_equal(ioloop_stream_read_until(stream, "\n", 1, 0, rec_read, &rec), 0);
    assert_true(run_until(loop, &rec.closes, 1, 5000));
    assert_int_equal(rec.close_error, IOLOOP_EOF);
    assert_int_equal(rec.reads, 2);
    assert_int_equal(rec.read_status, IOLOOP_EOF);
    assert_int_equal(rec.len, 7);
    assert_memory_equal(rec.data, "partial", 7);
    ioloop_close(loop, false);
    assert_int_equal(rec.closes, 1);
}

/* A peer that hangs up while nothing reads: the hang-up is reported on every
 * poll, so the stream must stop watching instead of spinning; a later read
 * still finds the data and the EOF. */
static void test_hangup_while_not_reading_does_not_spin(void **state)
{
    (void)state;
    int fds[2];
    tu_socketpair(fds);
    ioloop_t *loop = tu_loop_new(NULL);
    rec_t rec = {0};
    ioloop_stream_t *stream = new_stream(loop, fds[0], NULL, &rec);
    assert_int_equal(write(fds[1], "left\n", 5), 5);
    close(fds[1]);
    ioloop_stats_t before, after;
    ioloop_get_stats(loop, &before);
    run_for(loop, 50);
    ioloop_get_stats(loop, &after);
    assert_true(after.events_dispatched - before.events_dispatched < 5);
    assert_int_equal(rec.closes, 0);
    assert_int_equal(ioloop_stream_read_until(stream, "\n", 1, 0, rec_read, &rec), 0);
    assert_true(run_until(loop, &rec.closes, 1, 5000));
    assert_int_equal(rec.reads, 1);
    assert_int_equal(rec.read_status, 0);
    assert_memory_equal(rec.data, "left\n", 5);
    assert_int_equal(rec.close_error, IOLOOP_EOF); /* nothing more to read: it ends at once */
    ioloop_close(loop, false);
}

/* ---- timeouts ------------------------------------------------------------------ */

typedef struct {
    int fd;
    int left;
} ticker_t;

static void tick_byte(ioloop_t *loop, void *arg)
{
    ticker_t *t = arg;
    if (t->left-- <= 0)
        return;
    if (send(t->fd, "z", 1, MSG_NOSIGNAL) != 1)
        return; /* the stream ended (closing its end) just before this tick */
    ioloop_call_later(loop, IOLOOP_MSEC(10), tick_byte, t, NULL);
}

static void test_idle_timeout(void **state)
{
    (void)state;
    int fds[2];
    tu_socketpair(fds);
    ioloop_t *loop = tu_loop_new(NULL);
    rec_t rec = {0};
    ioloop_stream_options_t opts = {.idle_timeout = IOLOOP_MSEC(60)};
    ioloop_stream_t *stream = new_stream(loop, fds[0], &opts, &rec);
    /* Bytes every 10 ms keep it alive for 150 ms. */
    assert_int_equal(ioloop_stream_read_until(stream, "\n", 1, 0, rec_read, &rec), 0);
    ticker_t ticker = {.fd = fds[1], .left = 15};
    ioloop_call_later(loop, 0, tick_byte, &ticker, NULL);
    int64_t start = tu_now_ns();
    assert_true(run_until(loop, &rec.closes, 1, 5000));
    int64_t elapsed = tu_now_ns() - start;
    assert_int_equal(rec.close_error, -ETIMEDOUT);
    assert_int_equal(rec.read_status, -ETIMEDOUT);
    assert_true(elapsed >= IOLOOP_MSEC(150 + 60 - 15));
    ioloop_close(loop, false);
    close(fds[1]);
    assert_int_equal(rec.closes, 1);
}

/* stream.h's calls for a transport's own code: the ctx it was made with, and
 * an end from outside the stream's calls (a transport's timer, as TLS's
 * handshake timeout): the close callback and the pending read get the
 * error, once; a status that is no error is taken as -ECONNABORTED. */
static void abort_from_timer(ioloop_t *loop, void *arg)
{
    (void)loop;
    ioloop_stream_t *stream = arg;
    ioloop_stream_abort(stream, 0); /* no error given: still an error */
    ioloop_stream_abort(stream, -EPROTO); /* already ended: nothing */
}

static void test_transport_abort_and_ctx(void **state)
{
    (void)state;
    int fds[2];
    tu_socketpair(fds);
    ioloop_t *loop = tu_loop_new(NULL);
    rec_t rec = {0};
    counting_t counting = {0};
    ioloop_stream_options_t opts = {.transport = &counting_transport, .transport_ctx = &counting};
    ioloop_stream_t *stream = new_stream(loop, fds[0], &opts, &rec);
    assert_ptr_equal(ioloop_stream_transport_ctx(stream), &counting);
    assert_null(ioloop_stream_transport_ctx(NULL));
    ioloop_stream_abort(NULL, -EPROTO); /* nothing to end */
    assert_int_equal(ioloop_stream_read_until(stream, "\n", 1, 0, rec_read, &rec), 0);
    ioloop_call_later(loop, IOLOOP_MSEC(5), abort_from_timer, stream, NULL);
    assert_true(run_until(loop, &rec.closes, 1, 5000));
    run_for(loop, 20);
    assert_int_equal(rec.closes, 1);
    assert_int_equal(rec.close_error, -ECONNABORTED);
    assert_int_equal(rec.read_status, -ECONNABORTED);
    assert_int_equal(counting.destroys, 1);
    ioloop_close(loop, false);
    close(fds[1]);
}

static void test_read_timeout(void **state)
{
    (void)state;
    int fds[2];
    tu_socketpair(fds);
    ioloop_t *loop = tu_loop_new(NULL);
    rec_t rec = {0};
    ioloop_stream_options_t opts = {.read_timeout = IOLOOP_MSEC(80)};
    ioloop_stream_t *stream = new_stream(loop, fds[0], &opts, &rec);
    /* No read pending: no read timeout. */
    run_for(loop, 120);
    assert_int_equal(rec.closes, 0);
    /* Bytes that never satisfy the read do not hold it off. */
    assert_int_equal(ioloop_stream_read_until(stream, "\n", 1, 0, rec_read, &rec), 0);
    ticker_t ticker = {.fd = fds[1], .left = 100};
    ioloop_call_later(loop, 0, tick_byte, &ticker, NULL);
    int64_t start = tu_now_ns();
    assert_true(run_until(loop, &rec.closes, 1, 5000));
    int64_t elapsed = tu_now_ns() - start;
    assert_int_equal(rec.close_error, -ETIMEDOUT);
    assert_true(elapsed >= IOLOOP_MSEC(75) && elapsed < IOLOOP_MSEC(2000));
    ioloop_close(loop, false);
    close(fds[1]);
}

static void consume_all(ioloop_stream_t *stream, int status, void *arg)
{
    rec_t *rec = arg;
    rec->consumer_calls++;
    rec->consumer_status = status;
    size_t len;
    ioloop_stream_peek(stream, &len);
    ioloop_stream_consume(stream, len);
}

/* Reading that stops for our own reasons (output above its mark, the peer
 * not reading) does not run the read timeout: the peer is not late. Once our
 * output drains and reading resumes, the timeout starts over. */
static void test_read_timeout_not_while_we_hold_reading(void **state)
{
    (void)state;
    int fds[2];
    tu_socketpair(fds);
    small_buffers(fds[0]);
    ioloop_t *loop = tu_loop_new(NULL);
    rec_t rec = {0};
    ioloop_stream_options_t opts = {.read_timeout = IOLOOP_MSEC(80), .max_write_buffer_size = 64 << 10};
    ioloop_stream_t *stream = new_stream(loop, fds[0], &opts, &rec);
    assert_int_equal(ioloop_stream_read_start(stream, consume_all, &rec), 0);
    static char big[256 << 10];
    assert_int_equal(ioloop_stream_write(stream, big, sizeof(big), rec_done, &rec), 0);
    run_for(loop, 300); /* far past the read timeout, output stuck above the mark */
    assert_int_equal(rec.closes, 0);
    assert_true(ioloop_stream_write_queue_size(stream) >= (64u << 10));
    /* The peer reads everything: the output drains, reading resumes, and
     * the read timeout runs again from then on. */
    size_t got = 0;
    for (int i = 0; i < 5000 && got < sizeof(big); i++) {
        got += drain_fd(fds[1], NULL, 0);
        run_for(loop, 1);
    }
    assert_int_equal(got, sizeof(big));
    assert_true(run_until(loop, &rec.closes, 1, 5000));
    assert_int_equal(rec.close_error, -ETIMEDOUT);
    ioloop_close(loop, false);
    close(fds[1]);
}

/* A stream whose output is stuck: 1 MiB written (small kernel buffers) to a
 * peer that never reads, with this write timeout. The peer's fd in *peer. */
static ioloop_stream_t *stuck_writer(ioloop_t *loop, ioloop_time_t write_timeout, rec_t *rec, int *peer)
{
    int fds[2];
    tu_socketpair(fds);
    small_buffers(fds[0]);
    ioloop_stream_options_t opts = {.write_timeout = write_timeout, .max_write_buffer_size = 4 << 20};
    ioloop_stream_t *stream = new_stream(loop, fds[0], &opts, rec);
    static char big[1 << 20];
    assert_int_equal(ioloop_stream_write(stream, big, sizeof(big), rec_done, rec), 0);
    *peer = fds[1];
    return stream;
}

static void test_write_timeout(void **state)
{
    (void)state;
    ioloop_t *loop = tu_loop_new(NULL);
    rec_t rec = {0};
    int peer;
    stuck_writer(loop, IOLOOP_MSEC(60), &rec, &peer);
    int64_t start = tu_now_ns();
    assert_true(run_until(loop, &rec.closes, 1, 5000));
    assert_int_equal(rec.close_error, -ETIMEDOUT);
    assert_int_equal(rec.last_done_status, -ETIMEDOUT);
    assert_true(tu_now_ns() - start >= IOLOOP_MSEC(55));
    ioloop_close(loop, false);
    close(peer);
}

/* The write timeout does not run while corked: output that could not move
 * before a long cork gets the whole timeout again from the uncork. */
static void test_write_timeout_not_while_corked(void **state)
{
    (void)state;
    ioloop_t *loop = tu_loop_new(NULL);
    rec_t rec = {0};
    int peer;
    ioloop_stream_t *stream = stuck_writer(loop, IOLOOP_MSEC(300), &rec, &peer);
    run_for(loop, 10);
    ioloop_stream_cork(stream);
    run_for(loop, 500); /* longer than the timeout, corked */
    assert_int_equal(rec.closes, 0);
    ioloop_stream_uncork(stream);
    run_for(loop, 50);
    assert_int_equal(rec.closes, 0); /* the clock restarted at the uncork */
    int64_t start = tu_now_ns();
    assert_true(run_until(loop, &rec.closes, 1, 5000)); /* the peer never reads: it fires later */
    assert_int_equal(rec.close_error, -ETIMEDOUT);
    assert_true(tu_now_ns() - start >= IOLOOP_MSEC(150));
    ioloop_close(loop, false);
    close(peer);
}

/* Calls made before the loop runs measure from the real time, not from the
 * loop's clock as it was when it last ran (here: when it was made). */
static void test_timeouts_from_calls_before_start(void **state)
{
    (void)state;
    int fds[2];
    tu_socketpair(fds);
    small_buffers(fds[0]);
    ioloop_t *loop = tu_loop_new(NULL);
    tu_sleep_ms(150);
    rec_t rec = {0};
    ioloop_stream_options_t opts = {.max_write_buffer_size = 4 << 20};
    ioloop_stream_t *stream = new_stream(loop, fds[0], &opts, &rec);
    tu_sleep_ms(150);
    ioloop_stream_set_timeouts(stream, 0, 0, IOLOOP_MSEC(100));
    tu_sleep_ms(150);
    static char big[1 << 20];
    int64_t start = tu_now_ns();
    assert_int_equal(ioloop_stream_write(stream, big, sizeof(big), NULL, NULL), 0);
    assert_true(run_until(loop, &rec.closes, 1, 5000));
    assert_int_equal(rec.close_error, -ETIMEDOUT);
    assert_true(tu_now_ns() - start >= IOLOOP_MSEC(95));
    ioloop_close(loop, false);
    close(fds[1]);
}

/* ---- the loop's close ------------------------------------------------------------ */

static void test_loop_close_ends_streams(void **state)
{
    (void)state;
    int a[2], b[2];
    tu_socketpair(a);
    tu_socketpair(b);
    small_buffers(a[0]);
    ioloop_t *loop = tu_loop_new(NULL);
    rec_t open_rec = {0}, closed_rec = {0};
    ioloop_stream_options_t opts = {.max_write_buffer_size = 4 << 20};
    ioloop_stream_t *open_stream = new_stream(loop, a[0], &opts, &open_rec);
    ioloop_stream_t *closed_stream = new_stream(loop, b[0], NULL, &closed_rec);
    assert_int_equal(ioloop_stream_read_until(open_stream, "\n", 1, 0, rec_read, &open_rec), 0);
    static char big[1 << 20];
    assert_int_equal(ioloop_stream_write(open_stream, big, sizeof(big), rec_done, &open_rec), 0);
    assert_int_equal(ioloop_stream_write_borrowed(open_stream, big, sizeof(big), rec_release, &open_rec), 0);
    run_for(loop, 10);
    ioloop_stream_close(closed_stream); /* ended, callbacks not run yet */
    assert_int_equal(ioloop_close(loop, false), 0);
    assert_int_equal(open_rec.closes, 1);
    assert_int_equal(open_rec.close_error, -ESHUTDOWN);
    assert_int_equal(open_rec.read_status, -ESHUTDOWN);
    assert_int_equal(open_rec.dones, 1);
    assert_int_equal(open_rec.last_done_status, -ESHUTDOWN);
    assert_int_equal(open_rec.releases, 1);
    assert_int_equal(closed_rec.closes, 1);
    assert_int_equal(closed_rec.close_error, 0);
    close(a[1]);
    close(b[1]);
}

/* A stream on a closed loop cannot be made (and the fd is closed). */
static void test_new_on_closed_loop(void **state)
{
    (void)state;
    int fds[2];
    tu_socketpair(fds);
    ioloop_t *loop = tu_loop_new(NULL);
    ioloop_ref(loop);
    ioloop_close(loop, false);
    ioloop_stream_t *stream = (ioloop_stream_t *)1;
    assert_int_equal(ioloop_stream_new(loop, fds[0], NULL, &stream), -ESHUTDOWN);
    assert_null(stream);
    assert_int_equal(fcntl(fds[0], F_GETFD), -1); /* closed */
    ioloop_unref(loop);
    close(fds[1]);
}

/* ---- half-close ------------------------------------------------------------------- */

static void test_shutdown_then_peer_still_sends(void **state)
{
    (void)state;
    int fds[2];
    tu_socketpair(fds);
    ioloop_t *loop = tu_loop_new(NULL);
    rec_t rec = {0};
    counting_t counts = {0};
    ioloop_stream_options_t opts = {.transport = &counting_transport, .transport_ctx = &counts};
    ioloop_stream_t *stream = new_stream(loop, fds[0], &opts, &rec);
    ioloop_stream_cork(stream);
    assert_int_equal(ioloop_stream_write(stream, "bye", 3, rec_done, &rec), 0);
    assert_int_equal(ioloop_stream_shutdown(stream), 0); /* sends what is queued first, corked or not */
    assert_int_equal(ioloop_stream_shutdown(stream), -EPIPE);
    assert_int_equal(ioloop_stream_write(stream, "more", 4, NULL, NULL), -EPIPE);
    assert_false(ioloop_stream_writable(stream));
    assert_int_equal(ioloop_stream_read_until(stream, "\n", 1, 0, rec_read, &rec), 0);
    run_for(loop, 10);
    assert_int_equal(counts.shutdowns, 1);
    char buf[8];
    assert_int_equal(read(fds[1], buf, sizeof(buf)), 3);
    assert_int_equal(read(fds[1], buf, sizeof(buf)), 0); /* the peer sees EOF */
    assert_int_equal(write(fds[1], "reply\n", 6), 6);    /* and can still send */
    assert_true(run_until(loop, &rec.reads, 1, 5000));
    assert_memory_equal(rec.data, "reply\n", 6);
    assert_int_equal(rec.dones, 1);
    close(fds[1]);
    assert_int_equal(ioloop_stream_read_until(stream, "\n", 1, 0, rec_read, &rec), 0);
    assert_true(run_until(loop, &rec.closes, 1, 5000));
    assert_int_equal(rec.close_error, IOLOOP_EOF);
    ioloop_close(loop, false);
}

static void test_half_close_peer_eof_keeps_writing(void **state)
{
    (void)state;
    int fds[2];
    tu_socketpair(fds);
    ioloop_t *loop = tu_loop_new(NULL);
    rec_t rec = {0};
    ioloop_stream_options_t opts = {.half_close = true};
    ioloop_stream_t *stream = new_stream(loop, fds[0], &opts, &rec);
    assert_int_equal(ioloop_stream_read_until(stream, "\n", 1, 0, rec_read, &rec), 0);
    assert_int_equal(write(fds[1], "no newline", 10), 10);
    shutdown(fds[1], SHUT_WR);
    assert_true(run_until(loop, &rec.reads, 1, 5000));
    assert_int_equal(rec.read_status, IOLOOP_EOF);
    assert_int_equal(rec.len, 10);
    run_for(loop, 20);
    assert_int_equal(rec.closes, 0);
    assert_false(ioloop_stream_closed(stream));
    /* Still writable; the bytes reach the peer. */
    assert_int_equal(ioloop_stream_write(stream, "still here", 10, rec_done, &rec), 0);
    assert_true(run_until(loop, &rec.dones, 1, 5000));
    char buf[16];
    assert_int_equal(drain_fd(fds[1], buf, sizeof(buf)), 10);
    /* The data not consumed by the EOF read is still there; another read gets EOF again. */
    size_t len;
    assert_non_null(ioloop_stream_peek(stream, &len));
    assert_int_equal(len, 10);
    assert_int_equal(ioloop_stream_read_bytes(stream, 100, false, rec_read, &rec), 0);
    assert_true(run_until(loop, &rec.reads, 2, 5000));
    assert_int_equal(rec.read_status, IOLOOP_EOF);
    ioloop_stream_close(stream);
    assert_true(run_until(loop, &rec.closes, 1, 5000));
    assert_int_equal(rec.close_error, 0);
    ioloop_close(loop, false);
    close(fds[1]);
}

/* ---- the listener hands out streams ------------------------------------------------ */

typedef struct {
    _Atomic int accepted, closed;
} server_t;

static void server_closed(ioloop_stream_t *stream, int error, void *arg)
{
    (void)stream, (void)error;
    atomic_fetch_add(&((server_t *)arg)->closed, 1);
}

static void server_echo(ioloop_stream_t *stream, int status, const char *data, size_t len, void *arg)
{
    (void)arg;
    if (status)
        return;
    ioloop_stream_write(stream, data, len, NULL, NULL);
    ioloop_stream_read_until(stream, "\n", 1, 0, server_echo, NULL);
}

static void on_stream(ioloop_t *loop, ioloop_stream_t *stream, const struct sockaddr *peer, socklen_t peer_len,
                      void *arg)
{
    (void)loop, (void)peer, (void)peer_len;
    server_t *server = arg;
    atomic_fetch_add(&server->accepted, 1);
    ioloop_stream_set_close_callback(stream, server_closed, server);
    ioloop_stream_read_until(stream, "\n", 1, 0, server_echo, NULL);
}

static int64_t live_connections(ioloop_runtime_t *rt)
{
    int64_t total = 0;
    for (int i = 0; i < ioloop_runtime_size(rt); i++) {
        ioloop_stats_t stats;
        ioloop_get_stats(ioloop_runtime_loop(rt, i), &stats);
        total += stats.live_connections;
    }
    return total;
}

static bool wait_live(ioloop_runtime_t *rt, int64_t want)
{
    for (int i = 0; i < 5000; i++) {
        if (live_connections(rt) == want)
            return true;
        tu_sleep_ms(1);
    }
    return false;
}

static void dummy_accept(ioloop_t *loop, int fd, const struct sockaddr *peer, socklen_t peer_len, void *arg)
{
    (void)loop, (void)peer, (void)peer_len, (void)arg;
    close(fd);
}

static void test_listener_on_stream_counts_itself(void **state)
{
    (void)state;
    enum { CONNS = 20 };
    ioloop_runtime_options_t ropts = {.loops = 2};
    ioloop_runtime_t *rt;
    assert_int_equal(ioloop_runtime_start(&ropts, &rt), 0);
    server_t server = {0};
    ioloop_listener_options_t lopts = {.address = "127.0.0.1", .on_stream = on_stream, .arg = &server};
    ioloop_listener_t *listener;
    lopts.on_accept = dummy_accept;
    assert_int_equal(ioloop_listener_start(rt, &lopts, &listener), -EINVAL); /* both */
    lopts.on_accept = NULL;
    lopts.on_stream = NULL;
    assert_int_equal(ioloop_listener_start(rt, &lopts, &listener), -EINVAL); /* neither */
    lopts.on_stream = on_stream;
    counting_t shared = {0}; /* a ctx every stream would destroy: refused */
    lopts.stream.transport = &counting_transport;
    lopts.stream.transport_ctx = &shared;
    assert_int_equal(ioloop_listener_start(rt, &lopts, &listener), -EINVAL);
    lopts.stream.transport = NULL;
    lopts.stream.transport_ctx = NULL;
    assert_int_equal(ioloop_listener_start(rt, &lopts, &listener), 0);
    struct sockaddr_in sin = {.sin_family = AF_INET,
                              .sin_addr.s_addr = htonl(INADDR_LOOPBACK),
                              .sin_port = htons((uint16_t)ioloop_listener_port(listener))};
    int clients[CONNS];
    for (int i = 0; i < CONNS; i++) {
        clients[i] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        assert_int_equal(connect(clients[i], (struct sockaddr *)&sin, sizeof(sin)), 0);
        assert_int_equal(write(clients[i], "echo me\n", 8), 8);
    }
    for (int i = 0; i < CONNS; i++) {
        char buf[16];
        assert_int_equal(read(clients[i], buf, sizeof(buf)), 8); /* blocking */
        assert_memory_equal(buf, "echo me\n", 8);
    }
    assert_true(wait_live(rt, CONNS));
    for (int i = 0; i < CONNS; i++)
        close(clients[i]);
    assert_true(wait_live(rt, 0)); /* each stream's end counted it out: no manual call */
    assert_int_equal(atomic_load(&server.accepted), CONNS);
    /* The count drops as a stream ends; its close callback runs in a later
     * callback on its loop (slow under valgrind): wait for them, bounded. */
    for (int i = 0; i < 5000 && atomic_load(&server.closed) < CONNS; i++)
        tu_sleep_ms(1);
    assert_int_equal(atomic_load(&server.closed), CONNS);
    ioloop_listener_free(listener);
    ioloop_runtime_free(rt);
}

/* ---- 10,000 streams open at once ---------------------------------------------------- */

enum { PAIRS = 5000, STREAMS = 2 * PAIRS };

typedef struct {
    int closes, echoed, errors;
} many_t;

static void many_closed(ioloop_stream_t *stream, int error, void *arg)
{
    (void)stream;
    many_t *m = arg;
    m->closes++;
    if (error != 0 && error != IOLOOP_EOF)
        m->errors++;
}

static void many_server_read(ioloop_stream_t *stream, int status, const char *data, size_t len, void *arg)
{
    if (status)
        return;
    ioloop_stream_write(stream, data, len, NULL, NULL);
    ioloop_stream_read_until(stream, "\n", 1, 0, many_server_read, arg); /* then EOF ends it */
}

static void many_client_read(ioloop_stream_t *stream, int status, const char *data, size_t len, void *arg)
{
    many_t *m = arg;
    if (status == 0 && len == 6 && memcmp(data, "hello\n", 6) == 0)
        m->echoed++;
    ioloop_stream_close(stream);
}

static void test_ten_thousand_streams(void **state)
{
    (void)state;
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    rlim_t needed = STREAMS + 256;
    if (rl.rlim_cur < needed) {
        if (rl.rlim_max != RLIM_INFINITY && rl.rlim_max < needed) {
            printf("skipped: RLIMIT_NOFILE hard limit %llu < %llu\n", (unsigned long long)rl.rlim_max,
                   (unsigned long long)needed);
            skip();
        }
        rl.rlim_cur = rl.rlim_max == RLIM_INFINITY ? needed : rl.rlim_max;
        assert_int_equal(setrlimit(RLIMIT_NOFILE, &rl), 0);
    }
    int fds_before = tu_open_fds();
    ioloop_t *loop = tu_loop_new(NULL);
    many_t m = {0};
    ioloop_stream_options_t opts = {.idle_timeout = IOLOOP_SEC(60)}; /* 10,000 timers too */
    for (int i = 0; i < PAIRS; i++) {
        int fds[2];
        tu_socketpair(fds);
        ioloop_stream_t *server, *client;
        assert_int_equal(ioloop_stream_new(loop, fds[0], &opts, &server), 0);
        assert_int_equal(ioloop_stream_new(loop, fds[1], &opts, &client), 0);
        ioloop_stream_set_close_callback(server, many_closed, &m);
        ioloop_stream_set_close_callback(client, many_closed, &m);
        assert_int_equal(ioloop_stream_read_until(server, "\n", 1, 0, many_server_read, &m), 0);
        assert_int_equal(ioloop_stream_write(client, "hello\n", 6, NULL, NULL), 0);
        assert_int_equal(ioloop_stream_read_until(client, "\n", 1, 0, many_client_read, &m), 0);
    }
    assert_true(tu_open_fds() >= fds_before + STREAMS);
    assert_true(run_until(loop, &m.closes, STREAMS, 60000));
    assert_int_equal(m.echoed, PAIRS);
    assert_int_equal(m.errors, 0);
    assert_int_equal(ioloop_close(loop, false), 0);
    assert_int_equal(m.closes, STREAMS);
    assert_int_equal(tu_open_fds(), fds_before);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_peer_reset_with_read_pending),
        cmocka_unit_test(test_peer_reset_while_idle),
        cmocka_unit_test(test_peer_reset_while_writing),
        cmocka_unit_test(test_local_close),
        cmocka_unit_test(test_close_inside_read_callback),
        cmocka_unit_test(test_eof_gives_pending_read_the_data),
        cmocka_unit_test(test_hangup_while_not_reading_does_not_spin),
        cmocka_unit_test(test_idle_timeout),
        cmocka_unit_test(test_transport_abort_and_ctx),
        cmocka_unit_test(test_read_timeout),
        cmocka_unit_test(test_read_timeout_not_while_we_hold_reading),
        cmocka_unit_test(test_write_timeout),
        cmocka_unit_test(test_write_timeout_not_while_corked),
        cmocka_unit_test(test_timeouts_from_calls_before_start),
        cmocka_unit_test(test_loop_close_ends_streams),
        cmocka_unit_test(test_new_on_closed_loop),
        cmocka_unit_test(test_shutdown_then_peer_still_sends),
        cmocka_unit_test(test_half_close_peer_eof_keeps_writing),
        cmocka_unit_test(test_listener_on_stream_counts_itself),
        cmocka_unit_test(test_ten_thousand_streams),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
