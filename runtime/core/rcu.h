/* rcu.h — the one place ioloop touches liburcu (qsbr flavour).
 *
 * Owns: per-thread RCU registration and online/offline state, quiescent
 * states, and deferred frees after a grace period.
 * Threading rule: ioloop__rcu_enter/leave/quiescent act on the calling thread;
 * ioloop__rcu_defer_free may be called from any thread.
 *
 * Publication (store/load of RCU-protected pointers) uses C11 atomics with
 * release/acquire rather than rcu_assign_pointer/rcu_dereference: liburcu 0.13
 * implements those with inline asm that ThreadSanitizer cannot see. For the
 * same reason each quiescent state is announced to TSan as a release, and each
 * deferred free as an acquire of the same token, which is exactly the ordering
 * a grace period guarantees.
 */
#ifndef IOLOOP_RUNTIME_RCU_H
#define IOLOOP_RUNTIME_RCU_H

#include <stdbool.h>

/* The header of anything freed after a grace period. */
typedef struct ioloop__rcu_head {
    struct ioloop__rcu_head *next; /* used while batching before call_rcu */
    void (*free_fn)(struct ioloop__rcu_head *head);
    void *opaque[2]; /* room for liburcu's struct rcu_head */
} ioloop__rcu_head_t;

/* Makes this thread an online RCU reader (registering it on first use).
 * Returns the previous state so that calls nest: pass it to ioloop__rcu_leave. */
int ioloop__rcu_enter(void);
/* Restores the state ioloop__rcu_enter returned (offline if it was). */
void ioloop__rcu_leave(int previous);
/* Reader-side: this thread holds no RCU-protected pointer now. */
void ioloop__rcu_quiescent(void);
/* Around a blocking wait: a sleeping reader must not stall grace periods. */
void ioloop__rcu_offline(void);
void ioloop__rcu_online(void);
/* Calls head->free_fn(head) after a grace period. Any thread. */
void ioloop__rcu_defer_free(ioloop__rcu_head_t *head, void (*free_fn)(ioloop__rcu_head_t *));
/* Waits until every deferred free issued so far has run. The calling thread is
 * taken offline for the wait if it was online. */
void ioloop__rcu_barrier(void);
/* ioloop__rcu_barrier for a process that is exiting, so that leak checkers
 * see no deferred free still queued. A no-op under ThreadSanitizer, which
 * checks no leaks and cannot see liburcu's hand-offs inside the barrier. */
void ioloop__rcu_barrier_at_exit(void);

#endif
