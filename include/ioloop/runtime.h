/* runtime.h — one IOLoop per CPU thread in one process: the runtime, accept
 * balancing across its loops, the executor for CPU-bound work, signals and
 * the watchdog.
 *
 * Threading rules (what is safe from where):
 *  - ioloop_runtime_start / ioloop_runtime_join / ioloop_runtime_free: the
 *    thread that owns the runtime (join and free never from a runtime thread:
 *    they return -EDEADLK / do nothing there);
 *  - ioloop_runtime_stop, ioloop_runtime_size, ioloop_runtime_loop,
 *    ioloop_runtime_broadcast: any thread, including a runtime loop's own
 *    callbacks;
 *  - posting work to loop i: ioloop_add_callback(ioloop_runtime_loop(rt, i),
 *    fn, arg) from any thread; fn runs on loop i's thread, where
 *    ioloop_current() is loop i. ioloop_start/ioloop_close on a runtime loop
 *    return -EPERM: the runtime owns them. Every other owner-only call of
 *    ioloop.h (timers, periodics, the error hook, ...) on loop i is for loop
 *    i's thread until ioloop_runtime_join returned (-EPERM elsewhere), then
 *    for the thread that holds the runtime;
 *  - embedding: a thread of the application that is not a runtime thread may
 *    still call ioloop_current() and run that loop itself (ioloop_start); it
 *    can post to runtime loops and they to it. The registry
 *    (ioloop_registry_foreach) lists every loop, runtime or not;
 *  - ioloop_get_stats on any loop: any thread, the loop keeps running;
 *  - listener calls: any thread; on_accept runs on the loop that got the
 *    connection, which owns the fd from then on;
 *  - ioloop_run_in_executor: the loop's own thread; work runs on a pool
 *    thread, and the returned future's done callback runs back on that loop;
 *  - signal watchers: added from any thread; callbacks run on the chosen loop.
 *
 * Signals and threads: every thread the runtime creates (loops, executor,
 * watchdog) starts with all asynchronous signals blocked, so a signal is
 * delivered to an application thread, or read by a watcher.
 */
#ifndef IOLOOP_RUNTIME_H
#define IOLOOP_RUNTIME_H

#include "ioloop/ioloop.h"
#include "ioloop/stream.h"

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct ioloop_runtime ioloop_runtime_t;
typedef struct ioloop_listener ioloop_listener_t;

/* The watchdog's report: `loop` has been busy in one iteration for
 * `blocked_for` ns, running `running` (NULL if between callbacks), whose
 * symbol name is `name` when the dynamic linker knows it (else an address,
 * "0x1234 (libfoo.so+0x34)", which addr2line resolves). The dynamic linker
 * knows a shared library's exported functions, and an executable's only if
 * it was linked with -rdynamic (CMake: ENABLE_EXPORTS); static functions
 * never. Called on the watchdog thread, once per stall: it must not touch
 * the loop except to read its stats. */
typedef void (*ioloop_watchdog_fn)(ioloop_t *loop, ioloop_time_t blocked_for, void (*running)(void), const char *name,
                                   void *arg);

typedef struct {
    int loops;                      /* 0: the CPUs in this process's affinity mask */
    bool pin;                       /* pin loop i to the i-th CPU of the affinity mask */
    int executor_threads;           /* 0: the CPUs in the affinity mask (at least 2) */
    bool handle_signals;            /* SIGINT/SIGTERM stop every loop gracefully (off by default here;
                                       helloworld and servers turn it on). Blocks both signals in the
                                       thread calling ioloop_runtime_start until ioloop_runtime_free. */
    ioloop_time_t watchdog;         /* >0: report a loop whose iteration is busy longer than this
                                       (Tornado's set_blocking_log_threshold) */
    ioloop_watchdog_fn watchdog_fn; /* NULL: one line on stderr */
    void *watchdog_arg;
    ioloop_backend_t backend;
} ioloop_runtime_options_t;

/* Starts opts->loops loops, one thread each (opts may be NULL: defaults).
 * Returns 0 and the runtime in *out, or a negative errno (nothing is left
 * running then). The loops are running, or about to, when it returns. */
IOLOOP_API int ioloop_runtime_start(const ioloop_runtime_options_t *opts, ioloop_runtime_t **out);
/* The number of loops. Any thread. */
IOLOOP_API int ioloop_runtime_size(const ioloop_runtime_t *rt);
/* Loop i (0 <= i < size), or NULL. Any thread. */
IOLOOP_API ioloop_t *ioloop_runtime_loop(const ioloop_runtime_t *rt, int i);
/* Asks every loop to stop after its current iteration. Any thread, also from
 * inside a loop; idempotent. Callbacks still queued then run during
 * ioloop_runtime_free (on the freeing thread), so nothing posted is lost. */
IOLOOP_API void ioloop_runtime_stop(ioloop_runtime_t *rt);
/* Waits until every loop thread has ended. 0, or -EDEADLK from a runtime thread. */
IOLOOP_API int ioloop_runtime_join(ioloop_runtime_t *rt);
/* Stops and joins if needed, shuts the executor down (queued work that never
 * started completes with -ECANCELED, running work is waited for), then closes
 * the loops. Free listeners first. Owning thread. */
IOLOOP_API void ioloop_runtime_free(ioloop_runtime_t *rt);
/* The index i of a runtime's loop (ioloop_runtime_loop(rt, i) == loop), or
 * -ENOENT for a loop that is not a runtime's. Any thread; constant for the
 * loop's life, so a callback can pick its per-loop shard without a search. */
IOLOOP_API int ioloop_runtime_index(const ioloop_t *loop);
/* The runtime whose loop runs on this thread, or NULL. Any thread. */
IOLOOP_API ioloop_runtime_t *ioloop_runtime_current(void);

/* Runs fn once on every loop of rt; the returned future, bound to `home` (the
 * loop that waits for it; NULL: ioloop_current()), completes with status 0
 * when all have run, or -ESHUTDOWN if some loop was already closed. Any
 * thread. 0 and the future in *out (the caller owns one reference), or
 * -EINVAL / -ENOMEM (also when there is no home loop) and *out = NULL. */
IOLOOP_API int ioloop_runtime_broadcast(ioloop_runtime_t *rt, ioloop_t *home, ioloop_callback_fn fn, void *arg,
                                        ioloop_future_t **out);

/* ---- listeners ----------------------------------------------------------- */

typedef enum {
    IOLOOP_ACCEPT_DEFAULT = 0, /* the mode the benchmarks favour (see README): EXCLUSIVE
                                  with epoll (unix: too), else REUSEPORT (DISPATCH for unix:) */
    IOLOOP_ACCEPT_REUSEPORT,   /* one socket per loop, SO_REUSEPORT; the kernel balances */
    IOLOOP_ACCEPT_EXCLUSIVE,   /* one socket in every loop's epoll, EPOLLEXCLUSIVE */
    IOLOOP_ACCEPT_DISPATCH,    /* loop 0 accepts and hands each fd to the least-loaded loop */
} ioloop_accept_mode_t;

/* Called on the loop that owns the new connection (fd is non-blocking and
 * close-on-exec; the callee owns it). That loop's live_connections stat was
 * raised by one: call ioloop_connection_closed there when it ends. */
typedef void (*ioloop_accept_fn)(ioloop_t *loop, int fd, const struct sockaddr *peer, socklen_t peer_len, void *arg);

/* Called on the loop that owns the new connection with a stream wrapping it
 * (the callee owns the stream). The loop's live_connections stat counts it
 * until the stream closes: no manual accounting. */
typedef void (*ioloop_listener_stream_fn)(ioloop_t *loop, ioloop_stream_t *stream, const struct sockaddr *peer,
                                          socklen_t peer_len, void *arg);

/* The PROXY protocol (HAProxy's, v1 text and v2 binary) on a listener's
 * connections: with REQUIRED, each connection must start with a header; the
 * address it carries becomes the peer given to on_stream (v2 LOCAL and v1
 * UNKNOWN keep the real peer: a proxy's own health check). A connection whose
 * header is malformed, too long (v1: 107 bytes, v2: 16 + 1024), or absent
 * (the first bytes are no signature) is closed before on_stream; one that
 * sends no complete header within proxy_timeout is closed too. The header is
 * read before any TLS handshake (HAProxy's send-proxy in front of TLS). There
 * is no "optional" mode on purpose, as in nginx and HAProxy: a listener that
 * also took connections without a header would let any client that reaches
 * it claim any address. */
typedef enum {
    IOLOOP_PROXY_PROTOCOL_OFF = 0, /* the default: no header expected */
    IOLOOP_PROXY_PROTOCOL_REQUIRED,
} ioloop_proxy_protocol_t;

typedef struct {
    const char *address;       /* "127.0.0.1", "::1", "0.0.0.0", "unix:/path"; NULL: "0.0.0.0" */
    int port;                  /* 0: the kernel picks; see ioloop_listener_port */
    int backlog;               /* 0: SOMAXCONN */
    ioloop_accept_mode_t mode; /* a mode this platform or socket cannot do falls back to
                                  DISPATCH (EXCLUSIVE without epoll, REUSEPORT on unix:) */
    ioloop_accept_fn on_accept;        /* one of on_accept and on_stream */
    ioloop_listener_stream_fn on_stream;
    ioloop_stream_options_t stream;    /* options of the streams on_stream gets (a transport_ctx,
                                          shared by them all, only with a transport that has no
                                          destroy: -EINVAL otherwise) */
    ioloop_transport_make_fn make_transport; /* per connection, on its loop: the stream's transport
                                                (TLS: ioloop_tls_server_options fills these two) */
    void *make_transport_arg;
    void *arg;
    /* Inherited listening sockets (systemd socket activation, a supervisor's
     * fds): with nfds > 0 the listener accepts on these instead of binding
     * address:port (both ignored). Each must be a listening SOCK_STREAM socket
     * (IPv4, IPv6 or unix): -ENOTSOCK for an fd that is no socket, -EINVAL for
     * one of another type or not listening, -EBADF for a closed fd. One fd:
     * EXCLUSIVE or DISPATCH over it (REUSEPORT and DEFAULT take the runtime's
     * choice for one shared socket). Several fds: REUSEPORT (the default),
     * fd j accepted by loop j % loops (a loop without an fd accepts nothing;
     * EXCLUSIVE or DISPATCH with several fds: -EINVAL).
     * Ownership: the listener works on duplicates (F_DUPFD_CLOEXEC) that it
     * closes when it stops; the caller's fds stay the caller's, to close once
     * start returned (or to keep, to hand on to a successor process). Start
     * sets O_NONBLOCK, which the duplicates share with them. */
    const int *fds;
    int nfds;
    ioloop_proxy_protocol_t proxy_protocol; /* OFF (default); REQUIRED needs on_stream (-EINVAL with on_accept) */
    ioloop_time_t proxy_timeout;            /* the whole header must arrive within it; 0: 10 s */
} ioloop_listener_options_t;

/* Binds, listens and starts accepting on rt's loops. Any thread. 0 and the
 * listener in *out, or a negative errno (-EADDRINUSE, -EINVAL for a bad
 * address or not exactly one of on_accept and on_stream, ...). */
IOLOOP_API int ioloop_listener_start(ioloop_runtime_t *rt, const ioloop_listener_options_t *opts,
                                     ioloop_listener_t **out);
/* The bound port (the kernel's choice for port 0); 0 for a unix socket. Any thread. */
IOLOOP_API int ioloop_listener_port(const ioloop_listener_t *l);
/* The mode in effect (after any fallback). Any thread. */
IOLOOP_API ioloop_accept_mode_t ioloop_listener_mode(const ioloop_listener_t *l);
/* Connections `loop` accepted for l that on_stream has not got yet: their
 * PROXY header is still being read (0 without the PROXY protocol; -EINVAL
 * for NULL). Each of them reaches on_stream or is closed within
 * proxy_timeout. A graceful shutdown waits for 0 before it drains a loop
 * (ioloop_http_server_shutdown does), or a connection accepted from the
 * backlog during the stop would be cut before its request was read. Any
 * thread; a snapshot. */
IOLOOP_API int ioloop_listener_pending(const ioloop_listener_t *l, const ioloop_t *loop);
/* Stops accepting. Each socket first accepts what is already queued on it
 * (those connections reach on_accept as usual), then closes. Any thread;
 * asynchronous (done on each loop's thread); idempotent. */
IOLOOP_API void ioloop_listener_stop(ioloop_listener_t *l);
/* Stops if needed and drops the caller's reference; the memory goes when the
 * loops are done with it. Any thread. */
IOLOOP_API void ioloop_listener_free(ioloop_listener_t *l);

/* systemd socket activation (sd_listen_fds(3), implemented here without
 * libsystemd): when LISTEN_PID is this process and LISTEN_FDS is n > 0,
 * stores the n inherited fds (3, 4, ... in order; LISTEN_FDNAMES, if set, is
 * not needed for that), marks them close-on-exec, unsets LISTEN_PID,
 * LISTEN_FDS and LISTEN_FDNAMES (so a child does not take them too) and
 * returns n; the caller owns the fds. 0 when the process was not activated
 * (variables absent or meant for another pid; they are left alone then).
 * -EINVAL for a LISTEN_FDS that is not a number, -E2BIG when n > max (the
 * environment is left as it was), -EBADF when one of the fds is not open.
 * Any thread, but the environment is process-wide: call it once, early
 * (ioloop_http_server_serve does, see http.h). */
IOLOOP_API int ioloop_listen_fds(int *fds, int max);

/* Sends `state` ("READY=1", "STOPPING=1", "STATUS=...", several lines
 * allowed) to the service manager through the datagram socket NOTIFY_SOCKET
 * names (a path, or "@name" for an abstract socket), as sd_notify(3) does.
 * 0 when sent, and also when NOTIFY_SOCKET is unset (not run by a manager
 * that listens); a negative errno when it is set and the send failed
 * (-EINVAL for a name that is no socket address). Any thread; blocking for
 * at most one datagram send. ioloop_http_server_serve sends READY=1 and the
 * shutdown STOPPING=1 (http.h). */
IOLOOP_API int ioloop_sd_notify(const char *state);

/* Live-connection accounting used by DISPATCH and the stats: whoever got a
 * connection from on_accept calls this on that loop's thread when it ends. */
IOLOOP_API void ioloop_connection_closed(ioloop_t *loop);

/* ---- executor ------------------------------------------------------------ */

/* Work for a pool thread: returns the result pointer and sets *status (0 or
 * a negative errno); both become the future's. */
typedef void *(*ioloop_work_fn)(void *arg, int *status);

/* Runs work(arg) on a pool thread: the runtime's pool for a runtime loop,
 * else a process-wide pool (created on first use, CPUs threads, at least 2).
 * Call on `loop`'s thread. 0 and, in *out, a future bound to loop (caller
 * owns one reference) whose done callback runs on loop; or -EINVAL / -ENOMEM
 * and *out = NULL. If the runtime is freed first, work not started completes
 * -ECANCELED. */
IOLOOP_API int ioloop_run_in_executor(ioloop_t *loop, ioloop_work_fn work, void *arg, ioloop_future_t **out);

/* ---- signals ------------------------------------------------------------- */

typedef void (*ioloop_signal_fn)(ioloop_t *loop, int signo, void *arg);
/* Delivers signo as a callback on loop (signalfd on Linux, a self-pipe
 * elsewhere). One watcher per signal in the process: -EBUSY if another loop
 * watches it (the same loop replaces its callback). Blocks signo in the
 * calling thread; threads created later inherit that, runtime threads always
 * have it blocked; a thread that had it unblocked before must block it, or
 * the signal may take its default action there. -EINVAL for a signal that
 * cannot be caught. Any thread. */
IOLOOP_API int ioloop_signal_watch(ioloop_t *loop, int signo, ioloop_signal_fn fn, void *arg);
/* Removes the watcher and unblocks signo in the calling thread. -ENOENT if
 * loop does not watch it. Any thread; do it before closing the loop. */
IOLOOP_API int ioloop_signal_unwatch(ioloop_t *loop, int signo);

#ifdef __cplusplus
}
#endif
#endif
