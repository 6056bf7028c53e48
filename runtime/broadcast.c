/* broadcast.c — ioloop_runtime_broadcast: one callback run once on every
 * loop of a runtime, and a future that completes when all have run.
 *
 * Threading rule: any thread may broadcast. Each loop runs the callback on
 * its own thread; the runs meet in an atomic countdown, and the one that
 * brings it to zero completes the future (which runs its done callbacks on
 * its home loop) and frees the shared state. The broadcaster holds one count
 * of its own while it posts, so the last loop cannot free the state before
 * every post was made.
 */
#define _GNU_SOURCE
#include "runtime_internal.h"

#include <errno.h>
#include <stdlib.h>

typedef struct {
    ioloop_callback_fn fn;
    void *arg;
    ioloop_future_t *future;
    _Atomic int remaining;
    _Atomic int status;
} broadcast_t;

static void broadcast_done_one(broadcast_t *b)
{
    if (atomic_fetch_sub(&b->remaining, 1) != 1)
        return;
    ioloop_future_complete(b->future, atomic_load(&b->status), NULL);
    ioloop_future_unref(b->future);
    free(b);
}

static void broadcast_run(ioloop_t *loop, void *arg)
{
    broadcast_t *b = arg;
    b->fn(loop, b->arg);
    broadcast_done_one(b);
}

int ioloop_runtime_broadcast(ioloop_runtime_t *rt, ioloop_t *home, ioloop_callback_fn fn, void *arg,
                             ioloop_future_t **out)
{
    *out = NULL;
    if (!rt || !fn)
        return -EINVAL;
    if (!home)
        home = ioloop_current();
    broadcast_t *b = calloc(1, sizeof(*b));
    ioloop_future_t *f = NULL;
    if (!b || !home || ioloop_future_new(home, &f)) {
        free(b);
        ioloop_future_unref(f);
        return -ENOMEM;
    }
    ioloop_future_ref(f); /* one for the broadcast, one for the caller */
    b->fn = fn;
    b->arg = arg;
    b->future = f;
    /* One extra count held while posting, so the last loop cannot complete
     * (and free b) before every post was made. */
    atomic_init(&b->remaining, rt->n + 1);
    atomic_init(&b->status, 0);
    for (int i = 0; i < rt->n; i++) {
        int err = ioloop_add_callback(rt->loops[i], broadcast_run, b);
        if (err) {
            atomic_store(&b->status, err);
            broadcast_done_one(b);
        }
    }
    broadcast_done_one(b);
    *out = f;
    return 0;
}
