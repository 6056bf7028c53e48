/* watchdog.c — the runtime's blocking detector (Tornado's
 * set_blocking_log_threshold): a thread that reports a loop whose current
 * iteration has been busy longer than a threshold, naming what it runs.
 *
 * Threading rule: the watchdog thread only reads the loops' watch hooks
 * (loop->watch.busy_since and .current, relaxed atomics written by each loop
 * thread, see loop.c) and their stats; it never changes a loop. Start and
 * stop are called by the runtime's owning thread.
 *
 * It samples every threshold/4 (between 1 ms and 100 ms), so a stall is
 * reported between 1 and 1.25 thresholds after it began, once per stall.
 * Runtime loops use the monotonic clock, which is what busy_since holds.
 */
#define _GNU_SOURCE
#include "runtime_internal.h"

#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct ioloop__watchdog {
    ioloop_runtime_t *rt;
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t wake;
    bool stopping;           /* under lock */
    ioloop_time_t *reported; /* per loop: busy_since of the stall last reported */
};

static ioloop_time_t monotonic_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return IOLOOP_SEC(ts.tv_sec) + ts.tv_nsec;
}

static void default_report(ioloop_t *loop, ioloop_time_t blocked_for, void (*running)(void), const char *name,
                           void *arg)
{
    (void)running, (void)arg;
    fprintf(stderr, "ioloop[%u]: iteration blocked for %.1f ms in %s\n", ioloop_id(loop), blocked_for / 1e6, name);
}

/* The symbol's name when the dynamic linker knows it exactly, else the
 * address and the object it lies in. */
static void describe(void (*fn)(void), char *buf, size_t size)
{
    if (!fn) {
        snprintf(buf, size, "(between callbacks)");
        return;
    }
    Dl_info info;
    void *addr;
    memcpy(&addr, &fn, sizeof(addr)); /* a function address as data: POSIX allows it */
    if (dladdr(addr, &info) && info.dli_sname && info.dli_saddr == addr)
        snprintf(buf, size, "%s", info.dli_sname);
    else if (dladdr(addr, &info) && info.dli_fname)
        snprintf(buf, size, "%p (%s+%#lx)", addr, info.dli_fname,
                 (unsigned long)((char *)addr - (char *)info.dli_fbase));
    else
        snprintf(buf, size, "%p", addr);
}

static void check(struct ioloop__watchdog *wd, ioloop_time_t now)
{
    ioloop_runtime_t *rt = wd->rt;
    ioloop_watchdog_fn report = rt->opts.watchdog_fn ? rt->opts.watchdog_fn : default_report;
    for (int i = 0; i < rt->n; i++) {
        ioloop_t *loop = rt->loops[i];
        ioloop_time_t since = atomic_load_explicit(&loop->watch.busy_since, memory_order_relaxed);
        if (!since || since == wd->reported[i] || now - since < rt->opts.watchdog)
            continue;
        void (*running)(void) = atomic_load_explicit(&loop->watch.current, memory_order_relaxed);
        char name[256];
        describe(running, name, sizeof(name));
        wd->reported[i] = since;
        report(loop, now - since, running, name, rt->opts.watchdog_arg);
    }
}

static void *watchdog_main(void *arg)
{
    struct ioloop__watchdog *wd = arg;
    ioloop_time_t period = wd->rt->opts.watchdog / 4;
    if (period < IOLOOP_MSEC(1))
        period = IOLOOP_MSEC(1);
    if (period > IOLOOP_MSEC(100))
        period = IOLOOP_MSEC(100);
    pthread_mutex_lock(&wd->lock);
    while (!wd->stopping) {
        ioloop_time_t deadline = monotonic_ns() + period;
        struct timespec ts = {.tv_sec = deadline / IOLOOP_SEC(1), .tv_nsec = deadline % IOLOOP_SEC(1)};
        pthread_cond_timedwait(&wd->wake, &wd->lock, &ts);
        if (wd->stopping)
            break;
        pthread_mutex_unlock(&wd->lock);
        check(wd, monotonic_ns());
        pthread_mutex_lock(&wd->lock);
    }
    pthread_mutex_unlock(&wd->lock);
    return NULL;
}

int ioloop__watchdog_start(ioloop_runtime_t *rt)
{
    struct ioloop__watchdog *wd = calloc(1, sizeof(*wd));
    if (!wd)
        return -ENOMEM;
    wd->reported = calloc((size_t)rt->n, sizeof(*wd->reported));
    if (!wd->reported) {
        free(wd);
        return -ENOMEM;
    }
    wd->rt = rt;
    pthread_mutex_init(&wd->lock, NULL);
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&wd->wake, &attr);
    pthread_condattr_destroy(&attr);
    int err = ioloop__thread_create(&wd->thread, watchdog_main, wd);
    if (err) {
        pthread_cond_destroy(&wd->wake);
        pthread_mutex_destroy(&wd->lock);
        free(wd->reported);
        free(wd);
        return err;
    }
    rt->watchdog = wd;
    return 0;
}

void ioloop__watchdog_stop(ioloop_runtime_t *rt)
{
    struct ioloop__watchdog *wd = rt->watchdog;
    if (!wd)
        return;
    pthread_mutex_lock(&wd->lock);
    wd->stopping = true;
    pthread_cond_signal(&wd->wake);
    pthread_mutex_unlock(&wd->lock);
    pthread_join(wd->thread, NULL);
    pthread_cond_destroy(&wd->wake);
    pthread_mutex_destroy(&wd->lock);
    free(wd->reported);
    free(wd);
    rt->watchdog = NULL;
}
