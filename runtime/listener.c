/* listener.c — listening sockets spread over a runtime's loops: binding
 * (IPv4, IPv6, unix:) or inherited sockets (checked, then duplicated so the
 * caller's fds stay the caller's), the three accept modes, batched accept,
 * EMFILE back-off, and a stop that drains what is already queued. With the
 * PROXY protocol on, a connection goes through listener_proxy.c first.
 *
 * Threading rule: start/stop/free from any thread. Each acceptor (one socket
 * watched by one loop) is touched only by its loop's thread once armed:
 * start arms it (fd handlers may be added from any thread), stop posts a
 * callback that disarms, drains and closes it there. The listener itself is
 * reference counted (the user, each live acceptor, each DISPATCH handoff in
 * flight), so whichever lets go last frees it, on whatever thread.
 *
 * Modes (README has the figures):
 *  - REUSEPORT: one SO_REUSEPORT socket per loop; the kernel hashes each
 *    connection to one socket. No shared state at all on the accept path.
 *  - EXCLUSIVE: one socket in every loop's epoll with EPOLLEXCLUSIVE, so a
 *    new connection wakes one idle loop, not all. The kernel wakes the first
 *    idle waiter in the socket's wait queue, i.e. always the same loop while
 *    it is idle, which piles the connections onto it. Remedy: a loop that
 *    accepted re-registers (EPOLL_CTL_DEL + ADD moves it to the tail of the
 *    queue; ioloop__handler_rearm keeps the handler entry), so idle loops
 *    take turns. Needs epoll: with another backend it
 *    falls back to DISPATCH.
 *  - DISPATCH: loop 0 accepts and hands each fd to the loop with the fewest
 *    live connections plus handoffs in flight (accept_dispatch.c). Works with
 *    any backend and any socket family; the fallback for the other two.
 *  REUSEPORT on a unix socket (no SO_REUSEPORT there) also falls back to
 *  DISPATCH. ioloop_listener_mode reports the mode in effect.
 *
 * Default: EXCLUSIVE where every loop uses epoll, else REUSEPORT (DISPATCH
 * for unix sockets). `ioloop-bench accept` (2 cores, 3 runs each, medians,
 * taskset -c 0,1; connect + 1-byte ping + close) gave, in conns/s and
 * max/min per-loop share: 2 loops — EXCLUSIVE 16.5k 1.00, REUSEPORT 15.4k
 * 1.04, DISPATCH 15.6k 1.10; 4 loops — EXCLUSIVE 14.7k 1.04, REUSEPORT 14.6k
 * 1.04, DISPATCH 11.0k 1.02. EXCLUSIVE and REUSEPORT are level on rate (the
 * gap is inside the noise), EXCLUSIVE balances best, and it only wakes an
 * idle loop, so a loop that is busy (or blocked) takes no new connections,
 * where REUSEPORT's hash keeps queueing onto it. DISPATCH pays a
 * cross-thread handoff per connection and one acceptor thread caps it.
 *
 * Accept: at most ACCEPT_BATCH per readiness (level-triggered: the rest wait
 * one iteration, so one busy listener cannot starve the loop's other work);
 * ECONNABORTED, EPROTO and EINTR skip to the next. EMFILE/ENFILE/ENOBUFS/
 * ENOMEM: the acceptor disarms for a back-off (10 ms doubling to 500 ms, as
 * nginx pauses accept for 500 ms), leaving the connections queued in the
 * kernel's backlog, and re-arms after it: the loop never spins on a readable
 * socket it cannot accept from, and accepting resumes by itself once fds are
 * free. (libuv's alternative, a reserve fd used to accept and close the
 * queued connections, sheds load instead; we prefer serving them late.)
 */
#define _GNU_SOURCE
#include "runtime_internal.h"
#include "stream_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

enum { ACCEPT_BATCH = 64, DRAIN_MAX = 65536 };
#define BACKOFF_MIN IOLOOP_MSEC(10)
#define BACKOFF_MAX IOLOOP_MSEC(500)

/* ---- addresses and sockets ----------------------------------------------- */

static int parse_address(const char *address, int port, struct sockaddr_storage *ss, socklen_t *len)
{
    memset(ss, 0, sizeof(*ss));
    if (!address)
        address = "0.0.0.0";
    if (strncmp(address, "unix:", 5) == 0) {
        struct sockaddr_un *un = (struct sockaddr_un *)ss;
        const char *path = address + 5;
        if (!*path || strlen(path) >= sizeof(un->sun_path))
            return -EINVAL;
        un->sun_family = AF_UNIX;
        strcpy(un->sun_path, path);
        *len = (socklen_t)sizeof(*un);
        return 0;
    }
    if (port < 0 || port > 65535)
        return -EINVAL;
    char service[8];
    snprintf(service, sizeof(service), "%d", port);
    struct addrinfo hints = {
        .ai_flags = AI_PASSIVE | AI_NUMERICHOST | AI_NUMERICSERV, .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    struct addrinfo *res = NULL;
    if (getaddrinfo(address, service, &hints, &res) != 0 || !res)
        return -EINVAL;
    memcpy(ss, res->ai_addr, res->ai_addrlen);
    *len = res->ai_addrlen;
    freeaddrinfo(res);
    return 0;
}

static void set_port(struct sockaddr_storage *ss, int port)
{
    if (ss->ss_family == AF_INET)
        ((struct sockaddr_in *)ss)->sin_port = htons((uint16_t)port);
    else if (ss->ss_family == AF_INET6)
        ((struct sockaddr_in6 *)ss)->sin6_port = htons((uint16_t)port);
}

static int bound_port(int fd)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);
    if (getsockname(fd, (struct sockaddr *)&ss, &len) < 0)
        return 0;
    if (ss.ss_family == AF_INET)
        return ntohs(((struct sockaddr_in *)&ss)->sin_port);
    if (ss.ss_family == AF_INET6)
        return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    return 0;
}

/* Returns a listening fd or a negative errno. */
static int listen_socket(const struct sockaddr_storage *ss, socklen_t len, bool reuseport, int backlog)
{
#ifdef SOCK_NONBLOCK
    int fd = socket(ss->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
#else
    int fd = socket(ss->ss_family, SOCK_STREAM, 0);
    if (fd < 0)
        return -errno;
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    fcntl(fd, F_SETFD, FD_CLOEXEC);
#endif
    int one = 1;
    if (ss->ss_family != AF_UNIX)
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (ss->ss_family == AF_INET6) /* "::" means IPv6 only; bind 0.0.0.0 too for both */
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
    if (reuseport && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0)
        goto fail;
    if (bind(fd, (const struct sockaddr *)ss, len) < 0 || listen(fd, backlog > 0 ? backlog : SOMAXCONN) < 0)
        goto fail;
    return fd;
fail:;
    int err = -errno;
    close(fd);
    return err;
}

/* ---- reference counting ---------------------------------------------------- */

void ioloop__listener_ref(ioloop_listener_t *l)
{
    atomic_fetch_add_explicit(&l->refcount, 1, memory_order_relaxed);
}

void ioloop__listener_unref(ioloop_listener_t *l)
{
    if (atomic_fetch_sub_explicit(&l->refcount, 1, memory_order_acq_rel) != 1)
        return;
    free(l->unix_path);
    for (int i = 0; i < l->nloops; i++)
        ioloop_unref(l->loops[i]);
    free(l->loops);
    free(l->inflight);
    free(l->in_header);
    free(l);
}

/* ---- accepting ------------------------------------------------------------- */

void ioloop__listener_hand_over(ioloop_listener_t *l, ioloop_t *loop, int fd, const struct sockaddr *peer,
                                socklen_t peer_len)
{
    if (atomic_load_explicit(&loop->state, memory_order_relaxed) != IOLOOP__OPEN) {
        close(fd); /* the loop is closing: nobody can serve it */
        return;
    }
    if (l->proxy_protocol != IOLOOP_PROXY_PROTOCOL_OFF) {
        ioloop__listener_proxy_start(l, loop, fd, peer, peer_len); /* on_stream once the header is in */
        return;
    }
    if (l->on_stream) {
        /* The stream counts itself: its end lowers live_connections. */
        ioloop_stream_t *stream;
        ioloop_stream_options_t stream_opts = l->stream_opts;
        if (l->make_transport) {
            /* A connection whose transport cannot be made (no memory for a
             * TLS session) is closed and never counted. */
            int err = l->make_transport(l->make_transport_arg, fd, &stream_opts);
            if (err) {
                close(fd);
                ioloop_report_error(loop, "accepted stream transport", err);
                return;
            }
        }
        int err = ioloop_stream_new(loop, fd, &stream_opts, &stream); /* closes fd on failure */
        if (err) {
            ioloop_report_error(loop, "accepted stream", err);
            return;
        }
        IOLOOP__STAT_ADD(loop, live_connections, 1);
        ioloop__stream_count_connection(stream);
        l->on_stream(loop, stream, peer, peer_len, l->arg);
        return;
    }
    IOLOOP__STAT_ADD(loop, live_connections, 1);
    l->on_accept(loop, fd, peer, peer_len, l->arg);
}

void ioloop_connection_closed(ioloop_t *loop)
{
    IOLOOP__STAT_ADD(loop, live_connections, -1);
}

static int on_readable(ioloop_t *loop, int fd, unsigned events, void *arg);
static void pause_accepting(ioloop__acceptor_t *a);

static int arm(ioloop__acceptor_t *a)
{
    unsigned events = IOLOOP_READ | (a->listener->mode == IOLOOP_ACCEPT_EXCLUSIVE ? IOLOOP__EXCLUSIVE : 0u);
    /* Set before the handler is published: at start this runs on a foreign
     * thread, and the loop may dispatch (and read armed) at once. */
    a->armed = true;
    int err = ioloop__handler_add(a->loop, a->fd, events, on_readable, a);
    if (err)
        a->armed = false;
    return err;
}

static void disarm(ioloop__acceptor_t *a)
{
    if (a->armed)
        ioloop_remove_handler(a->loop, a->fd);
    a->armed = false;
}

static void resume_accepting(ioloop_t *loop, void *arg)
{
    (void)loop;
    ioloop__acceptor_t *a = arg;
    a->resume_timer = 0;
    if (!a->stopped && arm(a) < 0)
        pause_accepting(a);
}

static void pause_accepting(ioloop__acceptor_t *a)
{
    disarm(a);
    a->backoff = a->backoff ? a->backoff * 2 : BACKOFF_MIN;
    if (a->backoff > BACKOFF_MAX)
        a->backoff = BACKOFF_MAX;
    int timer_err = ioloop_call_later(a->loop, a->backoff, resume_accepting, a, &a->resume_timer);
    if (timer_err && timer_err != -ESHUTDOWN && !a->stopped) {
        /* No timer (out of memory): a disarmed acceptor would stop accepting
         * for good. Stay armed instead; the next readiness tries again. */
        ioloop_report_error(a->loop, "accept back-off timer", timer_err);
        int err = arm(a);
        if (err < 0)
            ioloop_report_error(a->loop, "accept re-arm", err);
    }
}

static int accept_nonblocking(int fd, struct sockaddr_storage *ss, socklen_t *len)
{
#if defined(__linux__) || defined(__FreeBSD__)
    return accept4(fd, (struct sockaddr *)ss, len, SOCK_NONBLOCK | SOCK_CLOEXEC);
#else
    int c = accept(fd, (struct sockaddr *)ss, len); /* macOS: no accept4 */
    if (c >= 0) {
        fcntl(c, F_SETFL, fcntl(c, F_GETFL) | O_NONBLOCK);
        fcntl(c, F_SETFD, FD_CLOEXEC);
    }
    return c;
#endif
}

/* Accepts up to max connections. Returns how many, or -1 if it paused. */
static int accept_some(ioloop__acceptor_t *a, int max)
{
    ioloop_listener_t *l = a->listener;
    int accepted = 0;
    for (int i = 0; i < max; i++) {
        struct sockaddr_storage ss;
        socklen_t len = sizeof(ss);
        int c = accept_nonblocking(a->fd, &ss, &len);
        if (c < 0) {
            int e = errno;
            if (e == EINTR || e == ECONNABORTED || e == EPROTO)
                continue; /* that one is gone; the next may be fine */
            if (e == EAGAIN || e == EWOULDBLOCK)
                break;
            if (e != EMFILE && e != ENFILE && e != ENOBUFS && e != ENOMEM)
                ioloop_report_error(a->loop, "accept", -e);
            /* Out of fds or memory (or a broken socket): pause, never spin. */
            pause_accepting(a);
            return -1;
        }
        a->backoff = 0;
        accepted++;
        if (l->mode == IOLOOP_ACCEPT_DISPATCH)
            ioloop__dispatch_accepted(l, a->loop, c, (struct sockaddr *)&ss, len);
        else
            ioloop__listener_hand_over(l, a->loop, c, (struct sockaddr *)&ss, len);
    }
    return accepted;
}

static int on_readable(ioloop_t *loop, int fd, unsigned events, void *arg)
{
    (void)loop, (void)fd, (void)events;
    ioloop__acceptor_t *a = arg;
    int accepted = accept_some(a, ACCEPT_BATCH);
    if (accepted > 0 && a->listener->mode == IOLOOP_ACCEPT_EXCLUSIVE && a->listener->nacc > 1 && !a->stopped) {
        /* Go to the back of the wait queue so the next idle loop is woken.
         * The registration is kept: no allocation per batch. */
        if (ioloop__handler_rearm(a->loop, a->fd, IOLOOP_READ | IOLOOP__EXCLUSIVE) < 0)
            pause_accepting(a); /* removes what is left of it, retries later */
    }
    return 0;
}

/* ---- stopping -------------------------------------------------------------- */

static void close_acceptor_fd(ioloop__acceptor_t *a)
{
    ioloop_listener_t *l = a->listener;
    if (l->mode == IOLOOP_ACCEPT_REUSEPORT || atomic_fetch_sub(&l->open_acceptors, 1) == 1)
        close(a->fd);
}

static void stop_acceptor(ioloop_t *loop, void *arg)
{
    ioloop__acceptor_t *a = arg;
    a->stopped = true;
    disarm(a);
    if (a->resume_timer)
        ioloop_remove_timeout(loop, a->resume_timer);
    a->resume_timer = 0;
    /* Serve what the kernel already queued on this socket: closing it would
     * reset those connections. Not while the loop is closing (no one to serve). */
    if (atomic_load_explicit(&loop->state, memory_order_relaxed) == IOLOOP__OPEN)
        accept_some(a, DRAIN_MAX);
    if (a->resume_timer) /* the drain hit EMFILE: the rest are lost with the socket */
        ioloop_remove_timeout(loop, a->resume_timer);
    a->resume_timer = 0;
    close_acceptor_fd(a);
    ioloop__listener_unref(a->listener);
}

/* Removes the socket file this listener bound, now (not when the acceptors
 * close on their loops: a listener started meanwhile on the same path would
 * lose its file), and only if the path still names that file. */
static void unlink_own_socket(ioloop_listener_t *l)
{
    struct stat st;
    if (l->unix_path && l->unix_ino && lstat(l->unix_path, &st) == 0 && st.st_dev == l->unix_dev &&
        st.st_ino == l->unix_ino)
        unlink(l->unix_path);
}

void ioloop_listener_stop(ioloop_listener_t *l)
{
    if (!l || atomic_exchange(&l->stop_requested, true))
        return;
    unlink_own_socket(l);
    for (int i = 0; i < l->nacc; i++) {
        ioloop__acceptor_t *a = &l->acc[i];
        if (ioloop_add_callback(a->loop, stop_acceptor, a) < 0) {
            /* The loop is closed: its handler table is gone; the fd is ours. */
            close_acceptor_fd(a);
            ioloop__listener_unref(l);
        }
    }
}

void ioloop_listener_free(ioloop_listener_t *l)
{
    if (!l)
        return;
    ioloop_listener_stop(l);
    ioloop__listener_unref(l);
}

int ioloop_listener_port(const ioloop_listener_t *l)
{
    return l->port;
}

ioloop_accept_mode_t ioloop_listener_mode(const ioloop_listener_t *l)
{
    return l->mode;
}

int ioloop_listener_pending(const ioloop_listener_t *l, const ioloop_t *loop)
{
    if (!l || !loop)
        return -EINVAL;
    for (int i = 0; i < l->nloops; i++)
        if (l->loops[i] == loop)
            return atomic_load_explicit(&l->in_header[i], memory_order_relaxed);
    return 0;
}

/* ---- starting -------------------------------------------------------------- */

static bool all_loops_epoll(ioloop_runtime_t *rt)
{
    for (int i = 0; i < rt->n; i++)
        if (rt->loops[i]->backend != &ioloop__backend_epoll)
            return false;
    return true;
}

/* Checks that every inherited fd is a listening stream socket; its family
 * goes to *family (the first one's). 0 or a negative errno. */
static int check_inherited(const int *fds, int nfds, int *family)
{
    for (int i = 0; i < nfds; i++) {
        struct stat st;
        if (fds[i] < 0 || fstat(fds[i], &st) < 0)
            return -EBADF;
        if (!S_ISSOCK(st.st_mode))
            return -ENOTSOCK;
        int type = 0, listening = 0, domain = 0;
        socklen_t len = sizeof(type);
        if (getsockopt(fds[i], SOL_SOCKET, SO_TYPE, &type, &len) < 0)
            return -errno;
        if (type != SOCK_STREAM)
            return -EINVAL;
        len = sizeof(listening);
        if (getsockopt(fds[i], SOL_SOCKET, SO_ACCEPTCONN, &listening, &len) < 0)
            return -errno;
        if (!listening)
            return -EINVAL; /* bound or connected, but no listen(): accept would fail forever */
        len = sizeof(domain);
        if (getsockopt(fds[i], SOL_SOCKET, SO_DOMAIN, &domain, &len) < 0)
            return -errno;
        if (domain != AF_INET && domain != AF_INET6 && domain != AF_UNIX)
            return -EINVAL;
        if (i == 0)
            *family = domain;
    }
    return 0;
}

/* The mode over inherited sockets (see runtime.h), or -1 for a combination
 * that cannot be (EXCLUSIVE or DISPATCH over several sockets). */
static int inherited_mode(ioloop_runtime_t *rt, ioloop_accept_mode_t mode, int nfds)
{
    if (nfds > 1)
        return mode == IOLOOP_ACCEPT_DEFAULT || mode == IOLOOP_ACCEPT_REUSEPORT ? (int)IOLOOP_ACCEPT_REUSEPORT : -1;
    if (mode == IOLOOP_ACCEPT_DISPATCH || !all_loops_epoll(rt))
        return IOLOOP_ACCEPT_DISPATCH;
    return IOLOOP_ACCEPT_EXCLUSIVE;
}

/* A non-blocking close-on-exec duplicate of an inherited socket, or a negative errno. */
static int dup_inherited(int fd)
{
    int copy = fcntl(fd, F_DUPFD_CLOEXEC, 3);
    if (copy < 0)
        return -errno;
    int flags = fcntl(copy, F_GETFL);
    if (flags < 0 || fcntl(copy, F_SETFL, flags | O_NONBLOCK) < 0) {
        int err = -errno;
        close(copy);
        return err;
    }
    return copy;
}

static ioloop_accept_mode_t effective_mode(ioloop_runtime_t *rt, ioloop_accept_mode_t mode, int family)
{
    bool all_epoll = all_loops_epoll(rt);
    if (mode == IOLOOP_ACCEPT_DEFAULT) /* see "Default" above */
        mode = all_epoll ? IOLOOP_ACCEPT_EXCLUSIVE : IOLOOP_ACCEPT_REUSEPORT;
    if (mode == IOLOOP_ACCEPT_REUSEPORT && family == AF_UNIX)
        mode = IOLOOP_ACCEPT_DISPATCH;
    if (mode == IOLOOP_ACCEPT_EXCLUSIVE && !all_epoll)
        mode = IOLOOP_ACCEPT_DISPATCH;
    return mode;
}

/* Removes a stale unix socket file (a previous run that died), as Tornado's
 * bind_unix_socket does; anything that is not a socket is left alone. */
static void remove_stale_socket(const char *path)
{
    struct stat st;
    if (lstat(path, &st) == 0 && S_ISSOCK(st.st_mode))
        unlink(path);
}

int ioloop_listener_start(ioloop_runtime_t *rt, const ioloop_listener_options_t *opts, ioloop_listener_t **out)
{
    if (!rt || !opts || !out || !opts->on_accept == !opts->on_stream)
        return -EINVAL; /* exactly one of on_accept and on_stream */
    if (opts->make_transport && !opts->on_stream)
        return -EINVAL; /* a transport is for streams */
    /* Each stream owns (destroys) its transport_ctx: one ctx cannot be
     * shared by every accepted stream unless the transport never frees it. */
    if (opts->on_stream && opts->stream.transport_ctx && opts->stream.transport && opts->stream.transport->destroy)
        return -EINVAL;
    if (opts->mode < IOLOOP_ACCEPT_DEFAULT || opts->mode > IOLOOP_ACCEPT_DISPATCH)
        return -EINVAL;
    if (opts->proxy_protocol != IOLOOP_PROXY_PROTOCOL_OFF &&
        (opts->proxy_protocol != IOLOOP_PROXY_PROTOCOL_REQUIRED || !opts->on_stream || opts->proxy_timeout < 0))
        return -EINVAL; /* the header is read through a stream */
    if (opts->nfds < 0 || (opts->nfds > 0 && !opts->fds))
        return -EINVAL;
    *out = NULL;
    struct sockaddr_storage ss;
    socklen_t len = 0;
    int err;
    ioloop_accept_mode_t mode;
    int nacc;
    if (opts->nfds > 0) {
        int family = AF_UNSPEC;
        if ((err = check_inherited(opts->fds, opts->nfds, &family)) != 0)
            return err;
        int m = inherited_mode(rt, opts->mode, opts->nfds);
        if (m < 0)
            return -EINVAL;
        mode = (ioloop_accept_mode_t)m;
        nacc = mode == IOLOOP_ACCEPT_REUSEPORT ? opts->nfds : mode == IOLOOP_ACCEPT_DISPATCH ? 1 : rt->n;
        ss.ss_family = (sa_family_t)family;
    } else {
        if ((err = parse_address(opts->address, opts->port, &ss, &len)) != 0)
            return err;
        mode = effective_mode(rt, opts->mode, ss.ss_family);
        nacc = mode == IOLOOP_ACCEPT_DISPATCH ? 1 : rt->n;
    }

    ioloop_listener_t *l = calloc(1, sizeof(*l) + (size_t)nacc * sizeof(l->acc[0]));
    if (!l)
        return -ENOMEM;
    l->mode = mode;
    l->on_accept = opts->on_accept;
    l->on_stream = opts->on_stream;
    l->stream_opts = opts->stream;
    l->make_transport = opts->make_transport;
    l->make_transport_arg = opts->make_transport_arg;
    l->arg = opts->arg;
    l->proxy_protocol = opts->proxy_protocol;
    l->proxy_timeout = opts->proxy_timeout > 0 ? opts->proxy_timeout : IOLOOP_SEC(10);
    l->inherited = opts->nfds > 0;
    l->nacc = nacc;
    l->nloops = rt->n;
    l->loops = calloc((size_t)rt->n, sizeof(*l->loops));
    l->inflight = calloc((size_t)rt->n, sizeof(*l->inflight));
    l->in_header = calloc((size_t)rt->n, sizeof(*l->in_header));
    atomic_init(&l->refcount, 1);
    if (!l->loops || !l->inflight || !l->in_header) {
        ioloop__listener_unref(l);
        return -ENOMEM;
    }
    for (int i = 0; i < rt->n; i++) {
        l->loops[i] = rt->loops[i];
        ioloop_ref(l->loops[i]);
    }
    if (ss.ss_family == AF_UNIX && !l->inherited) {
        const char *path = ((struct sockaddr_un *)&ss)->sun_path;
        remove_stale_socket(path);
    }

    /* Sockets: one per loop for REUSEPORT, else one shared; inherited ones
     * are duplicated (the caller's stay the caller's), and REUSEPORT over
     * them puts socket j on loop j % loops. The socket file of an inherited
     * unix socket is not ours to unlink: unix_path stays NULL. */
    int shared = -1, made = 0;
    for (int i = 0; i < nacc && !err; i++) {
        int fd;
        if (l->inherited) {
            if (mode == IOLOOP_ACCEPT_REUSEPORT)
                fd = dup_inherited(opts->fds[i]);
            else
                fd = shared >= 0 ? shared : (shared = dup_inherited(opts->fds[0]));
            if (fd < 0) {
                err = fd;
                break;
            }
            l->acc[i] = (ioloop__acceptor_t){.listener = l, .loop = rt->loops[i % rt->n], .fd = fd};
            made++;
            continue;
        }
        if (mode == IOLOOP_ACCEPT_REUSEPORT) {
            fd = listen_socket(&ss, len, true, opts->backlog);
            if (fd >= 0 && i == 0)
                set_port(&ss, bound_port(fd)); /* port 0: the others join the one chosen */
        } else {
            fd = shared >= 0 ? shared : (shared = listen_socket(&ss, len, false, opts->backlog));
        }
        if (fd < 0) {
            err = fd;
            break;
        }
        if (ss.ss_family == AF_UNIX && !l->unix_path) {
            l->unix_path = strdup(((struct sockaddr_un *)&ss)->sun_path);
            struct stat st;
            if (l->unix_path && stat(l->unix_path, &st) == 0) { /* ours: bind just made it */
                l->unix_dev = st.st_dev;
                l->unix_ino = st.st_ino;
            }
        }
        l->acc[i] = (ioloop__acceptor_t){.listener = l, .loop = rt->loops[i], .fd = fd};
        made++;
    }
    if (!err)
        l->port = bound_port(l->acc[0].fd);
    atomic_init(&l->open_acceptors, mode == IOLOOP_ACCEPT_REUSEPORT ? 0 : made);
    /* Arm: from here each acceptor belongs to its loop's thread. */
    int armed = 0;
    for (int i = 0; i < made && !err; i++) {
        ioloop__listener_ref(l); /* the acceptor's */
        err = arm(&l->acc[i]);
        if (err)
            ioloop__listener_unref(l);
        else
            armed++;
    }
    if (err) {
        if (mode == IOLOOP_ACCEPT_REUSEPORT) {
            for (int i = armed; i < made; i++)
                close(l->acc[i].fd);
        } else if (armed == 0 && shared >= 0) {
            close(shared);
        }
        l->nacc = armed; /* stop disarms and closes these on their loops */
        atomic_store(&l->open_acceptors, mode == IOLOOP_ACCEPT_REUSEPORT ? 0 : armed);
        ioloop_listener_free(l);
        return err;
    }
    *out = l;
    return 0;
}
