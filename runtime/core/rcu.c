/* rcu.c — liburcu (qsbr) glue: thread registration, quiescent states and
 * deferred frees, with ThreadSanitizer annotations. See rcu.h for the why.
 * Threading rule: per-thread state lives in thread-locals; nothing here is
 * shared except liburcu's own state and the TSan token.
 */
/* Not _LGPL_SOURCE: liburcu's inline fast paths would be compiled into this
 * file, where ThreadSanitizer instruments their benign racy reads of
 * liburcu's own futex word; calling the library costs one call per iteration. */
#define _GNU_SOURCE
#include "rcu.h"
#include "thread_signals.h"

#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <urcu/urcu-qsbr.h>

#if defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define IOLOOP_TSAN 1
#endif
#endif
#if defined(__SANITIZE_THREAD__)
#define IOLOOP_TSAN 1
#endif

#ifdef IOLOOP_TSAN
void __tsan_acquire(void *addr);
void __tsan_release(void *addr);
static char grace_period_token;
#define TSAN_RELEASE() __tsan_release(&grace_period_token)
#define TSAN_ACQUIRE() __tsan_acquire(&grace_period_token)
/* call_rcu's own queue hands the head to its worker thread: say so. */
#define TSAN_HANDOFF_SEND(p) __tsan_release(p)
#define TSAN_HANDOFF_RECEIVE(p) __tsan_acquire(p)
#else
#define TSAN_RELEASE() ((void)0)
#define TSAN_ACQUIRE() ((void)0)
#define TSAN_HANDOFF_SEND(p) ((void)0)
#define TSAN_HANDOFF_RECEIVE(p) ((void)0)
#endif

_Static_assert(sizeof(struct rcu_head) <= sizeof(((ioloop__rcu_head_t *)0)->opaque),
               "ioloop__rcu_head_t.opaque too small for struct rcu_head");

enum { RCU_UNREGISTERED, RCU_OFFLINE, RCU_ONLINE };
static _Thread_local int rcu_state = RCU_UNREGISTERED;
static pthread_key_t unregister_key;
static pthread_once_t unregister_key_once = PTHREAD_ONCE_INIT;

/* liburcu requires a registered thread to unregister before it exits. */
static void unregister_at_exit(void *unused)
{
    (void)unused;
    if (rcu_state == RCU_UNREGISTERED)
        return;
    if (rcu_state == RCU_OFFLINE)
        urcu_qsbr_thread_online();
    TSAN_RELEASE();
    urcu_qsbr_unregister_thread();
    rcu_state = RCU_UNREGISTERED;
}

static void make_unregister_key(void)
{
    pthread_key_create(&unregister_key, unregister_at_exit);
}

int ioloop__rcu_enter(void)
{
    int previous = rcu_state;
    if (previous == RCU_UNREGISTERED) {
        pthread_once(&unregister_key_once, make_unregister_key);
        urcu_qsbr_register_thread(); /* registers online */
        pthread_setspecific(unregister_key, (void *)1);
    } else if (previous == RCU_OFFLINE) {
        urcu_qsbr_thread_online();
    }
    rcu_state = RCU_ONLINE;
    return previous;
}

void ioloop__rcu_leave(int previous)
{
    if (previous == RCU_ONLINE || rcu_state != RCU_ONLINE)
        return;
    /* Stay registered (registration is costly), but never stay online while
     * not inside a loop: an online thread that does not pass quiescent states
     * would stall every grace period. */
    TSAN_RELEASE();
    urcu_qsbr_thread_offline();
    rcu_state = RCU_OFFLINE;
}

void ioloop__rcu_quiescent(void)
{
    TSAN_RELEASE();
    urcu_qsbr_quiescent_state();
}

void ioloop__rcu_offline(void)
{
    if (rcu_state != RCU_ONLINE)
        return;
    TSAN_RELEASE();
    urcu_qsbr_thread_offline();
    rcu_state = RCU_OFFLINE;
}

void ioloop__rcu_online(void)
{
    if (rcu_state != RCU_OFFLINE)
        return;
    urcu_qsbr_thread_online();
    rcu_state = RCU_ONLINE;
}

static void run_deferred_free(struct rcu_head *rh)
{
    ioloop__rcu_head_t *head = (ioloop__rcu_head_t *)((char *)rh - offsetof(ioloop__rcu_head_t, opaque));
    TSAN_HANDOFF_RECEIVE(head);
    TSAN_ACQUIRE();
    head->free_fn(head);
}

/* liburcu starts its call_rcu worker thread on first use, with the caller's
 * signal mask; a worker that has SIGINT/SIGTERM unblocked takes the signals a
 * signalfd waits for (and dies of them). Start it with every asynchronous
 * signal blocked, like every other thread the runtime owns. */
static pthread_once_t worker_once = PTHREAD_ONCE_INIT;

static void start_worker_signals_blocked(void)
{
    sigset_t old;
    ioloop__block_async_signals(&old);
    (void)urcu_qsbr_get_default_call_rcu_data();
    pthread_sigmask(SIG_SETMASK, &old, NULL);
}

void ioloop__rcu_defer_free(ioloop__rcu_head_t *head, void (*free_fn)(ioloop__rcu_head_t *))
{
    pthread_once(&worker_once, start_worker_signals_blocked);
    head->free_fn = free_fn;
    /* What this thread wrote before retiring the object happens before the
     * free: call_rcu's queue orders it, but in asm TSan cannot see. */
    TSAN_HANDOFF_SEND(head);
    urcu_qsbr_call_rcu((struct rcu_head *)(void *)head->opaque, run_deferred_free);
}

void ioloop__rcu_barrier(void)
{
    int was_online = rcu_state == RCU_ONLINE;
    if (was_online)
        ioloop__rcu_offline();
    urcu_qsbr_barrier();
    TSAN_ACQUIRE();
    if (was_online)
        ioloop__rcu_online();
}

void ioloop__rcu_barrier_at_exit(void)
{
#ifndef IOLOOP_TSAN
    ioloop__rcu_barrier();
#endif
}
