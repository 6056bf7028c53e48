/* test_tcp_connect.c — ioloop_tcp_connect: connects over IPv4, IPv6 and
 * unix: and exchanges a message with an echoing peer; refused, unknown
 * names (RFC 6761 .invalid at once, resolver failures mapped), timeouts
 * against a listener whose accept queue is full (Linux drops the SYNs),
 * Happy Eyeballs (the next attempt after the delay, or at once on a failure;
 * families interleaved), getaddrinfo never on the loop thread, cancel, the
 * timeout, loop close and runtime shutdown during a lookup, the transport
 * context's ownership, source address and port.
 *
 * Threading rule: the loop runs on the test's main thread, where every
 * assertion is; getaddrinfo (wrapped below) runs on executor threads and
 * only records into atomics.
 */
#define _GNU_SOURCE
#include "test_stream_util.h"
#include "test_util.h"

#include "ioloop/runtime.h"
#include "ioloop/stream.h"
#include "tcp_internal.h"

#include <arpa/inet.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

/* ---- getaddrinfo, wrapped ---------------------------------------------------
 * The library resolves through the dynamic symbol table, where this
 * executable's definition (exported: -rdynamic) comes first. It records which
 * thread called it, and answers names under ".test" (RFC 6761) itself. */

static pthread_t main_thread;
static _Atomic int gai_calls;
static _Atomic int gai_on_main_thread;
static _Atomic int gate_entered;
static bool gate_open = true; /* under gate_lock */
static pthread_mutex_t gate_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t gate_cond = PTHREAD_COND_INITIALIZER;

typedef int (*getaddrinfo_fn)(const char *, const char *, const struct addrinfo *, struct addrinfo **);

int getaddrinfo(const char *node, const char *service, const struct addrinfo *hints, struct addrinfo **res)
{
    static _Atomic(getaddrinfo_fn) real;
    getaddrinfo_fn next = atomic_load(&real);
    if (!next) {
        next = (getaddrinfo_fn)dlsym(RTLD_NEXT, "getaddrinfo");
        atomic_store(&real, next);
    }
    atomic_fetch_add(&gai_calls, 1);
    if (pthread_equal(pthread_self(), main_thread))
        atomic_fetch_add(&gai_on_main_thread, 1);
    if (node && strcmp(node, "eai-noname.test") == 0)
        return EAI_NONAME;
    if (node && strcmp(node, "eai-nodata.test") == 0)
        return EAI_NODATA;
    if (node && strcmp(node, "eai-again.test") == 0)
        return EAI_AGAIN;
    if (node && strcmp(node, "eai-fail.test") == 0)
        return EAI_FAIL;
    if (node && strcmp(node, "gate.test") == 0) {
        /* Blocks the pool thread until the test opens the gate. */
        atomic_fetch_add(&gate_entered, 1);
        pthread_mutex_lock(&gate_lock);
        while (!gate_open)
            pthread_cond_wait(&gate_cond, &gate_lock);
        pthread_mutex_unlock(&gate_lock);
        return EAI_NONAME;
    }
    return next(node, service, hints, res);
}

static void gate_set(bool open)
{
    pthread_mutex_lock(&gate_lock);
    gate_open = open;
    pthread_cond_broadcast(&gate_cond);
    pthread_mutex_unlock(&gate_lock);
}

/* Waits until cond() holds or `ms` passed; returns cond(). */
static bool wait_for(bool (*cond)(void), int ms)
{
    int64_t deadline = tu_now_ns() + IOLOOP_MSEC(ms);
    while (!cond() && tu_now_ns() < deadline)
        tu_sleep_ms(1);
    return cond();
}

static bool no_lookups_live(void)
{
    return ioloop__lookups_live() == 0;
}

static bool gate_was_entered(void)
{
    return atomic_load(&gate_entered) > 0;
}

/* ---- listeners -------------------------------------------------------------- */

/* A listening socket on addr:0 (or a unix path); -1 if the family is not
 * available here. */
static int listen_on(int family, const char *addr, int backlog, int *port)
{
    struct sockaddr_storage ss = {0};
    socklen_t len;
    if (family == AF_UNIX) {
        struct sockaddr_un *un = (struct sockaddr_un *)&ss;
        un->sun_family = AF_UNIX;
        snprintf(un->sun_path, sizeof(un->sun_path), "%s", addr);
        len = sizeof(*un);
    } else if (family == AF_INET) {
        struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
        sin->sin_family = AF_INET;
        assert_int_equal(inet_pton(AF_INET, addr, &sin->sin_addr), 1);
        len = sizeof(*sin);
    } else {
        struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;
        sin6->sin6_family = AF_INET6;
        assert_int_equal(inet_pton(AF_INET6, addr, &sin6->sin6_addr), 1);
        len = sizeof(*sin6);
    }
    int fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    if (bind(fd, (struct sockaddr *)&ss, len) < 0 || listen(fd, backlog) < 0) {
        close(fd);
        return -1;
    }
    len = sizeof(ss);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&ss, &len), 0);
    if (port)
        *port = family == AF_INET    ? ntohs(((struct sockaddr_in *)&ss)->sin_port)
                : family == AF_INET6 ? ntohs(((struct sockaddr_in6 *)&ss)->sin6_port)
                                     : 0;
    return fd;
}

/* A port on 127.0.0.1 with nothing listening (bound, then closed). */
static int closed_port(void)
{
    int port;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
    socklen_t len = sizeof(sin);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sin, &len), 0);
    port = ntohs(sin.sin_port);
    close(fd);
    return port;
}

/* A listener that never accepts, with its accept queue filled until a new
 * connect stays pending: Linux then drops further SYNs, so connects to it
 * neither succeed nor fail (until the client's SYN retries run out). */
typedef struct {
    int listen_fd;
    int port;
    int fillers[64];
    int nfillers;
} blackhole_t;

static bool blackhole_open(blackhole_t *bh, int family, const char *addr)
{
    memset(bh, 0, sizeof(*bh));
    bh->listen_fd = listen_on(family, addr, 0, &bh->port);
    if (bh->listen_fd < 0)
        return false;
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);
    assert_int_equal(getsockname(bh->listen_fd, (struct sockaddr *)&ss, &len), 0);
    while (bh->nfillers < 64) {
        int fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        assert_true(fd >= 0);
        bh->fillers[bh->nfillers++] = fd;
        int rc = connect(fd, (struct sockaddr *)&ss, len);
        assert_true(rc == 0 || errno == EINPROGRESS);
        struct pollfd pfd = {.fd = fd, .events = POLLOUT};
        if (rc != 0 && poll(&pfd, 1, 300) == 0)
            return true; /* this one stays pending: the queue is full */
    }
    return false;
}

static void blackhole_close(blackhole_t *bh)
{
    for (int i = 0; i < bh->nfillers; i++)
        close(bh->fillers[i]);
    if (bh->listen_fd >= 0)
        close(bh->listen_fd);
}

/* An echo server on the loop: each accepted connection gets back what it
 * sends; the last accepted peer's address is kept. */
typedef struct {
    ioloop_t *loop;
    int listen_fd;
    int conns[16];
    int nconns;
    struct sockaddr_storage last_peer;
} echo_server_t;

static int on_echo_conn(ioloop_t *loop, int fd, unsigned events, void *arg)
{
    (void)loop;
    (void)events;
    (void)arg;
    char buf[512];
    ssize_t n = recv(fd, buf, sizeof(buf), 0);
    if (n > 0)
        (void)!send(fd, buf, (size_t)n, MSG_NOSIGNAL);
    return 0;
}

static int on_echo_accept(ioloop_t *loop, int fd, unsigned events, void *arg)
{
    (void)events;
    echo_server_t *server = arg;
    socklen_t len = sizeof(server->last_peer);
    int conn = accept4(fd, (struct sockaddr *)&server->last_peer, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (conn < 0)
        return 0;
    if (server->nconns == 16) {
        close(conn);
        return 0;
    }
    server->conns[server->nconns++] = conn;
    return ioloop_add_handler(loop, conn, IOLOOP_READ, on_echo_conn, server);
}

static bool echo_start(echo_server_t *server, ioloop_t *loop, int family, const char *addr, int *port)
{
    memset(server, 0, sizeof(*server));
    server->loop = loop;
    server->listen_fd = listen_on(family, addr, 16, port);
    if (server->listen_fd < 0)
        return false;
    assert_int_equal(ioloop_add_handler(loop, server->listen_fd, IOLOOP_READ, on_echo_accept, server), 0);
    return true;
}

static void echo_stop(echo_server_t *server)
{
    for (int i = 0; i < server->nconns; i++) {
        ioloop_remove_handler(server->loop, server->conns[i]);
        close(server->conns[i]);
    }
    ioloop_remove_handler(server->loop, server->listen_fd);
    close(server->listen_fd);
}

static int peer_port(const struct sockaddr_storage *ss)
{
    return ss->ss_family == AF_INET ? ntohs(((const struct sockaddr_in *)ss)->sin_port)
                                    : ntohs(((const struct sockaddr_in6 *)ss)->sin6_port);
}

/* ---- the client side ------------------------------------------------------ */

typedef struct {
    bool exchange; /* send a line and wait for its echo */
    bool in_call;  /* inside ioloop_tcp_connect / cancel: cb must not run */
    int calls;     /* cb runs */
    int inline_calls;
    int status;
    bool nodelay_on;
    bool echoed;
    int64_t started, finished; /* ns */
} client_t;

static void on_echo(ioloop_stream_t *stream, int status, const char *data, size_t len, void *arg)
{
    client_t *client = arg;
    client->echoed = status == 0 && len == 5 && memcmp(data, "ping\n", 5) == 0;
    ioloop_stream_close(stream);
    ioloop_stop(ioloop_stream_loop(stream));
}

static void on_connect(ioloop_t *loop, int status, ioloop_stream_t *stream, void *arg)
{
    client_t *client = arg;
    client->calls++;
    if (client->in_call)
        client->inline_calls++;
    client->status = status;
    client->finished = tu_now_ns();
    if (stream) {
        int on = 0;
        socklen_t len = sizeof(on);
        client->nodelay_on = getsockopt(ioloop_stream_fd(stream), IPPROTO_TCP, TCP_NODELAY, &on, &len) == 0 && on;
        if (client->exchange && ioloop_stream_write(stream, "ping\n", 5, NULL, NULL) == 0 &&
            ioloop_stream_read_until(stream, "\n", 1, 0, on_echo, client) == 0)
            return;
        ioloop_stream_close(stream);
    }
    ioloop_stop(loop);
}

static int connect_now(ioloop_t *loop, const char *host, int port, const ioloop_tcp_connect_options_t *opts,
                       client_t *client, ioloop_tcp_connect_t **out)
{
    client->started = tu_now_ns();
    client->in_call = true;
    int err = ioloop_tcp_connect(loop, host, port, opts, on_connect, client, out);
    client->in_call = false;
    return err;
}

static ioloop_t *new_loop(void)
{
    ioloop_t *loop = tu_loop_new(NULL);
    assert_non_null(loop);
    return loop;
}

static void run(ioloop_t *loop, int safety_ms)
{
    tu_stop_after(loop, safety_ms);
    assert_int_equal(ioloop_start(loop), 0);
}

static int64_t elapsed_ms(const client_t *client)
{
    return (client->finished - client->started) / 1000000;
}

/* ---- connecting ------------------------------------------------------------ */

static void check_connect_and_echo(int family, const char *addr, const char *host)
{
    ioloop_t *loop = new_loop();
    echo_server_t server;
    int port = 0;
    if (!echo_start(&server, loop, family, addr, &port)) {
        ioloop_close(loop, false);
        skip(); /* e.g. no IPv6 loopback here */
    }
    client_t client = {.exchange = true};
    ioloop_tcp_connect_options_t opts = {.nodelay = true};
    assert_int_equal(connect_now(loop, host, port, &opts, &client, NULL), 0);
    assert_int_equal(client.calls, 0); /* never inline */
    run(loop, 10000);
    assert_int_equal(client.calls, 1);
    assert_int_equal(client.inline_calls, 0);
    assert_int_equal(client.status, 0);
    assert_true(client.echoed);
    if (family != AF_UNIX)
        assert_true(client.nodelay_on);
    echo_stop(&server);
    assert_int_equal(ioloop_close(loop, false), 0);
}

static void test_connect_ipv4(void **state)
{
    (void)state;
    check_connect_and_echo(AF_INET, "127.0.0.1", "127.0.0.1");
}

static void test_connect_ipv6(void **state)
{
    (void)state;
    check_connect_and_echo(AF_INET6, "::1", "::1");
}

static void test_connect_ipv6_bracketed(void **state)
{
    (void)state;
    check_connect_and_echo(AF_INET6, "::1", "[::1]");
}

static void test_connect_unix(void **state)
{
    (void)state;
    char dir[] = "/tmp/ioloop-tcp-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[128], host[160];
    snprintf(path, sizeof(path), "%s/sock", dir);
    snprintf(host, sizeof(host), "unix:%s", path);
    check_connect_and_echo(AF_UNIX, path, host);
    unlink(path);

    /* A path with no socket: the error (known at once) still comes later. */
    ioloop_t *loop = new_loop();
    client_t client = {0};
    assert_int_equal(connect_now(loop, host, 0, NULL, &client, NULL), 0);
    assert_int_equal(client.calls, 0);
    run(loop, 10000);
    assert_int_equal(client.calls, 1);
    assert_int_equal(client.status, -ENOENT);
    assert_int_equal(ioloop_close(loop, false), 0);
    rmdir(dir);
}

/* ---- failures that name their cause ------------------------------------------ */

static void test_refused(void **state)
{
    (void)state;
    ioloop_t *loop = new_loop();
    client_t client = {0};
    assert_int_equal(connect_now(loop, "127.0.0.1", closed_port(), NULL, &client, NULL), 0);
    run(loop, 10000);
    assert_int_equal(client.calls, 1);
    assert_int_equal(client.inline_calls, 0);
    assert_int_equal(client.status, -ECONNREFUSED);
    assert_string_equal(ioloop_strerror(client.status), strerror(ECONNREFUSED));
    assert_int_equal(ioloop_close(loop, false), 0);
}

/* RFC 6761 6.4: "invalid" names are answered at once, without a lookup (so
 * without the network, whatever the resolver configuration). */
static void test_invalid_name(void **state)
{
    (void)state;
    const char *names[] = {"nonexistent.invalid", "NONEXISTENT.INVALID.", "invalid"};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        ioloop_t *loop = new_loop();
        client_t client = {0};
        int calls_before = atomic_load(&gai_calls);
        assert_int_equal(connect_now(loop, names[i], 80, NULL, &client, NULL), 0);
        run(loop, 10000);
        assert_int_equal(client.calls, 1);
        assert_int_equal(client.inline_calls, 0);
        assert_int_equal(client.status, IOLOOP_ENONAME);
        assert_true(elapsed_ms(&client) < 1000);
        assert_int_equal(atomic_load(&gai_calls), calls_before); /* no lookup at all */
        assert_int_equal(ioloop_close(loop, false), 0);
    }
    const char *text = ioloop_strerror(IOLOOP_ENONAME);
    assert_non_null(text);
    assert_null(strstr(text, "Unknown error"));
    assert_string_not_equal(text, ioloop_strerror(IOLOOP_EDNS));
}

/* What getaddrinfo says, as our errors: "no such name" apart from "the
 * resolver failed". The wrapper answers these names itself. */
static void test_resolver_errors(void **state)
{
    (void)state;
    struct {
        const char *name;
        int want;
    } cases[] = {{"eai-noname.test", IOLOOP_ENONAME},
                 {"eai-nodata.test", IOLOOP_ENONAME},
                 {"eai-again.test", IOLOOP_EDNS},
                 {"eai-fail.test", IOLOOP_EDNS}};
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        ioloop_t *loop = new_loop();
        client_t client = {0};
        int calls_before = atomic_load(&gai_calls);
        assert_int_equal(connect_now(loop, cases[i].name, 80, NULL, &client, NULL), 0);
        run(loop, 10000);
        assert_int_equal(client.calls, 1);
        assert_int_equal(client.status, cases[i].want);
        assert_true(atomic_load(&gai_calls) > calls_before);
        assert_int_equal(ioloop_close(loop, false), 0);
    }
    assert_int_equal(atomic_load(&gai_on_main_thread), 0);
    assert_true(wait_for(no_lookups_live, 10000));
}

/* A name goes through getaddrinfo, on an executor thread, never the loop's. */
static void test_dns_off_loop_thread(void **state)
{
    (void)state;
    ioloop_t *loop = new_loop();
    echo_server_t server;
    int port = 0;
    assert_true(echo_start(&server, loop, AF_INET, "127.0.0.1", &port));
    client_t client = {.exchange = true};
    int calls_before = atomic_load(&gai_calls);
    assert_int_equal(
        connect_now(loop, "localhost", port, &(ioloop_tcp_connect_options_t){.family = AF_INET}, &client, NULL), 0);
    run(loop, 10000);
    assert_int_equal(client.calls, 1);
    assert_int_equal(client.status, 0);
    assert_true(client.echoed);
    assert_true(atomic_load(&gai_calls) > calls_before);
    assert_int_equal(atomic_load(&gai_on_main_thread), 0);
    echo_stop(&server);
    assert_int_equal(ioloop_close(loop, false), 0);
    assert_true(wait_for(no_lookups_live, 10000));
}

static void test_timeout(void **state)
{
    (void)state;
    blackhole_t bh;
    if (!blackhole_open(&bh, AF_INET, "127.0.0.1")) {
        blackhole_close(&bh);
        skip(); /* this kernel answers every SYN */
    }
    ioloop_t *loop = new_loop();
    client_t client = {0};
    int fds_before = tu_open_fds();
    assert_int_equal(connect_now(loop, "127.0.0.1", bh.port,
                                 &(ioloop_tcp_connect_options_t){.timeout = IOLOOP_MSEC(300)}, &client, NULL),
                     0);
    run(loop, 20000);
    assert_int_equal(client.calls, 1);
    assert_int_equal(client.status, -ETIMEDOUT);
    assert_true(elapsed_ms(&client) >= 250);
    assert_true(elapsed_ms(&client) < 5000);
    assert_int_equal(tu_open_fds(), fds_before); /* the attempt's socket is closed */
    assert_int_equal(ioloop_close(loop, false), 0);
    blackhole_close(&bh);
}

/* ---- Happy Eyeballs -------------------------------------------------------- */

/* An addrinfo list on the stack: addresses with their own ports. */
typedef struct {
    struct addrinfo ai[4];
    struct sockaddr_storage ss[4];
} addr_list_t;

static void list_add(addr_list_t *list, int i, int family, const char *addr, int port)
{
    memset(&list->ai[i], 0, sizeof(list->ai[i]));
    memset(&list->ss[i], 0, sizeof(list->ss[i]));
    if (family == AF_INET) {
        struct sockaddr_in *sin = (struct sockaddr_in *)&list->ss[i];
        sin->sin_family = AF_INET;
        sin->sin_port = htons((uint16_t)port);
        assert_int_equal(inet_pton(AF_INET, addr, &sin->sin_addr), 1);
        list->ai[i].ai_addrlen = sizeof(*sin);
    } else {
        struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&list->ss[i];
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons((uint16_t)port);
        assert_int_equal(inet_pton(AF_INET6, addr, &sin6->sin6_addr), 1);
        list->ai[i].ai_addrlen = sizeof(*sin6);
    }
    list->ai[i].ai_family = family;
    list->ai[i].ai_socktype = SOCK_STREAM;
    list->ai[i].ai_addr = (struct sockaddr *)&list->ss[i];
    if (i > 0)
        list->ai[i - 1].ai_next = &list->ai[i];
}

/* The first address blackholes: the second is tried after the delay and
 * wins, long before the timeout; the first attempt is closed. */
static void test_happy_eyeballs_delay(void **state)
{
    (void)state;
    blackhole_t bh;
    if (!blackhole_open(&bh, AF_INET, "127.0.0.1")) {
        blackhole_close(&bh);
        skip();
    }
    int fds_before = tu_open_fds();
    ioloop_t *loop = new_loop();
    echo_server_t server;
    int port = 0;
    assert_true(echo_start(&server, loop, AF_INET, "127.0.0.1", &port));
    addr_list_t list;
    list_add(&list, 0, AF_INET, "127.0.0.1", bh.port);
    list_add(&list, 1, AF_INET, "127.0.0.1", port);
    client_t client = {.exchange = true};
    client.started = tu_now_ns();
    ioloop_tcp_connect_options_t opts = {.timeout = IOLOOP_SEC(10), .happy_eyeballs_delay = IOLOOP_MSEC(300)};
    assert_int_equal(ioloop__tcp_connect_addresses(loop, list.ai, 0, &opts, on_connect, &client, NULL), 0);
    run(loop, 20000);
    assert_int_equal(client.calls, 1);
    assert_int_equal(client.status, 0);
    assert_true(client.echoed);
    assert_true(elapsed_ms(&client) >= 250);
    assert_true(elapsed_ms(&client) < 5000);
    echo_stop(&server);
    assert_int_equal(ioloop_close(loop, false), 0); /* frees the closed stream */
    assert_int_equal(tu_open_fds(), fds_before);    /* the losing attempt was closed */
    blackhole_close(&bh);
}

/* A failed attempt starts the next one at once, not after the delay. */
static void test_happy_eyeballs_failure_moves_on(void **state)
{
    (void)state;
    ioloop_t *loop = new_loop();
    echo_server_t server;
    int port = 0;
    assert_true(echo_start(&server, loop, AF_INET, "127.0.0.1", &port));
    addr_list_t list;
    list_add(&list, 0, AF_INET, "127.0.0.1", closed_port());
    list_add(&list, 1, AF_INET, "127.0.0.1", port);
    client_t client = {.exchange = true};
    client.started = tu_now_ns();
    ioloop_tcp_connect_options_t opts = {.happy_eyeballs_delay = IOLOOP_SEC(10)};
    assert_int_equal(ioloop__tcp_connect_addresses(loop, list.ai, 0, &opts, on_connect, &client, NULL), 0);
    run(loop, 20000);
    assert_int_equal(client.calls, 1);
    assert_int_equal(client.status, 0);
    assert_true(client.echoed);
    assert_true(elapsed_ms(&client) < 5000);
    echo_stop(&server);
    assert_int_equal(ioloop_close(loop, false), 0);
}

/* Every attempt refused: the first attempt's error; with a blackhole still
 * pending at the deadline, -ETIMEDOUT. */
static void test_happy_eyeballs_all_fail(void **state)
{
    (void)state;
    ioloop_t *loop = new_loop();
    addr_list_t list;
    list_add(&list, 0, AF_INET, "127.0.0.1", closed_port());
    list_add(&list, 1, AF_INET, "127.0.0.1", closed_port());
    client_t client = {0};
    assert_int_equal(ioloop__tcp_connect_addresses(loop, list.ai, 0, NULL, on_connect, &client, NULL), 0);
    run(loop, 20000);
    assert_int_equal(client.calls, 1);
    assert_int_equal(client.status, -ECONNREFUSED);

    blackhole_t bh;
    if (blackhole_open(&bh, AF_INET, "127.0.0.1")) {
        list_add(&list, 0, AF_INET, "127.0.0.1", bh.port);
        list_add(&list, 1, AF_INET, "127.0.0.1", closed_port());
        client = (client_t){.started = tu_now_ns()};
        ioloop_tcp_connect_options_t opts = {.timeout = IOLOOP_MSEC(500), .happy_eyeballs_delay = IOLOOP_MSEC(50)};
        assert_int_equal(ioloop__tcp_connect_addresses(loop, list.ai, 0, &opts, on_connect, &client, NULL), 0);
        run(loop, 20000);
        assert_int_equal(client.calls, 1);
        assert_int_equal(client.status, -ETIMEDOUT);
        assert_true(elapsed_ms(&client) >= 400);
    }
    blackhole_close(&bh);
    assert_int_equal(ioloop_close(loop, false), 0);
}

/* Families interleave: with [v4 refused, v4 good, v6 blackhole] the order
 * is v4 refused, v6 blackhole, then (after the delay) v4 good; in list
 * order the good one would win at once. */
static void test_happy_eyeballs_interleaves_families(void **state)
{
    (void)state;
    blackhole_t bh;
    if (!blackhole_open(&bh, AF_INET6, "::1")) {
        blackhole_close(&bh);
        skip(); /* no IPv6 loopback here */
    }
    ioloop_t *loop = new_loop();
    echo_server_t server;
    int port = 0;
    assert_true(echo_start(&server, loop, AF_INET, "127.0.0.1", &port));
    addr_list_t list;
    list_add(&list, 0, AF_INET, "127.0.0.1", closed_port());
    list_add(&list, 1, AF_INET, "127.0.0.1", port);
    list_add(&list, 2, AF_INET6, "::1", bh.port);
    client_t client = {.exchange = true};
    client.started = tu_now_ns();
    ioloop_tcp_connect_options_t opts = {.happy_eyeballs_delay = IOLOOP_MSEC(300)};
    assert_int_equal(ioloop__tcp_connect_addresses(loop, list.ai, 0, &opts, on_connect, &client, NULL), 0);
    run(loop, 20000);
    assert_int_equal(client.calls, 1);
    assert_int_equal(client.status, 0);
    assert_true(client.echoed);
    assert_true(elapsed_ms(&client) >= 250);

    /* family = AF_INET skips the v6 address: the good one wins at once. */
    client = (client_t){.exchange = true, .started = tu_now_ns()};
    opts.family = AF_INET;
    opts.happy_eyeballs_delay = IOLOOP_SEC(10);
    assert_int_equal(ioloop__tcp_connect_addresses(loop, list.ai, 0, &opts, on_connect, &client, NULL), 0);
    run(loop, 20000);
    assert_int_equal(client.status, 0);
    assert_true(client.echoed);
    assert_true(elapsed_ms(&client) < 5000);
    echo_stop(&server);
    assert_int_equal(ioloop_close(loop, false), 0);
    blackhole_close(&bh);
}

/* ---- cancel and close ------------------------------------------------------ */

static void cancel_later(ioloop_t *loop, void *arg)
{
    (void)loop;
    ioloop_tcp_connect_cancel(arg);
}

static void test_cancel(void **state)
{
    (void)state;
    blackhole_t bh;
    bool have_bh = blackhole_open(&bh, AF_INET, "127.0.0.1");
    ioloop_t *loop = new_loop();
    int fds_before = tu_open_fds();

    /* Cancel an attempt in progress, from a later callback. */
    client_t pending = {0};
    ioloop_tcp_connect_t *conn = NULL;
    if (have_bh) {
        assert_int_equal(connect_now(loop, "127.0.0.1", bh.port, NULL, &pending, &conn), 0);
        assert_non_null(conn);
        assert_int_equal(ioloop_call_later(loop, IOLOOP_MSEC(50), cancel_later, conn, NULL), 0);
        run(loop, 10000);
        assert_int_equal(pending.calls, 1);
        assert_int_equal(pending.status, -ECANCELED);
    }

    /* Cancel right after the call: cb still comes later, once. */
    client_t now = {0};
    assert_int_equal(connect_now(loop, "127.0.0.1", closed_port(), NULL, &now, &conn), 0);
    now.in_call = true;
    ioloop_tcp_connect_cancel(conn);
    now.in_call = false;
    run(loop, 10000);
    assert_int_equal(now.calls, 1);
    assert_int_equal(now.inline_calls, 0);
    assert_int_equal(now.status, -ECANCELED);

    /* A unix connect succeeds inside the call; a cancel before cb ran still
     * wins, and the socket is closed. */
    char dir[] = "/tmp/ioloop-tcp-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[128], host[160];
    snprintf(path, sizeof(path), "%s/sock", dir);
    snprintf(host, sizeof(host), "unix:%s", path);
    int lfd = listen_on(AF_UNIX, path, 4, NULL);
    assert_true(lfd >= 0);
    client_t decided = {0};
    assert_int_equal(connect_now(loop, host, 0, NULL, &decided, &conn), 0);
    ioloop_tcp_connect_cancel(conn);
    ioloop_tcp_connect_cancel(conn); /* twice: still once */
    run(loop, 10000);
    assert_int_equal(decided.calls, 1);
    assert_int_equal(decided.status, -ECANCELED);
    close(lfd);
    unlink(path);
    rmdir(dir);

    assert_int_equal(tu_open_fds(), fds_before);
    assert_int_equal(ioloop_close(loop, false), 0);
    blackhole_close(&bh);
}

/* Cancel while getaddrinfo still runs on the pool: cb comes at once; the
 * lookup ends later on its thread and frees itself. */
static void test_cancel_during_lookup(void **state)
{
    (void)state;
    atomic_store(&gate_entered, 0);
    gate_set(false);
    ioloop_t *loop = new_loop();
    client_t client = {0};
    ioloop_tcp_connect_t *conn = NULL;
    assert_int_equal(connect_now(loop, "gate.test", 80, NULL, &client, &conn), 0);
    assert_true(wait_for(gate_was_entered, 10000));
    ioloop_tcp_connect_cancel(conn);
    run(loop, 10000);
    assert_int_equal(client.calls, 1);
    assert_int_equal(client.status, -ECANCELED);
    assert_int_equal(ioloop__lookups_live(), 1); /* still blocked in getaddrinfo */
    gate_set(true);
    /* Its result reaches the loop and is dropped there. */
    while (ioloop__lookups_live() > 0 && tu_now_ns() - client.finished < IOLOOP_SEC(10)) {
        tu_stop_after(loop, 1);
        assert_int_equal(ioloop_start(loop), 0);
    }
    assert_int_equal(ioloop__lookups_live(), 0);
    assert_int_equal(client.calls, 1);
    assert_int_equal(ioloop_close(loop, false), 0);
}

/* The timeout covers the lookup: a getaddrinfo that hangs ends the connect
 * with -ETIMEDOUT on time, and is dropped when it returns. */
static void test_timeout_during_lookup(void **state)
{
    (void)state;
    atomic_store(&gate_entered, 0);
    gate_set(false);
    ioloop_t *loop = new_loop();
    client_t client = {0};
    ioloop_tcp_connect_options_t opts = {.timeout = IOLOOP_MSEC(300)};
    assert_int_equal(connect_now(loop, "gate.test", 80, &opts, &client, NULL), 0);
    run(loop, 20000);
    assert_int_equal(client.calls, 1);
    assert_int_equal(client.status, -ETIMEDOUT);
    assert_true(elapsed_ms(&client) >= 250);
    assert_true(elapsed_ms(&client) < 5000);
    assert_int_equal(atomic_load(&gate_entered), 1);
    gate_set(true);
    assert_int_equal(ioloop_close(loop, false), 0);
    assert_true(wait_for(no_lookups_live, 10000));
}

/* The loop closes with a connect in each stage: cb runs once each, with
 * -ESHUTDOWN, during the close; nothing leaks (the lookup still on the pool
 * frees itself when getaddrinfo returns). */
static void test_loop_close_while_connecting(void **state)
{
    (void)state;
    atomic_store(&gate_entered, 0);
    gate_set(false);
    blackhole_t bh;
    bool have_bh = blackhole_open(&bh, AF_INET, "127.0.0.1");
    int fds_before = tu_open_fds();
    ioloop_t *loop = new_loop();
    char dir[] = "/tmp/ioloop-tcp-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[128], host[160];
    snprintf(path, sizeof(path), "%s/sock", dir);
    snprintf(host, sizeof(host), "unix:%s", path);
    int lfd = listen_on(AF_UNIX, path, 4, NULL);
    assert_true(lfd >= 0);
    client_t lookup = {0}, attempt = {0}, decided = {0};
    assert_int_equal(connect_now(loop, "gate.test", 80, NULL, &lookup, NULL), 0);
    if (have_bh)
        assert_int_equal(connect_now(loop, "127.0.0.1", bh.port, NULL, &attempt, NULL), 0);
    assert_true(wait_for(gate_was_entered, 10000));
    tu_stop_after(loop, 100);
    assert_int_equal(ioloop_start(loop), 0);
    /* Connected inside the call; its delivery is still queued at the close. */
    assert_int_equal(connect_now(loop, host, 0, NULL, &decided, NULL), 0);
    assert_int_equal(lookup.calls + attempt.calls + decided.calls, 0);
    assert_int_equal(ioloop_close(loop, false), 0);
    assert_int_equal(lookup.calls, 1);
    assert_int_equal(lookup.status, -ESHUTDOWN);
    if (have_bh) {
        assert_int_equal(attempt.calls, 1);
        assert_int_equal(attempt.status, -ESHUTDOWN);
    }
    assert_int_equal(decided.calls, 1);
    assert_int_equal(decided.status, -ESHUTDOWN);
    close(lfd);
    unlink(path);
    rmdir(dir);
    assert_int_equal(tu_open_fds(), fds_before); /* every socket of the connects is closed */
    gate_set(true);
    assert_true(wait_for(no_lookups_live, 10000));
    blackhole_close(&bh);
}

/* The runtime shuts down with one lookup running on its (single) pool
 * thread and one queued behind it, which never starts: both connects end
 * with -ESHUTDOWN once, and both lookups are freed. */
typedef struct {
    _Atomic int calls;
    _Atomic int shutdown_calls;
    _Atomic int started;
} rt_client_t;

static void on_rt_connect(ioloop_t *loop, int status, ioloop_stream_t *stream, void *arg)
{
    (void)loop;
    (void)stream;
    rt_client_t *client = arg;
    atomic_fetch_add(&client->calls, 1);
    if (status == -ESHUTDOWN)
        atomic_fetch_add(&client->shutdown_calls, 1);
}

static void start_two_lookups(ioloop_t *loop, void *arg)
{
    rt_client_t *client = arg;
    for (int i = 0; i < 2; i++)
        if (ioloop_tcp_connect(loop, "gate.test", 80, NULL, on_rt_connect, client, NULL) == 0)
            atomic_fetch_add(&client->started, 1);
}

/* Opens the gate once executor shutdown has cancelled the queued lookup:
 * its completion is then the first post the stopped loop gets (white-box). */
static void *open_gate_on_post(void *arg)
{
    ioloop_t *loop = arg;
    int64_t deadline = tu_now_ns() + IOLOOP_SEC(10);
    while (!atomic_load(&loop->posts) && tu_now_ns() < deadline)
        tu_sleep_ms(1);
    gate_set(true);
    return NULL;
}

static void test_runtime_free_during_lookup(void **state)
{
    (void)state;
    atomic_store(&gate_entered, 0);
    gate_set(false);
    ioloop_runtime_t *rt = NULL;
    assert_int_equal(ioloop_runtime_start(&(ioloop_runtime_options_t){.loops = 1, .executor_threads = 1}, &rt), 0);
    rt_client_t client = {0};
    assert_int_equal(ioloop_add_callback(ioloop_runtime_loop(rt, 0), start_two_lookups, &client), 0);
    assert_true(wait_for(gate_was_entered, 10000));
    ioloop_runtime_stop(rt);
    assert_int_equal(ioloop_runtime_join(rt), 0);
    assert_int_equal(atomic_load(&client.started), 2);
    assert_int_equal(atomic_load(&client.calls), 0);
    ioloop_t *loop = ioloop_runtime_loop(rt, 0);
    assert_null(atomic_load(&loop->posts));
    pthread_t opener;
    assert_int_equal(pthread_create(&opener, NULL, open_gate_on_post, loop), 0);
    ioloop_runtime_free(rt); /* waits for the running lookup: the opener lets it end */
    pthread_join(opener, NULL);
    assert_int_equal(atomic_load(&client.calls), 2);
    assert_int_equal(atomic_load(&client.shutdown_calls), 2);
    assert_int_equal(ioloop__lookups_live(), 0);
    assert_int_equal(atomic_load(&gate_entered), 1); /* the queued one never ran */
}

/* ---- the stream options' transport context ---------------------------------- */

/* The socket transport, with a context whose destruction is counted
 * (test_stream_util.h's counting transport). */
static counting_t counted;

static int destroyed_at_cb;

static void on_connect_ctx(ioloop_t *loop, int status, ioloop_stream_t *stream, void *arg)
{
    destroyed_at_cb = counted.destroys;
    on_connect(loop, status, stream, arg);
}

/* Taken in every case, as ioloop_stream_new takes it: the stream gets it,
 * or it is destroyed once before cb gets an error, or before an error
 * return. */
static void test_transport_ctx_taken(void **state)
{
    (void)state;
    ioloop_t *loop = new_loop();
    echo_server_t server;
    int port = 0;
    assert_true(echo_start(&server, loop, AF_INET, "127.0.0.1", &port));
    ioloop_tcp_connect_options_t opts = {.stream = {.transport = &counting_transport, .transport_ctx = &counted}};

    counted = (counting_t){0};
    client_t client = {.exchange = true};
    assert_int_equal(ioloop_tcp_connect(loop, "127.0.0.1", port, &opts, on_connect_ctx, &client, NULL), 0);
    run(loop, 10000);
    assert_int_equal(client.status, 0);
    assert_true(client.echoed); /* through the counted transport */
    assert_int_equal(destroyed_at_cb, 0);
    tu_stop_after(loop, 50); /* the closed stream goes */
    assert_int_equal(ioloop_start(loop), 0);
    assert_int_equal(counted.destroys, 1);

    counted = (counting_t){0};
    client = (client_t){0};
    assert_int_equal(ioloop_tcp_connect(loop, "127.0.0.1", closed_port(), &opts, on_connect_ctx, &client, NULL), 0);
    run(loop, 10000);
    assert_int_equal(client.status, -ECONNREFUSED);
    assert_int_equal(destroyed_at_cb, 1);
    assert_int_equal(counted.destroys, 1);

    counted = (counting_t){0};
    assert_int_equal(ioloop_tcp_connect(loop, "127.0.0.1", 0, &opts, on_connect_ctx, &client, NULL), -EINVAL);
    assert_int_equal(counted.destroys, 1);
    echo_stop(&server);
    assert_int_equal(ioloop_close(loop, false), 0);
}

/* ---- source address, arguments, threads ------------------------------------- */

static void test_source_address(void **state)
{
    (void)state;
    ioloop_t *loop = new_loop();
    echo_server_t server;
    int port = 0;
    assert_true(echo_start(&server, loop, AF_INET, "127.0.0.1", &port));
    int source_port = closed_port();
    client_t client = {.exchange = true};
    ioloop_tcp_connect_options_t opts = {.source_address = "127.0.0.1", .source_port = source_port};
    assert_int_equal(connect_now(loop, "127.0.0.1", port, &opts, &client, NULL), 0);
    run(loop, 10000);
    assert_int_equal(client.status, 0);
    assert_true(client.echoed);
    assert_int_equal(peer_port(&server.last_peer), source_port);
    assert_int_equal(server.last_peer.ss_family, AF_INET);
    assert_int_equal(((struct sockaddr_in *)&server.last_peer)->sin_addr.s_addr, htonl(INADDR_LOOPBACK));

    /* The source port held by a listener: the bind's error names it. */
    client = (client_t){0};
    opts.source_port = port;
    assert_int_equal(connect_now(loop, "127.0.0.1", port, &opts, &client, NULL), 0);
    run(loop, 10000);
    assert_int_equal(client.calls, 1);
    assert_int_equal(client.status, -EADDRINUSE);

    /* A source of the other family than the literal target. */
    client = (client_t){0};
    opts = (ioloop_tcp_connect_options_t){.source_address = "::1"};
    assert_int_equal(connect_now(loop, "127.0.0.1", port, &opts, &client, NULL), 0);
    run(loop, 10000);
    assert_int_equal(client.calls, 1);
    assert_int_equal(client.status, -EAFNOSUPPORT);

    /* A source that is not a literal address. */
    opts = (ioloop_tcp_connect_options_t){.source_address = "localhost"};
    assert_int_equal(connect_now(loop, "127.0.0.1", port, &opts, &client, NULL), -EINVAL);
    echo_stop(&server);
    assert_int_equal(ioloop_close(loop, false), 0);
}

static void test_bad_arguments(void **state)
{
    (void)state;
    ioloop_t *loop = new_loop();
    client_t client = {0};
    assert_int_equal(ioloop_tcp_connect(loop, NULL, 80, NULL, on_connect, &client, NULL), -EINVAL);
    assert_int_equal(ioloop_tcp_connect(loop, "", 80, NULL, on_connect, &client, NULL), -EINVAL);
    assert_int_equal(ioloop_tcp_connect(loop, "127.0.0.1", 0, NULL, on_connect, &client, NULL), -EINVAL);
    assert_int_equal(ioloop_tcp_connect(loop, "127.0.0.1", 65536, NULL, on_connect, &client, NULL), -EINVAL);
    assert_int_equal(ioloop_tcp_connect(loop, "127.0.0.1", 80, NULL, NULL, &client, NULL), -EINVAL);
    assert_int_equal(ioloop_tcp_connect(loop, "unix:", 0, NULL, on_connect, &client, NULL), -EINVAL);
    assert_int_equal(ioloop_tcp_connect(loop, "127.0.0.1", 80, &(ioloop_tcp_connect_options_t){.family = AF_UNIX},
                                        on_connect, &client, NULL),
                     -EINVAL);
    assert_int_equal(ioloop_tcp_connect(loop, "127.0.0.1", 80, &(ioloop_tcp_connect_options_t){.timeout = -1},
                                        on_connect, &client, NULL),
                     -EINVAL);
    /* A literal of a family the options exclude: named, through cb. */
    assert_int_equal(connect_now(loop, "::1", 80, &(ioloop_tcp_connect_options_t){.family = AF_INET}, &client, NULL),
                     0);
    run(loop, 10000);
    assert_int_equal(client.calls, 1);
    assert_int_equal(client.status, -EAFNOSUPPORT);
    assert_int_equal(ioloop_close(loop, false), 0);
    assert_int_equal(ioloop_tcp_connect(loop, "127.0.0.1", 80, NULL, on_connect, &client, NULL), -ESHUTDOWN);
}

typedef struct {
    ioloop_t *loop;
    _Atomic int result;
    _Atomic bool done;
} foreign_t;

static void *connect_from_foreign_thread(void *arg)
{
    foreign_t *foreign = arg;
    atomic_store(&foreign->result, ioloop_tcp_connect(foreign->loop, "127.0.0.1", 80, NULL, on_connect, NULL, NULL));
    atomic_store(&foreign->done, true);
    return NULL;
}

static void try_from_foreign_thread(ioloop_t *loop, void *arg)
{
    foreign_t *foreign = arg;
    foreign->loop = loop;
    pthread_t thread;
    assert_int_equal(pthread_create(&thread, NULL, connect_from_foreign_thread, foreign), 0);
    pthread_join(thread, NULL);
    ioloop_stop(loop);
}

/* From a thread that is not the running loop's: -EPERM, nothing started. */
static void test_foreign_thread(void **state)
{
    (void)state;
    ioloop_t *loop = new_loop();
    foreign_t foreign = {0};
    assert_int_equal(ioloop_add_callback(loop, try_from_foreign_thread, &foreign), 0);
    run(loop, 10000);
    assert_true(atomic_load(&foreign.done));
    assert_int_equal(atomic_load(&foreign.result), -EPERM);
    assert_int_equal(ioloop_close(loop, false), 0);
}

int main(void)
{
    main_thread = pthread_self();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_connect_ipv4),
        cmocka_unit_test(test_connect_ipv6),
        cmocka_unit_test(test_connect_ipv6_bracketed),
        cmocka_unit_test(test_connect_unix),
        cmocka_unit_test(test_refused),
        cmocka_unit_test(test_invalid_name),
        cmocka_unit_test(test_resolver_errors),
        cmocka_unit_test(test_dns_off_loop_thread),
        cmocka_unit_test(test_timeout),
        cmocka_unit_test(test_happy_eyeballs_delay),
        cmocka_unit_test(test_happy_eyeballs_failure_moves_on),
        cmocka_unit_test(test_happy_eyeballs_all_fail),
        cmocka_unit_test(test_happy_eyeballs_interleaves_families),
        cmocka_unit_test(test_cancel),
        cmocka_unit_test(test_cancel_during_lookup),
        cmocka_unit_test(test_timeout_during_lookup),
        cmocka_unit_test(test_loop_close_while_connecting),
        cmocka_unit_test(test_runtime_free_during_lookup),
        cmocka_unit_test(test_transport_ctx_taken),
        cmocka_unit_test(test_source_address),
        cmocka_unit_test(test_bad_arguments),
        cmocka_unit_test(test_foreign_thread),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
