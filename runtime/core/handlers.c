/* handlers.c — the fd → handler table, published with RCU.
 *
 * Threading rule: add/update/remove may be called from any thread; they
 * serialise on loop->handlers_lock and publish with release stores. The loop
 * thread reads the table with no lock (acquire loads) while it dispatches.
 *
 * Why nothing stale is ever used:
 *  - each registration gets a token (generation << 32 | fd) that the backend
 *    hands back with every ready event; dispatch drops an event whose token is
 *    not the current registration's, so an event collected for a removed fd,
 *    or for an fd number since reused by a new socket, never reaches a handler
 *    (Tornado's `self._events.pop(fd)` rule, made exact);
 *  - a removed entry (and an outgrown table) is unpublished at once and freed
 *    only after an RCU grace period, so the loop thread, which passes a
 *    quiescent state only between iterations, can never touch freed memory.
 *
 * An fd closed without remove_handler leaves its entry behind. It does not
 * block the number's reuse: add on an occupied slot asks the backend, which
 * accepts the fd if its own registration is gone with the closed file (epoll:
 * the kernel dropped it; poll: fstat shows another file), and the stale entry
 * is then retired like a removed one. A handler called after remove_handler
 * returned on another thread is possible (dispatch had loaded it): see
 * ioloop_remove_handler in ioloop.h for when arg may be freed.
 */
#define _GNU_SOURCE
#include "internal.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <unistd.h>

enum { INITIAL_CAPACITY = 64 };

static ioloop__fdtable_t *table_new(int capacity)
{
    ioloop__fdtable_t *t = calloc(1, sizeof(*t) + (size_t)capacity * sizeof(t->slots[0]));
    if (t)
        t->capacity = capacity;
    return t;
}

static void free_table(ioloop__rcu_head_t *head)
{
    free((ioloop__fdtable_t *)((char *)head - offsetof(ioloop__fdtable_t, rcu)));
}

/* A batch of retired handlers chained through rcu.next, freed together so a
 * busy loop makes one call_rcu per iteration, not one per closed fd. */
static void free_handler_batch(ioloop__rcu_head_t *head)
{
    while (head) {
        ioloop__rcu_head_t *next = head->next;
        free((ioloop__handler_t *)((char *)head - offsetof(ioloop__handler_t, rcu)));
        head = next;
    }
}

int ioloop__handlers_init(ioloop_t *loop)
{
    ioloop__fdtable_t *t = table_new(INITIAL_CAPACITY);
    if (!t)
        return -ENOMEM;
    atomic_init(&loop->fdtable, t);
    return 0;
}

/* The table never needs more slots than the process may have fds. */
static int64_t fd_limit(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < INT_MAX)
        return (int64_t)rl.rlim_cur;
    return INT_MAX;
}

/* handlers_lock held. Grows the table so that fd fits; 0 or -errno. */
static int table_for_fd(ioloop_t *loop, int fd, ioloop__fdtable_t **out)
{
    ioloop__fdtable_t *t = atomic_load_explicit(&loop->fdtable, memory_order_relaxed);
    *out = t;
    if (fd < t->capacity)
        return 0;
    /* Only an open fd makes the table grow: a bogus number must not make us
     * allocate (or double an int until it overflows) before failing. */
    if (fcntl(fd, F_GETFD) < 0)
        return -EBADF;
    int64_t capacity = t->capacity;
    while (capacity <= fd)
        capacity *= 2;
    int64_t limit = fd_limit();
    if (capacity > limit)
        capacity = limit > fd ? limit : (int64_t)fd + 1; /* the limit may have been lowered since fd opened */
    ioloop__fdtable_t *bigger = table_new((int)capacity);
    if (!bigger)
        return -ENOMEM;
    for (int i = 0; i < t->capacity; i++)
        atomic_init(&bigger->slots[i], atomic_load_explicit(&t->slots[i], memory_order_relaxed));
    atomic_store_explicit(&loop->fdtable, bigger, memory_order_release);
    ioloop__rcu_defer_free(&t->rcu, free_table);
    *out = bigger;
    return 0;
}

static void after_foreign_change(ioloop_t *loop)
{
    /* A loop that is not running will build its poll set when it starts. The
     * wake goes through the posters' handshake: ioloop_close may be closing
     * the waker right now. */
    if (loop->backend->wake_on_foreign_change && atomic_load(&loop->running) && !ioloop__on_loop_thread(loop))
        ioloop__wake_unless_closed(loop);
}

/* handlers_lock held: puts h on the list freed after the next grace period. */
static void retire_locked(ioloop_t *loop, ioloop__handler_t *h)
{
    assert(h);
    h->rcu.next = atomic_load_explicit(&loop->retired, memory_order_relaxed);
    atomic_store_explicit(&loop->retired, &h->rcu, memory_order_relaxed);
}

int ioloop__handler_add(ioloop_t *loop, int fd, unsigned events, ioloop_handler_fn fn, void *arg)
{
    if (fd < 0)
        return -EBADF;
    if (!fn)
        return -EINVAL;
    ioloop__handler_t *h = malloc(sizeof(*h));
    if (!h)
        return -ENOMEM;
    int err = 0;
    pthread_mutex_lock(&loop->handlers_lock);
    ioloop__fdtable_t *t = NULL;
    ioloop__handler_t *stale = NULL;
    if (atomic_load(&loop->state) != IOLOOP__OPEN || !atomic_load_explicit(&loop->fdtable, memory_order_relaxed))
        err = -ESHUTDOWN;
    else
        err = table_for_fd(loop, fd, &t);
    if (!err) {
        stale = atomic_load_explicit(&t->slots[fd], memory_order_relaxed);
        h->fd = fd;
        atomic_init(&h->events, events & ~IOLOOP__EXCLUSIVE);
        h->token = ((uint64_t)++loop->next_generation << 32) | (uint32_t)fd;
        h->fn = fn;
        h->arg = arg;
        /* With an entry there already, the backend's -EEXIST says it is live. */
        err = loop->backend->add(loop, fd, events, h->token);
    }
    if (!err) {
        atomic_store_explicit(&t->slots[fd], h, memory_order_release);
        if (stale)
            retire_locked(loop, stale); /* its fd was closed without remove_handler */
    }
    pthread_mutex_unlock(&loop->handlers_lock);
    if (err) {
        free(h);
        return err;
    }
    after_foreign_change(loop);
    return 0;
}

int ioloop_add_handler(ioloop_t *loop, int fd, unsigned events, ioloop_handler_fn fn, void *arg)
{
    if (events & ~(unsigned)(IOLOOP_READ | IOLOOP_WRITE | IOLOOP_ERROR))
        return -EINVAL;
    return ioloop__handler_add(loop, fd, events, fn, arg);
}

/* handlers_lock held. */
static ioloop__handler_t *lookup_locked(ioloop_t *loop, int fd)
{
    ioloop__fdtable_t *t = atomic_load_explicit(&loop->fdtable, memory_order_relaxed);
    if (!t || fd < 0 || fd >= t->capacity)
        return NULL;
    return atomic_load_explicit(&t->slots[fd], memory_order_relaxed);
}

int ioloop_update_handler(ioloop_t *loop, int fd, unsigned events)
{
    if (events & ~(unsigned)(IOLOOP_READ | IOLOOP_WRITE | IOLOOP_ERROR))
        return -EINVAL;
    int err;
    pthread_mutex_lock(&loop->handlers_lock);
    ioloop__handler_t *h = lookup_locked(loop, fd);
    if (atomic_load(&loop->state) != IOLOOP__OPEN) {
        err = -ESHUTDOWN;
    } else if (!h) {
        err = -ENOENT;
    } else if (atomic_load_explicit(&h->events, memory_order_relaxed) == events) {
        err = 0; /* nothing to tell the kernel */
    } else {
        err = loop->backend->mod(loop, fd, events, h->token);
        if (!err)
            atomic_store_explicit(&h->events, events, memory_order_relaxed);
    }
    pthread_mutex_unlock(&loop->handlers_lock);
    if (!err)
        after_foreign_change(loop);
    return err;
}

/* Removes fd's entry, if it is the registration `token` (0: whichever). */
static bool remove_entry(ioloop_t *loop, int fd, uint64_t token)
{
    pthread_mutex_lock(&loop->handlers_lock);
    ioloop__handler_t *h = lookup_locked(loop, fd);
    if (h && token && h->token != token)
        h = NULL;
    if (h) {
        ioloop__fdtable_t *t = atomic_load_explicit(&loop->fdtable, memory_order_relaxed);
        atomic_store_explicit(&t->slots[fd], NULL, memory_order_release);
        /* The fd may already be closed (the kernel then dropped it from epoll
         * itself): the table entry is what matters. */
        (void)loop->backend->del(loop, fd);
        retire_locked(loop, h);
    }
    pthread_mutex_unlock(&loop->handlers_lock);
    if (h)
        after_foreign_change(loop);
    return h != NULL;
}

int ioloop_remove_handler(ioloop_t *loop, int fd)
{
    return remove_entry(loop, fd, 0) ? 0 : -ENOENT;
}

int ioloop__handler_rearm(ioloop_t *loop, int fd, unsigned events)
{
    int err;
    pthread_mutex_lock(&loop->handlers_lock);
    ioloop__handler_t *h = lookup_locked(loop, fd);
    if (!h) {
        err = -ENOENT;
    } else {
        /* Same entry, same token: an event already collected for it stays
         * valid, and nothing is allocated or retired. */
        (void)loop->backend->del(loop, fd);
        err = loop->backend->add(loop, fd, events, h->token);
    }
    pthread_mutex_unlock(&loop->handlers_lock);
    return err;
}

void ioloop__handler_forget_invalid(ioloop_t *loop, int fd, uint64_t token)
{
    if (!remove_entry(loop, fd, token))
        return; /* removed (or replaced) since the poll */
    char what[48];
    snprintf(what, sizeof(what), "handler for fd %d (closed, not removed)", fd);
    ioloop_report_error(loop, what, -EBADF);
}

void ioloop__handlers_retire(ioloop_t *loop)
{
    /* Unlocked peek: a batch missed now is taken next iteration. */
    if (!atomic_load_explicit(&loop->retired, memory_order_relaxed))
        return;
    pthread_mutex_lock(&loop->handlers_lock);
    ioloop__rcu_head_t *batch = atomic_exchange_explicit(&loop->retired, NULL, memory_order_relaxed);
    pthread_mutex_unlock(&loop->handlers_lock);
    if (batch)
        ioloop__rcu_defer_free(batch, free_handler_batch);
}

void ioloop__handlers_dispatch(ioloop_t *loop, const ioloop__ready_t *ready, int n)
{
    for (int i = 0; i < n; i++) {
        int fd = ready[i].fd;
        /* Reload per event: a handler may have grown the table. */
        ioloop__fdtable_t *t = atomic_load_explicit(&loop->fdtable, memory_order_acquire);
        if (fd < 0 || fd >= t->capacity)
            continue;
        ioloop__handler_t *h = atomic_load_explicit(&t->slots[fd], memory_order_acquire);
        if (!h || h->token != ready[i].token)
            continue; /* removed earlier in this batch, or the fd was reused */
        unsigned events = ready[i].events &
                          (atomic_load_explicit(&h->events, memory_order_relaxed) | IOLOOP_ERROR);
        if (!events)
            continue;
        IOLOOP__STAT_ADD(loop, events_dispatched, 1);
        IOLOOP__WATCH_RUNNING(loop, h->fn);
        int err = h->fn(loop, fd, events, h->arg);
        IOLOOP__WATCH_RUNNING(loop, NULL);
        if (err < 0) {
            char what[40];
            snprintf(what, sizeof(what), "handler for fd %d", fd);
            ioloop_report_error(loop, what, err);
        }
    }
}

void ioloop__handlers_foreach_locked(ioloop_t *loop, void (*fn)(ioloop__handler_t *h, void *arg), void *arg)
{
    ioloop__fdtable_t *t = atomic_load_explicit(&loop->fdtable, memory_order_relaxed);
    for (int fd = 0; t && fd < t->capacity; fd++) {
        ioloop__handler_t *h = atomic_load_explicit(&t->slots[fd], memory_order_relaxed);
        if (h)
            fn(h, arg);
    }
}

void ioloop__handlers_close(ioloop_t *loop, bool close_fds)
{
    /* The loop is not running, so no reader holds an entry: free at once. */
    pthread_mutex_lock(&loop->handlers_lock);
    ioloop__fdtable_t *t = atomic_load_explicit(&loop->fdtable, memory_order_relaxed);
    atomic_store_explicit(&loop->fdtable, NULL, memory_order_release);
    ioloop__rcu_head_t *retired = atomic_exchange_explicit(&loop->retired, NULL, memory_order_relaxed);
    pthread_mutex_unlock(&loop->handlers_lock);
    for (int fd = 0; t && fd < t->capacity; fd++) {
        ioloop__handler_t *h = atomic_load_explicit(&t->slots[fd], memory_order_relaxed);
        if (!h)
            continue;
        if (close_fds)
            close(fd);
        free(h);
    }
    free(t);
    free_handler_batch(retired);
}
