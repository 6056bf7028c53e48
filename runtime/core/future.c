/* future.c — ioloop_future_*: a one-shot result bound to a loop, and
 * ioloop_run_sync on top of it.
 *
 * Threading rule: complete, done, ref/unref from any thread; on_done and the
 * done callback on the loop's thread. Completion never calls the done callback
 * inline: it posts a "settle" callback to the loop (holding a reference), and
 * only the loop thread touches the done-callback fields, so completing from
 * another thread and setting the callback on the loop cannot race.
 */
#include "internal.h"

#include <assert.h>
#include <errno.h>
#include <stdlib.h>

enum { PENDING, COMPLETING, DONE };

struct ioloop_future {
    ioloop_t *loop;
    _Atomic int refcount;
    _Atomic int state;
    int status;
    void *result;
    /* loop thread only */
    bool settled; /* the settle callback ran */
    ioloop_future_done_fn done_fn;
    void *done_arg;
};

int ioloop_future_new(ioloop_t *loop, ioloop_future_t **out)
{
    *out = NULL;
    if (!loop)
        return -EINVAL;
    ioloop_future_t *f = calloc(1, sizeof(*f));
    if (!f)
        return -ENOMEM;
    f->loop = loop;
    atomic_init(&f->refcount, 1);
    atomic_init(&f->state, PENDING);
    ioloop_ref(loop);
    *out = f;
    return 0;
}

void ioloop_future_ref(ioloop_future_t *f)
{
    atomic_fetch_add_explicit(&f->refcount, 1, memory_order_relaxed);
}

void ioloop_future_unref(ioloop_future_t *f)
{
    if (!f)
        return;
    int before = atomic_fetch_sub_explicit(&f->refcount, 1, memory_order_acq_rel);
    assert(before > 0); /* an unref without its ref */
    if (before != 1)
        return;
    ioloop_unref(f->loop);
    free(f);
}

static void call_done(ioloop_t *loop, void *arg)
{
    (void)loop;
    ioloop_future_t *f = arg;
    ioloop_future_done_fn fn = f->done_fn;
    f->done_fn = NULL;
    if (fn)
        fn(f, f->done_arg);
    ioloop_future_unref(f);
}

static void settle(ioloop_t *loop, void *arg)
{
    ioloop_future_t *f = arg;
    assert(atomic_load_explicit(&f->state, memory_order_acquire) == DONE && !f->settled);
    f->settled = true;
    call_done(loop, f);
}

int ioloop_future_complete(ioloop_future_t *f, int status, void *result)
{
    int expected = PENDING;
    if (!atomic_compare_exchange_strong(&f->state, &expected, COMPLETING))
        return -EALREADY;
    f->status = status;
    f->result = result;
    atomic_store_explicit(&f->state, DONE, memory_order_release);
    ioloop_future_ref(f);
    if (ioloop_add_callback(f->loop, settle, f) < 0)
        ioloop_future_unref(f); /* the loop is closed: the result stays readable */
    return 0;
}

int ioloop_future_on_done(ioloop_future_t *f, ioloop_future_done_fn fn, void *arg)
{
    int perm = ioloop__owner_check(f->loop);
    if (perm)
        return perm;
    f->done_fn = fn;
    f->done_arg = arg;
    if (!f->settled)
        return 0; /* settle will call it */
    ioloop_future_ref(f);
    int err = ioloop_add_callback(f->loop, call_done, f);
    if (err)
        ioloop_future_unref(f);
    return err;
}

bool ioloop_future_done(const ioloop_future_t *f)
{
    return atomic_load_explicit(&f->state, memory_order_acquire) == DONE;
}

int ioloop_future_status(const ioloop_future_t *f)
{
    return ioloop_future_done(f) ? f->status : -EAGAIN;
}

void *ioloop_future_result(const ioloop_future_t *f)
{
    return ioloop_future_done(f) ? f->result : NULL;
}

ioloop_t *ioloop_future_loop(const ioloop_future_t *f)
{
    return f->loop;
}

/* ---- run_sync ------------------------------------------------------------ */

/* On the heap, not run_sync's stack: if the loop stops before its first
 * iteration, run_sync_begin stays queued after run_sync returned, and frees
 * this when it finally runs (at the latest when the loop closes). */
typedef struct {
    ioloop_future_t *(*fn)(ioloop_t *loop, void *arg);
    void *arg;
    ioloop_future_t *future;
    bool begun;     /* run_sync_begin ran */
    bool abandoned; /* run_sync returned first: run_sync_begin frees this */
    bool timed_out;
    int on_done_error; /* the done callback could not be set: run_sync returns this */
} run_sync_t;

static void run_sync_done(ioloop_future_t *f, void *arg)
{
    (void)arg;
    ioloop_stop(ioloop_future_loop(f));
}

static void run_sync_timeout(ioloop_t *loop, void *arg)
{
    ((run_sync_t *)arg)->timed_out = true;
    ioloop_stop(loop);
}

static void run_sync_begin(ioloop_t *loop, void *arg)
{
    run_sync_t *rs = arg;
    if (rs->abandoned) {
        free(rs);
        return;
    }
    rs->begun = true;
    rs->future = rs->fn(loop, rs->arg);
    if (!rs->future) {
        ioloop_stop(loop);
        return;
    }
    /* It fails for a future of a loop another thread runs (-EPERM) or on
     * ENOMEM; nothing would then stop the loop. */
    int err = ioloop_future_on_done(rs->future, run_sync_done, rs);
    if (err) {
        rs->on_done_error = err;
        ioloop_stop(loop);
    }
}

static int run_sync_finish(run_sync_t *rs, void **result)
{
    int err;
    if (!rs->future) {
        err = -ENOMEM; /* fn could not make its future */
    } else if (!ioloop_future_done(rs->future)) {
        err = rs->on_done_error ? rs->on_done_error
              : rs->timed_out   ? -ETIMEDOUT
                                : -ECANCELED; /* someone else stopped the loop */
    } else {
        if (result)
            *result = rs->future->result;
        err = rs->future->status;
    }
    if (rs->future) {
        /* A done callback may still be due: detach it, rs goes now. */
        if (!rs->on_done_error) /* else not ours to touch: another loop's */
            rs->future->done_fn = NULL;
        ioloop_future_unref(rs->future);
    }
    free(rs);
    return err;
}

int ioloop_run_sync(ioloop_t *loop, ioloop_future_t *(*fn)(ioloop_t *loop, void *arg), void *arg,
                    ioloop_time_t timeout, void **result)
{
    /* Refuse what ioloop_start would refuse before queuing anything. */
    if (atomic_load(&loop->state) != IOLOOP__OPEN)
        return -ESHUTDOWN;
    ioloop_t *outer = ioloop__thread_running_loop();
    if (outer == loop)
        return -EBUSY;
    if (atomic_load(&loop->running) || atomic_load(&loop->runtime_index) >= 0 || atomic_load(&loop->runtime_claimed))
        return -EPERM; /* run elsewhere, or a runtime's */
    if (outer)
        return -EINVAL; /* another loop runs on this thread */
    /* run_sync is a start of its own: a stop made before it was for an
     * earlier start, and must not end this one before fn ran. */
    atomic_exchange(&loop->stop_requested, false);

    run_sync_t *rs = calloc(1, sizeof(*rs));
    if (!rs)
        return -ENOMEM;
    rs->fn = fn;
    rs->arg = arg;
    ioloop_timer_t timer = 0;
    if (timeout > 0) {
        int err = ioloop_call_later(loop, timeout, run_sync_timeout, rs, &timer);
        if (err) {
            free(rs);
            return err;
        }
    }
    int err = ioloop_add_callback(loop, run_sync_begin, rs);
    if (err) {
        ioloop_remove_timeout(loop, timer);
        free(rs);
        return err;
    }
    err = ioloop_start(loop);
    ioloop_remove_timeout(loop, timer);
    if (!rs->begun) {
        /* A stop from another thread (or a racing start) came first. */
        rs->abandoned = true;
        return err ? err : -ECANCELED;
    }
    return run_sync_finish(rs, result); /* begun: start ran the loop */
}
