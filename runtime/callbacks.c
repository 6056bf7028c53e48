/* callbacks.c — ioloop_add_callback: the own-thread queue, the cross-thread
 * post queue, and the coalesced waker (eventfd, or a pipe where there is none).
 *
 * Threading rule: ioloop_add_callback is safe from any thread. On the loop's
 * own thread it appends to a plain array (no atomics, no allocation once warm).
 * From other threads it pushes a node on a lock-free LIFO stack (one CAS); the
 * loop takes the whole stack with one exchange and reverses it, so posts from
 * one thread run in the order they were made. (liburcu's cds_wfcq would do as
 * well, but its 0.13 atomics are inline asm that ThreadSanitizer cannot see.)
 *
 * Wakeups are coalesced: a poster writes the waker only if the loop is about
 * to sleep or asleep (`polling`) and no write is already on its way
 * (`wakeup_pending`). Both sides use seq_cst: the poster pushes then reads
 * `polling`; the loop sets `polling` then reads the stack. At least one of them
 * sees the other, so no wakeup is lost (libuv#4584 lost them with a relaxed
 * check). `wakeup_pending` is cleared only by the loop after it drained the
 * waker, so while it is set a write is made or on its way.
 *
 * Closing: a poster announces itself in `posters_inside` before it checks the
 * loop's state; ioloop_close marks the loop closing, waits until no poster is
 * inside, then runs what was accepted. So every post either runs or returns
 * -ESHUTDOWN.
 */
#define _GNU_SOURCE
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdlib.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/eventfd.h>
#endif

static int waker_readable(ioloop_t *loop, int fd, unsigned events, void *arg)
{
    (void)fd, (void)events, (void)arg;
    ioloop__waker_drain(loop);
    return 0;
}

int ioloop__callbacks_init(ioloop_t *loop)
{
#ifdef __linux__
    int fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (fd < 0)
        return -errno;
    loop->wake_read_fd = loop->wake_write_fd = fd;
#else
    int fds[2];
    if (pipe(fds) < 0)
        return -errno;
    for (int i = 0; i < 2; i++) {
        fcntl(fds[i], F_SETFL, fcntl(fds[i], F_GETFL) | O_NONBLOCK);
        fcntl(fds[i], F_SETFD, FD_CLOEXEC);
    }
    loop->wake_read_fd = fds[0];
    loop->wake_write_fd = fds[1];
#endif
    return ioloop__handler_add(loop, loop->wake_read_fd, IOLOOP_READ, waker_readable, NULL);
}

void ioloop__wake(ioloop_t *loop)
{
    if (atomic_exchange(&loop->wakeup_pending, true))
        return; /* a write is made or on its way */
    atomic_fetch_add_explicit(&loop->stats.wakeups_written, 1, memory_order_relaxed);
#ifdef __linux__
    uint64_t one = 1;
    ssize_t n = write(loop->wake_write_fd, &one, sizeof(one));
#else
    char one = 1;
    ssize_t n = write(loop->wake_write_fd, &one, 1);
#endif
    /* EAGAIN: the counter/pipe is full, so the loop is bound to wake anyway. */
    (void)n;
}

void ioloop__waker_drain(ioloop_t *loop)
{
    char buf[64];
    while (read(loop->wake_read_fd, buf, sizeof(buf)) > 0)
        continue;
    IOLOOP__STAT_ADD(loop, wakeups_received, 1);
    atomic_store(&loop->wakeup_pending, false);
}

bool ioloop__prepare_to_sleep(ioloop_t *loop)
{
    atomic_store(&loop->polling, true);
    if (atomic_load(&loop->posts) != NULL || atomic_load(&loop->stop_requested)) {
        atomic_store_explicit(&loop->polling, false, memory_order_relaxed);
        return false;
    }
    return true;
}

void ioloop__woke_up(ioloop_t *loop)
{
    atomic_store_explicit(&loop->polling, false, memory_order_relaxed);
}

bool ioloop__callbacks_pending(ioloop_t *loop)
{
    return loop->calls.count > 0 || atomic_load_explicit(&loop->posts, memory_order_relaxed) != NULL;
}

static int push_local(ioloop_t *loop, ioloop_callback_fn fn, void *arg)
{
    ioloop__calls_t *calls = &loop->calls;
    if (calls->count == calls->capacity) {
        size_t capacity = calls->capacity ? calls->capacity * 2 : 64;
        ioloop__call_t *items = realloc(calls->items, capacity * sizeof(*items));
        if (!items)
            return -ENOMEM;
        calls->items = items;
        calls->capacity = capacity;
    }
    calls->items[calls->count++] = (ioloop__call_t){fn, arg};
    return 0;
}

int ioloop_add_callback(ioloop_t *loop, ioloop_callback_fn fn, void *arg)
{
    if (!fn)
        return -EINVAL;
    if (ioloop__on_loop_thread(loop)) /* cheap path: no atomics, no allocation */
        return atomic_load_explicit(&loop->state, memory_order_relaxed) == IOLOOP__OPEN ? push_local(loop, fn, arg)
                                                                                         : -ESHUTDOWN;
    atomic_fetch_add(&loop->posters_inside, 1);
    int err = 0;
    if (atomic_load(&loop->state) != IOLOOP__OPEN) {
        err = -ESHUTDOWN;
    } else {
        ioloop__post_t *post = malloc(sizeof(*post));
        if (!post) {
            err = -ENOMEM;
        } else {
            post->fn = fn;
            post->arg = arg;
            ioloop__post_t *head = atomic_load_explicit(&loop->posts, memory_order_relaxed);
            do
                post->next = head;
            while (!atomic_compare_exchange_weak(&loop->posts, &head, post));
            if (atomic_load(&loop->polling))
                ioloop__wake(loop);
        }
    }
    atomic_fetch_sub(&loop->posters_inside, 1);
    return err;
}

/* Takes every post made so far, oldest first. */
static ioloop__post_t *take_posts(ioloop_t *loop)
{
    if (!atomic_load_explicit(&loop->posts, memory_order_relaxed))
        return NULL;
    ioloop__post_t *lifo = atomic_exchange_explicit(&loop->posts, NULL, memory_order_acquire);
    ioloop__post_t *fifo = NULL;
    while (lifo) {
        ioloop__post_t *next = lifo->next;
        lifo->next = fifo;
        fifo = lifo;
        lifo = next;
    }
    return fifo;
}

static size_t run_posts(ioloop_t *loop, ioloop__post_t *post)
{
    size_t n = 0;
    while (post) {
        ioloop__post_t *next = post->next;
        ioloop_callback_fn fn = post->fn;
        void *arg = post->arg;
        free(post);
        IOLOOP__WATCH_RUNNING(loop, fn);
        fn(loop, arg);
        post = next;
        n++;
    }
    return n;
}

void ioloop__callbacks_run(ioloop_t *loop)
{
    /* Only what is queued now: callbacks added while these run wait for the
     * next iteration. */
    ioloop__calls_t batch = loop->calls;
    loop->calls = loop->running_calls;
    loop->running_calls = batch;
    ioloop__post_t *posts = take_posts(loop);

    for (size_t i = 0; i < batch.count; i++) {
        IOLOOP__WATCH_RUNNING(loop, batch.items[i].fn);
        batch.items[i].fn(loop, batch.items[i].arg);
    }
    loop->running_calls.count = 0;
    size_t posted = run_posts(loop, posts);
    IOLOOP__WATCH_RUNNING(loop, NULL);
    if (batch.count + posted) {
        IOLOOP__STAT_ADD(loop, callbacks_run, batch.count + posted);
        IOLOOP__STAT_ADD(loop, posts_received, posted);
    }
}

void ioloop__callbacks_close(ioloop_t *loop)
{
    /* The state is no longer OPEN: wait out posters that checked it before. */
    while (atomic_load(&loop->posters_inside) > 0)
        sched_yield();
    for (size_t i = 0; i < loop->calls.count; i++)
        loop->calls.items[i].fn(loop, loop->calls.items[i].arg);
    loop->calls.count = 0;
    run_posts(loop, take_posts(loop));

    if (loop->wake_read_fd >= 0) {
        ioloop_remove_handler(loop, loop->wake_read_fd);
        close(loop->wake_read_fd);
        if (loop->wake_write_fd != loop->wake_read_fd)
            close(loop->wake_write_fd);
    }
    loop->wake_read_fd = loop->wake_write_fd = -1;
}
