/* shutdown.c — serving on a runtime (on systemd's sockets when the process
 * was socket-activated; READY=1 to the manager once listening), and the
 * runtime-wide graceful shutdown (STOPPING=1): stop accepting, drain every
 * loop, stop the runtime; on an API call or on SIGTERM/SIGINT. Also the
 * server's counters summed over its loops.
 *
 * Threading rule: ioloop_http_server_serve, _shutdown and _get_stats from any
 * thread; _shutdown_on_signals from the thread that owns the runtime (it
 * blocks the signals there). The phases below run as callbacks on the loops;
 * s->shut_* are written once before the first post (the post publishes them)
 * and only read afterwards; the phase counter is atomic.
 *
 * With drain_delay set, a timer on loop 0 waits that long first (the health
 * route already says 503: shutting_down is set) and then starts phase 1.
 * The shutdown runs in two phases so that no connection arrives on a loop
 * after its drain has finished:
 *  1. fence: ioloop_listener_stop(l) posts one stop to each acceptor's loop;
 *     then a fence callback is posted to every loop. Callbacks posted to one
 *     loop run in order, so when every loop has run its fence, every acceptor
 *     has accepted its backlog and closed, and every DISPATCH hand-off of
 *     those connections has been posted.
 *  2. drain: ioloop_http_server_drain on every loop (queued behind those
 *     hand-offs, and once no connection of that loop is still sending its
 *     PROXY header: ioloop_listener_pending); the last loop to finish stops
 *     the runtime.
 */
#define _GNU_SOURCE
#include "internal.h"

#include <errno.h>
#include <signal.h>
#include <unistd.h>

enum { IOLOOP__HTTP_MAX_ACTIVATED = 64 }; /* sockets one activation may pass (a unit has a few) */

int ioloop_http_server_serve(ioloop_http_server_t *s, ioloop_runtime_t *rt, const char *address, int port,
                             ioloop_accept_mode_t mode, ioloop_listener_t **out)
{
    if (!s || !rt || !out)
        return -EINVAL;
    ioloop_listener_options_t o = {.address = address, .port = port, .mode = mode};
    return ioloop_http_server_serve_with(s, rt, &o, out);
}

int ioloop_http_server_serve_with(ioloop_http_server_t *s, ioloop_runtime_t *rt, const ioloop_listener_options_t *opts,
                                  ioloop_listener_t **out)
{
    if (!s || !rt || !opts || !out)
        return -EINVAL;
    ioloop_listener_options_t o = *opts;
    o.on_accept = NULL;
    o.on_stream = ioloop__http_server_on_stream;
    o.arg = s;
    /* The server's stream options, with whatever the caller set in place of
     * the zeros: limits and timeouts it chose, its transport. half_close
     * stays on: the connection reads a client's EOF itself (a request may be
     * answered after the client shut down its side). */
    ioloop_stream_options_t def;
    ioloop__http_stream_options(s, &def);
    const ioloop_stream_options_t *u = &opts->stream;
    o.stream = def;
    if (u->max_buffer_size > o.stream.max_buffer_size) /* never below a head plus a block: 431 must stay reachable */
        o.stream.max_buffer_size = u->max_buffer_size;
    if (u->max_write_buffer_size)
        o.stream.max_write_buffer_size = u->max_write_buffer_size;
    if (u->idle_timeout)
        o.stream.idle_timeout = u->idle_timeout;
    if (u->read_timeout)
        o.stream.read_timeout = u->read_timeout;
    if (u->write_timeout)
        o.stream.write_timeout = u->write_timeout;
    o.stream.transport = u->transport;
    o.stream.transport_ctx = u->transport_ctx;
    /* Socket activation: the manager's sockets instead of binding (the
     * first serve of the process takes them all; ioloop_listen_fds unsets
     * the variables). They are duplicated by the listener: ours to close. */
    int fds[IOLOOP__HTTP_MAX_ACTIVATED];
    int nfds = 0;
    if (o.nfds == 0) {
        nfds = ioloop_listen_fds(fds, IOLOOP__HTTP_MAX_ACTIVATED);
        if (nfds < 0)
            return nfds;
        if (nfds > 0) {
            o.fds = fds;
            o.nfds = nfds;
        }
    }
    int err = ioloop_listener_start(rt, &o, out);
    for (int i = 0; i < nfds; i++)
        close(fds[i]);
    if (!err) /* every loop runs and the sockets listen: the manager may send traffic */
        (void)ioloop_sd_notify("READY=1");
    return err;
}

/* ---- shutdown ------------------------------------------------------------ */

/* Runs fn on every loop of the runtime; a loop that takes no more callbacks
 * (closed) counts as having run it. Ordered: on the loop that posts to
 * itself too, fn runs after the DISPATCH hand-offs posted to it before. */
static void post_all(ioloop_http_server_t *s, ioloop_callback_fn fn, void (*skip)(ioloop_http_server_t *))
{
    int n = ioloop_runtime_size(s->shut_rt);
    atomic_store(&s->shut_pending, n);
    for (int i = 0; i < n; i++)
        if (ioloop_add_callback_ordered(ioloop_runtime_loop(s->shut_rt, i), fn, s) != 0)
            skip(s);
}

static void loop_drained(ioloop_http_server_t *s)
{
    if (atomic_fetch_sub(&s->shut_pending, 1) == 1)
        ioloop_runtime_stop(s->shut_rt);
}

static void on_loop_drained(ioloop_t *loop, void *arg)
{
    (void)loop;
    loop_drained(arg);
}

static void drain_here(ioloop_t *loop, void *arg)
{
    ioloop_http_server_t *s = arg;
    /* Connections still sending a PROXY header are not the server's yet: a
     * drain now could end before they become connections, and stop the
     * runtime under them. Each phase ends within the listener's
     * proxy_timeout, so this wait is bounded. */
    if (s->shut_listener && ioloop_listener_pending(s->shut_listener, loop) > 0 &&
        ioloop_call_later(loop, IOLOOP_MSEC(5), drain_here, s, NULL) == 0)
        return;
    if (ioloop_http_server_drain(s, loop, s->shut_timeout, on_loop_drained, s) != 0)
        loop_drained(s); /* already draining (its own drain call) or no memory */
}

static void fence_passed(ioloop_http_server_t *s)
{
    if (atomic_fetch_sub(&s->shut_pending, 1) == 1)
        post_all(s, drain_here, loop_drained);
}

static void fence(ioloop_t *loop, void *arg)
{
    (void)loop;
    fence_passed(arg);
}

/* Phase 1 (above): stop accepting, then a fence on every loop. */
static void stop_accepting(ioloop_http_server_t *s)
{
    if (s->shut_listener)
        ioloop_listener_stop(s->shut_listener);
    post_all(s, fence, fence_passed);
}

static void delay_over(ioloop_t *loop, void *arg)
{
    (void)loop;
    stop_accepting(arg);
}

/* On loop 0: the drain_delay timer (timers belong to their loop's thread). */
static void delay_begin(ioloop_t *loop, void *arg)
{
    ioloop_http_server_t *s = arg;
    if (ioloop_call_later(loop, s->opts.drain_delay, delay_over, s, NULL) != 0)
        stop_accepting(s); /* no timer (no memory, loop closing): no delay */
}

int ioloop_http_server_shutdown(ioloop_http_server_t *s, ioloop_runtime_t *rt, ioloop_listener_t *l,
                                ioloop_time_t timeout)
{
    if (!s || !rt || timeout < 0)
        return -EINVAL;
    if (atomic_exchange(&s->shutting_down, true))
        return -EALREADY;
    (void)ioloop_sd_notify("STOPPING=1"); /* the manager stops counting on us from here */
    s->shut_rt = rt;
    s->shut_listener = l;
    s->shut_timeout = timeout;
    if (s->opts.drain_delay <= 0 || ioloop_add_callback(ioloop_runtime_loop(rt, 0), delay_begin, s) != 0)
        stop_accepting(s);
    return 0;
}

/* ---- signals --------------------------------------------------------------- */

static void on_signal(ioloop_t *loop, int signo, void *arg)
{
    (void)loop, (void)signo;
    ioloop_http_server_t *s = arg;
    /* a second signal during the drain changes nothing (-EALREADY) */
    (void)ioloop_http_server_shutdown(s, s->sig_rt, s->sig_listener, s->sig_timeout);
}

int ioloop_http_server_shutdown_on_signals(ioloop_http_server_t *s, ioloop_runtime_t *rt, ioloop_listener_t *l,
                                           ioloop_time_t timeout)
{
    if (!s || !rt || timeout < 0)
        return -EINVAL;
    if (s->sig_loop)
        return -EALREADY;
    s->sig_rt = rt;
    s->sig_listener = l;
    s->sig_timeout = timeout;
    ioloop_t *loop = ioloop_runtime_loop(rt, 0);
    int err = ioloop_signal_watch(loop, SIGTERM, on_signal, s);
    if (!err) {
        err = ioloop_signal_watch(loop, SIGINT, on_signal, s);
        if (err)
            ioloop_signal_unwatch(loop, SIGTERM);
    }
    if (!err)
        s->sig_loop = loop;
    return err;
}

void ioloop__http_signals_unwatch(ioloop_http_server_t *s)
{
    if (!s->sig_loop)
        return;
    ioloop_signal_unwatch(s->sig_loop, SIGTERM);
    ioloop_signal_unwatch(s->sig_loop, SIGINT);
    s->sig_loop = NULL;
}

/* ---- counters ------------------------------------------------------------ */

void ioloop_http_server_get_stats(const ioloop_http_server_t *s, ioloop_http_server_stats_t *out)
{
    *out = (ioloop_http_server_stats_t){0};
    for (http_worker_t *w = atomic_load_explicit(&((ioloop_http_server_t *)s)->workers, memory_order_acquire); w;
         w = w->next) {
        out->connections += atomic_load_explicit(&w->st_connections, memory_order_relaxed);
        out->requests += atomic_load_explicit(&w->st_requests, memory_order_relaxed);
        out->sends += atomic_load_explicit(&w->st_sends, memory_order_relaxed);
        for (int i = 0; i < 5; i++)
            out->responses[i] += atomic_load_explicit(&w->st_responses[i], memory_order_relaxed);
        out->bytes_out += atomic_load_explicit(&w->st_bytes_out, memory_order_relaxed);
    }
}
