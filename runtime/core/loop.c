/* loop.c — the loop's life cycle and its iteration (Tornado 4 PollIOLoop.start).
 *
 * One iteration: collect the timers due now; take the callbacks queued so far
 * and run them; run the collected timers; poll (timeout 0 if callbacks are
 * pending, else until the next timer, after a look without sleeping that a
 * busy loop usually ends with); dispatch the ready fds; pass an RCU
 * quiescent state.
 *
 * Threading rule: ioloop_start runs on one thread at a time (a start from
 * another thread fails with -EPERM); ioloop_stop, the stats and the user data
 * are for any thread; the rest is the owner's (ioloop.h), checked with
 * ioloop__owner_check.
 */
#define _GNU_SOURCE
#include "internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { MAX_EVENTS_PER_POLL = 256 };

static _Atomic unsigned next_loop_id = 1;

static ioloop_time_t monotonic_now(void *unused)
{
    (void)unused;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return IOLOOP_SEC(ts.tv_sec) + ts.tv_nsec;
}

static const ioloop__backend_ops_t *choose_backend(ioloop_backend_t wanted)
{
    if (wanted == IOLOOP_BACKEND_DEFAULT) {
        const char *env = getenv("IOLOOP_BACKEND");
        if (env && strcmp(env, "poll") == 0)
            wanted = IOLOOP_BACKEND_POLL;
        else if (env && strcmp(env, "epoll") == 0)
            wanted = IOLOOP_BACKEND_EPOLL;
        else if (env && strcmp(env, "kqueue") == 0)
            wanted = IOLOOP_BACKEND_KQUEUE;
    }
    switch (wanted) {
    case IOLOOP_BACKEND_POLL:
        return &ioloop__backend_poll;
    case IOLOOP_BACKEND_EPOLL:
        return ioloop__backend_epoll.init ? &ioloop__backend_epoll : NULL;
    case IOLOOP_BACKEND_KQUEUE:
        return ioloop__backend_kqueue.init ? &ioloop__backend_kqueue : NULL;
    case IOLOOP_BACKEND_DEFAULT:
        break;
    }
    /* Best available, as Tornado's configurable_default does. */
    if (ioloop__backend_epoll.init)
        return &ioloop__backend_epoll;
    if (ioloop__backend_kqueue.init)
        return &ioloop__backend_kqueue;
    return &ioloop__backend_poll;
}

static void default_error_hook(ioloop_t *loop, const char *what, int err, void *arg)
{
    (void)arg;
    fprintf(stderr, "ioloop[%u]: %s: %s\n", loop->id, what ? what : "error", strerror(-err));
}

int ioloop_new(const ioloop_options_t *opts, ioloop_t **out)
{
    *out = NULL;
    ioloop_options_t defaults = {0};
    if (!opts)
        opts = &defaults;
    const ioloop__backend_ops_t *backend = choose_backend(opts->backend);
    if (!backend)
        return -ENOSYS;
    /* Aligned: the posting fields sit on cache lines of their own. */
    ioloop_t *loop = aligned_alloc(_Alignof(ioloop_t), sizeof(*loop));
    if (!loop)
        return -ENOMEM;
    memset(loop, 0, sizeof(*loop));
    loop->id = atomic_fetch_add(&next_loop_id, 1);
    loop->backend = backend;
    loop->clock = opts->clock ? opts->clock : monotonic_now;
    loop->clock_arg = opts->clock_arg;
    loop->error_fn = default_error_hook;
    ioloop__timers_init(&loop->timers);
    loop->rng = 0x9e3779b97f4a7c15ull ^ ((uint64_t)loop->id << 17) ^ (uint64_t)(uintptr_t)loop;
    loop->backend_fd = -1;
    loop->wake_read_fd = loop->wake_write_fd = -1;
    atomic_init(&loop->refcount, 1);
    atomic_init(&loop->runtime_index, -1);
    loop->error_limit.window_end = INT64_MIN; /* no error reported yet */
    pthread_mutex_init(&loop->handlers_lock, NULL);
    loop->now = loop->clock(loop->clock_arg);

    int err = ioloop__handlers_init(loop);
    if (!err)
        err = backend->init(loop);
    if (!err)
        err = ioloop__callbacks_init(loop);
    if (err) {
        /* Nothing was registered yet: tear down what init built. */
        ioloop__callbacks_close(loop);
        if (loop->backend_data || loop->backend_fd >= 0)
            backend->destroy(loop);
        ioloop__handlers_close(loop, false);
        pthread_mutex_destroy(&loop->handlers_lock);
        free(loop);
        return err;
    }
    ioloop__registry_add(loop);
    *out = loop;
    return 0;
}

static void free_loop(ioloop__rcu_head_t *head)
{
    ioloop_t *loop = (ioloop_t *)((char *)head - offsetof(ioloop_t, rcu));
    pthread_mutex_destroy(&loop->handlers_lock);
    free(loop);
}

void ioloop_ref(ioloop_t *loop)
{
    atomic_fetch_add_explicit(&loop->refcount, 1, memory_order_relaxed);
}

void ioloop_unref(ioloop_t *loop)
{
    if (atomic_fetch_sub_explicit(&loop->refcount, 1, memory_order_acq_rel) != 1)
        return;
    /* Registry readers may still hold the pointer: free after a grace period. */
    ioloop__rcu_defer_free(&loop->rcu, free_loop);
}

static void flush_error_repeats(ioloop_t *loop);

int ioloop__close(ioloop_t *loop, bool all_fds)
{
    if (ioloop__on_loop_thread(loop))
        return -EBUSY; /* from one of its own callbacks */
    if (atomic_load(&loop->running))
        return -EPERM; /* another thread runs it */
    int expected = IOLOOP__OPEN;
    if (!atomic_compare_exchange_strong(&loop->state, &expected, IOLOOP__CLOSING))
        return -ESHUTDOWN;
    ioloop__registry_remove(loop);
    /* Accepted posts run once more here: dropping them would leak what their
     * arguments own, and a poster was told they would run. They run as the
     * loop's own callbacks do, with ioloop_current() == loop (this thread may
     * be running another loop: that one is put back after). */
    ioloop_t *running_here = ioloop__thread_running_loop();
    ioloop__set_thread_running_loop(loop);
    ioloop__callbacks_close(loop);
    /* Higher layers (streams) end what is still open; their callbacks run
     * here and can add nothing (posts are refused from now on). */
    while (loop->close_hooks) {
        ioloop__close_hook_t *hook = loop->close_hooks;
        loop->close_hooks = hook->next;
        hook->fn(loop, hook);
    }
    flush_error_repeats(loop); /* its timer is dropped below */
    ioloop__set_thread_running_loop(running_here);
    ioloop__timers_free(&loop->timers);
    ioloop__handlers_close(loop, all_fds);
    loop->backend->destroy(loop);
    free(loop->calls.items);
    free(loop->running_calls.items);
    loop->calls = loop->running_calls = (ioloop__calls_t){0};
    atomic_store(&loop->state, IOLOOP__CLOSED);
    ioloop_unref(loop);
    return 0;
}

int ioloop_close(ioloop_t *loop, bool all_fds)
{
    if (atomic_load_explicit(&loop->runtime_index, memory_order_relaxed) >= 0 && !ioloop__on_loop_thread(loop))
        return -EPERM; /* the runtime closes its loops */
    int err = ioloop__owner_check(loop);
    return err ? err : ioloop__close(loop, all_fds);
}

void ioloop__close_hook_add(ioloop_t *loop, ioloop__close_hook_t *hook)
{
    hook->next = loop->close_hooks;
    loop->close_hooks = hook;
}

ioloop__close_hook_t *ioloop__close_hook_find(ioloop_t *loop, void (*fn)(ioloop_t *, ioloop__close_hook_t *))
{
    for (ioloop__close_hook_t *hook = loop->close_hooks; hook; hook = hook->next)
        if (hook->fn == fn)
            return hook;
    return NULL;
}

/* The same for the layers outside libioloop, with the owner check. Hooks
 * added while ioloop_close runs the others (from one of them) still run:
 * its loop takes them from the head of the list until it is empty. */
int ioloop_close_hook_add(ioloop_t *loop, ioloop_close_hook_t *hook)
{
    if (!loop || !hook || !hook->fn)
        return -EINVAL;
    int err = ioloop__owner_check(loop);
    if (err)
        return err;
    if (atomic_load(&loop->state) == IOLOOP__CLOSED)
        return -ESHUTDOWN;
    ioloop__close_hook_add(loop, hook);
    return 0;
}

ioloop_close_hook_t *ioloop_close_hook_find(ioloop_t *loop, void (*fn)(ioloop_t *loop, ioloop_close_hook_t *hook))
{
    if (!loop || ioloop__owner_check(loop) != 0)
        return NULL;
    return ioloop__close_hook_find(loop, fn);
}

ioloop_time_t ioloop__clock_now(ioloop_t *loop)
{
    loop->now = loop->clock(loop->clock_arg);
    return loop->now;
}

ioloop_time_t ioloop_time(ioloop_t *loop)
{
    return loop->now;
}

uint64_t ioloop__random(ioloop_t *loop)
{
    /* xorshift64*: jitter needs spread, not cryptographic quality. */
    uint64_t x = loop->rng;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    loop->rng = x;
    return x * 0x2545F4914F6CDD1Dull;
}

unsigned ioloop_id(const ioloop_t *loop)
{
    return loop->id;
}

const char *ioloop_backend_name(const ioloop_t *loop)
{
    return loop->backend->name;
}

int ioloop_set_error_hook(ioloop_t *loop, ioloop_error_fn fn, void *arg)
{
    int err = ioloop__owner_check(loop);
    if (err)
        return err;
    loop->error_fn = fn ? fn : default_error_hook;
    loop->error_arg = fn ? arg : NULL;
    return 0;
}

/* ---- the error hook's rate limit ------------------------------------------
 * A handler that fails on every event would call the hook thousands of times
 * a second. The first report of a (what, err) pair goes through and opens a
 * one-second window; repeats inside it are counted, not reported, and one
 * line "<what> (repeated N times)" reports them when the window ends (a
 * timer), when a different error comes, or when the loop closes. */

#define ERROR_WINDOW IOLOOP_SEC(1)

/* Reports the repeats folded so far, if any, and closes the window. */
static void flush_error_repeats(ioloop_t *loop)
{
    ioloop__error_limit_t *limit = &loop->error_limit;
    if (limit->timer) {
        ioloop_remove_timeout(loop, limit->timer);
        limit->timer = 0;
    }
    limit->window_end = INT64_MIN;
    if (!limit->repeated)
        return;
    char what[sizeof(limit->what) + 40];
    snprintf(what, sizeof(what), "%s (repeated %llu times)", limit->what, (unsigned long long)limit->repeated);
    limit->repeated = 0;
    loop->error_fn(loop, what, limit->err, loop->error_arg);
}

static void error_window_ended(ioloop_t *loop, void *arg)
{
    (void)arg;
    loop->error_limit.timer = 0;
    flush_error_repeats(loop);
}

static bool same_error(const ioloop_t *loop, const char *what, int err)
{
    const ioloop__error_limit_t *limit = &loop->error_limit;
    size_t len = strlen(limit->what); /* what was cut to the buffer's size */
    return limit->err == err && strncmp(limit->what, what, len) == 0 &&
           (what[len] == 0 || len == sizeof(limit->what) - 1);
}

int ioloop_report_error(ioloop_t *loop, const char *what, int err)
{
    int perm = ioloop__owner_check(loop);
    if (perm)
        return perm;
    /* A peer resetting or closing is a normal end of a connection. */
    if (err == -EPIPE || err == -ECONNRESET)
        return 0;
    if (!what)
        what = "error";
    ioloop__error_limit_t *limit = &loop->error_limit;
    /* A fresh reading: the loop may not be running (its cached time is old). */
    ioloop_time_t now = loop->clock(loop->clock_arg);
    if (now < limit->window_end && same_error(loop, what, err)) {
        limit->repeated++;
        if (!limit->timer && atomic_load_explicit(&loop->state, memory_order_relaxed) == IOLOOP__OPEN)
            (void)ioloop_call_at(loop, limit->window_end, error_window_ended, NULL, &limit->timer);
        return 0;
    }
    flush_error_repeats(loop);
    snprintf(limit->what, sizeof(limit->what), "%s", what);
    limit->err = err;
    limit->window_end = now + ERROR_WINDOW;
    loop->error_fn(loop, what, err, loop->error_arg);
    return 0;
}

void ioloop_set_user_data(ioloop_t *loop, void *data)
{
    atomic_store_explicit(&loop->user_data, data, memory_order_release);
}

void *ioloop_user_data(const ioloop_t *loop)
{
    return atomic_load_explicit(&((ioloop_t *)loop)->user_data, memory_order_acquire);
}

void ioloop_stop(ioloop_t *loop)
{
    atomic_store(&loop->stop_requested, true);
    if (!ioloop__on_loop_thread(loop))
        ioloop__wake_unless_closed(loop); /* a close may be closing the waker */
}

void ioloop_get_stats(const ioloop_t *loop, ioloop_stats_t *out)
{
#define READ_STAT(f) out->f = atomic_load_explicit(&loop->stats.f, memory_order_relaxed)
    READ_STAT(iterations);
    READ_STAT(events_dispatched);
    READ_STAT(callbacks_run);
    READ_STAT(posts_received);
    READ_STAT(wakeups_written);
    READ_STAT(wakeups_received);
    READ_STAT(timers_fired);
    READ_STAT(live_connections);
    READ_STAT(longest_busy);
    READ_STAT(busy_time);
#undef READ_STAT
}

/* Records how long this iteration ran work, up to `end`. */
static void note_busy(ioloop_t *loop, ioloop_time_t busy_start, ioloop_time_t end)
{
    ioloop_time_t busy = end - busy_start;
    if (busy > atomic_load_explicit(&loop->stats.longest_busy, memory_order_relaxed))
        atomic_store_explicit(&loop->stats.longest_busy, busy, memory_order_relaxed);
}

/* Adds a stretch of work, from `from` to the last clock reading (loop->now),
 * to the busy_time counter: before the loop sleeps (a reader must not wait
 * for the sleep to end to see it) and at the end of the iteration. The
 * readings are the ones the iteration takes anyway: no extra clock call. A
 * clock that stepped back (a test clock) adds nothing. */
static void add_busy_time(ioloop_t *loop, ioloop_time_t from)
{
    ioloop_time_t busy = loop->now - from;
    if (busy > 0)
        IOLOOP__STAT_ADD(loop, busy_time, busy);
}

/* Polls and dispatches. A loop that may sleep first looks without sleeping:
 * a busy loop usually finds fds ready, and then skips what only sleeping
 * needs (a fresh clock for the timeout, the seq_cst handshake with posters,
 * going RCU-offline and back: fences every iteration). An idle loop pays one
 * extra non-blocking poll before it sleeps, when it has time to spare. */
static void poll_and_dispatch(ioloop_t *loop, ioloop__ready_t *ready, ioloop_time_t busy_start)
{
    int timeout_ms = 0;
    ioloop_time_t busy_from = busy_start; /* the stretch of work not yet in busy_time */
    if (!ioloop__callbacks_pending(loop) && !atomic_load_explicit(&loop->stop_requested, memory_order_relaxed))
        timeout_ms = ioloop__timers_poll_timeout_ms(loop);
    int n = loop->backend->wait(loop, 0, ready, MAX_EVENTS_PER_POLL);
    bool measured = false;
    ioloop_time_t work_start = busy_start; /* when the work the handlers add to began */
    if (n == 0 && timeout_ms != 0) {
        note_busy(loop, busy_start, ioloop__clock_now(loop));
        measured = true;
        timeout_ms = ioloop__timers_poll_timeout_ms(loop); /* with the fresh clock */
        if (timeout_ms != 0 && ioloop__prepare_to_sleep(loop)) {
            add_busy_time(loop, busy_from);
            ioloop__rcu_offline(); /* a sleeping loop must not hold up grace periods */
            atomic_store_explicit(&loop->watch.busy_since, 0, memory_order_relaxed); /* idle is not blocked */
            n = loop->backend->wait(loop, timeout_ms, ready, MAX_EVENTS_PER_POLL);
            ioloop__rcu_online();
            ioloop__woke_up(loop);
            work_start = ioloop__clock_now(loop);
            busy_from = work_start;
            atomic_store_explicit(&loop->watch.busy_since, work_start, memory_order_relaxed);
        }
    }
    ioloop__clock_now(loop);
    if (!measured)
        note_busy(loop, busy_start, loop->now);
    if (n < 0) {
        add_busy_time(loop, busy_from);
        ioloop_report_error(loop, "poll", n);
        return;
    }
    ioloop__handlers_dispatch(loop, ready, n);
    if (n > 0) {
        /* Count the handlers' time here and start the next iteration's clock
         * (busy_since, what the watchdog measures from) after them: from the
         * pre-dispatch reading, a stall in a handler would be reported a
         * second time, blamed on whatever the next iteration runs. */
        note_busy(loop, work_start, ioloop__clock_now(loop));
    }
    add_busy_time(loop, busy_from);
}

int ioloop_start(ioloop_t *loop)
{
    if (atomic_load(&loop->state) == IOLOOP__OPEN && !ioloop__on_loop_thread(loop) &&
        atomic_load_explicit(&loop->runtime_index, memory_order_relaxed) >= 0)
        return -EPERM; /* a runtime loop: its runtime thread runs it */
    return ioloop__start(loop);
}

int ioloop__start(ioloop_t *loop)
{
    if (atomic_load(&loop->state) != IOLOOP__OPEN)
        return -ESHUTDOWN;
    ioloop_t *outer = ioloop__thread_running_loop();
    if (outer == loop)
        return -EBUSY;
    if (outer)
        return -EINVAL; /* another loop runs on this thread */
    bool was_running = false;
    if (!atomic_compare_exchange_strong(&loop->running, &was_running, true))
        return -EPERM; /* running on another thread */

    /* A stop that came before start makes this start return at once. */
    if (atomic_exchange(&loop->stop_requested, false)) {
        atomic_store(&loop->running, false);
        return 0;
    }
    ioloop__set_thread_running_loop(loop);
    int rcu_previous = ioloop__rcu_enter();

    ioloop__ready_t ready[MAX_EVENTS_PER_POLL];
    ioloop__clock_now(loop);
    while (!atomic_exchange_explicit(&loop->stop_requested, false, memory_order_acq_rel)) {
        ioloop_time_t busy_start = loop->now;
        atomic_store_explicit(&loop->watch.busy_since, busy_start, memory_order_relaxed);
        ioloop__timers_collect_due(loop); /* before the callbacks: see timers.c */
        ioloop__callbacks_run(loop);
        ioloop__timers_run_collected(loop);
        if (atomic_load_explicit(&loop->stop_requested, memory_order_relaxed) &&
            atomic_exchange_explicit(&loop->stop_requested, false, memory_order_acq_rel)) {
            note_busy(loop, busy_start, ioloop__clock_now(loop));
            add_busy_time(loop, busy_start);
            break;
        }
        poll_and_dispatch(loop, ready, busy_start);
        ioloop__handlers_retire(loop);
        IOLOOP__STAT_ADD(loop, iterations, 1);
        ioloop__rcu_quiescent();
    }
    /* The stop that ended this run was consumed where it was seen (an
     * exchange): one made since is for the next start, and is kept. */
    atomic_store_explicit(&loop->watch.busy_since, 0, memory_order_relaxed);
    ioloop__handlers_retire(loop);
    ioloop__rcu_leave(rcu_previous);
    ioloop__set_thread_running_loop(NULL);
    atomic_store(&loop->running, false);
    return 0;
}
