/* test_stream.c — ioloop_stream reading and writing: read_until across
 * 1-byte writes and a split delimiter, read_bytes whole and partial,
 * read_until_close, -EBUSY, the input limits (-ENOBUFS, -EMSGSIZE), write
 * back-pressure against a peer that does not read, done and release exactly
 * once, cork (one writev through the transport double), a transport that
 * transforms the bytes (the only I/O path), the consumer form
 * (peek/consume, stop, pause/resume), and -EPERM from another thread.
 *
 * Threading rule: the loop runs on the test's main thread (except in the
 * -EPERM test, where assertions still stay on the main thread).
 */
#define _GNU_SOURCE
#include "test_stream_util.h"

#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <sys/ioctl.h>

typedef struct {
    ioloop_t *loop;
    ioloop_stream_t *stream;
    int peer;
} fixture_t;

static void fixture_open(fixture_t *fx, const ioloop_stream_options_t *opts)
{
    int fds[2];
    tu_socketpair(fds);
    fx->loop = tu_loop_new(NULL);
    assert_non_null(fx->loop);
    assert_int_equal(ioloop_stream_new(fx->loop, fds[0], opts, &fx->stream), 0);
    fx->peer = fds[1];
}

static void fixture_close(fixture_t *fx)
{
    assert_int_equal(ioloop_close(fx->loop, false), 0);
    close(fx->peer);
}

/* ---- read_until: 1-byte writes, the delimiter split across reads ---------- */

typedef struct {
    int fd;
    const char *text;
    size_t pos, len;
} dribble_t;

/* Writes one byte per loop iteration, so every recv sees one byte. */
static void dribble_tick(ioloop_t *loop, void *arg)
{
    dribble_t *d = arg;
    if (d->pos >= d->len)
        return;
    assert_int_equal(write(d->fd, d->text + d->pos, 1), 1);
    d->pos++;
    ioloop_call_later(loop, IOLOOP_MSEC(1), dribble_tick, d, NULL);
}

typedef struct {
    rec_t rec;
    char lines[4][64];
    int count;
} lines_t;

static void line_read(ioloop_stream_t *stream, int status, const char *data, size_t len, void *arg)
{
    lines_t *lines = arg;
    assert_int_equal(status, 0);
    assert_true(len < sizeof(lines->lines[0]));
    memcpy(lines->lines[lines->count], data, len);
    lines->lines[lines->count][len] = 0;
    if (++lines->count < 2)
        assert_int_equal(ioloop_stream_read_until(stream, "\r\n", 2, 0, line_read, lines), 0);
}

static void test_read_until_one_byte_writes(void **state)
{
    (void)state;
    counting_t counts = {0};
    ioloop_stream_options_t opts = {.transport = &counting_transport, .transport_ctx = &counts};
    fixture_t fx;
    fixture_open(&fx, &opts);
    lines_t lines = {0};
    assert_int_equal(ioloop_stream_read_until(fx.stream, "\r\n", 2, 0, line_read, &lines), 0);
    dribble_t d = {.fd = fx.peer, .text = "hello\r\nworld!\r\n", .len = 15};
    ioloop_call_later(fx.loop, 0, dribble_tick, &d, NULL);
    assert_true(run_until(fx.loop, &lines.count, 2, 5000));
    assert_string_equal(lines.lines[0], "hello\r\n");
    assert_string_equal(lines.lines[1], "world!\r\n");
    assert_true(counts.reads >= 15); /* the bytes really came one recv at a time */
    fixture_close(&fx);
    assert_int_equal(counts.destroys, 1);
}

/* A delimiter that arrives in two reads, and a long (heap-copied) one. */
static void test_read_until_split_long_delimiter(void **state)
{
    (void)state;
    fixture_t fx;
    fixture_open(&fx, NULL);
    rec_t rec = {0};
    const char *delim = "--boundary-1234567890--"; /* longer than the inline copy */
    char caller_copy[64];
    strcpy(caller_copy, delim);
    assert_int_equal(ioloop_stream_read_until(fx.stream, caller_copy, strlen(delim), 0, rec_read, &rec), 0);
    memset(caller_copy, 'x', strlen(delim)); /* the stream copied it */
    assert_int_equal(write(fx.peer, "body--bound", 11), 11);
    run_for(fx.loop, 20);
    assert_int_equal(rec.reads, 0);
    assert_int_equal(write(fx.peer, "ary-1234567890--rest", 20), 20);
    assert_true(run_until(fx.loop, &rec.reads, 1, 5000));
    assert_int_equal(rec.read_status, 0);
    assert_int_equal(rec.len, 4 + strlen(delim));
    assert_memory_equal(rec.data, "body--boundary-1234567890--", rec.len);
    size_t left;
    const char *rest = ioloop_stream_peek(fx.stream, &left);
    assert_int_equal(left, 4);
    assert_memory_equal(rest, "rest", 4);
    fixture_close(&fx);
}

/* ---- read_bytes whole and partial --------------------------------------------- */

typedef struct {
    rec_t rec;
    int step;
    char got[3][32];
    size_t lens[3];
} bytes_t;

static void bytes_read(ioloop_stream_t *stream, int status, const char *data, size_t len, void *arg)
{
    bytes_t *b = arg;
    assert_int_equal(status, 0);
    memcpy(b->got[b->step], data, len);
    b->lens[b->step] = len;
    b->step++;
    if (b->step == 1) /* partial: whatever is there, up to 10 */
        assert_int_equal(ioloop_stream_read_bytes(stream, 10, true, bytes_read, b), 0);
    else if (b->step == 2) /* whole: waits for all 4 */
        assert_int_equal(ioloop_stream_read_bytes(stream, 4, false, bytes_read, b), 0);
}

static void test_read_bytes_whole_and_partial(void **state)
{
    (void)state;
    fixture_t fx;
    fixture_open(&fx, NULL);
    bytes_t b = {0};
    assert_int_equal(write(fx.peer, "abcdefgh", 8), 8);
    assert_int_equal(ioloop_stream_read_bytes(fx.stream, 5, false, bytes_read, &b), 0);
    assert_true(run_until(fx.loop, &b.step, 2, 5000));
    assert_int_equal(b.lens[0], 5);
    assert_memory_equal(b.got[0], "abcde", 5);
    assert_int_equal(b.lens[1], 3);
    assert_memory_equal(b.got[1], "fgh", 3);
    dribble_t d = {.fd = fx.peer, .text = "1234", .len = 4};
    ioloop_call_later(fx.loop, 0, dribble_tick, &d, NULL);
    assert_true(run_until(fx.loop, &b.step, 3, 5000));
    assert_int_equal(b.lens[2], 4);
    assert_memory_equal(b.got[2], "1234", 4);
    fixture_close(&fx);
}

/* ---- read_until_close ----------------------------------------------------------- */

static void test_read_until_close(void **state)
{
    (void)state;
    fixture_t fx;
    fixture_open(&fx, NULL);
    rec_t rec = {0};
    ioloop_stream_set_close_callback(fx.stream, rec_close, &rec);
    assert_int_equal(ioloop_stream_read_until_close(fx.stream, rec_read, &rec), 0);
    assert_int_equal(write(fx.peer, "all of it", 9), 9);
    run_for(fx.loop, 20);
    assert_int_equal(rec.reads, 0);
    assert_int_equal(write(fx.peer, ", until the end", 15), 15);
    shutdown(fx.peer, SHUT_WR);
    assert_true(run_until(fx.loop, &rec.closes, 1, 5000));
    assert_int_equal(rec.reads, 1);
    assert_int_equal(rec.read_status, 0);
    assert_int_equal(rec.len, 24);
    assert_memory_equal(rec.data, "all of it, until the end", 24);
    assert_int_equal(rec.close_error, IOLOOP_EOF);
    run_for(fx.loop, 10);
    assert_int_equal(rec.closes, 1);
    fixture_close(&fx);
}

/* ---- one read at a time ---------------------------------------------------------- */

static void test_second_read_is_busy(void **state)
{
    (void)state;
    fixture_t fx;
    fixture_open(&fx, NULL);
    rec_t rec = {0};
    assert_int_equal(ioloop_stream_read_until(fx.stream, "\n", 1, 0, rec_read, &rec), 0);
    assert_int_equal(ioloop_stream_read_bytes(fx.stream, 1, false, rec_read, &rec), -EBUSY);
    assert_int_equal(ioloop_stream_read_until_close(fx.stream, rec_read, &rec), -EBUSY);
    assert_int_equal(ioloop_stream_read_until(fx.stream, "\n", 1, 0, rec_read, &rec), -EBUSY);
    assert_int_equal(ioloop_stream_read_start(fx.stream, NULL, NULL), -EINVAL);
    /* The first read still works. */
    assert_int_equal(write(fx.peer, "x\n", 2), 2);
    assert_true(run_until(fx.loop, &rec.reads, 1, 5000));
    assert_int_equal(rec.len, 2);
    /* And the callback was not inline: a read satisfiable from the buffer
     * at request time still comes later. */
    assert_int_equal(write(fx.peer, "y\nz\n", 4), 4);
    run_for(fx.loop, 10); /* nothing asked for: the bytes stay in the socket */
    assert_int_equal(ioloop_stream_read_until(fx.stream, "\n", 1, 0, rec_read, &rec), 0);
    assert_true(run_until(fx.loop, &rec.reads, 2, 5000));
    assert_int_equal(ioloop_stream_read_until(fx.stream, "\n", 1, 0, rec_read, &rec), 0);
    assert_int_equal(rec.reads, 2); /* "z\n" is buffered, yet not delivered inline */
    assert_true(run_until(fx.loop, &rec.reads, 3, 5000));
    assert_memory_equal(rec.data, "z\n", 2);
    fixture_close(&fx);
}

/* ---- input limits ------------------------------------------------------------------ */

static void test_max_buffer_size_ends_with_enobufs(void **state)
{
    (void)state;
    ioloop_stream_options_t opts = {.max_buffer_size = 64};
    fixture_t fx;
    fixture_open(&fx, &opts);
    rec_t rec = {0};
    ioloop_stream_set_close_callback(fx.stream, rec_close, &rec);
    assert_int_equal(ioloop_stream_read_until(fx.stream, "\n", 1, 0, rec_read, &rec), 0);
    char junk[100];
    memset(junk, 'j', sizeof(junk));
    assert_int_equal(write(fx.peer, junk, sizeof(junk)), (ssize_t)sizeof(junk));
    assert_true(run_until(fx.loop, &rec.closes, 1, 5000));
    assert_int_equal(rec.close_error, -ENOBUFS);
    assert_int_equal(rec.reads, 1); /* the pending read got the error and what was buffered */
    assert_int_equal(rec.read_status, -ENOBUFS);
    assert_int_equal(rec.len, 64);
    fixture_close(&fx);

    /* A read_bytes larger than the limit fails with the first byte. */
    fixture_open(&fx, &opts);
    rec = (rec_t){0};
    ioloop_stream_set_close_callback(fx.stream, rec_close, &rec);
    assert_int_equal(ioloop_stream_read_bytes(fx.stream, 65, false, rec_read, &rec), 0);
    assert_int_equal(write(fx.peer, "j", 1), 1);
    assert_true(run_until(fx.loop, &rec.closes, 1, 5000));
    assert_int_equal(rec.close_error, -ENOBUFS);
    assert_int_equal(rec.len, 1);
    fixture_close(&fx);
}

static void test_read_until_max_bytes_ends_with_emsgsize(void **state)
{
    (void)state;
    fixture_t fx;
    fixture_open(&fx, NULL);
    rec_t rec = {0};
    ioloop_stream_set_close_callback(fx.stream, rec_close, &rec);
    /* Within the limit first: delimiter at byte 8 of max 8. */
    assert_int_equal(ioloop_stream_read_until(fx.stream, "\n", 1, 8, rec_read, &rec), 0);
    assert_int_equal(write(fx.peer, "1234567\n", 8), 8);
    assert_true(run_until(fx.loop, &rec.reads, 1, 5000));
    assert_int_equal(rec.read_status, 0);
    /* Then past it: the delimiter would end at byte 17. */
    assert_int_equal(ioloop_stream_read_until(fx.stream, "\n", 1, 10, rec_read, &rec), 0);
    assert_int_equal(write(fx.peer, "0123456789abcdef\n", 17), 17);
    assert_true(run_until(fx.loop, &rec.closes, 1, 5000));
    assert_int_equal(rec.close_error, -EMSGSIZE);
    assert_int_equal(rec.read_status, -EMSGSIZE);
    fixture_close(&fx);

    /* No delimiter at all: past max_bytes it fails without waiting for more. */
    fixture_open(&fx, NULL);
    rec = (rec_t){0};
    ioloop_stream_set_close_callback(fx.stream, rec_close, &rec);
    assert_int_equal(ioloop_stream_read_until(fx.stream, "\r\n", 2, 10, rec_read, &rec), 0);
    assert_int_equal(write(fx.peer, "0123456789ab", 12), 12);
    assert_true(run_until(fx.loop, &rec.closes, 1, 5000));
    assert_int_equal(rec.close_error, -EMSGSIZE);
    fixture_close(&fx);
}

/* ---- write back-pressure -------------------------------------------------------------- */

typedef struct {
    int fd;
    size_t got;
    bool on;
} reader_t;

static void peer_reader_tick(ioloop_t *loop, void *arg)
{
    reader_t *r = arg;
    if (!r->on)
        return;
    r->got += drain_fd(r->fd, NULL, 0);
    ioloop_call_later(loop, IOLOOP_MSEC(1), peer_reader_tick, r, NULL);
}

static void test_write_back_pressure(void **state)
{
    (void)state;
    enum { MARK = 64 * 1024, CHUNK = 8 * 1024 };
    ioloop_stream_options_t opts = {.max_write_buffer_size = MARK};
    fixture_t fx;
    fixture_open(&fx, &opts);
    small_buffers(ioloop_stream_fd(fx.stream));
    small_buffers(fx.peer);
    rec_t rec = {0};
    ioloop_stream_set_drain_callback(fx.stream, rec_drain, &rec);
    static char chunk[CHUNK];
    memset(chunk, 'w', sizeof(chunk));
    size_t accepted = 0;
    int err;
    while ((err = ioloop_stream_write(fx.stream, chunk, sizeof(chunk), rec_done, &rec)) == 0)
        accepted += sizeof(chunk);
    assert_int_equal(err, -ENOBUFS);
    assert_false(ioloop_stream_writable(fx.stream));
    size_t queued = ioloop_stream_write_queue_size(fx.stream);
    assert_true(queued >= MARK && queued < MARK + CHUNK);
    assert_true(accepted < 2 * MARK); /* bounded: kernel buffers + the mark */

    /* A read is pending and the peer sends, but nothing is read while the
     * output is at the mark. */
    assert_int_equal(ioloop_stream_read_until(fx.stream, "\n", 1, 0, rec_read, &rec), 0);
    assert_int_equal(write(fx.peer, "ping\n", 5), 5);
    run_for(fx.loop, 50);
    assert_int_equal(rec.reads, 0);
    int unread = 0;
    assert_int_equal(ioctl(ioloop_stream_fd(fx.stream), FIONREAD, &unread), 0);
    assert_int_equal(unread, 5);
    assert_int_equal(ioloop_stream_write(fx.stream, "x", 1, NULL, NULL), -ENOBUFS);
    assert_int_equal(rec.drains, 0);

    /* The peer reads: the output drains, the drain callback runs, reading resumes. */
    reader_t reader = {.fd = fx.peer, .on = true};
    ioloop_call_later(fx.loop, 0, peer_reader_tick, &reader, NULL);
    assert_true(run_until(fx.loop, &rec.drains, 1, 10000));
    assert_int_equal(ioloop_stream_write_queue_size(fx.stream), 0);
    assert_true(ioloop_stream_writable(fx.stream));
    assert_true(run_until(fx.loop, &rec.reads, 1, 5000));
    assert_memory_equal(rec.data, "ping\n", 5);
    assert_int_equal(rec.dones, (int)(accepted / CHUNK));
    assert_int_equal(rec.done_errors, 0);
    reader.on = false;
    run_for(fx.loop, 5);
    assert_int_equal(reader.got + drain_fd(fx.peer, NULL, 0), accepted);
    assert_int_equal(rec.drains, 1);
    fixture_close(&fx);
}

/* ---- done and release exactly once ------------------------------------------------------ */

static void test_done_once_per_write(void **state)
{
    (void)state;
    fixture_t fx;
    fixture_open(&fx, NULL);
    rec_t rec = {0};
    for (int i = 0; i < 100; i++)
        assert_int_equal(ioloop_stream_write(fx.stream, "0123456789", 10, rec_done, &rec), 0);
    assert_int_equal(rec.dones, 0); /* never inline, even though the bytes went at once */
    struct iovec iov[3] = {{"a", 1}, {"bc", 2}, {"def", 3}};
    assert_int_equal(ioloop_stream_writev(fx.stream, iov, 3, rec_done, &rec), 0);
    assert_true(run_until(fx.loop, &rec.dones, 101, 5000));
    run_for(fx.loop, 10);
    assert_int_equal(rec.dones, 101);
    assert_int_equal(rec.done_errors, 0);
    char buf[2048];
    assert_int_equal(drain_fd(fx.peer, buf, sizeof(buf)), 1006);
    assert_memory_equal(buf + 1000, "abcdef", 6);
    fixture_close(&fx);
}

static void test_done_gets_error_when_closed_first(void **state)
{
    (void)state;
    ioloop_stream_options_t opts = {.max_write_buffer_size = 4 << 20};
    fixture_t fx;
    fixture_open(&fx, &opts);
    small_buffers(ioloop_stream_fd(fx.stream));
    rec_t rec = {0};
    ioloop_stream_set_close_callback(fx.stream, rec_close, &rec);
    static char big[1 << 20];
    assert_int_equal(ioloop_stream_write(fx.stream, "first", 5, rec_done, &rec), 0);
    assert_int_equal(ioloop_stream_write(fx.stream, big, sizeof(big), rec_done, &rec), 0);
    assert_int_equal(ioloop_stream_write(fx.stream, big, sizeof(big), rec_done, &rec), 0);
    run_for(fx.loop, 10);
    assert_int_equal(rec.dones, 1); /* "first" left; the rest waits for a peer that does not read */
    ioloop_stream_close(fx.stream);
    ioloop_stream_close(fx.stream); /* idempotent */
    assert_int_equal(rec.dones, 1);
    assert_int_equal(rec.closes, 0); /* later, not inline */
    assert_true(run_until(fx.loop, &rec.closes, 1, 5000));
    assert_int_equal(rec.dones, 3);
    assert_int_equal(rec.done_errors, 2);
    assert_int_equal(rec.last_done_status, -ECANCELED);
    assert_int_equal(rec.close_error, 0);
    fixture_close(&fx);
}

static void test_borrowed_release_once(void **state)
{
    (void)state;
    fixture_t fx;
    fixture_open(&fx, NULL);
    rec_t sent = {0}, unsent = {0}, refused = {0};
    static const char part[] = "borrowed";
    for (int i = 0; i < 3; i++)
        assert_int_equal(ioloop_stream_write_borrowed(fx.stream, part, 8, rec_release, &sent), 0);
    assert_int_equal(ioloop_stream_write_borrowed(fx.stream, part, 0, rec_release, &sent), 0);
    assert_int_equal(sent.releases, 0);
    assert_true(run_until(fx.loop, &sent.releases, 4, 5000));
    char buf[64];
    assert_int_equal(drain_fd(fx.peer, buf, sizeof(buf)), 24);

    /* Unsent when the stream closes: released then, once. */
    small_buffers(ioloop_stream_fd(fx.stream));
    static char big[1 << 20];
    assert_int_equal(ioloop_stream_write_borrowed(fx.stream, big, sizeof(big), rec_release, &unsent), 0);
    assert_int_equal(ioloop_stream_shutdown(fx.stream), 0);
    /* Refused (shut down): released too, later. */
    assert_int_equal(ioloop_stream_write_borrowed(fx.stream, part, 8, rec_release, &refused), -EPIPE);
    assert_int_equal(refused.releases, 0);
    assert_true(run_until(fx.loop, &refused.releases, 1, 5000));
    assert_int_equal(unsent.releases, 0);
    ioloop_stream_close(fx.stream);
    assert_true(run_until(fx.loop, &unsent.releases, 1, 5000));
    run_for(fx.loop, 10);
    assert_int_equal(sent.releases, 4);
    assert_int_equal(unsent.releases, 1);
    assert_int_equal(refused.releases, 1);
    fixture_close(&fx);
}

/* A borrowed write gets an entry from the loop's cache, which may still carry
 * the 16 KiB block of a copied write sent earlier: a copy queued after it
 * must not be appended into that block (it would send past the borrowed
 * buffer and lose the copy). */
static void test_copy_after_borrowed_gets_its_own_block(void **state)
{
    (void)state;
    fixture_t fx;
    fixture_open(&fx, NULL);
    rec_t rec = {0};
    ioloop_stream_cork(fx.stream);
    assert_int_equal(ioloop_stream_write(fx.stream, "warm", 4, rec_done, &rec), 0); /* a copied entry, queued */
    ioloop_stream_uncork(fx.stream);
    assert_true(run_until(fx.loop, &rec.dones, 1, 5000)); /* sent: its entry and block are cached */
    ioloop_stream_cork(fx.stream);
    static const char borrowed[] = "BB";
    assert_int_equal(ioloop_stream_write_borrowed(fx.stream, borrowed, 2, rec_release, &rec), 0);
    assert_int_equal(ioloop_stream_write(fx.stream, "cc", 2, rec_done, &rec), 0);
    assert_int_equal(ioloop_stream_write_queue_size(fx.stream), 4);
    ioloop_stream_uncork(fx.stream);
    assert_true(run_until(fx.loop, &rec.dones, 2, 5000));
    assert_true(run_until(fx.loop, &rec.releases, 1, 5000));
    char buf[16];
    assert_int_equal(drain_fd(fx.peer, buf, sizeof(buf)), 8);
    assert_memory_equal(buf, "warmBBcc", 8);
    fixture_close(&fx);
}

/* Sizes whose sum does not fit in ssize_t are refused (-EINVAL, as writev(2)
 * does), before a byte is sent or the stream suffers: a wrapped total would
 * run done callbacks before their bytes left, and an absurd length would send
 * whatever memory follows the buffer. */
static void test_write_sizes_that_overflow_are_einval(void **state)
{
    (void)state;
    fixture_t fx;
    fixture_open(&fx, NULL);
    rec_t rec = {0};
    static char small[4] = "abcd";
    struct iovec wrap[2] = {{small, SIZE_MAX / 2 + 1}, {small, SIZE_MAX / 2 + 1}}; /* sums to 0 */
    assert_int_equal(ioloop_stream_writev(fx.stream, wrap, 2, rec_done, &rec), -EINVAL);
    assert_int_equal(ioloop_stream_write(fx.stream, small, SIZE_MAX, rec_done, &rec), -EINVAL);
    assert_int_equal(ioloop_stream_write(fx.stream, small, (size_t)SSIZE_MAX + 1, rec_done, &rec), -EINVAL);
    assert_int_equal(ioloop_stream_write_borrowed(fx.stream, small, SIZE_MAX, rec_release, &rec), -EINVAL);
    run_for(fx.loop, 20);
    assert_false(ioloop_stream_closed(fx.stream));
    assert_int_equal(rec.dones + rec.releases, 0);
    assert_int_equal(ioloop_stream_write_queue_size(fx.stream), 0);
    char buf[16];
    assert_int_equal(drain_fd(fx.peer, buf, sizeof(buf)), 0);
    /* The stream goes on: a sane write still works. */
    assert_int_equal(ioloop_stream_write(fx.stream, small, 4, rec_done, &rec), 0);
    assert_true(run_until(fx.loop, &rec.dones, 1, 5000));
    assert_int_equal(rec.last_done_status, 0);
    assert_int_equal(drain_fd(fx.peer, buf, sizeof(buf)), 4);
    fixture_close(&fx);
}

/* A whole read_bytes beyond ssize_t can never be met: -EINVAL at once (with
 * max_buffer_size SIZE_MAX the buffer's doubling wrapped to 0 and the first
 * byte hung the loop). */
static void test_read_bytes_beyond_ssize_max_is_einval(void **state)
{
    (void)state;
    ioloop_stream_options_t opts = {.max_buffer_size = SIZE_MAX};
    fixture_t fx;
    fixture_open(&fx, &opts);
    rec_t rec = {0};
    assert_int_equal(ioloop_stream_read_bytes(fx.stream, SIZE_MAX, false, rec_read, &rec), -EINVAL);
    assert_int_equal(ioloop_stream_read_bytes(fx.stream, (size_t)SSIZE_MAX + 1, false, rec_read, &rec), -EINVAL);
    assert_int_equal(ioloop_stream_read_bytes(fx.stream, SIZE_MAX, true, rec_read, &rec), 0); /* whatever is there */
    assert_int_equal(write(fx.peer, "hi", 2), 2);
    assert_true(run_until(fx.loop, &rec.reads, 1, 5000));
    assert_int_equal(rec.len, 2);
    fixture_close(&fx);
}

/* A partial read_bytes takes whatever is there: a large n must not grow the
 * input towards max_buffer_size (100 MiB by default) before the first byte. */
static void test_partial_read_bytes_reads_in_blocks(void **state)
{
    (void)state;
    counting_t counts = {0};
    ioloop_stream_options_t opts = {.transport = &counting_transport, .transport_ctx = &counts};
    fixture_t fx;
    fixture_open(&fx, &opts);
    rec_t rec = {0};
    assert_int_equal(ioloop_stream_read_bytes(fx.stream, (size_t)64 << 20, true, rec_read, &rec), 0);
    assert_int_equal(write(fx.peer, "hello", 5), 5);
    assert_true(run_until(fx.loop, &rec.reads, 1, 5000));
    assert_int_equal(rec.read_status, 0);
    assert_int_equal(rec.len, 5);
    assert_true(counts.max_read_len > 0 && counts.max_read_len <= 65536);
    fixture_close(&fx);
}

/* ---- cork: N writes in one writev, through the transport only ------------------------------ */

static void test_cork_one_writev(void **state)
{
    (void)state;
    counting_t counts = {0};
    ioloop_stream_options_t opts = {.transport = &counting_transport, .transport_ctx = &counts};
    fixture_t fx;
    fixture_open(&fx, &opts);
    rec_t rec = {0};
    static char borrowed[3][4] = {"B0.", "B1.", "B2."};
    ioloop_stream_cork(fx.stream);
    ioloop_stream_cork(fx.stream); /* nested */
    for (int i = 0; i < 3; i++) {
        char msg[8];
        snprintf(msg, sizeof(msg), "c%d.", i);
        assert_int_equal(ioloop_stream_write(fx.stream, msg, 3, rec_done, &rec), 0);
        assert_int_equal(ioloop_stream_write_borrowed(fx.stream, borrowed[i], 3, rec_release, &rec), 0);
    }
    ioloop_stream_uncork(fx.stream);
    run_for(fx.loop, 10);
    assert_int_equal(counts.writevs, 0); /* still corked once */
    assert_int_equal(ioloop_stream_write_queue_size(fx.stream), 18);
    ioloop_stream_uncork(fx.stream);
    assert_true(run_until(fx.loop, &rec.releases, 3, 5000));
    assert_int_equal(counts.writevs, 1);
    assert_int_equal(counts.last_iovcnt, 6); /* copies coalesce per run; borrowed are their own */
    assert_int_equal(rec.dones, 3);
    char buf[64];
    assert_int_equal(drain_fd(fx.peer, buf, sizeof(buf)), 18);
    assert_memory_equal(buf, "c0.B0.c1.B1.c2.B2.", 18);
    fixture_close(&fx);
}

/* ---- the transport is the only I/O path -------------------------------------------------- */

/* A transport that flips bit 5 of every byte each way: had the stream used
 * recv/send itself anywhere, the peer (or the reader) would see unflipped bytes. */
typedef struct {
    int reads, writevs, shutdowns, destroys;
} flip_t;

static ssize_t flip_read(void *ctx, int fd, char *buf, size_t len)
{
    ((flip_t *)ctx)->reads++;
    ssize_t n = read(fd, buf, len);
    if (n < 0)
        return errno == EAGAIN ? -EAGAIN : -errno;
    for (ssize_t i = 0; i < n; i++)
        buf[i] ^= 0x20;
    return n;
}

static ssize_t flip_writev(void *ctx, int fd, const struct iovec *iov, int iovcnt)
{
    ((flip_t *)ctx)->writevs++;
    char out[4096];
    size_t len = 0;
    for (int i = 0; i < iovcnt && len < sizeof(out); i++)
        for (size_t k = 0; k < iov[i].iov_len && len < sizeof(out); k++)
            out[len++] = (char)(((const char *)iov[i].iov_base)[k] ^ 0x20);
    ssize_t n = send(fd, out, len, MSG_NOSIGNAL);
    return n < 0 ? (errno == EAGAIN ? -EAGAIN : -errno) : n;
}

static int flip_shutdown(void *ctx, int fd)
{
    ((flip_t *)ctx)->shutdowns++;
    return shutdown(fd, SHUT_WR) < 0 ? -errno : 0;
}

static void flip_destroy(void *ctx)
{
    ((flip_t *)ctx)->destroys++;
}

static const ioloop_stream_transport_t flip_transport = {
    .name = "flip",
    .read = flip_read,
    .writev = flip_writev,
    .shutdown = flip_shutdown,
    .destroy = flip_destroy,
};

static void test_transport_is_the_only_io_path(void **state)
{
    (void)state;
    flip_t flip = {0};
    ioloop_stream_options_t opts = {.transport = &flip_transport, .transport_ctx = &flip};
    fixture_t fx;
    fixture_open(&fx, &opts);
    rec_t rec = {0};
    assert_int_equal(ioloop_stream_read_until(fx.stream, "\n", 1, 0, rec_read, &rec), 0);
    assert_int_equal(write(fx.peer, "HELLO*", 6), 6); /* '*' ^ 0x20 == '\n' */
    assert_true(run_until(fx.loop, &rec.reads, 1, 5000));
    assert_memory_equal(rec.data, "hello\n", 6);
    assert_int_equal(ioloop_stream_write(fx.stream, "abc", 3, rec_done, &rec), 0);
    static const char borrowed[] = "def";
    assert_int_equal(ioloop_stream_write_borrowed(fx.stream, borrowed, 3, rec_release, &rec), 0);
    assert_int_equal(ioloop_stream_shutdown(fx.stream), 0);
    assert_true(run_until(fx.loop, &rec.releases, 1, 5000));
    char buf[16];
    assert_int_equal(drain_fd(fx.peer, buf, sizeof(buf)), 6);
    assert_memory_equal(buf, "ABCDEF", 6);
    assert_int_equal(flip.shutdowns, 1);
    assert_true(flip.reads >= 1 && flip.writevs >= 2);
    fixture_close(&fx);
    assert_int_equal(flip.destroys, 1);
}

/* A transport that needs to READ to write (TLS in a handshake or
 * renegotiation): its events() asks for READ in place of WRITE, and writev
 * says EAGAIN until `open`. The READ event must let the stream try writing
 * again; it must not be taken as "readable" only (the write would wait for a
 * WRITE event that was never asked for, while READ fires again and again). */
typedef struct {
    counting_t counts; /* first: the counting transport's read and shutdown take it */
    bool open;
} gate_t;

static ssize_t gate_writev(void *ctx, int fd, const struct iovec *iov, int iovcnt)
{
    gate_t *gate = ctx;
    if (!gate->open)
        return -EAGAIN;
    return counting_writev(&gate->counts, fd, iov, iovcnt);
}

static unsigned gate_events(void *ctx, unsigned wanted)
{
    (void)ctx;
    return wanted & IOLOOP_WRITE ? (wanted & ~IOLOOP_WRITE) | IOLOOP_READ : wanted;
}

static const ioloop_stream_transport_t gate_transport = {
    .name = "gate",
    .read = counting_read,
    .writev = gate_writev,
    .shutdown = counting_shutdown,
    .events = gate_events,
};

static void test_transport_events_remap_lets_writes_go(void **state)
{
    (void)state;
    gate_t gate = {0};
    ioloop_stream_options_t opts = {.transport = &gate_transport, .transport_ctx = &gate};
    fixture_t fx;
    fixture_open(&fx, &opts);
    rec_t rec = {0};
    assert_int_equal(ioloop_stream_write(fx.stream, "abc", 3, rec_done, &rec), 0);
    run_for(fx.loop, 10);
    assert_int_equal(rec.dones, 0);
    gate.open = true;                            /* as if the handshake went on */
    assert_int_equal(write(fx.peer, "x", 1), 1); /* the fd turns readable: the READ the transport asked for */
    assert_true(run_until(fx.loop, &rec.dones, 1, 3000));
    assert_int_equal(rec.last_done_status, 0);
    char buf[8];
    assert_int_equal(drain_fd(fx.peer, buf, sizeof(buf)), 3);
    assert_memory_equal(buf, "abc", 3);
    fixture_close(&fx);
}

/* ---- the consumer form: peek/consume, stop, pause/resume ------------------------------------ */

typedef struct {
    rec_t rec;
    size_t consume_each;
    bool stop_after_first;
    size_t seen_len;
} consumer_t;

static void consumer_cb(ioloop_stream_t *stream, int status, void *arg)
{
    consumer_t *c = arg;
    c->rec.consumer_calls++;
    c->rec.consumer_status = status;
    if (status)
        return;
    ioloop_stream_peek(stream, &c->seen_len);
    ioloop_stream_consume(stream, c->consume_each);
    if (c->stop_after_first)
        ioloop_stream_read_stop(stream);
}

static void test_consumer_peek_stable_while_stopped(void **state)
{
    (void)state;
    fixture_t fx;
    fixture_open(&fx, NULL);
    consumer_t c = {.consume_each = 2, .stop_after_first = true};
    assert_int_equal(ioloop_stream_read_start(fx.stream, consumer_cb, &c), 0);
    assert_int_equal(write(fx.peer, "abcdef", 6), 6);
    assert_true(run_until(fx.loop, &c.rec.consumer_calls, 1, 5000));
    assert_int_equal(c.seen_len, 6);
    size_t len;
    const char *p = ioloop_stream_peek(fx.stream, &len);
    assert_int_equal(len, 4);
    assert_memory_equal(p, "cdef", 4);
    /* Stopped: more bytes come, nothing is read, the view does not move. */
    assert_int_equal(write(fx.peer, "ghij", 4), 4);
    run_for(fx.loop, 30);
    size_t len2;
    const char *p2 = ioloop_stream_peek(fx.stream, &len2);
    assert_ptr_equal(p2, p);
    assert_int_equal(len2, 4);
    assert_int_equal(c.rec.consumer_calls, 1);
    ioloop_stream_consume(fx.stream, 100); /* clamped */
    assert_null(ioloop_stream_peek(fx.stream, &len2));
    assert_int_equal(len2, 0);
    /* Started again: it gets the bytes that waited in the socket. */
    c.stop_after_first = false;
    c.consume_each = 100;
    assert_int_equal(ioloop_stream_read_start(fx.stream, consumer_cb, &c), 0);
    assert_true(run_until(fx.loop, &c.rec.consumer_calls, 2, 5000));
    assert_int_equal(c.seen_len, 4);
    fixture_close(&fx);
    assert_int_equal(c.rec.consumer_calls, 3); /* and the end, once */
    assert_int_equal(c.rec.consumer_status, -ESHUTDOWN);
}

/* The same when the peer hangs up meanwhile (a socketpair reports the
 * hang-up at once): learning of its EOF must not compact or grow the input a
 * stopped consumer still looks at. */
static void test_consumer_peek_stable_across_hangup(void **state)
{
    (void)state;
    fixture_t fx;
    fixture_open(&fx, NULL);
    enum { TOTAL = 60000 }; /* most of a 64 KiB block: a recv after it compacts */
    static char sent[TOTAL + 10];
    for (size_t i = 0; i < sizeof(sent); i++)
        sent[i] = (char)(i % 251);
    consumer_t c = {.consume_each = 10, .stop_after_first = true};
    assert_int_equal(write(fx.peer, sent, TOTAL), TOTAL);
    assert_int_equal(ioloop_stream_read_start(fx.stream, consumer_cb, &c), 0);
    assert_true(run_until(fx.loop, &c.rec.consumer_calls, 1, 5000));
    size_t len;
    const char *p = ioloop_stream_peek(fx.stream, &len);
    assert_non_null(p);
    assert_memory_equal(p, sent + 10, len);
    assert_int_equal(write(fx.peer, sent + TOTAL, 10), 10);
    close(fx.peer);
    fx.peer = open("/dev/null", O_RDONLY); /* fixture_close closes it */
    run_for(fx.loop, 50);
    size_t len2;
    const char *p2 = ioloop_stream_peek(fx.stream, &len2);
    assert_ptr_equal(p2, p);
    assert_int_equal(len2, len);
    assert_memory_equal(p, sent + 10, len);
    assert_false(ioloop_stream_closed(fx.stream));
    /* Started again: it gets the rest, then the end. */
    c.stop_after_first = false;
    c.consume_each = TOTAL;
    ioloop_stream_set_close_callback(fx.stream, rec_close, &c.rec);
    assert_int_equal(ioloop_stream_read_start(fx.stream, consumer_cb, &c), 0);
    assert_true(run_until(fx.loop, &c.rec.closes, 1, 5000));
    assert_int_equal(c.rec.consumer_status, IOLOOP_EOF);
    assert_int_equal(c.rec.close_error, IOLOOP_EOF);
    fixture_close(&fx);
}

static void test_pause_resume(void **state)
{
    (void)state;
    fixture_t fx;
    fixture_open(&fx, NULL);
    consumer_t c = {.consume_each = 0}; /* leaves a "message" for later */
    assert_int_equal(ioloop_stream_read_start(fx.stream, consumer_cb, &c), 0);
    ioloop_stream_pause(fx.stream);
    ioloop_stream_pause(fx.stream); /* idempotent */
    assert_int_equal(write(fx.peer, "hello", 5), 5);
    run_for(fx.loop, 30);
    assert_int_equal(c.rec.consumer_calls, 0);
    int unread = 0;
    ioctl(ioloop_stream_fd(fx.stream), FIONREAD, &unread);
    assert_int_equal(unread, 5); /* not even read from the socket */
    /* A paused stream still writes. */
    assert_int_equal(ioloop_stream_write(fx.stream, "out", 3, NULL, NULL), 0);
    run_for(fx.loop, 5);
    char buf[8];
    assert_int_equal(drain_fd(fx.peer, buf, sizeof(buf)), 3);
    ioloop_stream_resume(fx.stream);
    assert_true(run_until(fx.loop, &c.rec.consumer_calls, 1, 5000));
    assert_int_equal(c.seen_len, 5);
    /* Paused with input left unconsumed; resume calls the consumer again
     * (the input may hold a whole message), with no new byte. */
    ioloop_stream_pause(fx.stream);
    run_for(fx.loop, 5);
    int before = c.rec.consumer_calls;
    ioloop_stream_resume(fx.stream);
    assert_true(run_until(fx.loop, &c.rec.consumer_calls, before + 1, 5000));
    assert_int_equal(c.seen_len, 5);
    fixture_close(&fx);
}

/* ---- -EPERM from another thread -------------------------------------------------------------- */

static void mark_running(ioloop_t *loop, void *arg)
{
    (void)loop;
    atomic_store((_Atomic bool *)arg, true);
}

static void test_eperm_from_another_thread(void **state)
{
    (void)state;
    fixture_t fx;
    fixture_open(&fx, NULL);
    rec_t rec = {0};
    ioloop_stream_set_close_callback(fx.stream, rec_close, &rec);
    _Atomic bool running = false;
    assert_int_equal(ioloop_add_callback(fx.loop, mark_running, &running), 0);
    pthread_t thread = tu_start_loop_thread(fx.loop);
    while (!atomic_load(&running)) /* the loop runs on its thread */
        tu_sleep_ms(1);
    assert_int_equal(ioloop_stream_write(fx.stream, "x", 1, NULL, NULL), -EPERM);
    assert_int_equal(ioloop_stream_read_until(fx.stream, "\n", 1, 0, rec_read, &rec), -EPERM);
    assert_int_equal(ioloop_stream_read_bytes(fx.stream, 1, false, rec_read, &rec), -EPERM);
    assert_int_equal(ioloop_stream_read_start(fx.stream, consumer_cb, &rec), -EPERM);
    assert_int_equal(ioloop_stream_shutdown(fx.stream), -EPERM);
    assert_int_equal(ioloop_stream_set_nodelay(fx.stream, true), -EPERM);
    assert_int_equal(ioloop_stream_write_borrowed(fx.stream, "b", 1, rec_release, &rec), -EPERM);
    assert_int_equal(rec.releases, 1); /* released on the caller's thread: nothing to defer to */
    ioloop_stream_close(fx.stream);    /* no effect */
    ioloop_stream_pause(fx.stream);    /* no effect */
    int fds[2];
    tu_socketpair(fds);
    ioloop_stream_t *other;
    assert_int_equal(ioloop_stream_new(fx.loop, fds[0], NULL, &other), -EPERM); /* and fds[0] is closed */
    close(fds[1]);
    tu_join_loop_thread(fx.loop, thread);
    assert_false(ioloop_stream_closed(fx.stream));
    assert_int_equal(rec.closes, 0);
    /* The loop is not running: any thread may act on it again. */
    assert_int_equal(ioloop_stream_write(fx.stream, "ok", 2, NULL, NULL), 0);
    char buf[4];
    assert_int_equal(drain_fd(fx.peer, buf, sizeof(buf)), 2);
    fixture_close(&fx);
    assert_int_equal(rec.closes, 1);
    assert_int_equal(rec.close_error, -ESHUTDOWN);
}

/* ---- nodelay and strerror ------------------------------------------------------------------------ */

static void test_nodelay_and_strerror(void **state)
{
    (void)state;
    fixture_t fx;
    fixture_open(&fx, NULL);
    assert_int_equal(ioloop_stream_set_nodelay(fx.stream, true), -ENOTSUP); /* a unix socket */
    fixture_close(&fx);
    int fds[2];
    tcp_pair(fds);
    ioloop_t *loop = tu_loop_new(NULL);
    ioloop_stream_t *stream;
    assert_int_equal(ioloop_stream_new(loop, fds[0], NULL, &stream), 0);
    assert_int_equal(ioloop_stream_set_nodelay(stream, true), 0);
    int on = 0;
    socklen_t len = sizeof(on);
    getsockopt(fds[0], IPPROTO_TCP, TCP_NODELAY, &on, &len);
    assert_int_equal(on, 1);
    assert_int_equal(ioloop_stream_set_nodelay(stream, false), 0);
    ioloop_close(loop, false);
    close(fds[1]);

    assert_string_equal(ioloop_strerror(IOLOOP_EOF), "end of stream");
    assert_string_equal(ioloop_strerror(IOLOOP_ENONAME), "name not found");
    assert_string_equal(ioloop_strerror(0), "success");
    assert_string_equal(ioloop_strerror(-ECONNREFUSED), strerror(ECONNREFUSED));
    assert_non_null(ioloop_strerror(-4000));
    assert_non_null(ioloop_strerror(12345));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_read_until_one_byte_writes),
        cmocka_unit_test(test_read_until_split_long_delimiter),
        cmocka_unit_test(test_read_bytes_whole_and_partial),
        cmocka_unit_test(test_read_until_close),
        cmocka_unit_test(test_second_read_is_busy),
        cmocka_unit_test(test_max_buffer_size_ends_with_enobufs),
        cmocka_unit_test(test_read_until_max_bytes_ends_with_emsgsize),
        cmocka_unit_test(test_write_back_pressure),
        cmocka_unit_test(test_done_once_per_write),
        cmocka_unit_test(test_done_gets_error_when_closed_first),
        cmocka_unit_test(test_borrowed_release_once),
        cmocka_unit_test(test_copy_after_borrowed_gets_its_own_block),
        cmocka_unit_test(test_write_sizes_that_overflow_are_einval),
        cmocka_unit_test(test_partial_read_bytes_reads_in_blocks),
        cmocka_unit_test(test_read_bytes_beyond_ssize_max_is_einval),
        cmocka_unit_test(test_cork_one_writev),
        cmocka_unit_test(test_transport_is_the_only_io_path),
        cmocka_unit_test(test_transport_events_remap_lets_writes_go),
        cmocka_unit_test(test_consumer_peek_stable_while_stopped),
        cmocka_unit_test(test_consumer_peek_stable_across_hangup),
        cmocka_unit_test(test_pause_resume),
        cmocka_unit_test(test_eperm_from_another_thread),
        cmocka_unit_test(test_nodelay_and_strerror),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
