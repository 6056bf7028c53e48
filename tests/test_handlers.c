/* test_handlers.c — add/update/remove_handler: duplicate, unknown, huge and
 * not-open fds, event filtering, stale events in a batch (also with fd
 * reuse), an fd closed without remove_handler (its number reused, or left to
 * the poller), handlers changed from another thread, a closed loop,
 * close(all_fds), and the error hook.
 *
 * Threading rule: cmocka asserts run on the main thread only; helper threads
 * record what they saw and the main thread checks it after joining them. */
#define _GNU_SOURCE
#include "test_util.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

static int never_called(ioloop_t *loop, int fd, unsigned events, void *arg)
{
    (void)loop, (void)fd, (void)events;
    (*(int *)arg)++;
    return 0;
}

static void fill(int fd)
{
    assert_int_equal(write(fd, "x", 1), 1);
}

/* ---- 5. add twice fails; remove unknown is a no-op ------------------------ */

static void test_add_twice_fails_remove_unknown_is_noop(void **state)
{
    (void)state;
    ioloop_t *loop = tu_loop_new(NULL);
    int s[2], calls = 0;
    tu_socketpair(s);
    assert_int_equal(ioloop_add_handler(loop, s[0], IOLOOP_READ, never_called, &calls), 0);
    assert_int_equal(ioloop_add_handler(loop, s[0], IOLOOP_WRITE, never_called, &calls), -EEXIST);
    assert_int_equal(ioloop_remove_handler(loop, s[1]), -ENOENT);   /* never added */
    assert_int_equal(ioloop_remove_handler(loop, 100000), -ENOENT); /* beyond the table */
    assert_int_equal(ioloop_remove_handler(loop, s[0]), 0);
    assert_int_equal(ioloop_remove_handler(loop, s[0]), -ENOENT); /* twice: nothing left to remove */
    assert_int_equal(ioloop_update_handler(loop, s[0], IOLOOP_READ), -ENOENT);
    assert_int_equal(ioloop_add_handler(loop, -1, IOLOOP_READ, never_called, &calls), -EBADF);
    assert_int_equal(ioloop_add_handler(loop, s[0], 0x1000, never_called, &calls), -EINVAL);
    /* after removal the fd can be added again */
    assert_int_equal(ioloop_add_handler(loop, s[0], IOLOOP_READ, never_called, &calls), 0);
    ioloop_close(loop, true);
    close(s[1]);
}

/* ---- 6. a READ-only handler on a writable socket only ever sees READ ------ */

typedef struct {
    int calls;
    unsigned seen;
    int fd;
} events_probe_t;

static int record_events(ioloop_t *loop, int fd, unsigned events, void *arg)
{
    events_probe_t *p = arg;
    p->calls++;
    p->seen |= events;
    char buf[16];
    (void)!read(fd, buf, sizeof(buf));
    if (p->calls == 3)
        ioloop_stop(loop);
    else
        fill(p->fd); /* readable again next iteration */
    return 0;
}

static void test_read_only_handler_sees_only_read(void **state)
{
    (void)state;
    ioloop_t *loop = tu_loop_new(NULL);
    int s[2];
    tu_socketpair(s); /* s[0] is writable the whole time */
    events_probe_t p = {.fd = s[1]};
    fill(s[1]);
    assert_int_equal(ioloop_add_handler(loop, s[0], IOLOOP_READ, record_events, &p), 0);
    tu_stop_after(loop, 5000);
    ioloop_start(loop);
    assert_int_equal(p.calls, 3);
    assert_int_equal(p.seen, IOLOOP_READ);
    ioloop_close(loop, true);
    close(s[1]);
}

/* WRITE-only gets WRITE; update_handler switches it to READ. */
static int write_then_read(ioloop_t *loop, int fd, unsigned events, void *arg)
{
    events_probe_t *p = arg;
    p->calls++;
    if (p->calls == 1) {
        assert_int_equal(events, IOLOOP_WRITE);
        assert_int_equal(ioloop_update_handler(loop, fd, IOLOOP_READ), 0);
        fill(p->fd);
    } else {
        assert_int_equal(events, IOLOOP_READ);
        ioloop_stop(loop);
    }
    return 0;
}

static void test_update_handler_changes_events(void **state)
{
    (void)state;
    ioloop_t *loop = tu_loop_new(NULL);
    int s[2];
    tu_socketpair(s);
    events_probe_t p = {.fd = s[1]};
    assert_int_equal(ioloop_add_handler(loop, s[0], IOLOOP_WRITE, write_then_read, &p), 0);
    tu_stop_after(loop, 5000);
    ioloop_start(loop);
    assert_int_equal(p.calls, 2);
    ioloop_close(loop, true);
    close(s[1]);
}

/* A peer that hangs up is reported as ERROR even to a handler that asked for
 * WRITE only (ERROR is always delivered). */
static int expect_error(ioloop_t *loop, int fd, unsigned events, void *arg)
{
    (void)fd;
    *(unsigned *)arg |= events;
    if (events & IOLOOP_ERROR)
        ioloop_stop(loop);
    return 0;
}

static void test_error_always_delivered(void **state)
{
    (void)state;
    ioloop_t *loop = tu_loop_new(NULL);
    int s[2];
    tu_socketpair(s);
    unsigned seen = 0;
    /* Fill the send buffer so WRITE is not ready, then hang up the peer. */
    char block[4096];
    memset(block, 'x', sizeof(block));
    while (write(s[0], block, sizeof(block)) > 0)
        continue;
    close(s[1]);
    assert_int_equal(ioloop_add_handler(loop, s[0], IOLOOP_WRITE, expect_error, &seen), 0);
    tu_stop_after(loop, 5000);
    ioloop_start(loop);
    assert_true(seen & IOLOOP_ERROR);
    ioloop_close(loop, true);
}

/* ---- 7. stale events in one batch ----------------------------------------- */

typedef struct {
    int fds[2];        /* the two watched fds */
    int calls[2];      /* per original handler */
    int reused_calls;  /* the handler registered on the reused fd number */
    bool reuse;        /* close the victim and reuse its number */
    int keep_peer[2];  /* peers, to close at the end */
    int reused_peer;
} batch_t;

static int reused_handler(ioloop_t *loop, int fd, unsigned events, void *arg)
{
    (void)loop, (void)fd, (void)events;
    ((batch_t *)arg)->reused_calls++;
    return 0;
}

static int kill_the_other(ioloop_t *loop, int fd, unsigned events, void *arg)
{
    (void)events;
    batch_t *b = arg;
    int me = fd == b->fds[0] ? 0 : 1, other = 1 - me;
    b->calls[me]++;
    if (b->calls[0] + b->calls[1] > 1)
        return 0;
    assert_int_equal(ioloop_remove_handler(loop, b->fds[other]), 0);
    assert_int_equal(ioloop_remove_handler(loop, fd), 0);
    if (b->reuse) {
        /* Close the victim and put a fresh socket under the same number. */
        int victim = b->fds[other];
        close(victim);
        int n[2];
        tu_socketpair(n); /* the lowest free number: usually the victim's */
        if (n[0] != victim) {
            assert_int_equal(dup3(n[0], victim, O_CLOEXEC), victim);
            close(n[0]);
        }
        b->reused_peer = n[1]; /* never written: the new socket is never readable */
        assert_int_equal(ioloop_add_handler(loop, victim, IOLOOP_READ, reused_handler, b), 0);
    }
    return 0;
}

static void run_batch_case(bool reuse)
{
    ioloop_t *loop = tu_loop_new(NULL);
    batch_t b = {.reuse = reuse, .reused_peer = -1};
    int a[2], c[2];
    tu_socketpair(a);
    tu_socketpair(c);
    b.fds[0] = a[0];
    b.fds[1] = c[0];
    b.keep_peer[0] = a[1];
    b.keep_peer[1] = c[1];
    /* Both readable before the loop starts: one poll returns both. */
    fill(a[1]);
    fill(c[1]);
    assert_int_equal(ioloop_add_handler(loop, a[0], IOLOOP_READ, kill_the_other, &b), 0);
    assert_int_equal(ioloop_add_handler(loop, c[0], IOLOOP_READ, kill_the_other, &b), 0);
    tu_stop_after(loop, 100);
    ioloop_start(loop);
    assert_int_equal(b.calls[0] + b.calls[1], 1);
    assert_int_equal(b.reused_calls, 0);
    ioloop_close(loop, true);
    close(a[0]);
    close(c[0]);
    close(a[1]);
    close(c[1]);
    if (b.reused_peer >= 0)
        close(b.reused_peer);
}

static void test_removed_in_batch_is_never_called(void **state)
{
    (void)state;
    run_batch_case(false);
}

static void test_removed_and_fd_reused_in_batch(void **state)
{
    (void)state;
    run_batch_case(true);
}

/* ---- handlers changed from another thread while the loop sleeps ----------- */

typedef struct {
    ioloop_t *loop;
    int s[2];
    _Atomic int calls;
} foreign_t;

static int foreign_readable(ioloop_t *loop, int fd, unsigned events, void *arg)
{
    (void)events;
    foreign_t *f = arg;
    char buf[8];
    (void)!read(fd, buf, sizeof(buf));
    atomic_fetch_add(&f->calls, 1);
    ioloop_stop(loop);
    return 0;
}

static void test_add_handler_from_other_thread_while_sleeping(void **state)
{
    (void)state;
    foreign_t f = {.loop = tu_loop_new(NULL)};
    tu_socketpair(f.s);
    fill(f.s[1]);
    pthread_t t = tu_start_loop_thread(f.loop);
    tu_sleep_ms(50); /* the loop sleeps in poll with nothing to do */
    int64_t t0 = tu_now_ns();
    assert_int_equal(ioloop_add_handler(f.loop, f.s[0], IOLOOP_READ, foreign_readable, &f), 0);
    pthread_join(t, NULL); /* the handler stops the loop */
    assert_true(tu_now_ns() - t0 < IOLOOP_SEC(5));
    assert_int_equal(atomic_load(&f.calls), 1);
    ioloop_close(f.loop, true);
    close(f.s[1]);
}

/* Add/remove churn from another thread while the loop dispatches the same fds:
 * under ASan this is the use-after-free check for the RCU table. */
typedef struct {
    ioloop_t *loop;
    int fds[8], peers[8];
    _Atomic bool done;
    _Atomic long dispatched;
} churn_t;

static int churn_readable(ioloop_t *loop, int fd, unsigned events, void *arg)
{
    (void)loop, (void)fd, (void)events;
    atomic_fetch_add(&((churn_t *)arg)->dispatched, 1);
    return 0; /* leave the byte: stays readable */
}

static void *churn_handlers(void *arg)
{
    churn_t *c = arg;
    for (int round = 0; round < 3000; round++) {
        int i = round % 8;
        ioloop_add_handler(c->loop, c->fds[i], IOLOOP_READ, churn_readable, c);
        if (round % 3 == 0)
            ioloop_update_handler(c->loop, c->fds[i], IOLOOP_READ | IOLOOP_WRITE);
        if (round % 500 == 0) {
            /* Now and then leave it registered until the loop dispatched it
             * (bounded), so the loop surely dispatches during the churn. */
            long before = atomic_load(&c->dispatched);
            for (int wait = 0; wait < 5000 && atomic_load(&c->dispatched) == before; wait++)
                tu_sleep_ms(1);
        }
        ioloop_remove_handler(c->loop, c->fds[i]);
    }
    atomic_store(&c->done, true);
    return NULL;
}

static void test_handler_churn_from_other_thread(void **state)
{
    (void)state;
    churn_t c = {.loop = tu_loop_new(NULL)};
    for (int i = 0; i < 8; i++) {
        int s[2];
        tu_socketpair(s);
        c.fds[i] = s[0];
        c.peers[i] = s[1];
        fill(s[1]);
    }
    pthread_t loop_thread = tu_start_loop_thread(c.loop);
    pthread_t churner;
    pthread_create(&churner, NULL, churn_handlers, &c);
    pthread_join(churner, NULL);
    tu_join_loop_thread(c.loop, loop_thread);
    assert_true(atomic_load(&c.done));
    assert_true(atomic_load(&c.dispatched) >= 6); /* each held registration was dispatched */
    ioloop_close(c.loop, false);
    for (int i = 0; i < 8; i++) {
        close(c.fds[i]);
        close(c.peers[i]);
    }
}

/* ---- 14. close(all_fds) closes the registered fds ------------------------- */

static void test_close_all_fds(void **state)
{
    (void)state;
    int calls = 0;
    int s[2], t[2];
    tu_socketpair(s);
    tu_socketpair(t);
    ioloop_t *loop = tu_loop_new(NULL);
    assert_int_equal(ioloop_add_handler(loop, s[0], IOLOOP_READ, never_called, &calls), 0);
    assert_int_equal(ioloop_add_handler(loop, s[1], IOLOOP_READ, never_called, &calls), 0);
    assert_int_equal(ioloop_close(loop, true), 0);
    assert_int_equal(fcntl(s[0], F_GETFD), -1);
    assert_int_equal(errno, EBADF);
    assert_int_equal(fcntl(s[1], F_GETFD), -1);

    loop = tu_loop_new(NULL);
    assert_int_equal(ioloop_add_handler(loop, t[0], IOLOOP_READ, never_called, &calls), 0);
    assert_int_equal(ioloop_close(loop, false), 0);
    assert_true(fcntl(t[0], F_GETFD) >= 0); /* left open without all_fds */
    close(t[0]);
    close(t[1]);
    assert_int_equal(calls, 0);
}

/* ---- 15. a handler's error reaches the hook; the loop keeps running ------- */

typedef struct {
    int hook_calls;
    int last_err;
    char what[64];
    bool later_ran;
} hook_probe_t;

static void error_hook(ioloop_t *loop, const char *what, int err, void *arg)
{
    (void)loop;
    hook_probe_t *p = arg;
    p->hook_calls++;
    p->last_err = err;
    snprintf(p->what, sizeof(p->what), "%s", what);
}

static int failing_handler(ioloop_t *loop, int fd, unsigned events, void *arg)
{
    (void)events, (void)arg;
    char buf[8];
    (void)!read(fd, buf, sizeof(buf));
    ioloop_remove_handler(loop, fd);
    return -EIO;
}

static int peer_reset_handler(ioloop_t *loop, int fd, unsigned events, void *arg)
{
    (void)events, (void)arg;
    ioloop_remove_handler(loop, fd);
    return -ECONNRESET; /* a normal close, not an error */
}

static void later(ioloop_t *loop, void *arg)
{
    ((hook_probe_t *)arg)->later_ran = true;
    ioloop_stop(loop);
}

static void test_handler_error_reaches_hook(void **state)
{
    (void)state;
    ioloop_t *loop = tu_loop_new(NULL);
    hook_probe_t p = {0};
    ioloop_set_error_hook(loop, error_hook, &p);
    int s[2], r[2];
    tu_socketpair(s);
    tu_socketpair(r);
    fill(s[1]);
    fill(r[1]);
    assert_int_equal(ioloop_add_handler(loop, s[0], IOLOOP_READ, failing_handler, &p), 0);
    assert_int_equal(ioloop_add_handler(loop, r[0], IOLOOP_READ, peer_reset_handler, &p), 0);
    assert_int_equal(ioloop_call_later(loop, IOLOOP_MSEC(20), later, &p, NULL), 0);
    tu_stop_after(loop, 5000);
    ioloop_start(loop);
    assert_int_equal(p.hook_calls, 1);
    assert_int_equal(p.last_err, -EIO);
    assert_non_null(strstr(p.what, "fd"));
    assert_true(p.later_ran);
    ioloop_close(loop, true);
    close(s[1]);
    close(r[1]);
}

/* ---- fds that cannot be watched ------------------------------------------ */

static void test_huge_and_closed_fds_are_ebadf(void **state)
{
    (void)state;
    ioloop_t *loop = tu_loop_new(NULL);
    int calls = 0;
    int64_t t0 = tu_now_ns();
    assert_int_equal(ioloop_add_handler(loop, INT_MAX, IOLOOP_READ, never_called, &calls), -EBADF);
    assert_int_equal(ioloop_add_handler(loop, 200000000, IOLOOP_READ, never_called, &calls), -EBADF);
    assert_true(tu_now_ns() - t0 < IOLOOP_SEC(5)); /* no endless growth */
    int s[2];
    tu_socketpair(s);
    close(s[0]); /* a number below the table's size that is not open */
    assert_int_equal(ioloop_add_handler(loop, s[0], IOLOOP_READ, never_called, &calls), -EBADF);
    ioloop_close(loop, false);
    close(s[1]);
    assert_int_equal(calls, 0);
}

/* A handler that closes its own fd without removing it: the loop forgets the
 * fd (the poller reports it invalid, or drops it itself) instead of spinning. */
typedef struct {
    int calls, hook_calls, hook_err;
} self_close_t;

static int close_self(ioloop_t *loop, int fd, unsigned events, void *arg)
{
    (void)loop, (void)events;
    ((self_close_t *)arg)->calls++;
    close(fd);
    return 0;
}

static void self_close_hook(ioloop_t *loop, const char *what, int err, void *arg)
{
    (void)loop, (void)what;
    self_close_t *p = arg;
    p->hook_calls++;
    p->hook_err = err;
}

static void test_fd_closed_without_remove_does_not_spin(void **state)
{
    (void)state;
    ioloop_t *loop = tu_loop_new(NULL);
    self_close_t p = {0};
    ioloop_set_error_hook(loop, self_close_hook, &p);
    int s[2];
    tu_socketpair(s);
    fill(s[1]);
    assert_int_equal(ioloop_add_handler(loop, s[0], IOLOOP_READ, close_self, &p), 0);
    tu_stop_after(loop, 100);
    ioloop_start(loop);
    ioloop_stats_t st;
    ioloop_get_stats(loop, &st);
    assert_int_equal(p.calls, 1);
    assert_true(p.hook_calls <= 1);
    if (p.hook_calls)
        assert_int_equal(p.hook_err, -EBADF);
    assert_true(st.iterations < 1000); /* a spinning loop makes ~100000 in 100 ms */
    ioloop_close(loop, false);
    close(s[1]);
}

/* An fd closed without remove_handler does not block its number: a new
 * socket under that number can be watched. */
static int count_readable(ioloop_t *loop, int fd, unsigned events, void *arg)
{
    (void)events;
    char buf[8];
    (void)!read(fd, buf, sizeof(buf));
    (*(int *)arg)++;
    ioloop_stop(loop);
    return 0;
}

static void test_closed_fd_number_can_be_reused(void **state)
{
    (void)state;
    ioloop_t *loop = tu_loop_new(NULL);
    int old_calls = 0, new_calls = 0;
    int s[2], n[2];
    tu_socketpair(s);
    assert_int_equal(ioloop_add_handler(loop, s[0], IOLOOP_READ, never_called, &old_calls), 0);
    int number = s[0];
    close(s[0]); /* no remove_handler */
    tu_socketpair(n);
    if (n[0] != number) {
        assert_int_equal(dup3(n[0], number, O_CLOEXEC), number);
        close(n[0]);
        n[0] = number;
    }
    assert_int_equal(ioloop_add_handler(loop, number, IOLOOP_READ, count_readable, &new_calls), 0);
    /* ...while the same live socket still cannot be added twice. */
    assert_int_equal(ioloop_add_handler(loop, number, IOLOOP_READ, count_readable, &new_calls), -EEXIST);
    fill(n[1]);
    tu_stop_after(loop, 5000);
    ioloop_start(loop);
    assert_int_equal(new_calls, 1);
    assert_int_equal(old_calls, 0);
    ioloop_close(loop, true);
    close(s[1]);
    close(n[1]);
}


/* ---- the poll backend does not starve fds past the first batch ------------ */

enum { MANY_READY = 400, POLL_ROUNDS = 3 };

typedef struct {
    int *calls_by_fd;
    int rounds;
} many_t;

static int note_ready(ioloop_t *loop, int fd, unsigned events, void *arg)
{
    (void)loop, (void)events;
    ((many_t *)arg)->calls_by_fd[fd]++; /* the byte is never read: the fd stays ready */
    return 0;
}

/* Reposts itself, so every iteration polls once with timeout 0; stops the
 * loop once POLL_ROUNDS polls have been dispatched. */
static void count_round(ioloop_t *loop, void *arg)
{
    many_t *m = arg;
    if (++m->rounds > POLL_ROUNDS)
        ioloop_stop(loop);
    else
        ioloop_add_callback(loop, count_round, m);
}

/* 400 fds kept readable, more than one poll reports (256): every one is
 * dispatched within 3 iterations (a scan always starting at index 0 served
 * the lowest 256 every time and never the rest). */
static void test_poll_backend_rotates_past_first_batch(void **state)
{
    (void)state;
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    if (rl.rlim_cur < 2 * MANY_READY + 64) {
        rl.rlim_cur = 2 * MANY_READY + 64;
        if (rl.rlim_max < rl.rlim_cur || setrlimit(RLIMIT_NOFILE, &rl) != 0)
            skip(); /* not enough fds here (valgrind virtualises the limit) */
    }
    ioloop_t *loop = tu_loop_new(&(ioloop_options_t){.backend = IOLOOP_BACKEND_POLL});
    assert_non_null(loop);
    assert_string_equal(ioloop_backend_name(loop), "poll");
    static int pairs[MANY_READY][2];
    int max_fd = 0;
    for (int i = 0; i < MANY_READY; i++) {
        tu_socketpair(pairs[i]);
        fill(pairs[i][1]);
        if (pairs[i][0] > max_fd)
            max_fd = pairs[i][0];
    }
    many_t m = {.calls_by_fd = calloc((size_t)max_fd + 1, sizeof(int))};
    assert_non_null(m.calls_by_fd);
    for (int i = 0; i < MANY_READY; i++)
        assert_int_equal(ioloop_add_handler(loop, pairs[i][0], IOLOOP_READ, note_ready, &m), 0);
    assert_int_equal(ioloop_add_callback(loop, count_round, &m), 0);
    tu_stop_after(loop, 10000);
    ioloop_start(loop);
    int starved = 0;
    for (int i = 0; i < MANY_READY; i++)
        starved += m.calls_by_fd[pairs[i][0]] == 0;
    assert_int_equal(m.rounds, POLL_ROUNDS + 1);
    assert_int_equal(starved, 0);
    ioloop_close(loop, false);
    for (int i = 0; i < MANY_READY; i++) {
        close(pairs[i][0]);
        close(pairs[i][1]);
    }
    free(m.calls_by_fd);
}

/* ---- a handler that keeps failing is reported once, with a count ---------- */

typedef struct {
    int failures; /* handler calls, each failing */
    int hook_calls;
    long repeats;      /* summed from the "(repeated N times)" reports */
    int plain_reports; /* reports without a count */
    int wrong_err;
} flood_probe_t;

static int always_failing(ioloop_t *loop, int fd, unsigned events, void *arg)
{
    (void)loop, (void)fd, (void)events;
    ((flood_probe_t *)arg)->failures++; /* never reads: fails on every iteration */
    return -EIO;
}

static void counting_hook(ioloop_t *loop, const char *what, int err, void *arg)
{
    (void)loop;
    flood_probe_t *p = arg;
    p->hook_calls++;
    if (err != -EIO)
        p->wrong_err++;
    const char *count = strstr(what, "(repeated ");
    if (count)
        p->repeats += strtol(count + strlen("(repeated "), NULL, 10);
    else
        p->plain_reports++;
}

static void test_failing_handler_reports_are_folded(void **state)
{
    (void)state;
    ioloop_t *loop = tu_loop_new(NULL);
    flood_probe_t p = {0};
    assert_int_equal(ioloop_set_error_hook(loop, counting_hook, &p), 0);
    int s[2];
    tu_socketpair(s);
    fill(s[1]);
    assert_int_equal(ioloop_add_handler(loop, s[0], IOLOOP_READ, always_failing, &p), 0);
    tu_stop_after(loop, 200);
    ioloop_start(loop);
    print_message("%d failures, %d hook calls before close\n", p.failures, p.hook_calls);
    assert_true(p.failures > 10); /* the loop spun on the ready fd */
    assert_true(p.hook_calls <= 2);
    ioloop_close(loop, true); /* reports the count folded so far */
    close(s[1]);
    assert_true(p.hook_calls <= 3);
    assert_int_equal(p.wrong_err, 0);
    /* Every failure is accounted for: reported, or counted in a summary. */
    assert_int_equal(p.plain_reports + p.repeats, p.failures);
}

/* A different error ends the fold at once: the count comes first. */
typedef struct {
    char lines[4][128];
    int n;
} lines_t;

static void line_hook(ioloop_t *loop, const char *what, int err, void *arg)
{
    (void)loop;
    lines_t *l = arg;
    if (l->n < 4)
        snprintf(l->lines[l->n++], sizeof(l->lines[0]), "%s/%d", what, -err);
}

static void test_different_error_flushes_the_count(void **state)
{
    (void)state;
    ioloop_t *loop = tu_loop_new(NULL);
    lines_t l = {0};
    assert_int_equal(ioloop_set_error_hook(loop, line_hook, &l), 0);
    for (int i = 0; i < 5; i++)
        assert_int_equal(ioloop_report_error(loop, "read", -EIO), 0);
    assert_int_equal(ioloop_report_error(loop, "write", -EIO), 0);
    assert_int_equal(l.n, 3);
    assert_string_equal(l.lines[0], "read/5");
    assert_string_equal(l.lines[1], "read (repeated 4 times)/5");
    assert_string_equal(l.lines[2], "write/5");
    ioloop_close(loop, false);
    assert_int_equal(l.n, 3); /* nothing left to report */
}

/* ---- handler calls on a closed loop --------------------------------------- */

static void test_handlers_on_closed_loop(void **state)
{
    (void)state;
    ioloop_t *loop = tu_loop_new(NULL);
    ioloop_ref(loop);
    int s[2], calls = 0;
    tu_socketpair(s);
    assert_int_equal(ioloop_add_handler(loop, s[0], IOLOOP_READ, never_called, &calls), 0);
    assert_int_equal(ioloop_close(loop, false), 0);
    assert_int_equal(ioloop_add_handler(loop, s[1], IOLOOP_READ, never_called, &calls), -ESHUTDOWN);
    assert_int_equal(ioloop_update_handler(loop, s[0], IOLOOP_WRITE), -ESHUTDOWN);
    assert_int_equal(ioloop_remove_handler(loop, s[0]), -ENOENT); /* close forgot it already */
    ioloop_unref(loop);
    close(s[0]);
    close(s[1]);
    assert_int_equal(calls, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_add_twice_fails_remove_unknown_is_noop),
        cmocka_unit_test(test_read_only_handler_sees_only_read),
        cmocka_unit_test(test_update_handler_changes_events),
        cmocka_unit_test(test_error_always_delivered),
        cmocka_unit_test(test_removed_in_batch_is_never_called),
        cmocka_unit_test(test_removed_and_fd_reused_in_batch),
        cmocka_unit_test(test_add_handler_from_other_thread_while_sleeping),
        cmocka_unit_test(test_handler_churn_from_other_thread),
        cmocka_unit_test(test_close_all_fds),
        cmocka_unit_test(test_handler_error_reaches_hook),
        cmocka_unit_test(test_huge_and_closed_fds_are_ebadf),
        cmocka_unit_test(test_fd_closed_without_remove_does_not_spin),
        cmocka_unit_test(test_closed_fd_number_can_be_reused),
        cmocka_unit_test(test_handlers_on_closed_loop),
        cmocka_unit_test(test_poll_backend_rotates_past_first_batch),
        cmocka_unit_test(test_failing_handler_reports_are_folded),
        cmocka_unit_test(test_different_error_flushes_the_count),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
