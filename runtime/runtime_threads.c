/* runtime_threads.c — the runtime: N loops, one thread each (pinned when
 * asked), their start, stop, join and free (broadcast.c runs a callback on
 * every loop).
 *
 * Threading rule: start/join/free on the owning thread (see runtime.h);
 * stop, size and loop from any thread. The loops are created on the
 * owning thread (so a failure is reported by start itself) and each is then
 * run by its own thread; ioloop_start makes it that thread's ioloop_current()
 * and registers the thread with RCU.
 *
 * Stop is graceful: each loop finishes its iteration and returns from
 * ioloop_start; whatever was posted and not yet run runs when
 * ioloop_runtime_free closes the loops (ioloop_close runs accepted posts), so
 * a post that was accepted is never silently dropped.
 */
#define _GNU_SOURCE
#include "runtime_internal.h"

#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static _Thread_local ioloop_runtime_t *current_runtime;

int ioloop__allowed_cpus(int *cpus, int max)
{
    int n = 0;
#ifdef __linux__
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof(set), &set) == 0) {
        for (int cpu = 0; cpu < CPU_SETSIZE && n < max; cpu++)
            if (CPU_ISSET(cpu, &set))
                cpus[n++] = cpu;
    }
#else
    long online = sysconf(_SC_NPROCESSORS_ONLN); /* no affinity masks here */
    for (long cpu = 0; cpu < online && n < max; cpu++)
        cpus[n++] = (int)cpu;
#endif
    if (n == 0) {
        cpus[0] = 0; /* no answer: one CPU is the honest guess */
        n = 1;
    }
    return n;
}

int ioloop__thread_create(pthread_t *thread, void *(*fn)(void *), void *arg)
{
    /* Block every asynchronous signal in the new thread, so a process-directed
     * signal goes to an application thread or stays pending for a watcher. */
    sigset_t old;
    ioloop__block_async_signals(&old);
    int err = pthread_create(thread, NULL, fn, arg);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return -err;
}

typedef struct {
    ioloop_runtime_t *rt;
    int index;
    int cpu; /* -1: not pinned */
} loop_thread_t;

static void *loop_thread_main(void *arg)
{
    loop_thread_t *lt = arg;
    ioloop_runtime_t *rt = lt->rt;
    ioloop_t *loop = rt->loops[lt->index];
#ifdef __linux__
    if (lt->cpu >= 0) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(lt->cpu, &set);
        /* Pinning is best effort: a container may forbid it; the loop runs anyway. */
        (void)pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
    }
    char name[16];
    snprintf(name, sizeof(name), "ioloop-%d", lt->index); /* shows in top -H and gdb */
    pthread_setname_np(pthread_self(), name);
#endif
    free(lt);
    current_runtime = rt;
    int err = ioloop__start(loop);
    if (err)
        fprintf(stderr, "ioloop runtime: loop %u did not start: %s\n", ioloop_id(loop), strerror(-err));
    current_runtime = NULL;
    /* Done with it: from here the thread that holds the runtime may use it
     * (free the listeners and servers, close it). */
    atomic_store(&loop->runtime_claimed, false);
    return NULL;
}

static void stop_on_signal(ioloop_t *loop, int signo, void *arg)
{
    (void)loop, (void)signo;
    ioloop_runtime_stop(arg);
}

/* Undoes a partial start: stops and joins what runs, closes every loop. */
static void teardown(ioloop_runtime_t *rt)
{
    if (!rt->joined) {
        for (int i = 0; i < rt->threads_started; i++)
            ioloop_stop(rt->loops[i]);
        for (int i = 0; i < rt->threads_started; i++)
            pthread_join(rt->threads[i], NULL);
        rt->joined = true;
    }
    if (rt->watchdog)
        ioloop__watchdog_stop(rt);
    if (rt->signals_watched) {
        ioloop_signal_unwatch(rt->loops[0], SIGINT);
        ioloop_signal_unwatch(rt->loops[0], SIGTERM);
        pthread_sigmask(SIG_SETMASK, &rt->saved_mask, NULL);
        rt->signals_watched = false;
    }
    if (rt->executor)
        ioloop__executor_free(rt->executor);
    rt->executor = NULL;
    for (int i = 0; i < rt->n; i++) {
        if (rt->loops[i]) {
            atomic_store(&rt->loops[i]->runtime_claimed, false); /* a loop whose thread never started */
            ioloop__close(rt->loops[i], false);
        }
    }
    free(rt->loops);
    free(rt->threads);
    free(rt);
}

int ioloop_runtime_start(const ioloop_runtime_options_t *opts, ioloop_runtime_t **out)
{
    ioloop_runtime_options_t defaults = {0};
    if (!opts)
        opts = &defaults;
    if (!out || opts->loops < 0 || opts->executor_threads < 0 || opts->watchdog < 0)
        return -EINVAL;
    *out = NULL;
    int cpus[IOLOOP__MAX_CPUS];
    int ncpus = ioloop__allowed_cpus(cpus, IOLOOP__MAX_CPUS);

    ioloop_runtime_t *rt = calloc(1, sizeof(*rt));
    if (!rt)
        return -ENOMEM;
    rt->opts = *opts;
    rt->n = opts->loops ? opts->loops : ncpus;
    rt->loops = calloc((size_t)rt->n, sizeof(*rt->loops));
    rt->threads = calloc((size_t)rt->n, sizeof(*rt->threads));
    int err = (rt->loops && rt->threads) ? 0 : -ENOMEM;
    ioloop_options_t loop_opts = {.backend = opts->backend};
    for (int i = 0; !err && i < rt->n; i++) {
        err = ioloop_new(&loop_opts, &rt->loops[i]);
        if (!err) {
            /* Before any thread can see it: from now on only loop i's thread
             * may make owner-only calls on it, until that thread is done. */
            atomic_store(&rt->loops[i]->runtime_index, i);
            atomic_store(&rt->loops[i]->runtime_claimed, true);
        }
    }
    if (!err) {
        int threads = opts->executor_threads ? opts->executor_threads : (ncpus < 2 ? 2 : ncpus);
        rt->executor = ioloop__executor_new(threads);
        if (!rt->executor)
            err = -errno;
    }
    if (!err && opts->handle_signals) {
        /* Block them here first: threads created below inherit the mask, and
         * the signalfd on loop 0 is then the only reader. */
        sigset_t set;
        sigemptyset(&set);
        sigaddset(&set, SIGINT);
        sigaddset(&set, SIGTERM);
        pthread_sigmask(SIG_BLOCK, &set, &rt->saved_mask);
        rt->signals_watched = true;
        err = ioloop_signal_watch(rt->loops[0], SIGINT, stop_on_signal, rt);
        if (!err)
            err = ioloop_signal_watch(rt->loops[0], SIGTERM, stop_on_signal, rt);
    }
    for (int i = 0; !err && i < rt->n; i++) {
        loop_thread_t *lt = malloc(sizeof(*lt));
        if (!lt) {
            err = -ENOMEM;
            break;
        }
        *lt = (loop_thread_t){.rt = rt, .index = i, .cpu = opts->pin ? cpus[i % ncpus] : -1};
        err = ioloop__thread_create(&rt->threads[i], loop_thread_main, lt);
        if (err)
            free(lt);
        else
            rt->threads_started++;
    }
    if (!err && opts->watchdog > 0)
        err = ioloop__watchdog_start(rt);
    if (err) {
        teardown(rt);
        return err;
    }
    *out = rt;
    return 0;
}

int ioloop_runtime_size(const ioloop_runtime_t *rt)
{
    return rt->n;
}

ioloop_t *ioloop_runtime_loop(const ioloop_runtime_t *rt, int i)
{
    return (i >= 0 && i < rt->n) ? rt->loops[i] : NULL;
}

void ioloop_runtime_stop(ioloop_runtime_t *rt)
{
    for (int i = 0; i < rt->n; i++)
        ioloop_stop(rt->loops[i]);
}

int ioloop_runtime_join(ioloop_runtime_t *rt)
{
    if (current_runtime == rt)
        return -EDEADLK;
    if (rt->joined)
        return 0;
    for (int i = 0; i < rt->threads_started; i++)
        pthread_join(rt->threads[i], NULL);
    rt->joined = true;
    return 0;
}

void ioloop_runtime_free(ioloop_runtime_t *rt)
{
    if (!rt || current_runtime == rt)
        return;
    ioloop_runtime_stop(rt);
    ioloop_runtime_join(rt);
    teardown(rt);
}

int ioloop_runtime_index(const ioloop_t *loop)
{
    int index = atomic_load_explicit(&((ioloop_t *)loop)->runtime_index, memory_order_relaxed);
    return index >= 0 ? index : -ENOENT;
}

ioloop_runtime_t *ioloop_runtime_current(void)
{
    return current_runtime;
}
