/* tcp_connect.c — ioloop_tcp_connect: a connected stream to host:port or a
 * unix: path, with Happy Eyeballs (RFC 8305) and one overall timeout.
 *
 * Threading rule: everything runs on the loop's thread (or before it starts);
 * only the name lookup leaves it (resolve.c, on the executor).
 *
 * Addresses are tried in getaddrinfo's order with the families interleaved
 * (first family first); the next attempt starts every happy_eyeballs_delay, or
 * at once when one fails; the first to connect wins and the others are closed.
 * When every attempt failed, the result is the first attempt's error (the most
 * preferred address's, which is what the caller asked for first); when the
 * timeout (lookup included) comes first, -ETIMEDOUT.
 *
 * The result is decided once (finish) and delivered by a posted callback, so
 * cb never runs inside the call that asked; the stream is made only then, and
 * opts->stream.transport_ctx goes to it, or is destroyed when cb gets an
 * error (or the call returns one), as ioloop_stream_new does. Each loop
 * keeps its connects on a list until delivery: when it closes, its close hook
 * delivers -ESHUTDOWN to those there and then.
 */
#define _GNU_SOURCE
#include "tcp_internal.h"

#include "ioloop/runtime.h"
#include "ioloop/stream.h"

#include <assert.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define DEFAULT_TIMEOUT IOLOOP_SEC(20)
#define DEFAULT_DELAY IOLOOP_MSEC(250)

typedef struct {
    struct sockaddr_storage addr;
    socklen_t len;
} address_t;

typedef struct {
    struct ioloop_tcp_connect *conn;
    int fd;    /* -1 unless in progress */
    int error; /* why it failed, 0 while not */
} attempt_t;

enum { ACTIVE, DECIDED };

typedef struct connect_home connect_home_t;

struct ioloop_tcp_connect {
    ioloop_t *loop;
    ioloop_tcp_connect_fn cb;
    void *arg;
    connect_home_t *home; /* on its loop's list until delivered */
    struct ioloop_tcp_connect *prev_listed, *next_listed;
    int state;

    /* what to do */
    int family;
    bool nodelay;
    bool bind_source;               /* source address or port given */
    struct sockaddr_storage source; /* AF_UNSPEC: any address (with a source port) */
    socklen_t source_len;
    int source_port;
    ioloop_stream_options_t stream_opts;
    ioloop_transport_make_fn make_transport; /* the winner's transport (TLS) */
    void *make_transport_arg;
    int port; /* 0: keep the addresses' own (white-box entry) */
    ioloop_time_t delay;

    /* while ACTIVE */
    ioloop__lookup_t *lookup; /* the name lookup in flight, or NULL */
    ioloop_timer_t timeout_timer, delay_timer;
    address_t *addrs;    /* in the order they are tried */
    attempt_t *attempts; /* one per address */
    size_t naddrs, next, live;

    /* once DECIDED */
    int status;
    int fd; /* the connected socket when status is 0 */
    int winner_family;
    bool deliver_posted;
};

/* A loop's connects not delivered yet, for its close hook (made on first use). */
struct connect_home {
    ioloop__close_hook_t hook; /* first: the hook is the home */
    ioloop_tcp_connect_t *head;
};

static void connect_timed_out(ioloop_t *loop, void *arg);
static void drop_transport_ctx(const ioloop_stream_options_t *opts);
static void start_attempts(ioloop_tcp_connect_t *conn);
static void finish(ioloop_tcp_connect_t *conn, int status, int fd);
static void deliver(ioloop_tcp_connect_t *conn);

/* The loop's thread, or any thread while it is not running (set-up). */
static bool on_owner_thread(ioloop_t *loop)
{
    return ioloop__on_loop_thread(loop) || !atomic_load(&loop->running);
}

/* ---- the loop's list ------------------------------------------------------- */

static void home_unlink(ioloop_tcp_connect_t *conn)
{
    if (!conn->home)
        return;
    if (conn->prev_listed)
        conn->prev_listed->next_listed = conn->next_listed;
    else
        conn->home->head = conn->next_listed;
    if (conn->next_listed)
        conn->next_listed->prev_listed = conn->prev_listed;
    conn->home = NULL;
    conn->prev_listed = conn->next_listed = NULL;
}

/* The loop is closing, after the posts it accepted ran: a connect still
 * listed is in progress, or decided with its delivery refused. */
static void home_close(ioloop_t *loop, ioloop__close_hook_t *hook)
{
    (void)loop;
    connect_home_t *home = (connect_home_t *)hook;
    while (home->head) {
        ioloop_tcp_connect_t *conn = home->head;
        home_unlink(conn);
        if (conn->state == ACTIVE)
            finish(conn, -ESHUTDOWN, -1);
        assert(!conn->deliver_posted);
        if (conn->status == 0) {
            /* Connected just as the loop closed: a stream made now would
             * outlive the loop's own teardown of its streams. */
            close(conn->fd);
            conn->status = -ESHUTDOWN;
        }
        deliver(conn);
    }
    free(home);
}

static int home_add(ioloop_tcp_connect_t *conn)
{
    connect_home_t *home = (connect_home_t *)ioloop__close_hook_find(conn->loop, home_close);
    if (!home) {
        if (!(home = calloc(1, sizeof(*home))))
            return -ENOMEM;
        home->hook.fn = home_close;
        ioloop__close_hook_add(conn->loop, &home->hook);
    }
    conn->home = home;
    conn->next_listed = home->head;
    if (home->head)
        home->head->prev_listed = conn;
    home->head = conn;
    return 0;
}

/* ---- deciding and delivering ---------------------------------------------- */

static void close_attempt(ioloop_tcp_connect_t *conn, attempt_t *attempt)
{
    if (attempt->fd < 0)
        return;
    ioloop_remove_handler(conn->loop, attempt->fd);
    close(attempt->fd);
    attempt->fd = -1;
    conn->live--;
}

static void deliver(ioloop_tcp_connect_t *conn)
{
    home_unlink(conn);
    int status = conn->status;
    ioloop_stream_t *stream = NULL;
    if (status) {
        drop_transport_ctx(&conn->stream_opts);
    } else {
        ioloop_stream_options_t stream_opts = conn->stream_opts;
        if (conn->make_transport) {
            /* The made transport replaces any given in the options, which is then dropped. */
            status = conn->make_transport(conn->make_transport_arg, conn->fd, &stream_opts);
            if (status || stream_opts.transport_ctx != conn->stream_opts.transport_ctx)
                drop_transport_ctx(&conn->stream_opts);
            if (status)
                close(conn->fd);
        }
        if (!status)
            status = ioloop_stream_new(conn->loop, conn->fd, &stream_opts, &stream); /* closes fd on failure */
        if (!status && conn->nodelay && conn->winner_family != AF_UNIX) {
            status = ioloop_stream_set_nodelay(stream, true);
            if (status) {
                ioloop_stream_close(stream);
                stream = NULL;
            }
        }
    }
    ioloop_tcp_connect_fn cb = conn->cb;
    void *arg = conn->arg;
    ioloop_t *loop = conn->loop;
    free(conn);
    cb(loop, status, stream, arg);
}

static void deliver_posted(ioloop_t *loop, void *arg)
{
    (void)loop;
    deliver(arg);
}

/* Decides the result (fd: the winner when status is 0) and tears down the
 * rest. Delivery is posted; a closing loop refuses the post, and the close
 * hook (the connect is still listed) delivers instead. */
static void finish(ioloop_tcp_connect_t *conn, int status, int fd)
{
    assert(conn->state == ACTIVE);
    conn->state = DECIDED;
    conn->status = status;
    conn->fd = fd;
    ioloop_remove_timeout(conn->loop, conn->timeout_timer);
    ioloop_remove_timeout(conn->loop, conn->delay_timer);
    conn->timeout_timer = conn->delay_timer = 0;
    if (conn->lookup) {
        ioloop__lookup_abandon(conn->lookup);
        conn->lookup = NULL;
    }
    for (size_t i = 0; i < conn->next; i++)
        close_attempt(conn, &conn->attempts[i]);
    assert(conn->live == 0);
    free(conn->addrs);
    free(conn->attempts);
    conn->addrs = NULL;
    conn->attempts = NULL;
    conn->naddrs = conn->next = 0;
    conn->deliver_posted = ioloop_add_callback(conn->loop, deliver_posted, conn) == 0;
}

/* ---- attempts --------------------------------------------------------------- */

static void attempt_won(ioloop_tcp_connect_t *conn, attempt_t *attempt)
{
    int fd = attempt->fd;
    conn->winner_family = conn->addrs[attempt - conn->attempts].addr.ss_family;
    ioloop_remove_handler(conn->loop, fd);
    attempt->fd = -1; /* not closed: it is the result */
    conn->live--;
    finish(conn, 0, fd);
}

/* The attempt ended with err: the next one starts at once (RFC 8305 5). */
static void attempt_failed(ioloop_tcp_connect_t *conn, attempt_t *attempt, int err)
{
    close_attempt(conn, attempt);
    attempt->error = err;
    ioloop_remove_timeout(conn->loop, conn->delay_timer);
    conn->delay_timer = 0;
    start_attempts(conn);
}

static int on_attempt_event(ioloop_t *loop, int fd, unsigned events, void *arg)
{
    (void)loop;
    attempt_t *attempt = arg;
    ioloop_tcp_connect_t *conn = attempt->conn;
    int soerr = 0;
    socklen_t len = sizeof(soerr);
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &len) < 0)
        soerr = errno;
    if (!soerr) {
        struct sockaddr_storage peer;
        socklen_t plen = sizeof(peer);
        if (getpeername(fd, (struct sockaddr *)&peer, &plen) < 0) {
            if (errno == ENOTCONN && !(events & IOLOOP_ERROR))
                return 0; /* not connected yet after all */
            soerr = errno == ENOTCONN ? ECONNRESET : errno;
        }
    }
    if (soerr)
        attempt_failed(conn, attempt, -soerr);
    else
        attempt_won(conn, attempt);
    return 0;
}

static int bind_source(ioloop_tcp_connect_t *conn, int fd, int family)
{
    struct sockaddr_storage local;
    socklen_t len;
    if (conn->source.ss_family != AF_UNSPEC) {
        local = conn->source;
        len = conn->source_len;
    } else {
        memset(&local, 0, sizeof(local)); /* the wildcard, for a source port alone */
        local.ss_family = (sa_family_t)family;
        len = family == AF_INET ? sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6);
    }
    if (local.ss_family == AF_INET)
        ((struct sockaddr_in *)&local)->sin_port = htons((uint16_t)conn->source_port);
    else
        ((struct sockaddr_in6 *)&local)->sin6_port = htons((uint16_t)conn->source_port);
    if (conn->source_port) {
        /* Attempts in parallel (Happy Eyeballs) bind the same address and
         * port; SO_REUSEADDR lets them, and a port still in TIME_WAIT, but
         * never one a listener holds. */
        int one = 1;
        if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0)
            return -errno;
    }
    return bind(fd, (struct sockaddr *)&local, len) < 0 ? -errno : 0;
}

/* Starts the attempt for address i: 1 connected already, 0 in progress, or
 * a negative errno (recorded as the attempt's error). */
static int attempt_start(ioloop_tcp_connect_t *conn, size_t i)
{
    attempt_t *attempt = &conn->attempts[i];
    const address_t *address = &conn->addrs[i];
    int family = address->addr.ss_family;
    int fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int err = fd < 0 ? -errno : 0;
    if (!err && family != AF_UNIX && conn->bind_source)
        err = bind_source(conn, fd, family);
    if (!err && connect(fd, (const struct sockaddr *)&address->addr, address->len) < 0) {
        /* EINTR: the connect goes on asynchronously, as EINPROGRESS does. */
        err = (errno == EINPROGRESS || errno == EINTR) ? 0 : -errno;
        if (!err)
            err = ioloop_add_handler(conn->loop, fd, IOLOOP_WRITE, on_attempt_event, attempt);
        if (!err) {
            attempt->fd = fd;
            conn->live++;
            return 0;
        }
    } else if (!err) {
        attempt->fd = fd; /* connected at once (unix sockets, often) */
        conn->live++;
        return 1;
    }
    if (fd >= 0)
        close(fd);
    attempt->error = err;
    return err;
}

static void next_attempt_due(ioloop_t *loop, void *arg)
{
    (void)loop;
    ioloop_tcp_connect_t *conn = arg;
    conn->delay_timer = 0;
    start_attempts(conn);
}

/* Starts the next address's attempt (and the one after it, at once, while
 * they fail on the spot), then arms the delay for the one after; with every
 * address tried and none in progress, the connect failed. */
static void start_attempts(ioloop_tcp_connect_t *conn)
{
    while (conn->next < conn->naddrs) {
        size_t i = conn->next++;
        int started = attempt_start(conn, i);
        if (started == 1) {
            attempt_won(conn, &conn->attempts[i]);
            return;
        }
        if (started == 0) {
            if (conn->next < conn->naddrs) {
                int err = ioloop_call_later(conn->loop, conn->delay, next_attempt_due, conn, &conn->delay_timer);
                if (err)
                    finish(conn, err, -1);
            }
            return;
        }
    }
    if (conn->live == 0)
        finish(conn, conn->naddrs ? conn->attempts[0].error : IOLOOP_ENONAME, -1);
}

/* ---- addresses ----------------------------------------------------------- */

static void set_port(struct sockaddr_storage *ss, int port)
{
    if (port == 0)
        return;
    if (ss->ss_family == AF_INET)
        ((struct sockaddr_in *)ss)->sin_port = htons((uint16_t)port);
    else if (ss->ss_family == AF_INET6)
        ((struct sockaddr_in6 *)ss)->sin6_port = htons((uint16_t)port);
}

/* Takes the addresses of `list` that fit the family restriction, families
 * interleaved (RFC 8305 4: the first address's family first, then one of
 * the other, and so on; order within a family kept). */
static int take_addresses(ioloop_tcp_connect_t *conn, const struct addrinfo *list)
{
    size_t n = 0;
    for (const struct addrinfo *ai = list; ai; ai = ai->ai_next)
        n++;
    address_t *firsts = calloc(n ? n : 1, sizeof(*firsts));
    address_t *others = calloc(n ? n : 1, sizeof(*others));
    conn->addrs = calloc(n ? n : 1, sizeof(*conn->addrs));
    conn->attempts = calloc(n ? n : 1, sizeof(*conn->attempts));
    if (!firsts || !others || !conn->addrs || !conn->attempts) {
        free(firsts);
        free(others);
        return -ENOMEM;
    }
    size_t nfirst = 0, nother = 0;
    int first_family = AF_UNSPEC;
    for (const struct addrinfo *ai = list; ai; ai = ai->ai_next) {
        int family = ai->ai_addr ? ai->ai_addr->sa_family : AF_UNSPEC;
        if ((family != AF_INET && family != AF_INET6) || ai->ai_addrlen > sizeof(struct sockaddr_storage))
            continue;
        if (conn->family != AF_UNSPEC && family != conn->family)
            continue;
        if (first_family == AF_UNSPEC)
            first_family = family;
        address_t *to = family == first_family ? &firsts[nfirst++] : &others[nother++];
        memset(to, 0, sizeof(*to));
        memcpy(&to->addr, ai->ai_addr, ai->ai_addrlen);
        to->len = ai->ai_addrlen;
        set_port(&to->addr, conn->port);
    }
    size_t k = 0;
    for (size_t i = 0; i < nfirst || i < nother; i++) {
        if (i < nfirst)
            conn->addrs[k++] = firsts[i];
        if (i < nother)
            conn->addrs[k++] = others[i];
    }
    free(firsts);
    free(others);
    conn->naddrs = k;
    for (size_t i = 0; i < k; i++)
        conn->attempts[i] = (attempt_t){.conn = conn, .fd = -1};
    return 0;
}

static void lookup_done(void *arg, int status, const struct addrinfo *list)
{
    ioloop_tcp_connect_t *conn = arg;
    conn->lookup = NULL;
    /* A result that arrives as the loop closes (its posts run once more)
     * cannot be used: no new handler or timer would be accepted. */
    if (atomic_load(&conn->loop->state) != IOLOOP__OPEN)
        status = -ESHUTDOWN;
    if (!status)
        status = take_addresses(conn, list);
    if (status)
        finish(conn, status, -1);
    else
        start_attempts(conn);
}

/* ---- the API ---------------------------------------------------------------- */

static void connect_timed_out(ioloop_t *loop, void *arg)
{
    (void)loop;
    ioloop_tcp_connect_t *conn = arg;
    conn->timeout_timer = 0;
    finish(conn, -ETIMEDOUT, -1);
}

static void conn_free(ioloop_tcp_connect_t *conn)
{
    home_unlink(conn);
    ioloop_remove_timeout(conn->loop, conn->timeout_timer);
    free(conn->addrs);
    free(conn->attempts);
    free(conn);
}

/* Checks the arguments shared by both entries and makes the connect, with
 * its timeout armed and on its loop's list. */
static int conn_new(ioloop_t *loop, const ioloop_tcp_connect_options_t *opts, ioloop_tcp_connect_fn cb, void *arg,
                    ioloop_tcp_connect_t **out)
{
    static const ioloop_tcp_connect_options_t defaults;
    if (!opts)
        opts = &defaults;
    if (!loop || !cb || opts->timeout < 0 || opts->happy_eyeballs_delay < 0 || opts->source_port < 0 ||
        opts->source_port > 65535 || (opts->family != AF_UNSPEC && opts->family != AF_INET && opts->family != AF_INET6))
        return -EINVAL;
    if (!on_owner_thread(loop))
        return -EPERM;
    if (atomic_load(&loop->state) != IOLOOP__OPEN)
        return -ESHUTDOWN;
    ioloop_tcp_connect_t *conn = calloc(1, sizeof(*conn));
    if (!conn)
        return -ENOMEM;
    conn->loop = loop;
    conn->cb = cb;
    conn->arg = arg;
    conn->state = ACTIVE;
    conn->fd = -1;
    conn->family = opts->family;
    conn->nodelay = opts->nodelay;
    conn->stream_opts = opts->stream;
    conn->make_transport = opts->make_transport;
    conn->make_transport_arg = opts->make_transport_arg;
    conn->delay = opts->happy_eyeballs_delay ? opts->happy_eyeballs_delay : DEFAULT_DELAY;
    conn->source_port = opts->source_port;
    if (opts->source_address) {
        /* A literal only: looking a name up here would block the loop. Its
         * family is the only one that can connect from it. */
        if (ioloop__resolve_literal(opts->source_address, opts->family, &conn->source, &conn->source_len) != 1) {
            free(conn);
            return -EINVAL;
        }
        conn->family = conn->source.ss_family;
    }
    conn->bind_source = opts->source_address || opts->source_port;
    if (home_add(conn) != 0) {
        free(conn);
        return -ENOMEM;
    }
    int err = ioloop_call_later(loop, opts->timeout ? opts->timeout : DEFAULT_TIMEOUT, connect_timed_out, conn,
                                &conn->timeout_timer);
    if (err) {
        conn_free(conn);
        return err;
    }
    *out = conn;
    return 0;
}

/* One address to try (a literal or a unix: path). */
static int take_one(ioloop_tcp_connect_t *conn, const struct sockaddr_storage *ss, socklen_t len)
{
    conn->addrs = calloc(1, sizeof(*conn->addrs));
    conn->attempts = calloc(1, sizeof(*conn->attempts));
    if (!conn->addrs || !conn->attempts)
        return -ENOMEM;
    conn->addrs[0].addr = *ss;
    conn->addrs[0].len = len;
    set_port(&conn->addrs[0].addr, conn->port);
    conn->attempts[0] = (attempt_t){.conn = conn, .fd = -1};
    conn->naddrs = 1;
    return 0;
}

/* The stream options' transport_ctx is taken as ioloop_stream_new takes it:
 * in every case. These destroy it where no stream will. */
static void drop_transport_ctx(const ioloop_stream_options_t *opts)
{
    if (opts->transport && opts->transport->destroy)
        opts->transport->destroy(opts->transport_ctx);
}

static int connect_begin(ioloop_t *loop, const char *host, int port, const ioloop_tcp_connect_options_t *opts,
                         ioloop_tcp_connect_fn cb, void *arg, ioloop_tcp_connect_t **out)
{
    if (!host || !*host)
        return -EINVAL;
    bool is_unix = strncmp(host, "unix:", 5) == 0;
    struct sockaddr_storage ss = {0};
    socklen_t len = 0;
    if (is_unix) {
        struct sockaddr_un *un = (struct sockaddr_un *)&ss;
        const char *path = host + 5;
        if (!*path || strlen(path) >= sizeof(un->sun_path))
            return -EINVAL;
        un->sun_family = AF_UNIX;
        strcpy(un->sun_path, path);
        len = (socklen_t)sizeof(*un);
    } else if (port <= 0 || port > 65535) {
        return -EINVAL;
    }
    ioloop_tcp_connect_t *conn;
    int err = conn_new(loop, opts, cb, arg, &conn);
    if (err)
        return err;
    conn->port = is_unix ? 0 : port;
    int literal = is_unix ? 1 : ioloop__resolve_literal(host, conn->family, &ss, &len);
    if (literal == 0) {
        err = ioloop__lookup_start(loop, host, conn->family, lookup_done, conn, &conn->lookup);
        if (err) {
            conn_free(conn);
            return err;
        }
    } else if (literal < 0) {
        finish(conn, literal, -1); /* delivered later, as every result is */
    } else if ((err = take_one(conn, &ss, len)) != 0) {
        conn_free(conn);
        return err;
    } else {
        start_attempts(conn);
    }
    if (out)
        *out = conn;
    return 0;
}

int ioloop_tcp_connect(ioloop_t *loop, const char *host, int port, const ioloop_tcp_connect_options_t *opts,
                       ioloop_tcp_connect_fn cb, void *arg, ioloop_tcp_connect_t **out)
{
    int err = connect_begin(loop, host, port, opts, cb, arg, out);
    if (err && opts)
        drop_transport_ctx(&opts->stream);
    return err;
}

int ioloop__tcp_connect_addresses(ioloop_t *loop, const struct addrinfo *list, int port,
                                  const ioloop_tcp_connect_options_t *opts, ioloop_tcp_connect_fn cb, void *arg,
                                  ioloop_tcp_connect_t **out)
{
    ioloop_tcp_connect_t *conn;
    int err = port < 0 || port > 65535 ? -EINVAL : conn_new(loop, opts, cb, arg, &conn);
    if (!err) {
        conn->port = port;
        if ((err = take_addresses(conn, list)) != 0)
            conn_free(conn);
    }
    if (err) {
        if (opts)
            drop_transport_ctx(&opts->stream);
        return err;
    }
    start_attempts(conn);
    if (out)
        *out = conn;
    return 0;
}

void ioloop_tcp_connect_cancel(ioloop_tcp_connect_t *conn)
{
    if (!conn || !on_owner_thread(conn->loop))
        return;
    if (conn->state == ACTIVE) {
        finish(conn, -ECANCELED, -1);
    } else if (conn->status != -ECANCELED) {
        /* Decided but not delivered yet: the caller asked first. */
        if (conn->status == 0)
            close(conn->fd);
        conn->status = -ECANCELED;
        conn->fd = -1;
    }
}
