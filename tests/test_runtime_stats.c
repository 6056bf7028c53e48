/* test_runtime_stats.c — per-loop stats read from another thread while the
 * loops run, and the watchdog: a loop stuck in one callback or fd handler is
 * reported, once per stall, with what it runs named; an idle loop is not;
 * work that follows a stall is not blamed for it.
 *
 * Threading rule: the watchdog's report function runs on the watchdog
 * thread; it only records into a log (atomics) and every assertion is made
 * on the test's main thread. Loop callbacks record results the same way.
 * Timing: stalls are 400 ms against a 100 ms threshold, and the assertions
 * only count reports that name the stalled function, so a loaded machine
 * (a loop thread descheduled for a while) cannot fail them.
 */
#define _GNU_SOURCE
#include "test_util.h"

#include "ioloop/runtime.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

enum { MAX_REPORTS = 32, STALL_MS = 400 };
#define THRESHOLD IOLOOP_MSEC(100)

typedef struct {
    ioloop_t *loop;
    ioloop_time_t blocked_for;
    void (*running)(void);
    bool named;    /* the report's name was not NULL */
    char name[64]; /* its first bytes */
} report_t;

typedef struct {
    _Atomic int reports; /* how many were made (the log keeps the first MAX_REPORTS) */
    report_t log[MAX_REPORTS];
} watch_log_t;

static void on_watchdog(ioloop_t *loop, ioloop_time_t blocked_for, void (*running)(void), const char *name, void *arg)
{
    watch_log_t *w = arg;
    int i = atomic_load(&w->reports); /* the watchdog thread is the only writer */
    if (i < MAX_REPORTS) {
        w->log[i] = (report_t){.loop = loop, .blocked_for = blocked_for, .running = running, .named = name != NULL};
        snprintf(w->log[i].name, sizeof(w->log[i].name), "%s", name ? name : "");
    }
    atomic_store(&w->reports, i + 1); /* publishes log[i] (seq_cst) */
}

/* How many reports named fn; *longest gets the longest blocked_for among them. */
static int reports_naming(watch_log_t *w, void (*fn)(void), ioloop_time_t *longest)
{
    int n = atomic_load(&w->reports), count = 0;
    if (longest)
        *longest = 0;
    for (int i = 0; i < n && i < MAX_REPORTS; i++) {
        assert_true(w->log[i].named);
        if (w->log[i].running != fn)
            continue;
        count++;
        if (longest && w->log[i].blocked_for > *longest)
            *longest = w->log[i].blocked_for;
    }
    return count;
}

static void wait_for(_Atomic int *flag, int value)
{
    int64_t deadline = tu_now_ns() + IOLOOP_SEC(10);
    while (atomic_load(flag) < value && tu_now_ns() < deadline)
        tu_sleep_ms(5);
    assert_true(atomic_load(flag) >= value);
}

/* Not static: the watchdog names a callback through the dynamic symbol
 * table (dladdr), and test executables are linked with their symbols
 * exported (-rdynamic, tests/CMakeLists.txt), as a program that wants its
 * callbacks named must be. */
void test_rt_slow_callback(ioloop_t *loop, void *arg);

void test_rt_slow_callback(ioloop_t *loop, void *arg)
{
    (void)loop;
    tu_sleep_ms(STALL_MS);
    atomic_fetch_add((_Atomic int *)arg, 1);
}

static void test_watchdog_names_the_blocking_callback(void **state)
{
    (void)state;
    static watch_log_t w;
    memset(&w, 0, sizeof(w));
    ioloop_runtime_options_t opts = {.loops = 2, .watchdog = THRESHOLD, .watchdog_fn = on_watchdog, .watchdog_arg = &w};
    ioloop_runtime_t *rt = NULL;
    assert_int_equal(ioloop_runtime_start(&opts, &rt), 0);
    tu_sleep_ms(300); /* idle loops sleep in poll: not "blocked" */
    assert_int_equal(atomic_load(&w.reports), 0);
    _Atomic int done = 0;
    assert_int_equal(ioloop_add_callback(ioloop_runtime_loop(rt, 1), test_rt_slow_callback, &done), 0);
    wait_for(&done, 1);
    tu_sleep_ms(2 * STALL_MS / 4); /* a second report would come by now */
    ioloop_time_t longest;
    assert_int_equal(reports_naming(&w, (void (*)(void))test_rt_slow_callback, &longest), 1); /* once per stall */
    assert_true(longest >= THRESHOLD);
    for (int i = 0; i < atomic_load(&w.reports) && i < MAX_REPORTS; i++)
        if (w.log[i].running == (void (*)(void))test_rt_slow_callback) {
            assert_ptr_equal(w.log[i].loop, ioloop_runtime_loop(rt, 1));
            assert_string_equal(w.log[i].name, "test_rt_slow_callback");
        }
    ioloop_stats_t st;
    ioloop_get_stats(ioloop_runtime_loop(rt, 1), &st);
    assert_true(st.longest_busy >= IOLOOP_MSEC(STALL_MS - 50));
    ioloop_runtime_free(rt);
}

/* Runs right after slow_handler, in the loop's next iteration; short. */
static void brief_callback(ioloop_t *loop, void *arg)
{
    (void)loop;
    tu_sleep_ms(20);
    atomic_fetch_add((_Atomic int *)arg, 1);
}

typedef struct {
    _Atomic int done;     /* slow_handler ran */
    _Atomic int followed; /* brief_callback ran */
} handler_run_t;

static int slow_handler(ioloop_t *loop, int fd, unsigned events, void *arg)
{
    (void)events;
    handler_run_t *run = arg;
    tu_sleep_ms(STALL_MS);
    char b;
    (void)read(fd, &b, 1);
    ioloop_remove_handler(loop, fd);
    ioloop_add_callback(loop, brief_callback, &run->followed); /* the next iteration's work */
    atomic_fetch_add(&run->done, 1);
    return 0;
}

static void test_blocking_handler_counts_and_is_named(void **state)
{
    (void)state;
    static watch_log_t w;
    memset(&w, 0, sizeof(w));
    ioloop_runtime_options_t opts = {.loops = 1, .watchdog = THRESHOLD, .watchdog_fn = on_watchdog, .watchdog_arg = &w};
    ioloop_runtime_t *rt = NULL;
    assert_int_equal(ioloop_runtime_start(&opts, &rt), 0);
    ioloop_t *loop = ioloop_runtime_loop(rt, 0);
    int fds[2];
    tu_socketpair(fds);
    handler_run_t run = {0};
    assert_int_equal(ioloop_add_handler(loop, fds[0], IOLOOP_READ, slow_handler, &run), 0);
    assert_int_equal(write(fds[1], "x", 1), 1);
    wait_for(&run.done, 1);
    wait_for(&run.followed, 1);
    tu_sleep_ms(2 * STALL_MS / 4);
    assert_int_equal(reports_naming(&w, (void (*)(void))slow_handler, NULL), 1);
    /* The stall ended with the handler: the callback after it ran 20 ms and
     * must not be reported as blocked for the handler's time too. */
    ioloop_time_t blamed;
    reports_naming(&w, (void (*)(void))brief_callback, &blamed);
    assert_true(blamed < IOLOOP_MSEC(STALL_MS / 2));
    ioloop_stats_t st;
    ioloop_get_stats(loop, &st);
    assert_true(st.longest_busy >= IOLOOP_MSEC(STALL_MS - 50)); /* handlers count as busy, not only callbacks */
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
        ioloop_call_later(loop, IOLOOP_MSEC(1), nothing, NULL, NULL);
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

static void spin_100ms(ioloop_t *loop, void *arg)
{
    (void)loop, (void)arg;
    int64_t end = tu_now_ns() + IOLOOP_MSEC(100);
    while (tu_now_ns() < end)
        ;
}

/* busy_time: the time spent running work, not the time asleep in poll. */
static void test_busy_time(void **state)
{
    (void)state;
    ioloop_runtime_t *rt = NULL;
    assert_int_equal(ioloop_runtime_start(&(ioloop_runtime_options_t){.loops = 1}, &rt), 0);
    ioloop_t *loop = ioloop_runtime_loop(rt, 0);
    ioloop_stats_t a, b;
    tu_sleep_ms(20);
    ioloop_get_stats(loop, &a);
    tu_sleep_ms(300); /* idle: asleep in poll */
    ioloop_get_stats(loop, &b);
    assert_true(b.busy_time - a.busy_time < IOLOOP_MSEC(100));
    int64_t t0 = tu_now_ns();
    assert_int_equal(ioloop_add_callback(loop, spin_100ms, NULL), 0);
    /* credited when the iteration ends: wait for it (bounded) */
    int64_t deadline = t0 + IOLOOP_SEC(10);
    do {
        tu_sleep_ms(5);
        ioloop_get_stats(loop, &b);
    } while (b.busy_time - a.busy_time < IOLOOP_MSEC(100) && tu_now_ns() < deadline);
    assert_true(b.busy_time - a.busy_time >= IOLOOP_MSEC(100));
    assert_true(b.busy_time - a.busy_time <= tu_now_ns() - t0 + IOLOOP_MSEC(100) + IOLOOP_MSEC(320));
    assert_true(b.longest_busy >= IOLOOP_MSEC(100));
    ioloop_runtime_free(rt);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_watchdog_names_the_blocking_callback),
        cmocka_unit_test(test_blocking_handler_counts_and_is_named),
        cmocka_unit_test(test_stats_from_another_thread),
        cmocka_unit_test(test_busy_time),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
