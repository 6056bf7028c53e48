/* runtime_internal.h — the seams between the runtime's files (threads,
 * broadcast, executor, watchdog, signals, listener). Nothing in here is
 * public API.
 *
 * Threading rules:
 *  - struct ioloop_runtime is written by the owning thread before the loop
 *    threads start (they see it through pthread_create) and after they are
 *    joined; while they run it is read-only for them (the owning thread
 *    still sets `watchdog` and `joined`, which no loop thread reads).
 *  - struct ioloop_listener: the fields set by ioloop_listener_start are
 *    written before the first acceptor is armed and read-only after; the
 *    atomics (refcount, stop_requested, open_acceptors, inflight) are shared
 *    by every loop and the user; next_start is the DISPATCH acceptor loop's.
 *  - ioloop__acceptor_t: listener, loop and fd are fixed at start; the rest
 *    (armed, stopped, backoff, resume_timer) belongs to the acceptor's loop
 *    thread once armed (start sets `armed` before publishing the handler).
 */
#ifndef IOLOOP_RUNTIME_RUNTIME_INTERNAL_H
#define IOLOOP_RUNTIME_RUNTIME_INTERNAL_H

#include "internal.h"
#include "thread_signals.h"
#include "ioloop/runtime.h"

#include <pthread.h>
#include <signal.h>
#include <sys/types.h>

typedef struct ioloop__executor ioloop__executor_t;
typedef struct ioloop__watchdog ioloop__watchdog_t;

struct ioloop_runtime {
    int n;
    ioloop_t **loops;
    pthread_t *threads;
    int threads_started;
    ioloop_runtime_options_t opts;
    bool joined;
    ioloop__executor_t *executor;
    ioloop__watchdog_t *watchdog;
    bool signals_watched;
    sigset_t saved_mask; /* the owning thread's mask before handle_signals */
};

enum { IOLOOP__MAX_CPUS = 1024 };

/* runtime_threads.c: the CPUs this process may run on (affinity mask), in
 * order; returns how many were stored (at least 1). */
int ioloop__allowed_cpus(int *cpus, int max);
/* Creates a thread with every asynchronous signal blocked. */
int ioloop__thread_create(pthread_t *thread, void *(*fn)(void *), void *arg);

/* executor.c */
ioloop__executor_t *ioloop__executor_new(int threads);
/* Cancels queued work (-ECANCELED), waits for running work, frees. */
void ioloop__executor_free(ioloop__executor_t *ex);

/* listener.c / accept_dispatch.c */
typedef struct ioloop__acceptor {
    struct ioloop_listener *listener;
    ioloop_t *loop; /* the loop that accepts on fd */
    int fd;
    /* loop thread only */
    bool armed;            /* the fd handler is registered */
    bool stopped;          /* stop ran: never re-arm */
    ioloop_time_t backoff; /* current pause after EMFILE/ENFILE, 0: none */
    ioloop_timer_t resume_timer;
} ioloop__acceptor_t;

struct ioloop_listener {
    ioloop_accept_mode_t mode; /* in effect, after fallback */
    ioloop_accept_fn on_accept;
    ioloop_listener_stream_fn on_stream; /* instead of on_accept */
    ioloop_stream_options_t stream_opts;
    ioloop_transport_make_fn make_transport; /* with on_stream: each connection's transport */
    void *make_transport_arg;
    void *arg;
    ioloop_proxy_protocol_t proxy_protocol;
    ioloop_time_t proxy_timeout;
    bool inherited; /* the sockets came from ioloop_listener_options_t.fds */
    int port;
    char *unix_path; /* unlinked by stop, if still the file bound here: */
    dev_t unix_dev;  /* the socket file's device and inode at bind (ino 0: unknown) */
    ino_t unix_ino;
    int nloops;
    ioloop_t **loops;     /* a reference on each: posting stays safe */
    _Atomic int refcount; /* the user's, one per live acceptor, one per handoff */
    _Atomic bool stop_requested;
    _Atomic int open_acceptors; /* the one that brings it to 0 closes a shared fd */
    _Atomic int64_t *inflight;  /* DISPATCH: handoffs posted to loop i, not yet run */
    _Atomic int *in_header;     /* PROXY protocol: connections of loop i still sending their header */
    unsigned next_start;        /* DISPATCH: acceptor loop only, round-robin among ties */
    int nacc;
    ioloop__acceptor_t acc[];
};

/* Gives fd to `loop` (its thread): counts it live and calls on_accept; on a
 * loop that is closing, closes fd instead. */
void ioloop__listener_hand_over(struct ioloop_listener *l, ioloop_t *loop, int fd, const struct sockaddr *peer,
                                socklen_t peer_len);
void ioloop__listener_ref(struct ioloop_listener *l);
void ioloop__listener_unref(struct ioloop_listener *l);
/* listener_proxy.c: reads the PROXY header of a connection just handed to
 * `loop` (its thread), then gives on_stream the stream and the address the
 * header carries; closes the connection on a bad or missing header. */
void ioloop__listener_proxy_start(struct ioloop_listener *l, ioloop_t *loop, int fd, const struct sockaddr *peer,
                                  socklen_t peer_len);
/* DISPATCH: sends fd, just accepted on `from`, to the least-loaded loop. */
void ioloop__dispatch_accepted(struct ioloop_listener *l, ioloop_t *from, int fd, const struct sockaddr *peer,
                               socklen_t peer_len);

/* watchdog.c */
int ioloop__watchdog_start(ioloop_runtime_t *rt);
void ioloop__watchdog_stop(ioloop_runtime_t *rt);

#endif
