/* runtime.h — one IOLoop per CPU thread in one process: the runtime, accept
 * balancing across its loops, the executor for CPU-bound work, and signals.
 *
 * Threading rules (what is safe from where):
 *  - ioloop_runtime_start / ioloop_runtime_join / ioloop_runtime_free: the
 *    thread that owns the runtime (join and free never from a runtime thread);
 *  - ioloop_runtime_stop, ioloop_runtime_size, ioloop_runtime_loop: any thread,
 *    including a runtime loop's own callbacks;
 *  - posting work to loop i: ioloop_add_callback(ioloop_runtime_loop(rt, i),
 *    fn, arg) from any thread; fn runs on loop i's thread, where
 *    ioloop_current() is loop i;
 *  - a thread of the application that is not a runtime thread may still call
 *    ioloop_current() and run its own loop; the registry lists every loop;
 *  - listener calls: any thread; the on_accept callback runs on the loop that
 *    got the connection, which owns the fd from then on;
 *  - ioloop_run_in_executor: the loop's own thread; work runs on a pool
 *    thread, and the returned future completes back on the asking loop;
 *  - signal watchers: added from any thread; callbacks run on the chosen loop.
 */
#ifndef IOLOOP_RUNTIME_H
#define IOLOOP_RUNTIME_H

#include "ioloop/ioloop.h"

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct ioloop_runtime ioloop_runtime_t;
typedef struct ioloop_listener ioloop_listener_t;

typedef struct {
    int loops;               /* 0: the CPUs in this process's affinity mask */
    bool pin;                /* pin loop i to the i-th allowed CPU */
    int executor_threads;    /* 0: the CPUs in the affinity mask */
    bool handle_signals;     /* SIGINT/SIGTERM stop every loop gracefully (default false here;
                                helloworld and servers turn it on) */
    ioloop_time_t watchdog;  /* >0: log a loop whose iteration exceeds this */
    ioloop_backend_t backend;
} ioloop_runtime_options_t;

/* Starts opts->loops loops, one thread each (opts may be NULL). Returns 0 and
 * the runtime in *out, or a negative errno. */
int ioloop_runtime_start(const ioloop_runtime_options_t *opts, ioloop_runtime_t **out);
int ioloop_runtime_size(const ioloop_runtime_t *rt);
ioloop_t *ioloop_runtime_loop(const ioloop_runtime_t *rt, int i);
/* Asks every loop to stop. Any thread, also from inside a loop. */
void ioloop_runtime_stop(ioloop_runtime_t *rt);
/* Waits until every loop thread has ended. Not from a runtime thread. */
int ioloop_runtime_join(ioloop_runtime_t *rt);
/* Frees a joined runtime (closes its loops). */
void ioloop_runtime_free(ioloop_runtime_t *rt);
/* The runtime whose loop runs on this thread, or NULL. */
ioloop_runtime_t *ioloop_runtime_current(void);

/* Runs fn once on every loop; the returned future (bound to `home`, the loop
 * whose thread waits for it) completes when all have run. */
ioloop_future_t *ioloop_runtime_broadcast(ioloop_runtime_t *rt, ioloop_t *home, ioloop_callback_fn fn, void *arg);

/* ---- listeners ----------------------------------------------------------- */

typedef enum {
    IOLOOP_ACCEPT_DEFAULT = 0, /* the mode the benchmarks favour (see README) */
    IOLOOP_ACCEPT_REUSEPORT,   /* one socket per loop, SO_REUSEPORT */
    IOLOOP_ACCEPT_EXCLUSIVE,   /* one socket in every loop's epoll, EPOLLEXCLUSIVE */
    IOLOOP_ACCEPT_DISPATCH,    /* one acceptor loop hands fds to the least-loaded loop */
} ioloop_accept_mode_t;

/* Called on the loop that owns the new connection (non-blocking, close-on-exec). */
typedef void (*ioloop_accept_fn)(ioloop_t *loop, int fd, const struct sockaddr *peer, socklen_t peer_len,
                                 void *arg);

typedef struct {
    const char *address;       /* "127.0.0.1", "::1", "0.0.0.0", "unix:/path" */
    int port;                  /* 0: the kernel picks; see ioloop_listener_port */
    int backlog;               /* 0: SOMAXCONN */
    ioloop_accept_mode_t mode;
    ioloop_accept_fn on_accept;
    void *arg;
} ioloop_listener_options_t;

int ioloop_listener_start(ioloop_runtime_t *rt, const ioloop_listener_options_t *opts, ioloop_listener_t **out);
int ioloop_listener_port(const ioloop_listener_t *l);
ioloop_accept_mode_t ioloop_listener_mode(const ioloop_listener_t *l);
/* Stops accepting (connections already accepted are unaffected). */
void ioloop_listener_stop(ioloop_listener_t *l);
void ioloop_listener_free(ioloop_listener_t *l);

/* Live-connection accounting used by DISPATCH and the stats: a server calls
 * closed() on the loop's thread when a connection it got from on_accept ends. */
void ioloop_connection_closed(ioloop_t *loop);

/* ---- executor ------------------------------------------------------------ */

/* Runs work(arg) on a pool thread; the future completes, back on `loop`, with
 * the status and result work returns through ioloop_future_complete semantics:
 * work returns the result pointer and sets *status (0 or -errno). */
typedef void *(*ioloop_work_fn)(void *arg, int *status);
ioloop_future_t *ioloop_run_in_executor(ioloop_t *loop, ioloop_work_fn work, void *arg);

/* ---- signals ------------------------------------------------------------- */

typedef void (*ioloop_signal_fn)(ioloop_t *loop, int signo, void *arg);
/* Delivers signo as a callback on loop (signalfd on Linux). */
int ioloop_signal_watch(ioloop_t *loop, int signo, ioloop_signal_fn fn, void *arg);
int ioloop_signal_unwatch(ioloop_t *loop, int signo);

#ifdef __cplusplus
}
#endif
#endif
