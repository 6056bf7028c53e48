/* test_stream_file.c — ioloop_stream_write_file: the file's bytes arrive
 * identical and in order with the writes around them, over sendfile (the
 * socket transport) and over the staged fallback (a counting transport
 * double standing in for TLS: every byte goes through its writev, at most a
 * block at a time); a large file to a peer that does not read is paced (the
 * output counts it, writes are refused, nothing is read into memory); done
 * runs exactly once (0, a zero length, a close mid-file, a file shorter than
 * its range: -EIO); bad arguments.
 *
 * Threading rule: the loop runs on the test's main thread.
 */
#define _GNU_SOURCE
#include "test_stream_util.h"

#include <limits.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/stat.h>

typedef struct {
    ioloop_t *loop;
    ioloop_stream_t *stream;
    int peer;
    int file;
    size_t file_len;
    unsigned char *content;
} fixture_t;

/* A temporary file of len pseudo-random bytes (unlinked at once: the fd keeps it). */
static int temp_file(size_t len, unsigned char **content)
{
    char path[] = "/tmp/ioloop-stream-file-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    unlink(path);
    unsigned char *data = malloc(len ? len : 1);
    assert_non_null(data);
    uint32_t x = 2463534242u;
    for (size_t i = 0; i < len; i++) {
        x ^= x << 13, x ^= x >> 17, x ^= x << 5;
        data[i] = (unsigned char)x;
    }
    size_t off = 0;
    while (off < len) {
        ssize_t n = write(fd, data + off, len - off);
        assert_true(n > 0);
        off += (size_t)n;
    }
    *content = data;
    return fd;
}

/* TCP over loopback; with `unix_pair`, a socketpair whose buffers can be
 * made small (shrinking a connected TCP socket's buffers stalls it in
 * zero-window probes). */
static void fixture_open_pair(fixture_t *fx, size_t file_len, const ioloop_stream_options_t *opts, bool unix_pair)
{
    int fds[2];
    if (unix_pair) {
        tu_socketpair(fds);
        small_buffers(fds[0]);
        small_buffers(fds[1]);
    } else {
        tcp_pair(fds);
    }
    fx->loop = tu_loop_new(NULL);
    assert_non_null(fx->loop);
    assert_int_equal(ioloop_stream_new(fx->loop, fds[1], opts, &fx->stream), 0);
    fx->peer = fds[0];
    fx->file_len = file_len;
    fx->file = temp_file(file_len, &fx->content);
}

static void fixture_open(fixture_t *fx, size_t file_len, const ioloop_stream_options_t *opts)
{
    fixture_open_pair(fx, file_len, opts, false);
}

static void fixture_close(fixture_t *fx)
{
    assert_int_equal(ioloop_close(fx->loop, false), 0);
    if (fx->peer >= 0)
        close(fx->peer);
    close(fx->file);
    free(fx->content);
}

/* Reads from the peer every ms into a buffer until `want` bytes. */
typedef struct {
    int fd;
    char *buf;
    size_t cap, got;
    int done; /* 1 once got == cap */
    bool on;
} collector_t;

static void collect_tick(ioloop_t *loop, void *arg)
{
    collector_t *col = arg;
    if (!col->on)
        return;
    col->got += drain_fd(col->fd, col->buf + col->got, col->cap - col->got);
    if (col->got >= col->cap) {
        col->done = 1;
        return;
    }
    ioloop_call_later(loop, IOLOOP_MSEC(1), collect_tick, col, NULL);
}

/* "HEAD" + file[offset, offset+len) + "TAIL": checks every byte. */
static void check_framed(fixture_t *fx, size_t offset, size_t len, rec_t *rec)
{
    assert_int_equal(ioloop_stream_write(fx->stream, "HEAD", 4, rec_done, rec), 0);
    assert_int_equal(ioloop_stream_write_file(fx->stream, fx->file, (off_t)offset, len, rec_done, rec), 0);
    assert_int_equal(ioloop_stream_write(fx->stream, "TAIL", 4, rec_done, rec), 0);
    collector_t col = {.fd = fx->peer, .cap = len + 8, .on = true};
    col.buf = malloc(col.cap);
    assert_non_null(col.buf);
    ioloop_call_later(fx->loop, 0, collect_tick, &col, NULL);
    assert_true(run_until(fx->loop, &col.done, 1, 20000));
    assert_true(run_until(fx->loop, &rec->dones, 3, 5000));
    assert_memory_equal(col.buf, "HEAD", 4);
    assert_memory_equal(col.buf + 4, fx->content + offset, len);
    assert_memory_equal(col.buf + 4 + len, "TAIL", 4);
    assert_int_equal(rec->dones, 3);
    assert_int_equal(rec->done_errors, 0);
    assert_int_equal(ioloop_stream_write_queue_size(fx->stream), 0);
    free(col.buf);
}

static void test_sendfile_bytes_identical_in_order(void **state)
{
    (void)state;
    fixture_t fx;
    fixture_open(&fx, 3 * 1024 * 1024 + 17, NULL);
    rec_t rec = {0};
    check_framed(&fx, 101, fx.file_len - 101, &rec);
    fixture_close(&fx);
}

/* With another transport every byte goes through its writev: at most one
 * 16 KiB block per call (the staged block), and the bytes are identical. */
typedef struct {
    counting_t count;
    size_t max_iov;
} big_count_t;

static ssize_t max_writev(void *ctx, int fd, const struct iovec *iov, int iovcnt)
{
    big_count_t *bc = ctx;
    for (int i = 0; i < iovcnt; i++)
        if (iov[i].iov_len > bc->max_iov)
            bc->max_iov = iov[i].iov_len;
    return counting_writev(&bc->count, fd, iov, iovcnt);
}

static const ioloop_stream_transport_t staged_transport = {
    .name = "double",
    .read = counting_read,
    .writev = max_writev,
    .shutdown = counting_shutdown,
};

static void test_other_transport_stages_through_writev(void **state)
{
    (void)state;
    big_count_t bc = {0};
    ioloop_stream_options_t opts = {.transport = &staged_transport, .transport_ctx = &bc};
    fixture_t fx;
    fixture_open(&fx, 1024 * 1024 + 3, &opts);
    rec_t rec = {0};
    check_framed(&fx, 5, fx.file_len - 5, &rec);
    assert_int_equal(bc.count.bytes_written, fx.file_len - 5 + 8);
    assert_true(bc.max_iov <= 16384);
    assert_true(bc.count.writevs >= (int)((fx.file_len - 5) / 16384));
    fixture_close(&fx);
}

/* A peer that does not read: the file counts in the output (refusing more
 * writes at the mark), nothing of it is in memory, and once the peer reads,
 * it all arrives and done runs once. */
static void test_paced_by_output_limit(void **state)
{
    (void)state;
    big_count_t bc = {0};
    ioloop_stream_options_t opts = {
        .max_write_buffer_size = 64 * 1024, .transport = &staged_transport, .transport_ctx = &bc};
    fixture_t fx;
    fixture_open_pair(&fx, 2 * 1024 * 1024, &opts, true); /* small buffers: slow, more is only slower */
    rec_t rec = {0};
    ioloop_stream_set_drain_callback(fx.stream, rec_drain, &rec);
    assert_int_equal(ioloop_stream_write_file(fx.stream, fx.file, 0, fx.file_len, rec_done, &rec), 0);
    run_for(fx.loop, 50);
    size_t queued = ioloop_stream_write_queue_size(fx.stream);
    assert_true(queued > fx.file_len - 512 * 1024); /* the kernel took at most its (small) buffers */
    assert_false(ioloop_stream_writable(fx.stream));
    assert_int_equal(ioloop_stream_write(fx.stream, "x", 1, NULL, NULL), -ENOBUFS);
    assert_int_equal(ioloop_stream_write_file(fx.stream, fx.file, 0, 1, NULL, NULL), -ENOBUFS);
    assert_int_equal(rec.dones, 0);
    /* the transport saw only what the socket took, a block at a time */
    assert_true(bc.count.bytes_written <= fx.file_len - queued + 16384);
    assert_true(bc.max_iov <= 16384);

    collector_t col = {.fd = fx.peer, .cap = fx.file_len, .on = true};
    col.buf = malloc(col.cap);
    assert_non_null(col.buf);
    ioloop_call_later(fx.loop, 0, collect_tick, &col, NULL);
    assert_true(run_until(fx.loop, &col.done, 1, 20000));
    assert_true(run_until(fx.loop, &rec.drains, 1, 5000));
    assert_memory_equal(col.buf, fx.content, fx.file_len);
    assert_int_equal(rec.dones, 1);
    assert_int_equal(rec.done_errors, 0);
    free(col.buf);
    fixture_close(&fx);
}

/* Sendfile on a peer that does not read: the same pacing. */
static void test_sendfile_paced(void **state)
{
    (void)state;
    ioloop_stream_options_t opts = {.max_write_buffer_size = 64 * 1024};
    fixture_t fx;
    fixture_open_pair(&fx, 2 * 1024 * 1024, &opts, true);
    rec_t rec = {0};
    assert_int_equal(ioloop_stream_write_file(fx.stream, fx.file, 0, fx.file_len, rec_done, &rec), 0);
    run_for(fx.loop, 50);
    assert_true(ioloop_stream_write_queue_size(fx.stream) > fx.file_len - 512 * 1024);
    assert_false(ioloop_stream_writable(fx.stream));
    assert_int_equal(rec.dones, 0);
    collector_t col = {.fd = fx.peer, .cap = fx.file_len, .on = true};
    col.buf = malloc(col.cap);
    assert_non_null(col.buf);
    ioloop_call_later(fx.loop, 0, collect_tick, &col, NULL);
    assert_true(run_until(fx.loop, &col.done, 1, 20000));
    assert_true(run_until(fx.loop, &rec.dones, 1, 5000));
    assert_memory_equal(col.buf, fx.content, fx.file_len);
    assert_int_equal(rec.done_errors, 0);
    free(col.buf);
    fixture_close(&fx);
}

/* A copy written after a file entry never lands in the file entry's block
 * (a cached entry keeps its 16 KiB block): it goes out after the file. */
static void test_write_after_file_gets_own_block(void **state)
{
    (void)state;
    fixture_t fx;
    fixture_open(&fx, 100, NULL);
    rec_t rec = {0};
    ioloop_stream_cork(fx.stream); /* queued, so copied into a block entry... */
    assert_int_equal(ioloop_stream_write(fx.stream, "warm", 4, rec_done, &rec), 0);
    ioloop_stream_uncork(fx.stream);
    assert_true(run_until(fx.loop, &rec.dones, 1, 5000)); /* ...which went back to the cache with its block */
    ioloop_stream_cork(fx.stream);
    assert_int_equal(ioloop_stream_write_file(fx.stream, fx.file, 0, 100, rec_done, &rec), 0);
    assert_int_equal(ioloop_stream_write(fx.stream, "TAIL", 4, rec_done, &rec), 0);
    ioloop_stream_uncork(fx.stream);
    assert_true(run_until(fx.loop, &rec.dones, 3, 5000));
    char buf[256];
    size_t got = 0;
    for (int i = 0; i < 1000 && got < 108; i++) {
        got += drain_fd(fx.peer, buf + got, sizeof(buf) - got);
        if (got < 108)
            run_for(fx.loop, 1);
    }
    assert_int_equal(got, 108);
    assert_memory_equal(buf, "warm", 4);
    assert_memory_equal(buf + 4, fx.content, 100);
    assert_memory_equal(buf + 104, "TAIL", 4);
    fixture_close(&fx);
}

static void test_zero_length_done_once(void **state)
{
    (void)state;
    fixture_t fx;
    fixture_open(&fx, 10, NULL);
    rec_t rec = {0};
    assert_int_equal(ioloop_stream_write_file(fx.stream, fx.file, 3, 0, rec_done, &rec), 0);
    assert_int_equal(rec.dones, 0); /* never inline */
    assert_true(run_until(fx.loop, &rec.dones, 1, 5000));
    run_for(fx.loop, 10);
    assert_int_equal(rec.dones, 1);
    assert_int_equal(rec.last_done_status, 0);
    fixture_close(&fx);
}

/* The peer goes away mid-file: the stream ends, done runs once with the
 * error, and no SIGPIPE kills the process (sendfile has no MSG_NOSIGNAL). */
static void test_peer_closes_mid_file(void **state)
{
    (void)state;
    fixture_t fx;
    fixture_open(&fx, 8 * 1024 * 1024, NULL);
    small_buffers(ioloop_stream_fd(fx.stream));
    rec_t rec = {0};
    ioloop_stream_set_close_callback(fx.stream, rec_close, &rec);
    assert_int_equal(ioloop_stream_write_file(fx.stream, fx.file, 0, fx.file_len, rec_done, &rec), 0);
    run_for(fx.loop, 20);
    char buf[4096];
    assert_true(read(fx.peer, buf, sizeof(buf)) > 0);
    struct linger lin = {.l_onoff = 1, .l_linger = 0};
    setsockopt(fx.peer, SOL_SOCKET, SO_LINGER, &lin, sizeof(lin)); /* RST: the next sendfile fails */
    close(fx.peer);
    fx.peer = -1;
    assert_true(run_until(fx.loop, &rec.closes, 1, 10000));
    assert_int_equal(rec.dones, 1);
    assert_true(rec.last_done_status < 0);
    assert_true(rec.close_error < 0);
    assert_true(fcntl(fx.file, F_GETFD) >= 0); /* borrowed: still the caller's */
    fixture_close(&fx);
}

/* The same over a unix socket, where the write after the peer's close is
 * EPIPE at once: without SIGPIPE blocked around sendfile the process dies. */
static void test_peer_closes_mid_file_epipe(void **state)
{
    (void)state;
    ioloop_stream_options_t opts = {.max_write_buffer_size = 64 * 1024};
    fixture_t fx;
    fixture_open_pair(&fx, 8 * 1024 * 1024, &opts, true);
    rec_t rec = {0};
    ioloop_stream_set_close_callback(fx.stream, rec_close, &rec);
    assert_int_equal(ioloop_stream_write_file(fx.stream, fx.file, 0, fx.file_len, rec_done, &rec), 0);
    run_for(fx.loop, 10);
    char buf[4096];
    assert_true(read(fx.peer, buf, sizeof(buf)) > 0);
    close(fx.peer);
    fx.peer = -1;
    assert_true(run_until(fx.loop, &rec.closes, 1, 10000));
    assert_int_equal(rec.close_error, -EPIPE);
    assert_int_equal(rec.dones, 1);
    assert_int_equal(rec.last_done_status, -EPIPE);
    sigset_t pending;
    assert_int_equal(sigpending(&pending), 0);
    assert_false(sigismember(&pending, SIGPIPE)); /* taken back, not left pending */
    fixture_close(&fx);
}

/* ioloop_stream_close with the file queued: done gets -ECANCELED once. */
static void test_local_close_mid_file(void **state)
{
    (void)state;
    big_count_t bc = {0};
    ioloop_stream_options_t opts = {.transport = &staged_transport, .transport_ctx = &bc};
    fixture_t fx;
    fixture_open(&fx, 4 * 1024 * 1024, &opts);
    small_buffers(ioloop_stream_fd(fx.stream));
    rec_t rec = {0};
    ioloop_stream_set_close_callback(fx.stream, rec_close, &rec);
    assert_int_equal(ioloop_stream_write_file(fx.stream, fx.file, 0, fx.file_len, rec_done, &rec), 0);
    run_for(fx.loop, 10);
    ioloop_stream_close(fx.stream);
    assert_true(run_until(fx.loop, &rec.closes, 1, 5000));
    run_for(fx.loop, 5);
    assert_int_equal(rec.dones, 1);
    assert_int_equal(rec.last_done_status, -ECANCELED);
    fixture_close(&fx);
}

/* A range past the end of the file (it shrank): the stream ends with -EIO
 * rather than spin or send short framing; on both paths. */
static void short_file_case(const ioloop_stream_options_t *opts)
{
    fixture_t fx;
    fixture_open(&fx, 1000, opts);
    rec_t rec = {0};
    ioloop_stream_set_close_callback(fx.stream, rec_close, &rec);
    assert_int_equal(ioloop_stream_write_file(fx.stream, fx.file, 0, 5000, rec_done, &rec), 0);
    assert_true(run_until(fx.loop, &rec.closes, 1, 5000));
    assert_int_equal(rec.close_error, -EIO);
    assert_int_equal(rec.dones, 1);
    assert_int_equal(rec.last_done_status, -EIO);
    char buf[2000];
    run_for(fx.loop, 5);
    assert_int_equal(drain_fd(fx.peer, buf, sizeof(buf)), 1000);
    assert_memory_equal(buf, fx.content, 1000);
    fixture_close(&fx);
}

static void test_file_shorter_than_range_is_eio(void **state)
{
    (void)state;
    short_file_case(NULL);
    big_count_t bc = {0};
    ioloop_stream_options_t opts = {.transport = &staged_transport, .transport_ctx = &bc};
    short_file_case(&opts);
}

static void test_bad_arguments(void **state)
{
    (void)state;
    fixture_t fx;
    fixture_open(&fx, 10, NULL);
    assert_int_equal(ioloop_stream_write_file(fx.stream, -1, 0, 1, NULL, NULL), -EBADF);
    assert_int_equal(ioloop_stream_write_file(fx.stream, fx.file, -1, 1, NULL, NULL), -EINVAL);
    assert_int_equal(ioloop_stream_write_file(fx.stream, fx.file, 0, (size_t)SSIZE_MAX + 1, NULL, NULL), -EINVAL);
    assert_int_equal(ioloop_stream_write_file(fx.stream, fx.file, INT64_MAX, 2, NULL, NULL), -EINVAL);
    assert_int_equal(ioloop_stream_shutdown(fx.stream), 0);
    assert_int_equal(ioloop_stream_write_file(fx.stream, fx.file, 0, 1, NULL, NULL), -EPIPE);
    fixture_close(&fx);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sendfile_bytes_identical_in_order),
        cmocka_unit_test(test_other_transport_stages_through_writev),
        cmocka_unit_test(test_paced_by_output_limit),
        cmocka_unit_test(test_sendfile_paced),
        cmocka_unit_test(test_write_after_file_gets_own_block),
        cmocka_unit_test(test_zero_length_done_once),
        cmocka_unit_test(test_peer_closes_mid_file),
        cmocka_unit_test(test_peer_closes_mid_file_epipe),
        cmocka_unit_test(test_local_close_mid_file),
        cmocka_unit_test(test_file_shorter_than_range_is_eio),
        cmocka_unit_test(test_bad_arguments),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
