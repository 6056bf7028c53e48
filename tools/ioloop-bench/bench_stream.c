/* bench_stream.c — `ioloop-bench stream`: a TCP echo server written on each
 * library's buffered stream (ioloop_stream, libuv's uv_stream_t, libevent's
 * bufferevent), driven by the same client over 256 loopback connections.
 *
 * The work: each connection sends one message (64 B or 16 KiB), waits for
 * the whole echo, sends the next (a ping-pong per connection, 256 at once).
 * The server reads up to BENCH_STREAM_READ bytes and writes them back. The
 * figure is the server thread's CPU time (its own CPU clock, read from the
 * driver with pthread_getcpuclockid) per echoed message, over a timed window
 * after a warm-up; the client's CPU does not count. The connections are made
 * and accepted before the server starts, so accept paths are not measured.
 * Holds the ioloop side and the driver for all three libraries.
 *
 * Threading rule: the server runs on the calling thread (main pins it to the
 * loop CPU); the driver is one thread on the producer CPU, joined before
 * returning.
 */
#define _GNU_SOURCE
#include "bench.h"

#include "ioloop/ioloop.h"
#include "ioloop/stream.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* ---- the ioloop server ------------------------------------------------------ */

typedef struct {
    ioloop_t *loop;
    int open;
} echo_server_t;

static void echo_read(ioloop_stream_t *stream, int status, const char *data, size_t len, void *arg);

static void echo_read_next(ioloop_stream_t *stream, echo_server_t *server)
{
    (void)ioloop_stream_read_bytes(stream, BENCH_STREAM_READ, true, echo_read, server);
}

static void echo_read(ioloop_stream_t *stream, int status, const char *data, size_t len, void *arg)
{
    if (status != 0)
        return; /* ended: echo_closed follows */
    if (ioloop_stream_write(stream, data, len, NULL, NULL) < 0) {
        ioloop_stream_close(stream);
        return;
    }
    if (ioloop_stream_writable(stream)) /* else echo_drained reads on */
        echo_read_next(stream, arg);
}

static void echo_drained(ioloop_stream_t *stream, int status, void *arg)
{
    if (status == 0)
        echo_read_next(stream, arg);
}

static void echo_closed(ioloop_stream_t *stream, int error, void *arg)
{
    (void)stream, (void)error;
    echo_server_t *server = arg;
    if (--server->open == 0)
        ioloop_stop(server->loop);
}

int bench_ioloop_stream_echo(const int *fds, int n)
{
    echo_server_t server = {0};
    int lerr = ioloop_new(NULL, &server.loop);
    if (lerr) {
        for (int i = 0; i < n; i++)
            close(fds[i]);
        return lerr;
    }
    int err = 0;
    for (int i = 0; i < n; i++) {
        ioloop_stream_t *stream;
        int rc = err ? -ECANCELED : ioloop_stream_new(server.loop, fds[i], NULL, &stream); /* owns fds[i] */
        if (rc < 0) {
            if (err)
                close(fds[i]);
            err = err ? err : rc;
            continue;
        }
        server.open++;
        ioloop_stream_set_close_callback(stream, echo_closed, &server);
        ioloop_stream_set_drain_callback(stream, echo_drained, &server);
        echo_read_next(stream, &server);
    }
    /* On an error the driver still closes its ends, so every stream ends. */
    if (server.open > 0)
        ioloop_start(server.loop);
    ioloop_close(server.loop, false);
    return err;
}

/* ---- the driver: ping-pong on every connection ------------------------------- */

/* A window is extended until min_messages have been echoed (a shared host
 * can stall every connection for 100+ ms), but never beyond this. */
#define WINDOW_DEADLINE_NS INT64_C(10000000000)

typedef struct {
    int *fds;
    size_t *sent, *received; /* bytes of the current message, per connection */
    int count;
    size_t size;
    double warmup, window; /* seconds */
    uint64_t min_messages; /* the window goes on until this many (a stalled host must not give 0) */
    int cpu;
    clockid_t server_clock;
    /* results */
    double messages, seconds, server_cpu_ns;
    int failed;
    const char *why; /* the first failure, for the report */
    int error;       /* its errno, or 0 */
} driver_t;

static void driver_fail(driver_t *d, const char *why, int error)
{
    if (!d->failed++)
        d->why = why, d->error = error;
}

static int64_t clock_ns(clockid_t clock)
{
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Sends the rest of connection i's message; true when it went out whole. */
static bool driver_send(driver_t *d, int ep, int i, const char *msg)
{
    while (d->sent[i] < d->size) {
        ssize_t w = send(d->fds[i], msg + d->sent[i], d->size - d->sent[i], MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EAGAIN) { /* the rest when the socket has room */
                struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.u32 = (uint32_t)i};
                epoll_ctl(ep, EPOLL_CTL_MOD, d->fds[i], &ev);
                return false;
            }
            driver_fail(d, "send", errno);
            return false;
        }
        d->sent[i] += (size_t)w;
    }
    return true;
}

static void *driver_main(void *arg)
{
    driver_t *d = arg;
    bench_pin_self(d->cpu);
    char *msg = malloc(d->size), *buf = malloc(BENCH_STREAM_READ);
    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (!msg || !buf || ep < 0) {
        driver_fail(d, "setup", errno);
        goto out;
    }
    memset(msg, 'm', d->size);
    for (int i = 0; i < d->count; i++) {
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
        epoll_ctl(ep, EPOLL_CTL_ADD, d->fds[i], &ev);
        driver_send(d, ep, i, msg);
    }
    uint64_t messages = 0, messages0 = 0;
    int64_t start = bench_now_ns(), t0 = 0, cpu0 = 0;
    struct epoll_event events[256];
    while (!d->failed) {
        int64_t now = bench_now_ns();
        if (!t0 && now - start >= (int64_t)(d->warmup * 1e9)) {
            t0 = now, cpu0 = clock_ns(d->server_clock), messages0 = messages;
        } else if (t0 && now - t0 >= (int64_t)(d->window * 1e9) &&
                   (messages - messages0 >= d->min_messages || now - t0 >= WINDOW_DEADLINE_NS)) {
            d->server_cpu_ns = (double)(clock_ns(d->server_clock) - cpu0);
            d->seconds = (double)(now - t0) / 1e9;
            d->messages = (double)(messages - messages0);
            break;
        }
        int ready = epoll_wait(ep, events, 256, 100);
        for (int k = 0; k < ready; k++) {
            int i = (int)events[k].data.u32;
            if (events[k].events & EPOLLOUT) {
                if (driver_send(d, ep, i, msg)) {
                    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
                    epoll_ctl(ep, EPOLL_CTL_MOD, d->fds[i], &ev);
                }
            }
            if (!(events[k].events & (EPOLLIN | EPOLLERR | EPOLLHUP)))
                continue;
            ssize_t r = recv(d->fds[i], buf, BENCH_STREAM_READ, 0);
            if (r < 0 && errno == EAGAIN)
                continue;
            if (r <= 0 || d->received[i] + (size_t)r > d->size) { /* closed, or more than we sent */
                driver_fail(d,
                            r < 0    ? "recv"
                            : r == 0 ? "the server closed a connection"
                                     : "echo longer than sent",
                            r < 0 ? errno : 0);
                break;
            }
            d->received[i] += (size_t)r;
            if (d->received[i] == d->size) { /* the whole echo: the next message */
                messages++;
                d->received[i] = d->sent[i] = 0;
                driver_send(d, ep, i, msg);
            }
        }
    }
out:
    /* Closing our ends ends every server stream (EOF or reset), which ends the server. */
    for (int i = 0; i < d->count; i++)
        close(d->fds[i]);
    if (ep >= 0)
        close(ep);
    free(msg);
    free(buf);
    return NULL;
}

/* n connected loopback TCP pairs: client ends (non-blocking) and server ends. */
static int make_pairs(int *clients, int *servers, int n)
{
    int listener = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(addr);
    int err = 0, made = 0, one = 1;
    if (listener < 0 || bind(listener, (struct sockaddr *)&addr, sizeof(addr)) < 0 ||
        getsockname(listener, (struct sockaddr *)&addr, &len) < 0 || listen(listener, n) < 0)
        err = -errno;
    for (; made < n && !err; made++) {
        clients[made] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (clients[made] < 0 || connect(clients[made], (struct sockaddr *)&addr, sizeof(addr)) < 0 ||
            (servers[made] = accept4(listener, NULL, NULL, SOCK_CLOEXEC)) < 0) {
            err = -errno;
            if (clients[made] >= 0)
                close(clients[made]);
            break;
        }
        /* Small messages must leave at once on both sides (as in `scale`). */
        setsockopt(clients[made], IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        setsockopt(servers[made], IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        fcntl(clients[made], F_SETFL, O_NONBLOCK);
        fcntl(servers[made], F_SETFL, O_NONBLOCK);
    }
    if (listener >= 0)
        close(listener);
    if (err) {
        for (int i = 0; i < made; i++)
            close(clients[i]), close(servers[i]);
    }
    return err;
}

typedef struct {
    double cpu_ns_per_message, messages_per_s;
} echo_result_t;

static int echo_run(const bench_options_t *o, const bench_peer_t *lib, int connections, size_t size, echo_result_t *out)
{
    int *fds = malloc(2 * (size_t)connections * sizeof(int));
    size_t *progress = calloc(2 * (size_t)connections, sizeof(size_t));
    if (!fds || !progress) {
        free(fds), free(progress);
        return -ENOMEM;
    }
    int err = make_pairs(fds, fds + connections, connections);
    if (err) {
        free(fds), free(progress);
        return err;
    }
    driver_t d = {.fds = fds,
                  .sent = progress,
                  .received = progress + connections,
                  .count = connections,
                  .size = size,
                  .warmup = o->quick ? 0.05 : 0.3,
                  .window = o->quick ? 0.1 : 1.0,
                  .min_messages = o->quick ? 1000 : 20000,
                  .cpu = o->producer_cpu};
    pthread_t driver;
    if ((err = -pthread_getcpuclockid(pthread_self(), &d.server_clock)) == 0)
        err = -pthread_create(&driver, NULL, driver_main, &d);
    if (err) {
        bench_close_all(fds, connections); /* fds holds both ends, client then server */
        free(fds), free(progress);
        return err;
    }
    err = lib->stream_echo(fds + connections, connections);
    pthread_join(driver, NULL);
    if (!err && (d.failed || d.messages <= 0)) {
        fprintf(stderr, "stream: %s driver: %s%s%s\n", lib->name, d.failed ? d.why : "no message echoed in the window",
                d.error ? ": " : "", d.error ? strerror(d.error) : "");
        err = -EIO;
    }
    if (!err) {
        out->cpu_ns_per_message = d.server_cpu_ns / d.messages;
        out->messages_per_s = d.messages / d.seconds;
    }
    free(fds), free(progress);
    return err;
}

/* ---- the subcommand ----------------------------------------------------------- */

enum { LIBS = 1 + 2, SIZES = 2 };

static const bench_peer_t *lib(size_t i)
{
    return i == 0 ? &bench_ioloop_impl : bench_peers[i - 1];
}

int bench_stream(const bench_options_t *o)
{
    const size_t sizes[SIZES] = {64, 16 * 1024};
    const char *names[SIZES] = {"64 B", "16 KiB"};
    int connections = 256, reps = o->repeat, err = 0;
    /* libuv and libevent write with write()/writev(): a server writing to a
     * client that just closed would die of SIGPIPE. Their servers ignore it. */
    signal(SIGPIPE, SIG_IGN);
    if (bench_max_pipes() < connections)
        connections = bench_max_pipes();
    unsigned both = (1u << BENCH_PEER_LIBUV) | (1u << BENCH_PEER_LIBEVENT);
    bench_row_t rows[2 * SIZES];
    double *cpu = malloc((size_t)LIBS * (size_t)reps * sizeof(double));
    double *rate = malloc((size_t)LIBS * (size_t)reps * sizeof(double));
    if (!cpu || !rate) {
        free(cpu), free(rate);
        return -ENOMEM;
    }
    for (size_t s = 0; s < SIZES && !err; s++) {
        bench_row_t *row_cpu = &rows[2 * s], *row_rate = &rows[2 * s + 1];
        *row_cpu = (bench_row_t){
            .unit = "ns/msg", .sense = BENCH_LOWER_IS_BETTER, .target_mask = both, .target_ratio = 0.9, .verdict = -1};
        *row_rate = (bench_row_t){.unit = "msg/s", .sense = BENCH_INFO, .verdict = -1};
        snprintf(row_cpu->workload, sizeof(row_cpu->workload), "echo %s x %d conns: server CPU", names[s], connections);
        snprintf(row_rate->workload, sizeof(row_rate->workload), "echo %s x %d conns: messages", names[s], connections);
        /* Rep -1 is the warm-up; libraries take turns per rep so noise spreads. */
        for (int r = -1; r < reps && !err; r++)
            for (size_t l = 0; l < LIBS && !err; l++) {
                if (!lib(l)->stream_echo)
                    continue;
                echo_result_t result;
                err = echo_run(o, lib(l), connections, sizes[s], &result);
                if (err) {
                    fprintf(stderr, "stream: %s echo %s failed: %s\n", lib(l)->name, names[s], strerror(-err));
                } else if (r >= 0) {
                    cpu[l * (size_t)reps + (size_t)r] = result.cpu_ns_per_message;
                    rate[l * (size_t)reps + (size_t)r] = result.messages_per_s;
                }
            }
        for (size_t l = 0; l < LIBS; l++) {
            bool ran = lib(l)->stream_echo && !err;
            row_cpu->value[l] = ran ? bench_median(cpu + l * (size_t)reps, (size_t)reps) : NAN;
            row_rate->value[l] = ran ? bench_median(rate + l * (size_t)reps, (size_t)reps) : NAN;
        }
    }
    char note[512];
    snprintf(note, sizeof(note),
             "median of %d reps (one warm-up rep), each a %.2f s window (at least %d messages) after %.2f s of "
             "warm-up traffic; "
             "server on the loop CPU, client driver (epoll, ping-pong per connection) on the producer CPU.\n"
             "CPU = the server thread's own CPU clock / messages echoed. ioloop = read_bytes(partial) + write; "
             "libuv = uv_read_start + uv_try_write (uv_write of a copy for a rest); "
             "libevent = bufferevent, input moved to output.",
             reps, o->quick ? 0.1 : 1.0, o->quick ? 1000 : 20000, o->quick ? 0.05 : 0.3);
    bench_table_print("stream (TCP echo, one server loop)", note, rows, err ? 0 : 2 * SIZES);
    free(cpu), free(rate);
    return err;
}
