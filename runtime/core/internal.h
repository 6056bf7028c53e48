/* internal.h — the loop's private structure and the seams between runtime/
 * files (backends, handler table, callback queue, timers, registry).
 *
 * Threading rule: fields are grouped by who writes them. "loop thread" fields
 * are touched only by the thread running the loop (or by any thread while the
 * loop is not running); "shared" fields are atomics or guarded by the named
 * mutex. Nothing in here is public API.
 */
#ifndef IOLOOP_RUNTIME_INTERNAL_H
#define IOLOOP_RUNTIME_INTERNAL_H

#include "ioloop/ioloop.h"
#include "rcu.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

/* ---- ready events, as a backend reports them ------------------------------ */

typedef struct {
    int fd;
    unsigned events; /* IOLOOP_READ | IOLOOP_WRITE | IOLOOP_ERROR */
    uint64_t token;  /* the handler's token when the fd was armed */
} ioloop__ready_t;

/* Extra flag for add: one of several loops watching a shared listening socket
 * (EPOLLEXCLUSIVE). Not in the public event set. */
#define IOLOOP__EXCLUSIVE 0x100u

/* ---- backends -------------------------------------------------------------- */

typedef struct ioloop__backend_ops {
    const char *name;
    /* add/mod/del are called with loop->handlers_lock held, from any thread.
     * add is also called for an fd whose table slot is taken: it returns
     * -EEXIST if the fd is still registered with the backend, and accepts it
     * if that registration went away with a closed file. */
    int (*init)(ioloop_t *loop);
    void (*destroy)(ioloop_t *loop);
    int (*add)(ioloop_t *loop, int fd, unsigned events, uint64_t token);
    int (*mod)(ioloop_t *loop, int fd, unsigned events, uint64_t token);
    int (*del)(ioloop_t *loop, int fd);
    /* Loop thread. Fills up to max entries; returns the count or -errno.
     * timeout_ms < 0 waits forever. EINTR returns 0. */
    int (*wait)(ioloop_t *loop, int timeout_ms, ioloop__ready_t *out, int max);
    /* True when a change made from another thread needs the sleeping loop
     * woken to take effect (poll rebuilds its set; epoll does not need it). */
    bool wake_on_foreign_change;
} ioloop__backend_ops_t;

extern const ioloop__backend_ops_t ioloop__backend_epoll;
extern const ioloop__backend_ops_t ioloop__backend_poll;
extern const ioloop__backend_ops_t ioloop__backend_kqueue;

/* ---- handler table (handlers.c) ------------------------------------------- */

typedef struct ioloop__handler {
    ioloop__rcu_head_t rcu;
    int fd;
    _Atomic unsigned events;
    uint64_t token; /* generation << 32 | fd: identifies this registration */
    ioloop_handler_fn fn;
    void *arg;
} ioloop__handler_t;

typedef struct ioloop__fdtable {
    ioloop__rcu_head_t rcu;
    int capacity;
    _Atomic(ioloop__handler_t *) slots[];
} ioloop__fdtable_t;

/* ---- callbacks (callbacks.c) ---------------------------------------------- */

typedef struct ioloop__post {
    struct ioloop__post *next;
    ioloop_callback_fn fn;
    void *arg;
} ioloop__post_t;

typedef struct {
    ioloop_callback_fn fn;
    void *arg;
} ioloop__call_t;

typedef struct {
    ioloop__call_t *items;
    size_t count, capacity;
} ioloop__calls_t;

/* ---- timers (timers.c) ----------------------------------------------------- */

typedef struct {
    ioloop_time_t deadline;
    uint64_t seq; /* insertion order: FIFO among equal deadlines */
    uint32_t slot;
} ioloop__heap_entry_t;

typedef struct {
    ioloop_callback_fn fn; /* NULL: slot free or cancelled */
    void *arg;
    uint32_t generation;
    uint32_t next_free; /* free-list link while free */
    bool in_heap;
} ioloop__timer_slot_t;

typedef struct {
    ioloop__heap_entry_t *heap;
    size_t count, capacity;
    ioloop__timer_slot_t *slots;
    uint32_t slot_count, slot_capacity, free_head;
    size_t cancelled; /* cancelled entries still in the heap */
    uint64_t next_seq;
    uint32_t due_head; /* collected this iteration, chained through next_free */
} ioloop__timers_t;

/* ---- the error hook's rate limit (loop.c) ----------------------------------- */

typedef struct {
    char what[96]; /* the last error reported (truncated) */
    int err;
    ioloop_time_t window_end; /* repeats before this are folded */
    uint64_t repeated;        /* folded since it was reported */
    ioloop_timer_t timer;     /* reports the repeats at window_end */
} ioloop__error_limit_t;

/* ---- close hooks (loop.c) -------------------------------------------------- */

/* A higher layer's per-loop state (the streams) that ioloop_close must end
 * before the handlers and timers go: the public ioloop_close_hook_t, which
 * the layers outside libioloop (the HTTP client) add through
 * ioloop_close_hook_add. The hook is usually the first member of that
 * state; fn may free it. */
typedef ioloop_close_hook_t ioloop__close_hook_t;

/* ---- the loop -------------------------------------------------------------- */

enum { IOLOOP__OPEN = 0, IOLOOP__CLOSING = 1, IOLOOP__CLOSED = 2 };

struct ioloop {
    /* identity and configuration (immutable after ioloop_new) */
    unsigned id;
    const ioloop__backend_ops_t *backend;
    ioloop_clock_fn clock;
    void *clock_arg;
    ioloop__rcu_head_t rcu; /* frees the struct after the registry lets go */

    /* shared */
    _Atomic int refcount;
    _Atomic int state;    /* IOLOOP__OPEN / CLOSING / CLOSED */
    _Atomic bool running; /* inside ioloop_start */
    _Atomic bool stop_requested;
    _Atomic(struct ioloop *) registry_next; /* registry.c, guarded by its mutex */
    bool registered;
    /* The runtime's (runtime_threads.c): the loop's index in its runtime, -1
     * for a loop of the application's own; set before its thread starts. */
    _Atomic int runtime_index;
    /* Set by the runtime from its start until the loop's thread is done with
     * the loop: owner-only calls are then refused off that thread. */
    _Atomic bool runtime_claimed;
    _Atomic(void *) user_data; /* ioloop_set_user_data */

    /* posting (callbacks.c): on cache lines of their own, so that posters
     * hammering them do not slow the loop thread's own fields. */
    _Alignas(64) _Atomic(ioloop__post_t *) posts; /* LIFO stack of posts, or CLOSED; any thread */
    _Atomic bool polling;                /* about to block, or blocked, in poll */
    _Atomic bool wakeup_pending;         /* a waker write is made or on its way */
    _Atomic int posters_inside;          /* posters about to write the waker */
    /* The waker (eventfd: both the same). Written only by init and close;
     * posters read them only inside the posters_inside handshake. */
    int wake_read_fd, wake_write_fd;
    _Alignas(64) _Atomic(ioloop__post_t *) returned; /* used nodes for posters to reuse */
    size_t returned_count; /* loop thread: nodes put in `returned` since it was last seen empty */

    /* loop thread */
    _Alignas(64) ioloop__calls_t calls, running_calls;
    ioloop__timers_t timers;
    ioloop_time_t now;
    ioloop_error_fn error_fn;
    void *error_arg;
    uint64_t rng;
    /* The error hook's rate limit (loop.c): the last error reported, folded
     * repeats of it within its window, and the timer that reports them. */
    ioloop__error_limit_t error_limit;
    ioloop__close_hook_t *close_hooks; /* run by ioloop_close, newest first */

    /* handler table */
    pthread_mutex_t handlers_lock;
    _Atomic(ioloop__fdtable_t *) fdtable; /* read by the loop thread, no lock */
    _Atomic(ioloop__rcu_head_t *) retired; /* written under handlers_lock: to free after a grace period */
    uint32_t next_generation;             /* under handlers_lock */

    /* backend private state */
    int backend_fd; /* the epoll or kqueue fd */
    void *backend_data;

    /* stats: each field has a single writer, read with relaxed loads */
    struct {
        _Atomic uint64_t iterations, events_dispatched, callbacks_run, posts_received,
            wakeups_written, wakeups_received, timers_fired;
        _Atomic int64_t live_connections;
        _Atomic ioloop_time_t longest_busy, busy_time;
    } stats;

    /* watchdog hooks: written by the loop thread (relaxed stores), read by a
     * watchdog thread to tell how long the current iteration has been busy
     * and what it is running. */
    struct {
        _Atomic ioloop_time_t busy_since; /* loop clock when the current work began; 0 while polling */
        _Atomic(void (*)(void)) current;  /* the callback or handler running now, or NULL */
    } watch;
};

/* Single-writer counter bump: a relaxed load and store, no locked instruction. */
#define IOLOOP__STAT_ADD(loop, field, n)                                                           \
    atomic_store_explicit(&(loop)->stats.field,                                                    \
                          atomic_load_explicit(&(loop)->stats.field, memory_order_relaxed) + (n),  \
                          memory_order_relaxed)

/* Watchdog hook: names what the loop thread is about to run (NULL: nothing). */
#define IOLOOP__WATCH_RUNNING(loop, fn)                                                            \
    atomic_store_explicit(&(loop)->watch.current, (void (*)(void))(fn), memory_order_relaxed)

/* registry.c: the loop running on this thread. initial-exec TLS: a plain
 * %fs-relative load, not a __tls_get_addr call, on the own-thread post path. */
#define IOLOOP__TLS_MODEL __attribute__((tls_model("initial-exec"), visibility("hidden")))
extern _Thread_local ioloop_t *ioloop__tls_running_loop IOLOOP__TLS_MODEL;

/* True on the thread that runs `loop` now (its callbacks, handlers, timers). */
static inline bool ioloop__on_loop_thread(const ioloop_t *loop)
{
    return ioloop__tls_running_loop == loop;
}

/* The thread rule for owner-only calls (ioloop.h): 0 when the calling thread
 * may make one on `loop`, -EPERM when another thread runs it or a runtime
 * thread owns it. A loop that nobody runs is the holder's: the check cannot
 * see a start racing on another thread, which is the holder's to prevent. */
static inline int ioloop__owner_check(const ioloop_t *loop)
{
    if (ioloop__on_loop_thread(loop))
        return 0;
    if (atomic_load_explicit(&loop->running, memory_order_relaxed) ||
        atomic_load_explicit(&loop->runtime_claimed, memory_order_relaxed))
        return -EPERM;
    return 0;
}

/* loop.c */
ioloop_time_t ioloop__clock_now(ioloop_t *loop); /* refreshes loop->now */
/* For the runtime, which owns its loops: start and close without the
 * "not a runtime loop" refusal of the public calls. */
int ioloop__start(ioloop_t *loop);
int ioloop__close(ioloop_t *loop, bool all_fds);
uint64_t ioloop__random(ioloop_t *loop);
/* Loop thread (or a loop not running). Registers hook; find returns the one
 * registered with fn, or NULL. ioloop_close runs each once, after the last
 * callbacks and before timers and handlers go, with ioloop_current() == loop. */
void ioloop__close_hook_add(ioloop_t *loop, ioloop__close_hook_t *hook);
ioloop__close_hook_t *ioloop__close_hook_find(ioloop_t *loop, void (*fn)(ioloop_t *, ioloop__close_hook_t *));

/* handlers.c */
int ioloop__handlers_init(ioloop_t *loop);
int ioloop__handler_add(ioloop_t *loop, int fd, unsigned events, ioloop_handler_fn fn, void *arg);
/* Registers fd's handler with the backend again (delete + add, with `events`,
 * which may carry IOLOOP__EXCLUSIVE and must match the handler's), keeping
 * the table entry and its token: it moves an EPOLLEXCLUSIVE waiter to the
 * back of the socket's wait queue without an allocation. 0, -ENOENT if fd
 * has no handler, or the backend's error (the fd is then not registered:
 * remove the handler). */
int ioloop__handler_rearm(ioloop_t *loop, int fd, unsigned events);
void ioloop__handlers_dispatch(ioloop_t *loop, const ioloop__ready_t *ready, int n);
void ioloop__handlers_retire(ioloop_t *loop); /* loop thread, end of iteration */
void ioloop__handlers_close(ioloop_t *loop, bool close_fds);
/* For the poll backend: visit every live handler (handlers_lock held). */
void ioloop__handlers_foreach_locked(ioloop_t *loop, void (*fn)(ioloop__handler_t *h, void *arg), void *arg);
/* For the poll backend, loop thread: fd (registration `token`) turned out
 * closed without remove_handler: drop its entry and report -EBADF. */
void ioloop__handler_forget_invalid(ioloop_t *loop, int fd, uint64_t token);

/* callbacks.c */
int ioloop__callbacks_init(ioloop_t *loop);
bool ioloop__callbacks_pending(ioloop_t *loop);
void ioloop__callbacks_run(ioloop_t *loop);
/* Any thread: make a sleeping loop return from poll, unless it is closing
 * (then the waker may be closed under us: nothing is written). */
void ioloop__wake_unless_closed(ioloop_t *loop);
void ioloop__waker_drain(ioloop_t *loop);
bool ioloop__prepare_to_sleep(ioloop_t *loop); /* true: may block */
void ioloop__woke_up(ioloop_t *loop);
void ioloop__callbacks_close(ioloop_t *loop); /* runs what was accepted, then frees */

/* timers.c */
/* Iteration start: takes the timers due now out of the heap; run_collected
 * runs them after the iteration's callbacks. */
void ioloop__timers_collect_due(ioloop_t *loop);
void ioloop__timers_run_collected(ioloop_t *loop);
int ioloop__timers_poll_timeout_ms(ioloop_t *loop); /* -1: no timer */
void ioloop__timers_init(ioloop__timers_t *timers);
void ioloop__timers_free(ioloop__timers_t *timers);

/* registry.c */
void ioloop__registry_add(ioloop_t *loop);
void ioloop__registry_remove(ioloop_t *loop);
ioloop_t *ioloop__thread_running_loop(void);
void ioloop__set_thread_running_loop(ioloop_t *loop);

#endif
