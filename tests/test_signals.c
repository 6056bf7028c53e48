/* test_signals.c — signals as loop callbacks: SIGTERM and SIGINT stop a
 * runtime that handles signals (every loop ends, join returns, the calling
 * thread's mask is restored), a watched signal runs on the chosen loop's
 * thread, the one-watcher rule, a loop outside any runtime, a failed watch
 * that leaves the thread's mask as it found it, and a closed loop whose
 * watchers are forgotten (no leaked signalfd, the signals free again).
 *
 * Threading rule: signal callbacks run on loop threads and only record into
 * atomics; every assertion is on the test's main thread.
 */
#define _GNU_SOURCE
#include "test_util.h"

#include "ioloop/runtime.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <unistd.h>

static bool blocked_here(int signo)
{
    sigset_t now;
    pthread_sigmask(SIG_BLOCK, NULL, &now);
    return sigismember(&now, signo);
}

static void check_stop_by(int signo)
{
    ioloop_runtime_t *rt = NULL;
    assert_false(blocked_here(signo));
    assert_int_equal(ioloop_runtime_start(&(ioloop_runtime_options_t){.loops = 3, .handle_signals = true}, &rt), 0);
    assert_true(blocked_here(signo)); /* so that the signalfd gets it */
    int64_t t0 = tu_now_ns();
    assert_int_equal(kill(getpid(), signo), 0);
    assert_int_equal(ioloop_runtime_join(rt), 0);
    assert_true(tu_now_ns() - t0 < IOLOOP_SEC(10));
    ioloop_runtime_free(rt);
    assert_false(blocked_here(signo));
}

static void test_sigterm_stops_every_loop(void **state)
{
    (void)state;
    check_stop_by(SIGTERM);
}

static void test_sigint_stops_every_loop(void **state)
{
    (void)state;
    check_stop_by(SIGINT);
}

typedef struct {
    ioloop_t *want;
    _Atomic int hits;
    _Atomic int on_wrong_loop;
    _Atomic int signo;
} sig_probe_t;

static void on_usr(ioloop_t *loop, int signo, void *arg)
{
    sig_probe_t *p = arg;
    if (loop != p->want || ioloop_current() != p->want)
        atomic_fetch_add(&p->on_wrong_loop, 1);
    atomic_store(&p->signo, signo);
    atomic_fetch_add(&p->hits, 1);
}

static void test_watch_runs_on_chosen_loop(void **state)
{
    (void)state;
    ioloop_runtime_t *rt = NULL;
    assert_int_equal(ioloop_runtime_start(&(ioloop_runtime_options_t){.loops = 3}, &rt), 0);
    sig_probe_t p = {.want = ioloop_runtime_loop(rt, 2)};
    assert_int_equal(ioloop_signal_watch(p.want, SIGUSR1, on_usr, &p), 0);
    assert_int_equal(ioloop_signal_watch(ioloop_runtime_loop(rt, 0), SIGUSR1, on_usr, &p), -EBUSY);
    assert_int_equal(ioloop_signal_watch(p.want, SIGKILL, on_usr, &p), -EINVAL);
    assert_int_equal(ioloop_signal_unwatch(ioloop_runtime_loop(rt, 0), SIGUSR1), -ENOENT);
    for (int k = 1; k <= 3; k++) {
        assert_int_equal(kill(getpid(), SIGUSR1), 0);
        int64_t deadline = tu_now_ns() + IOLOOP_SEC(10);
        while (atomic_load(&p.hits) < k && tu_now_ns() < deadline)
            tu_sleep_ms(1);
        assert_int_equal(atomic_load(&p.hits), k);
    }
    assert_int_equal(atomic_load(&p.signo), SIGUSR1);
    assert_int_equal(atomic_load(&p.on_wrong_loop), 0);
    assert_int_equal(ioloop_signal_unwatch(p.want, SIGUSR1), 0);
    assert_false(blocked_here(SIGUSR1));
    ioloop_runtime_free(rt);
}

static void stop_soon(ioloop_t *loop, int signo, void *arg)
{
    (void)signo;
    on_usr(loop, SIGUSR2, arg);
    ioloop_stop(loop);
}

static void send_usr2(ioloop_t *loop, void *arg)
{
    (void)loop, (void)arg;
    kill(getpid(), SIGUSR2);
}

static void test_watch_on_embedded_loop(void **state)
{
    (void)state;
    ioloop_t *loop = ioloop_current();
    sig_probe_t p = {.want = loop};
    assert_int_equal(ioloop_signal_watch(loop, SIGUSR2, stop_soon, &p), 0);
    assert_int_equal(ioloop_add_callback(loop, send_usr2, NULL), 0);
    tu_stop_after(loop, 10000);
    assert_int_equal(ioloop_start(loop), 0);
    assert_int_equal(atomic_load(&p.hits), 1);
    assert_int_equal(atomic_load(&p.on_wrong_loop), 0);
    assert_int_equal(ioloop_signal_unwatch(loop, SIGUSR2), 0);
}

/* A loop that is closed but still referenced: every watch on it fails. */
static ioloop_t *closed_loop(void)
{
    ioloop_t *loop = ioloop_new(NULL);
    assert_non_null(loop);
    ioloop_ref(loop);
    assert_int_equal(ioloop_close(loop, false), 0);
    return loop;
}

static void test_failed_watch_leaves_mask_as_it_was(void **state)
{
    (void)state;
    ioloop_t *loop = closed_loop();
    int fds = tu_open_fds();
    assert_false(blocked_here(SIGUSR1));
    assert_true(ioloop_signal_watch(loop, SIGUSR1, on_usr, NULL) < 0);
    assert_false(blocked_here(SIGUSR1)); /* else the next SIGUSR1 stays pending for nobody */
    assert_int_equal(tu_open_fds(), fds);

    /* Blocked by the caller before: the failed watch must not unblock it. */
    sigset_t one;
    sigemptyset(&one);
    sigaddset(&one, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &one, NULL);
    assert_true(ioloop_signal_watch(loop, SIGUSR1, on_usr, NULL) < 0);
    assert_true(blocked_here(SIGUSR1));
    pthread_sigmask(SIG_UNBLOCK, &one, NULL);
    ioloop_unref(loop);
}

static void test_close_forgets_the_loops_watchers(void **state)
{
    (void)state;
    int fds = tu_open_fds();
    ioloop_t *a = ioloop_new(NULL);
    assert_non_null(a);
    sig_probe_t p = {0};
    assert_int_equal(ioloop_signal_watch(a, SIGUSR2, on_usr, &p), 0);
    assert_int_equal(ioloop_signal_watch(a, SIGWINCH, on_usr, &p), 0);
    assert_int_equal(ioloop_close(a, false), 0); /* without unwatching */
    assert_int_equal(tu_open_fds(), fds);        /* the signalfd went with it */
    assert_false(blocked_here(SIGUSR2));         /* as unwatch would have left it */

    /* The signals are free for another loop, which gets them. */
    ioloop_t *b = ioloop_new(NULL);
    assert_non_null(b);
    p.want = b;
    assert_int_equal(ioloop_signal_watch(b, SIGUSR2, stop_soon, &p), 0);
    assert_int_equal(ioloop_add_callback(b, send_usr2, NULL), 0);
    tu_stop_after(b, 10000);
    assert_int_equal(ioloop_start(b), 0);
    assert_int_equal(atomic_load(&p.hits), 1);
    assert_int_equal(atomic_load(&p.on_wrong_loop), 0);
    assert_int_equal(ioloop_signal_watch(b, SIGWINCH, on_usr, &p), 0);
    assert_int_equal(ioloop_signal_unwatch(b, SIGWINCH), 0);
    assert_int_equal(ioloop_signal_unwatch(b, SIGUSR2), 0);
    assert_int_equal(ioloop_close(b, false), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sigterm_stops_every_loop),
        cmocka_unit_test(test_sigint_stops_every_loop),
        cmocka_unit_test(test_watch_runs_on_chosen_loop),
        cmocka_unit_test(test_watch_on_embedded_loop),
        cmocka_unit_test(test_failed_watch_leaves_mask_as_it_was),
        cmocka_unit_test(test_close_forgets_the_loops_watchers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
