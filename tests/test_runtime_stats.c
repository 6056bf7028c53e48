/* test_runtime_stats.c — per-loop stats read from another thread while the
 * loops run, and the watchdog: a loop stuck in one callback is reported,
 * once, with the callback named; an idle loop is not.
 */
#define _GNU_SOURCE
#include "test_util.h"

#include "ioloop/runtime.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdatomic.h>
#include <sys/socket.h>
#include <unistd.h>

typedef struct {
    _Atomic int reports;
    _Atomic(ioloop_t *) loop;
    _Atomic ioloop_time_t blocked_for;
    _Atomic(void (*)(void)) running;
} watch_log_t;

static void on_watchdog(ioloop_t *loop, ioloop_time_t blocked_for, void (*running)(void), const char *name, void *arg)
{
    watch_log_t *w = arg;
    assert_non_null(name);
    atomic_store(&w->loop, loop);
    atomic_store(&w->blocked_for, blocked_for);
    atomic_store(&w->running, running);
    atomic_fetch_add(&w->reports, 1);
}

static void slow_callback(ioloop_t *loop, void *arg)
{
    (void)loop;
    tu_sleep_ms(300);
    atomic_fetch_add((_Atomic int *)arg, 1);
}

static void test_watchdog_names_the_blocking_callback(void **state)
{
    (void)state;
    watch_log_t w = {0};
    ioloop_runtime_options_t opts = {
        .loops = 2, .watchdog = IOLOOP_MSEC(50), .watchdog_fn = on_watchdog, .watchdog_arg = &w};
    ioloop_runtime_t *rt = NULL;
    assert_int_equal(ioloop_runtime_start(&opts, &rt), 0);
    tu_sleep_ms(150); /* idle loops are not "blocked" */
    assert_int_equal(atomic_load(&w.reports), 0);
    _Atomic int done = 0;
    assert_int_equal(ioloop_add_callback(ioloop_runtime_loop(rt, 1), slow_callback, &done), 0);
    int64_t deadline = tu_now_ns() + IOLOOP_SEC(10);
    while (!atomic_load(&done) && tu_now_ns() < deadline)
        tu_sleep_ms(5);
    tu_sleep_ms(100);
    assert_int_equal(atomic_load(&w.reports), 1); /* once per stall */
    assert_ptr_equal(atomic_load(&w.loop), ioloop_runtime_loop(rt, 1));
    assert_true(atomic_load(&w.running) == (void (*)(void))slow_callback);
    assert_true(atomic_load(&w.blocked_for) >= IOLOOP_MSEC(50));
    ioloop_stats_t st;
    ioloop_get_stats(ioloop_runtime_loop(rt, 1), &st);
    assert_true(st.longest_busy >= IOLOOP_MSEC(250));
    ioloop_runtime_free(rt);
}

static int slow_handler(ioloop_t *loop, int fd, unsigned events, void *arg)
{
    (void)events;
    tu_sleep_ms(300);
    char b;
    (void)read(fd, &b, 1);
    ioloop_remove_handler(loop, fd);
    atomic_fetch_add((_Atomic int *)arg, 1);
    return 0;
}

static void test_blocking_handler_counts_and_is_named(void **state)
{
    (void)state;
    watch_log_t w = {0};
    ioloop_runtime_options_t opts = {
        .loops = 1, .watchdog = IOLOOP_MSEC(50), .watchdog_fn = on_watchdog, .watchdog_arg = &w};
    ioloop_runtime_t *rt = NULL;
    assert_int_equal(ioloop_runtime_start(&opts, &rt), 0);
    ioloop_t *loop = ioloop_runtime_loop(rt, 0);
    int fds[2];
    tu_socketpair(fds);
    _Atomic int done = 0;
    assert_int_equal(ioloop_add_handler(loop, fds[0], IOLOOP_READ, slow_handler, &done), 0);
    assert_int_equal(write(fds[1], "x", 1), 1);
    int64_t deadline = tu_now_ns() + IOLOOP_SEC(10);
    while (!atomic_load(&done) && tu_now_ns() < deadline)
        tu_sleep_ms(5);
    tu_sleep_ms(50);
    assert_int_equal(atomic_load(&w.reports), 1);
    assert_true(atomic_load(&w.running) == (void (*)(void))slow_handler);
    ioloop_stats_t st;
    ioloop_get_stats(loop, &st);
    assert_true(st.longest_busy >= IOLOOP_MSEC(250)); /* handlers count as busy, not only callbacks */
    ioloop_runtime_free(rt);
    close(fds[0]);
    close(fds[1]);
}

/* ---- stats while running ------------------------------------------------------ */

enum { POSTS = 1000, TIMERS = 10 };

static void nothing(ioloop_t *loop, void *arg)
{
    (void)loop, (void)arg;
}

static void add_timers(ioloop_t *loop, void *arg)
{
    (void)arg;
    for (int i = 0; i < TIMERS; i++)
        ioloop_call_later(loop, IOLOOP_MSEC(1), nothing, NULL);
}

static void hold_fd(ioloop_t *loop, int fd, const struct sockaddr *peer, socklen_t peer_len, void *arg)
{
    (void)loop, (void)peer, (void)peer_len;
    _Atomic int *fds = arg;
    for (int i = 0; i < 8; i++) {
        int expected = -1;
        if (atomic_compare_exchange_strong(&fds[i], &expected, fd))
            return;
    }
}

static void release_fds(ioloop_t *loop, void *arg)
{
    _Atomic int *fds = arg;
    for (int i = 0; i < 8; i++) {
        int fd = atomic_load(&fds[i]);
        if (fd >= 0) {
            close(fd);
            atomic_store(&fds[i], -1);
            ioloop_connection_closed(loop);
        }
    }
}

static int64_t live_total(ioloop_runtime_t *rt)
{
    int64_t live = 0;
    for (int i = 0; i < ioloop_runtime_size(rt); i++) {
        ioloop_stats_t st;
        ioloop_get_stats(ioloop_runtime_loop(rt, i), &st);
        live += st.live_connections;
    }
    return live;
}

static void test_stats_from_another_thread(void **state)
{
    (void)state;
    ioloop_runtime_t *rt = NULL;
    assert_int_equal(ioloop_runtime_start(&(ioloop_runtime_options_t){.loops = 1}, &rt), 0);
    ioloop_t *loop = ioloop_runtime_loop(rt, 0);
    for (int i = 0; i < POSTS; i++) {
        assert_int_equal(ioloop_add_callback(loop, nothing, NULL), 0);
        if (i % 100 == 0)
            tu_sleep_ms(1); /* let it fall asleep now and then: wakeups */
    }
    assert_int_equal(ioloop_add_callback(loop, add_timers, NULL), 0);
    ioloop_stats_t st = {0};
    int64_t deadline = tu_now_ns() + IOLOOP_SEC(10);
    do {
        tu_sleep_ms(5);
        ioloop_get_stats(loop, &st);
    } while ((st.callbacks_run < POSTS + 1 || st.timers_fired < TIMERS) && tu_now_ns() < deadline);
    assert_true(st.callbacks_run >= POSTS + 1);
    assert_true(st.posts_received >= POSTS + 1);
    assert_true(st.timers_fired >= TIMERS);
    assert_true(st.iterations > 0);
    assert_true(st.wakeups_received > 0);
    assert_true(st.wakeups_written >= st.wakeups_received);

    /* live connections: three held, then released. */
    _Atomic int fds[8];
    for (int i = 0; i < 8; i++)
        atomic_init(&fds[i], -1);
    ioloop_listener_t *l = NULL;
    ioloop_listener_options_t lo = {.address = "127.0.0.1", .on_accept = hold_fd, .arg = fds};
    assert_int_equal(ioloop_listener_start(rt, &lo, &l), 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)ioloop_listener_port(l))};
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    int clients[3];
    for (int i = 0; i < 3; i++) {
        clients[i] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        assert_int_equal(connect(clients[i], (struct sockaddr *)&a, sizeof(a)), 0);
    }
    deadline = tu_now_ns() + IOLOOP_SEC(10);
    while (live_total(rt) < 3 && tu_now_ns() < deadline)
        tu_sleep_ms(2);
    assert_int_equal(live_total(rt), 3);
    assert_int_equal(ioloop_add_callback(loop, release_fds, fds), 0);
    deadline = tu_now_ns() + IOLOOP_SEC(10);
    while (live_total(rt) > 0 && tu_now_ns() < deadline)
        tu_sleep_ms(2);
    assert_int_equal(live_total(rt), 0);
    for (int i = 0; i < 3; i++)
        close(clients[i]);
    ioloop_listener_free(l);
    ioloop_runtime_free(rt);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_watchdog_names_the_blocking_callback),
        cmocka_unit_test(test_blocking_handler_counts_and_is_named),
        cmocka_unit_test(test_stats_from_another_thread),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
