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
#include <stdio.h>
#include <string.h>
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
    ioloop_t *loop = tu_loop_new(NULL);
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
    ioloop_t *a = tu_loop_new(NULL);
    assert_non_null(a);
    sig_probe_t p = {0};
    assert_int_equal(ioloop_signal_watch(a, SIGUSR2, on_usr, &p), 0);
    assert_int_equal(ioloop_signal_watch(a, SIGWINCH, on_usr, &p), 0);
    assert_int_equal(ioloop_close(a, false), 0); /* without unwatching */
    assert_int_equal(tu_open_fds(), fds);        /* the signalfd went with it */
    assert_false(blocked_here(SIGUSR2));         /* as unwatch would have left it */

    /* The signals are free for another loop, which gets them. */
    ioloop_t *b = tu_loop_new(NULL);
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

/* Review F8: an unwatch from another thread must not close the signalfd
 * under the loop thread, which may have dispatched its handler already and be
 * about to read it (a closed fd, or one reused meanwhile by another thread's
 * open or accept). The fd is closed on the loop thread, by a callback posted
 * after the removal: while the loop is busy, the fd stays open; once it runs,
 * the fd is gone. */
static int signalfd_number(void)
{
    for (int fd = 0; fd < 1024; fd++) {
        char path[64], target[64];
        snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
        ssize_t n = readlink(path, target, sizeof(target) - 1);
        if (n > 0) {
            target[n] = 0;
            if (strstr(target, "signalfd"))
                return fd;
        }
    }
    return -1;
}

static _Atomic bool hold_loop;

static void busy_until_released(ioloop_t *loop, void *arg)
{
    (void)loop;
    atomic_store((_Atomic int *)arg, 1);
    while (atomic_load(&hold_loop))
        tu_sleep_ms(1);
}

static void test_foreign_unwatch_closes_fd_on_loop_thread(void **state)
{
    (void)state;
#ifndef __linux__
    skip();
#endif
    ioloop_t *loop = tu_loop_new(NULL);
    sig_probe_t p = {.want = loop};
    assert_int_equal(signalfd_number(), -1);
    assert_int_equal(ioloop_signal_watch(loop, SIGWINCH, on_usr, &p), 0);
    int fd = signalfd_number();
    assert_true(fd >= 0);
    pthread_t thread = tu_start_loop_thread(loop);
    _Atomic int busy = 0;
    atomic_store(&hold_loop, true);
    assert_int_equal(ioloop_add_callback(loop, busy_until_released, &busy), 0);
    while (!atomic_load(&busy))
        tu_sleep_ms(1);
    assert_int_equal(ioloop_signal_unwatch(loop, SIGWINCH), 0);
    assert_int_equal(signalfd_number(), fd); /* not closed under the loop thread */
    atomic_store(&hold_loop, false);
    int64_t deadline = tu_now_ns() + IOLOOP_SEC(10);
    while (signalfd_number() == fd && tu_now_ns() < deadline)
        tu_sleep_ms(1);
    assert_int_equal(signalfd_number(), -1); /* closed there, not leaked */
    tu_join_loop_thread(loop, thread);
    assert_int_equal(ioloop_close(loop, false), 0);
    assert_int_equal(atomic_load(&p.hits), 0);
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
        cmocka_unit_test(test_foreign_unwatch_closes_fd_on_loop_thread),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
