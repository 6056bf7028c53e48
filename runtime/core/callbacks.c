/* callbacks.c — ioloop_add_callback: the own-thread queue, the cross-thread
 * post queue, and the coalesced waker (an eventfd; a pipe where there is none,
 * and with the portable poll backend).
 *
 * Threading rule: ioloop_add_callback is safe from any thread. On the loop's
 * own thread it appends to a plain array (no atomics, no allocation once warm).
 * From other threads it pushes a node on a lock-free LIFO stack (one CAS); the
 * loop takes the whole stack with one exchange and reverses it, so posts from
 * one thread run in the order they were made. (liburcu's cds_wfcq would do as
 * well, but its 0.13 atomics are inline asm that ThreadSanitizer cannot see.)
 *
 * Nodes are recycled, not freed: after running a batch the loop pushes its
 * nodes, chained, onto `returned` with one CAS (only it adds there), as long
 * as that holds at most RECYCLE_MAX nodes since posters last emptied it; a
 * poster whose thread-local cache is empty takes the whole chain with one
 * exchange (taking everything is ABA-free) and then pops nodes with no
 * atomics. So steady cross-thread posting makes neither a malloc on the
 * poster nor a free on the loop (glibc's cross-thread free fought the
 * poster's malloc for the arena lock), even when the loop falls behind and
 * batches grow. A thread's cache is freed at its exit; it holds at most one
 * returned chain (RECYCLE_MAX nodes, 2 MiB, about the posts that were in
 * flight at a peak) plus the odd node of a refused post.
 *
 * Wakeups are coalesced: a poster writes the waker only if the loop is about
 * to sleep or asleep (`polling`) and no write is already on its way
 * (`wakeup_pending`). Both sides use seq_cst: the poster pushes then reads
 * `polling`; the loop sets `polling` then reads the stack. At least one of them
 * sees the other, so no wakeup is lost (libuv#4584 lost them with a relaxed
 * check). `wakeup_pending` is cleared by the loop after it drained the
 * waker (or by a poster whose write failed), so while it is set a write is
 * made or on its way.
 *
 * Closing: the stack head itself carries the "closed" mark (CLOSED, address
 * 1). ioloop_close takes the stack and sets the mark in one exchange; a
 * poster's CAS either lands before it (its post is taken and run by the
 * close) or fails and then sees the mark (-ESHUTDOWN). So every post either
 * runs or returns -ESHUTDOWN, with one locked instruction per post. Only a
 * poster that is going to write the waker announces itself in
 * `posters_inside` and then re-checks the mark (seq_cst both sides: close sets
 * the mark then reads `posters_inside`), so close never closes the waker fd
 * under a poster about to write it. Every other wake from another thread
 * (ioloop_stop, a handler change the poll backend must see) goes through the
 * same handshake, ioloop__wake_unless_closed: these are rare, so the post
 * path itself stays one CAS.
 */
#define _GNU_SOURCE
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
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

/* The portable poll backend gets the portable waker, a pipe, so that the
 * fallback pair is what the poll runs of the test suite exercise. */
static bool use_eventfd(const ioloop_t *loop)
{
#ifdef __linux__
    return loop->backend != &ioloop__backend_poll;
#else
    (void)loop;
    return false;
#endif
}

int ioloop__callbacks_init(ioloop_t *loop)
{
#ifdef __linux__
    if (use_eventfd(loop)) {
        int fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (fd < 0)
            return -errno;
        loop->wake_read_fd = loop->wake_write_fd = fd;
    }
#endif
    if (!use_eventfd(loop)) {
        int fds[2];
        if (pipe(fds) < 0)
            return -errno;
        for (int i = 0; i < 2; i++) {
            /* A blocking waker could block a poster on a full pipe: fail instead. */
            int flags = fcntl(fds[i], F_GETFL);
            if (flags < 0 || fcntl(fds[i], F_SETFL, flags | O_NONBLOCK) < 0 || fcntl(fds[i], F_SETFD, FD_CLOEXEC) < 0) {
                int err = -errno;
                close(fds[0]);
                close(fds[1]);
                return err;
            }
        }
        loop->wake_read_fd = fds[0];
        loop->wake_write_fd = fds[1];
    }
    return ioloop__handler_add(loop, loop->wake_read_fd, IOLOOP_READ, waker_readable, NULL);
}

/* Only inside the posters_inside handshake (see the top of the file). */
static void wake(ioloop_t *loop)
{
    if (atomic_exchange(&loop->wakeup_pending, true))
        return; /* a write is made or on its way */
    atomic_fetch_add_explicit(&loop->stats.wakeups_written, 1, memory_order_relaxed);
    uint64_t one = 1; /* an eventfd takes 8 bytes, a pipe any */
    ssize_t n;
    do
        n = write(loop->wake_write_fd, &one, loop->wake_write_fd == loop->wake_read_fd ? sizeof(one) : 1);
    while (n < 0 && errno == EINTR);
    /* EAGAIN: the counter/pipe is full, so the loop is bound to wake anyway.
     * Any other failure made no wakeup: wakeup_pending left set would
     * silence every later one, so it is cleared for the next poster to try. */
    if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK)
        atomic_store(&loop->wakeup_pending, false);
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

/* The closed mark: never a node address (nodes are malloc-aligned). */
#define CLOSED ((ioloop__post_t *)(uintptr_t)1)

enum { RECYCLE_MAX = 65536 };

/* This thread's spare nodes (see the top of the file). */
static _Thread_local struct {
    ioloop__post_t *head;
    bool registered, exited;
} node_cache;
static pthread_key_t node_cache_key;
static pthread_once_t node_cache_once = PTHREAD_ONCE_INIT;

static void free_chain(ioloop__post_t *node)
{
    while (node) {
        ioloop__post_t *next = node->next;
        free(node);
        node = next;
    }
}

static void node_cache_exit(void *unused)
{
    (void)unused;
    free_chain(node_cache.head);
    node_cache.head = NULL;
    node_cache.exited = true; /* destructors that post later just malloc */
}

static void make_node_cache_key(void)
{
    pthread_key_create(&node_cache_key, node_cache_exit);
}

/* Makes sure the cache is freed at thread exit; false once it was. */
static bool node_cache_usable(void)
{
    if (node_cache.exited)
        return false;
    if (!node_cache.registered) {
        pthread_once(&node_cache_once, make_node_cache_key);
        pthread_setspecific(node_cache_key, (void *)1);
        node_cache.registered = true;
    }
    return true;
}

static ioloop__post_t *node_alloc(ioloop_t *loop)
{
    ioloop__post_t *node = node_cache.head;
    if (node) {
        node_cache.head = node->next;
        return node;
    }
    if (atomic_load_explicit(&loop->returned, memory_order_relaxed) && node_cache_usable()) {
        node = atomic_exchange_explicit(&loop->returned, NULL, memory_order_acquire);
        if (node) {
            node_cache.head = node->next;
            return node;
        }
    }
    return malloc(sizeof(*node));
}

static void node_free(ioloop__post_t *node)
{
    if (node_cache_usable()) {
        node->next = node_cache.head;
        node_cache.head = node;
    } else {
        free(node);
    }
}

void ioloop__wake_unless_closed(ioloop_t *loop)
{
    atomic_fetch_add(&loop->posters_inside, 1);
    if (atomic_load(&loop->posts) != CLOSED)
        wake(loop);
    atomic_fetch_sub(&loop->posters_inside, 1);
}

/* Pushes a post on the stack (the cross-thread path, also usable from the
 * loop's own thread, where it never needs to wake the loop). */
static int push_post(ioloop_t *loop, ioloop_callback_fn fn, void *arg)
{
    /* The state check makes "closing" refuse posts early; the mark on the
     * stack head is what makes the refusal exact. */
    ioloop__post_t *head = atomic_load_explicit(&loop->posts, memory_order_relaxed);
    if (head == CLOSED || atomic_load_explicit(&loop->state, memory_order_relaxed) != IOLOOP__OPEN)
        return -ESHUTDOWN;
    ioloop__post_t *post = node_alloc(loop);
    if (!post)
        return -ENOMEM;
    post->fn = fn;
    post->arg = arg;
    do {
        if (head == CLOSED) {
            node_free(post);
            return -ESHUTDOWN;
        }
        post->next = head;
    } while (!atomic_compare_exchange_weak(&loop->posts, &head, post));
    if (atomic_load(&loop->polling))
        ioloop__wake_unless_closed(loop);
    return 0;
}

int ioloop_add_callback(ioloop_t *loop, ioloop_callback_fn fn, void *arg)
{
    if (!fn)
        return -EINVAL;
    if (ioloop__on_loop_thread(loop)) /* cheap path: no atomics, no allocation */
        return atomic_load_explicit(&loop->state, memory_order_relaxed) == IOLOOP__OPEN ? push_local(loop, fn, arg)
                                                                                         : -ESHUTDOWN;
    return push_post(loop, fn, arg);
}

/* Own-thread callbacks of an iteration run before the posts it takes, so
 * ioloop_add_callback on the loop's thread can overtake a post another thread
 * made before it; going through the stack keeps the order (posts run in the
 * order they were pushed). */
int ioloop_add_callback_ordered(ioloop_t *loop, ioloop_callback_fn fn, void *arg)
{
    if (!fn)
        return -EINVAL;
    return push_post(loop, fn, arg);
}

/* Reverses a LIFO chain into posting order. */
static ioloop__post_t *reverse(ioloop__post_t *lifo)
{
    ioloop__post_t *fifo = NULL;
    while (lifo) {
        ioloop__post_t *next = lifo->next;
        lifo->next = fifo;
        fifo = lifo;
        lifo = next;
    }
    return fifo;
}

/* Takes every post made so far, oldest first. Loop thread. */
static ioloop__post_t *take_posts(ioloop_t *loop)
{
    if (!atomic_load_explicit(&loop->posts, memory_order_relaxed))
        return NULL;
    return reverse(atomic_exchange_explicit(&loop->posts, NULL, memory_order_acquire));
}

/* Puts a chain of `count` used nodes on `returned` for posters to reuse,
 * unless that would hold more than RECYCLE_MAX there (then frees it). */
static void recycle(ioloop_t *loop, ioloop__post_t *head, ioloop__post_t *tail, size_t count)
{
    tail->next = NULL; /* the batch may go on past RECYCLE_MAX, into freed nodes */
    ioloop__post_t *old = atomic_load_explicit(&loop->returned, memory_order_relaxed);
    if (!old)
        loop->returned_count = 0; /* posters took all of it */
    if (loop->returned_count + count > RECYCLE_MAX ||
        atomic_load_explicit(&loop->state, memory_order_relaxed) != IOLOOP__OPEN) {
        free_chain(head);
        return;
    }
    /* Posters only ever take the whole chain (set NULL), and only this thread
     * adds: the CAS fails only when they did, and then old is NULL. */
    do
        tail->next = old;
    while (!atomic_compare_exchange_weak_explicit(&loop->returned, &old, head, memory_order_release,
                                                  memory_order_relaxed));
    loop->returned_count = (old ? loop->returned_count : 0) + count;
}

/* Runs a chain of posts, then recycles up to RECYCLE_MAX of the nodes and
 * frees the rest. */
static size_t run_posts(ioloop_t *loop, ioloop__post_t *post)
{
    size_t n = 0;
    ioloop__post_t *keep = post, *keep_tail = NULL;
    while (post) {
        ioloop__post_t *next = post->next;
        ioloop_callback_fn fn = post->fn;
        void *arg = post->arg;
        if (n < RECYCLE_MAX)
            keep_tail = post;
        else
            free(post);
        IOLOOP__WATCH_RUNNING(loop, fn);
        fn(loop, arg);
        post = next;
        n++;
    }
    if (keep_tail)
        recycle(loop, keep, keep_tail, n < RECYCLE_MAX ? n : RECYCLE_MAX);
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
    for (size_t i = 0; i < loop->calls.count; i++)
        loop->calls.items[i].fn(loop, loop->calls.items[i].arg);
    loop->calls.count = 0;
    /* Take what was accepted and refuse the rest, in one step. */
    run_posts(loop, reverse(atomic_exchange(&loop->posts, CLOSED)));
    free_chain(atomic_exchange(&loop->returned, NULL));
    /* A poster that saw `polling` may be about to write the waker. */
    while (atomic_load(&loop->posters_inside) > 0)
        sched_yield();

    if (loop->wake_read_fd >= 0) {
        ioloop_remove_handler(loop, loop->wake_read_fd);
        close(loop->wake_read_fd);
        if (loop->wake_write_fd != loop->wake_read_fd)
            close(loop->wake_write_fd);
    }
    loop->wake_read_fd = loop->wake_write_fd = -1;
}
