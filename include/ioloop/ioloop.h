/* ioloop.h — one event loop (Tornado's IOLoop in C).
 *
 * Threading rule. Calls marked "any thread" are safe from anywhere
 * (ioloop_add_callback, ioloop_stop, the handler calls, ioloop_ref/unref,
 * ioloop_get_stats, ioloop_id, ioloop_backend_name, ioloop_user_data, the
 * registry, ioloop_instance, and the future calls so marked). Every other call
 * is owner-only, and the owner is:
 *  - while the loop runs (inside ioloop_start), the thread running it: its
 *    callbacks, timers and handlers, where ioloop_current() is the loop;
 *  - for a loop of a runtime (runtime.h), that loop's runtime thread, from the
 *    runtime's start until the thread is done with the loop (after
 *    ioloop_runtime_join, the thread holding the runtime); ioloop_start and
 *    ioloop_close are never the application's on a runtime loop;
 *  - for a loop nobody runs, the thread that holds it (made it, or was given
 *    it): it may set it up and close it. Handing it to another thread, or
 *    starting it there, is the holder's to order.
 * An owner-only call from another thread returns -EPERM and does nothing. Not
 * checked: ioloop_time and the periodic getters, which only read.
 *
 * Errors: one convention everywhere. Functions return int: 0 or a negative
 * errno (-EEXIST, -EINVAL, -ESHUTDOWN, -ETIMEDOUT, -EPERM, ...); a call that
 * makes something hands it back through an out-parameter (NULL or 0 there on
 * failure). errno is never the channel. Nothing aborts on bad input; assert()
 * guards internal invariants in debug builds only.
 */
#ifndef IOLOOP_IOLOOP_H
#define IOLOOP_IOLOOP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* IOLOOP_API marks every public declaration: the libraries are built with
 * -fvisibility=hidden, so only what carries it (ioloop_* names) is exported. */
#ifndef IOLOOP_API
#if defined(__GNUC__) || defined(__clang__)
#define IOLOOP_API __attribute__((visibility("default")))
#else
#define IOLOOP_API
#endif
#endif

#ifdef __cplusplus
extern "C" {
#endif

typedef struct ioloop ioloop_t;
/* A timer handle: a slot number and a generation, so a stale handle (a timer
 * that already ran or was removed) is recognised and ignored, never touched. 0
 * is never a valid handle. */
typedef uint64_t ioloop_timer_t;
typedef struct ioloop_periodic ioloop_periodic_t;
typedef struct ioloop_future ioloop_future_t;

/* Time: monotonic nanoseconds. Integer so that deadlines compare exactly. */
typedef int64_t ioloop_time_t;
#define IOLOOP_NSEC(n) ((ioloop_time_t)(n))
#define IOLOOP_USEC(n) ((ioloop_time_t)(n) * 1000)
#define IOLOOP_MSEC(n) ((ioloop_time_t)(n) * 1000000)
#define IOLOOP_SEC(n) ((ioloop_time_t)(n) * 1000000000)

/* Events a handler asks for and is called with. ERROR (hang-up or error on the
 * fd) is always delivered, whether asked for or not. */
enum {
    IOLOOP_READ = 0x1,
    IOLOOP_WRITE = 0x4,
    IOLOOP_ERROR = 0x8,
};

typedef enum {
    IOLOOP_BACKEND_DEFAULT = 0, /* IOLOOP_BACKEND env var, else the best one */
    IOLOOP_BACKEND_EPOLL,
    IOLOOP_BACKEND_POLL,
    IOLOOP_BACKEND_KQUEUE,
} ioloop_backend_t;

/* A callback run on the loop's thread. */
typedef void (*ioloop_callback_fn)(ioloop_t *loop, void *arg);

/* An fd handler: called on the loop's thread with the ready events. A negative
 * errno return reaches the loop's error hook; the loop goes on. */
typedef int (*ioloop_handler_fn)(ioloop_t *loop, int fd, unsigned events, void *arg);

/* The error hook: where failures that have no caller to return to go (a handler
 * that returned an error, a callback that could not run). `what` names the
 * failing thing, `err` is a negative errno. Default: one line on stderr. */
typedef void (*ioloop_error_fn)(ioloop_t *loop, const char *what, int err, void *arg);

/* A clock for tests and simulations: must be monotonic-ish (the loop tolerates
 * steps back). NULL means CLOCK_MONOTONIC. */
typedef ioloop_time_t (*ioloop_clock_fn)(void *arg);

typedef struct {
    ioloop_backend_t backend;
    ioloop_clock_fn clock;
    void *clock_arg;
} ioloop_options_t;

/* ---- life cycle --------------------------------------------------------- */

/* Creates a loop (opts may be NULL): 0 and the loop in *out, or a negative
 * errno (-ENOSYS: the backend asked for is not available here; -ENOMEM, -EMFILE,
 * ...) and *out = NULL. Any thread. The loop is registered (see
 * ioloop_registry_foreach). */
IOLOOP_API int ioloop_new(const ioloop_options_t *opts, ioloop_t **out);

/* Closes a loop that is not running. Callbacks already accepted (own-thread
 * and posted) run once more, here, on the calling thread, with
 * ioloop_current() returning this loop; whatever they add is refused. Pending
 * timers are dropped without running. Later posts return -ESHUTDOWN, and with
 * all_fds every fd still registered is close()d. Call from the thread that
 * holds the loop after ioloop_start returned (or before it ever ran), never
 * from inside the loop. Returns 0, -EBUSY from one of its own callbacks,
 * -EPERM while another thread runs it and for a runtime's loop, -ESHUTDOWN if
 * already closed. */
IOLOOP_API int ioloop_close(ioloop_t *loop, bool all_fds);

/* Runs the loop on this thread until ioloop_stop. Returns 0 when stopped,
 * -EBUSY if the loop is already running here (nested start), -EPERM if
 * another thread runs it or it is a runtime's loop, -EINVAL if another loop
 * is already running on this thread, -ESHUTDOWN if closed. While it runs,
 * ioloop_current() on this thread returns it. */
IOLOOP_API int ioloop_start(ioloop_t *loop);

/* Asks the loop to return from ioloop_start after the current iteration. Any
 * thread (safe even while another thread closes the loop, given a reference).
 * A stop while the loop is not running, or as it is returning from a stop,
 * makes the next start return at once. */
IOLOOP_API void ioloop_stop(ioloop_t *loop);

/* The loop's time, cached at the start of each iteration. Loop thread. */
IOLOOP_API ioloop_time_t ioloop_time(ioloop_t *loop);

/* This thread's loop: the one running here, else one created for this thread
 * on first use (closed and freed at thread exit). If the program closed that
 * one, a new one is made (as Tornado does). Any thread, for itself. NULL only
 * on ENOMEM. */
IOLOOP_API ioloop_t *ioloop_current(void);

/* The global loop, created exactly once (double-checked locking). Any thread. */
IOLOOP_API ioloop_t *ioloop_instance(void);

/* A small number naming the loop in logs; unique for the process's lifetime.
 * Any thread. */
IOLOOP_API unsigned ioloop_id(const ioloop_t *loop);

/* Loops are reference counted so that another thread may keep a pointer to a
 * loop across its close: posting to a closed loop it still references returns
 * -ESHUTDOWN instead of touching freed memory. ioloop_new returns one
 * reference, which ioloop_close drops. Any thread. */
IOLOOP_API void ioloop_ref(ioloop_t *loop);
IOLOOP_API void ioloop_unref(ioloop_t *loop);

/* Counters, readable from any thread while the loop runs (each is exact; the
 * set is not one atomic snapshot). */
typedef struct {
    uint64_t iterations;        /* loop iterations completed */
    uint64_t events_dispatched; /* handler calls */
    uint64_t callbacks_run;     /* callbacks run, own-thread and posted */
    uint64_t posts_received;    /* callbacks posted from other threads */
    uint64_t wakeups_written;   /* eventfd/pipe writes made by posters */
    uint64_t wakeups_received;  /* times the loop woke on its eventfd/pipe */
    uint64_t timers_fired;      /* timer callbacks run */
    int64_t live_connections;   /* maintained by listeners / servers */
    ioloop_time_t longest_busy; /* longest stretch of one iteration spent
                                   running work (not waiting in poll), ns */
    ioloop_time_t busy_time;    /* total time spent running work (every
                                   iteration, less the time blocked in poll), ns */
} ioloop_stats_t;

/* Copies the loop's counters into *out. Any thread, running loop or not. */
IOLOOP_API void ioloop_get_stats(const ioloop_t *loop, ioloop_stats_t *out);

/* Which backend the loop uses: "epoll", "poll" or "kqueue". Any thread. */
IOLOOP_API const char *ioloop_backend_name(const ioloop_t *loop);

/* Calls fn for every live loop. Any thread; runs under an RCU read-side lock,
 * so fn must not block or create/close loops. */
IOLOOP_API void ioloop_registry_foreach(void (*fn)(ioloop_t *loop, void *arg), void *arg);

/* Sets the error hook (NULL restores the default). Owner only: 0 or -EPERM. */
IOLOOP_API int ioloop_set_error_hook(ioloop_t *loop, ioloop_error_fn fn, void *arg);

/* Reports an error through the loop's hook (the default hook prints
 * "ioloop[<id>]: <what>: <strerror>" on stderr). -EPIPE and -ECONNRESET are
 * normal closes and are not reported. Rate-limited per loop: the same what
 * and err again within a second of being reported are counted, not passed on,
 * and the count comes as one call with what = "<what> (repeated N times)"
 * (the same err) when that second ends, when a different error is reported,
 * or when the loop closes. Owner only: 0 or -EPERM. */
IOLOOP_API int ioloop_report_error(ioloop_t *loop, const char *what, int err);

/* One pointer of the application's per loop (e.g. its shard of a runtime's
 * state; NULL until set). Set it from the owner (see the top of this file),
 * typically before the loop runs or from one of its callbacks; read it from
 * any thread (an atomic, with release/acquire ordering: what it points to as
 * set up before the store is visible to a reader that sees the pointer). */
IOLOOP_API void ioloop_set_user_data(ioloop_t *loop, void *data);
IOLOOP_API void *ioloop_user_data(const ioloop_t *loop);

/* ---- fd handlers (any thread) -------------------------------------------- */

/* Watches fd for events. Returns 0; -EEXIST if fd already has a handler;
 * -EBADF if fd is not an open file; -EINVAL for bad events; -ESHUTDOWN if the
 * loop is closed. An fd closed without ioloop_remove_handler does not keep its
 * number taken: a new file under that number may be added (epoll and poll
 * backends; kqueue cannot tell and says -EEXIST), and the poll backend drops a
 * closed fd it finds still registered, reporting -EBADF to the error hook. */
IOLOOP_API int ioloop_add_handler(ioloop_t *loop, int fd, unsigned events, ioloop_handler_fn fn, void *arg);

/* Changes the events watched. Returns 0, -ENOENT if fd has no handler,
 * -EINVAL for bad events, -ESHUTDOWN if the loop is closed. */
IOLOOP_API int ioloop_update_handler(ioloop_t *loop, int fd, unsigned events);

/* Stops watching fd (does not close it). An event for it already collected in
 * this iteration is dropped. Returns 0 if fd had a handler, -ENOENT if it had
 * none (an unknown fd, one removed before, or a closed loop): nothing done.
 * Call before close(fd).
 * From another thread, the handler may still be running (or about to run) on
 * the loop thread when this returns: free what its arg points to only on the
 * loop thread, e.g. from a callback posted with ioloop_add_callback after the
 * removal (it runs after any such call), or remove it on the loop thread. */
IOLOOP_API int ioloop_remove_handler(ioloop_t *loop, int fd);

/* ---- callbacks ---------------------------------------------------------- */

/* Order within one iteration (Tornado 4's PollIOLoop): (1) the timers due now
 * are collected; (2) the callbacks queued before the iteration began run, own-
 * thread ones first, in the order they were added, then cross-thread posts in
 * the order each thread made them; (3) the collected timers run, by deadline
 * (FIFO among equal deadlines); (4) poll, and the ready fds' handlers run.
 * What any of these adds (a callback, a timer, even one already due) waits
 * for a later iteration: from a callback, add_callback(1), add_callback(2),
 * call_later(0, T) runs 1, 2, then T. */

/* Runs fn(loop, arg) on the loop's thread in a later iteration. Any thread.
 * Returns -ESHUTDOWN (and fn never runs) once the loop is closing or closed,
 * -ENOMEM when out of memory. */
IOLOOP_API int ioloop_add_callback(ioloop_t *loop, ioloop_callback_fn fn, void *arg);

/* Like ioloop_add_callback, and fn runs after every callback added to loop
 * before this call, from any thread. (ioloop_add_callback from the loop's own
 * thread takes a faster queue, whose callbacks run before the cross-thread
 * posts taken in the same iteration: it may overtake a post that another
 * thread made just before. This one does not, at the cost of an atomic
 * push.) Any thread; same returns. */
IOLOOP_API int ioloop_add_callback_ordered(ioloop_t *loop, ioloop_callback_fn fn, void *arg);

/* ---- timers (owner only) -------------------------------------------------- */

/* Runs fn at the loop time `deadline` (or soon after). Timers with equal
 * deadlines run in the order they were added. Returns 0 and, if out is not
 * NULL, a handle for ioloop_remove_timeout in *out; or -EINVAL (no fn),
 * -EPERM, -ESHUTDOWN, -ENOMEM (then *out is 0). */
IOLOOP_API int ioloop_call_at(ioloop_t *loop, ioloop_time_t deadline, ioloop_callback_fn fn, void *arg,
                              ioloop_timer_t *out);

/* Same, `delay` after ioloop_time(loop). */
IOLOOP_API int ioloop_call_later(ioloop_t *loop, ioloop_time_t delay, ioloop_callback_fn fn, void *arg,
                                 ioloop_timer_t *out);

/* Cancels a timer: it will not run. Harmless (a no-op returning 0) after it
 * ran or was removed, and for 0. O(1). -EPERM off the owner's thread. */
IOLOOP_API int ioloop_remove_timeout(ioloop_t *loop, ioloop_timer_t timer);

/* ---- periodic callbacks (owner only), Tornado's PeriodicCallback --------- */

/* Creates a periodic callback: fn runs every `period`, measured start to start.
 * A run that overruns skips the periods it missed (no catch-up burst). jitter in
 * [0,1): each period is scaled by a random factor in [1-jitter/2, 1+jitter/2].
 * Not started. 0 and the periodic callback in *out, or -EINVAL, -ENOMEM,
 * -EPERM (*out = NULL). These calls are for the loop's owner (see the top of
 * this file): new, start, stop and free return -EPERM elsewhere and do nothing. */
IOLOOP_API int ioloop_periodic_new(ioloop_t *loop, ioloop_time_t period, double jitter, ioloop_callback_fn fn,
                                   void *arg, ioloop_periodic_t **out);
/* Starts it: the first call comes one period from now. Returns 0, -EALREADY
 * if running, -ESHUTDOWN if the loop is closed, -ENOMEM. */
IOLOOP_API int ioloop_periodic_start(ioloop_periodic_t *pc);
/* Stops it (also from inside fn); it may be started again. 0 or -EPERM. */
IOLOOP_API int ioloop_periodic_stop(ioloop_periodic_t *pc);
/* True between start and stop. */
IOLOOP_API bool ioloop_periodic_is_running(const ioloop_periodic_t *pc);
/* The deadline the current (or last) run was scheduled for. */
IOLOOP_API ioloop_time_t ioloop_periodic_scheduled(const ioloop_periodic_t *pc);
/* Stops and frees; allowed from inside fn (freed once fn returns). NULL: no-op.
 * 0, or -EPERM (nothing freed) off the owner's thread. */
IOLOOP_API int ioloop_periodic_free(ioloop_periodic_t *pc);

/* ---- futures ------------------------------------------------------------ */

/* A one-shot result that any thread may complete and whose done callback
 * always runs later, on the loop the future belongs to. */
typedef void (*ioloop_future_done_fn)(ioloop_future_t *f, void *arg);

/* A future bound to loop (it holds a reference to the loop). Reference
 * counted: the creator holds one reference. Any thread. 0 and the future in
 * *out, or -EINVAL (no loop) / -ENOMEM and *out = NULL. */
IOLOOP_API int ioloop_future_new(ioloop_t *loop, ioloop_future_t **out);
/* Take and drop a reference; the last unref frees. Any thread; unref(NULL) is a no-op. */
IOLOOP_API void ioloop_future_ref(ioloop_future_t *f);
IOLOOP_API void ioloop_future_unref(ioloop_future_t *f);

/* Completes with a result (status: 0 or negative errno). Any thread. Returns
 * 0, or -EALREADY if already completed (the first completion wins). On a
 * closed loop the done callback never runs; the result stays readable. */
IOLOOP_API int ioloop_future_complete(ioloop_future_t *f, int status, void *result);

/* Sets the done callback (the future's loop's owner). If the future is
 * already complete the callback is scheduled for the next iteration, never
 * called inline. Returns 0, -EPERM off the owner's thread, or -ESHUTDOWN /
 * -ENOMEM if that scheduling failed. */
IOLOOP_API int ioloop_future_on_done(ioloop_future_t *f, ioloop_future_done_fn fn, void *arg);

/* True once completed. Any thread. */
IOLOOP_API bool ioloop_future_done(const ioloop_future_t *f);
/* The completion status; -EAGAIN before completion. Any thread. */
IOLOOP_API int ioloop_future_status(const ioloop_future_t *f);
/* The completion result; NULL before completion. Any thread. */
IOLOOP_API void *ioloop_future_result(const ioloop_future_t *f);
/* The loop the future belongs to. Any thread. */
IOLOOP_API ioloop_t *ioloop_future_loop(const ioloop_future_t *f);

/* Runs the loop until the future that fn returns completes, then stops it.
 * fn(loop, arg) runs on the loop and returns a future it keeps a reference to
 * (ownership passes to run_sync). timeout 0 means none. A stop made before
 * run_sync is consumed, not obeyed (run_sync is a start of its own). Call from
 * the thread that will run the loop, while it is not running. Returns the
 * future's status and stores its result in *result (if not NULL);
 * -ETIMEDOUT if the timeout passed first; -ECANCELED if something else
 * stopped the loop first; -ENOMEM if fn returned NULL; the error of setting
 * the future's done callback (-EPERM for a future of a loop another thread
 * runs); -EBUSY when already running here; -EPERM when another thread runs
 * it or it is a runtime's loop; -EINVAL if another loop runs on this thread;
 * -ESHUTDOWN if closed. */
IOLOOP_API int ioloop_run_sync(ioloop_t *loop, ioloop_future_t *(*fn)(ioloop_t *loop, void *arg), void *arg,
                               ioloop_time_t timeout, void **result);

/* ---- per-loop state of the layers above (owner only) ---------------------- */

/* A close hook: a layer above the loop (the streams, the HTTP client's
 * connection pool) keeps its per-loop state in a struct whose first member
 * is one, adds it once and finds it again by its fn. ioloop_close runs each
 * hook once, newest first, after the loop's last callbacks ran, with
 * ioloop_current() returning the loop; fn ends what the state holds (its
 * callbacks run then, and can add no callback) and may free it. */
typedef struct ioloop_close_hook {
    struct ioloop_close_hook *next; /* the loop's list */
    void (*fn)(ioloop_t *loop, struct ioloop_close_hook *hook);
} ioloop_close_hook_t;

/* Adds hook (its fn set; not added before). Owner only. 0, -EINVAL (no fn),
 * -EPERM (another thread), -ESHUTDOWN (the loop is closed: its hooks ran). */
IOLOOP_API int ioloop_close_hook_add(ioloop_t *loop, ioloop_close_hook_t *hook);
/* The newest hook added with fn that has not run yet, or NULL (also from
 * another thread than the owner's). */
IOLOOP_API ioloop_close_hook_t *ioloop_close_hook_find(ioloop_t *loop,
                                                       void (*fn)(ioloop_t *loop, ioloop_close_hook_t *hook));

#ifdef __cplusplus
}
#endif
#endif
