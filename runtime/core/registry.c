/* registry.c — which loop is whose: ioloop_current (per thread),
 * ioloop_instance (the global loop) and the registry of every live loop.
 *
 * Threading rule: all of it is safe from any thread.
 *  - the running loop and the thread's own loop are thread-locals; an own
 *    loop the program closed is replaced by a new one on the next
 *    ioloop_current (Tornado's IOLoop.current makes a new one too);
 *  - the instance is created once with double-checked locking: an acquire
 *    load on the fast path, and under the mutex a second check and a release
 *    store, so a thread that sees the pointer also sees the loop it points to;
 *  - the registry is a singly-linked list changed under a mutex and published
 *    with release stores; readers walk it with acquire loads inside an RCU
 *    read-side section, and a loop's memory is freed only after a grace period
 *    (ioloop_unref), so a walker never touches a freed loop.
 */
#include "internal.h"

#include <pthread.h>
#include <stdlib.h>

/* The loop ioloop_start runs here. Not static: ioloop__on_loop_thread reads it
 * inline on every own-thread post (internal.h). */
_Thread_local ioloop_t *ioloop__tls_running_loop IOLOOP__TLS_MODEL;
#define running_loop ioloop__tls_running_loop
static _Thread_local ioloop_t *own_loop;     /* made by ioloop_current here */

static pthread_key_t own_loop_key;
static pthread_once_t own_loop_key_once = PTHREAD_ONCE_INIT;

static _Atomic(ioloop_t *) instance;
static pthread_mutex_t instance_lock = PTHREAD_MUTEX_INITIALIZER;

static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static _Atomic(ioloop_t *) registry_head;

ioloop_t *ioloop__thread_running_loop(void)
{
    return running_loop;
}

void ioloop__set_thread_running_loop(ioloop_t *loop)
{
    running_loop = loop;
}

/* Thread exit: the thread's own loop goes with it. The thread holds a
 * reference of its own, so this is safe even if the program closed it. */
static void close_own_loop(void *loop)
{
    own_loop = NULL;
    ioloop_close(loop, false);
    ioloop_unref(loop);
}

static void make_own_loop_key(void)
{
    pthread_key_create(&own_loop_key, close_own_loop);
}

ioloop_t *ioloop_current(void)
{
    if (running_loop)
        return running_loop;
    if (own_loop && atomic_load_explicit(&own_loop->state, memory_order_relaxed) == IOLOOP__OPEN)
        return own_loop;
    if (own_loop) {
        /* The program closed it: like Tornado, make a new one. */
        pthread_setspecific(own_loop_key, NULL);
        ioloop_unref(own_loop); /* the thread's reference */
        own_loop = NULL;
    }
    pthread_once(&own_loop_key_once, make_own_loop_key);
    if (ioloop_new(NULL, &own_loop) == 0) {
        ioloop_ref(own_loop);
        pthread_setspecific(own_loop_key, own_loop);
    }
    return own_loop;
}

ioloop_t *ioloop_instance(void)
{
    ioloop_t *loop = atomic_load_explicit(&instance, memory_order_acquire);
    if (loop)
        return loop;
    pthread_mutex_lock(&instance_lock);
    loop = atomic_load_explicit(&instance, memory_order_relaxed);
    if (!loop) {
        (void)ioloop_new(NULL, &loop); /* NULL on failure: the next call tries again */
        atomic_store_explicit(&instance, loop, memory_order_release);
    }
    pthread_mutex_unlock(&instance_lock);
    return loop;
}

void ioloop__registry_add(ioloop_t *loop)
{
    pthread_mutex_lock(&registry_lock);
    atomic_store_explicit(&loop->registry_next, atomic_load_explicit(&registry_head, memory_order_relaxed),
                          memory_order_relaxed);
    atomic_store_explicit(&registry_head, loop, memory_order_release);
    loop->registered = true;
    pthread_mutex_unlock(&registry_lock);
}

void ioloop__registry_remove(ioloop_t *loop)
{
    pthread_mutex_lock(&registry_lock);
    if (loop->registered) {
        _Atomic(ioloop_t *) *link = &registry_head;
        ioloop_t *cur;
        while ((cur = atomic_load_explicit(link, memory_order_relaxed)) && cur != loop)
            link = &cur->registry_next;
        if (cur)
            atomic_store_explicit(link, atomic_load_explicit(&loop->registry_next, memory_order_relaxed),
                                  memory_order_release);
        loop->registered = false;
    }
    pthread_mutex_unlock(&registry_lock);
    /* Closing the global instance clears it (Tornado's clear_instance). */
    ioloop_t *expected = loop;
    atomic_compare_exchange_strong(&instance, &expected, NULL);
}

void ioloop_registry_foreach(void (*fn)(ioloop_t *loop, void *arg), void *arg)
{
    int previous = ioloop__rcu_enter();
    for (ioloop_t *loop = atomic_load_explicit(&registry_head, memory_order_acquire); loop;
         loop = atomic_load_explicit(&loop->registry_next, memory_order_acquire)) {
        if (atomic_load(&loop->state) == IOLOOP__OPEN)
            fn(loop, arg);
    }
    ioloop__rcu_leave(previous);
}

/* At process exit, run the deferred frees still queued (closed loops, retired
 * handler entries), so that leak checkers see nothing of ours. Only when no
 * loop is running: a grace period needs every running loop to pass a
 * quiescent state, and a loop still running at exit never will. */
__attribute__((destructor)) static void flush_deferred_frees_at_exit(void)
{
    bool any_running = false;
    pthread_mutex_lock(&registry_lock);
    for (ioloop_t *loop = atomic_load_explicit(&registry_head, memory_order_relaxed); loop;
         loop = atomic_load_explicit(&loop->registry_next, memory_order_relaxed))
        any_running |= atomic_load(&loop->running);
    pthread_mutex_unlock(&registry_lock);
    if (!any_running)
        ioloop__rcu_barrier_at_exit();
}
