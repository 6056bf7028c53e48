/* bench_accept.c — `ioloop-bench accept`: connections per second and
 * per-loop balance for each accept mode (REUSEPORT, EXCLUSIVE, DISPATCH).
 *
 * Client threads open a TCP connection, send one byte, wait for the one-byte
 * answer and close it (SO_LINGER 0, so the client leaves no TIME_WAIT behind
 * and cannot run out of ports), as fast as they can for a fixed time; the
 * server answers on the loop that got the connection and closes. Reported
 * per mode: connections/s (answered ones), each loop's share and max/min
 * share. The modes are each other's peers: same run, same machine, same
 * client.
 *
 * Threading rule: runs on the calling thread; starts a runtime per mode and
 * the client threads, joins everything before returning. Bounded in time and
 * in connections (--max).
 */
#define _GNU_SOURCE
#include "bench_runtime.h"

#include "ioloop/runtime.h"

#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum { MAX_LOOPS = 1024 };

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

typedef struct {
    _Alignas(64) _Atomic uint64_t accepted;
} slot_t;

typedef struct {
    ioloop_runtime_t *rt;
    slot_t *slots;
} server_t;

static int slot_of(server_t *s, ioloop_t *loop)
{
    for (int i = 0; i < ioloop_runtime_size(s->rt); i++)
        if (ioloop_runtime_loop(s->rt, i) == loop)
            return i;
    return 0;
}

static int answer(ioloop_t *loop, int fd, unsigned events, void *arg)
{
    (void)events, (void)arg;
    char b;
    ssize_t n = read(fd, &b, 1);
    if (n < 0 && errno == EAGAIN)
        return 0;
    if (n == 1)
        (void)send(fd, &b, 1, MSG_NOSIGNAL);
    ioloop_remove_handler(loop, fd);
    close(fd);
    ioloop_connection_closed(loop);
    return 0;
}

static void on_accept(ioloop_t *loop, int fd, const struct sockaddr *peer, socklen_t len, void *arg)
{
    (void)peer, (void)len;
    server_t *s = arg;
    slot_t *slot = &s->slots[slot_of(s, loop)];
    atomic_store_explicit(&slot->accepted, atomic_load_explicit(&slot->accepted, memory_order_relaxed) + 1,
                          memory_order_relaxed);
    if (ioloop_add_handler(loop, fd, IOLOOP_READ, answer, NULL) < 0) {
        close(fd);
        ioloop_connection_closed(loop);
    }
}

typedef struct {
    int port;
    int64_t deadline;
    _Atomic long *budget; /* connections left to make */
    long done, failed;
} client_t;

static void *client_main(void *arg)
{
    client_t *c = arg;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)c->port)};
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    struct linger lg = {1, 0};
    while (now_ns() < c->deadline && atomic_fetch_sub(c->budget, 1) > 0) {
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        char b = 'a';
        if (fd >= 0 && connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0 && send(fd, &b, 1, MSG_NOSIGNAL) == 1 &&
            read(fd, &b, 1) == 1)
            c->done++;
        else
            c->failed++;
        if (fd >= 0) {
            setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
            close(fd);
        }
    }
    return NULL;
}

typedef struct {
    int loops, clients, pin;
    double seconds;
    long max;
} accept_opts_t;

static int run_mode(const accept_opts_t *o, ioloop_accept_mode_t mode)
{
    server_t s = {0};
    s.slots = aligned_alloc(64, sizeof(slot_t) * (size_t)o->loops);
    if (!s.slots)
        return 1;
    memset(s.slots, 0, sizeof(slot_t) * (size_t)o->loops);
    ioloop_runtime_options_t ro = {.loops = o->loops, .pin = o->pin, .executor_threads = 1};
    int err = ioloop_runtime_start(&ro, &s.rt);
    ioloop_listener_t *l = NULL;
    ioloop_listener_options_t lo = {.address = "127.0.0.1", .mode = mode, .on_accept = on_accept, .arg = &s};
    if (!err)
        err = ioloop_listener_start(s.rt, &lo, &l);
    if (err) {
        fprintf(stderr, "accept: %s\n", strerror(-err));
        if (s.rt)
            ioloop_runtime_free(s.rt);
        free(s.slots);
        return 1;
    }
    static const char *names[] = {"default", "reuseport", "exclusive", "dispatch"};
    ioloop_accept_mode_t in_effect = ioloop_listener_mode(l); /* after any fallback */
    _Atomic long budget = o->max;
    client_t *clients = calloc((size_t)o->clients, sizeof(*clients));
    pthread_t *threads = calloc((size_t)o->clients, sizeof(*threads));
    int64_t t0 = now_ns();
    for (int i = 0; i < o->clients; i++) {
        clients[i] = (client_t){
            .port = ioloop_listener_port(l), .deadline = t0 + (int64_t)(o->seconds * 1e9), .budget = &budget};
        pthread_create(&threads[i], NULL, client_main, &clients[i]);
    }
    long done = 0, failed = 0;
    for (int i = 0; i < o->clients; i++) {
        pthread_join(threads[i], NULL);
        done += clients[i].done;
        failed += clients[i].failed;
    }
    double secs = (double)(now_ns() - t0) / 1e9;
    ioloop_listener_free(l);
    ioloop_runtime_free(s.rt);

    uint64_t total = 0, min = UINT64_MAX, max = 0;
    for (int i = 0; i < o->loops; i++) {
        uint64_t v = atomic_load(&s.slots[i].accepted);
        total += v;
        min = v < min ? v : min;
        max = v > max ? v : max;
    }
    printf("%-10s %12.0f %10.2f  ", names[in_effect], (double)done / secs, min ? (double)max / (double)min : 0.0);
    for (int i = 0; i < o->loops; i++)
        printf("%s%.0f%%", i ? " " : "", total ? 100.0 * (double)atomic_load(&s.slots[i].accepted) / (double)total : 0);
    printf(failed ? "  (%ld failed)\n" : "\n", failed);
    free(clients);
    free(threads);
    free(s.slots);
    return 0;
}

static void usage(void)
{
    printf("usage: ioloop-bench accept [--loops N] [--clients T] [--seconds S] [--max CONNS] [--pin]\n"
           "  connections/s and per-loop balance for each accept mode (default N: the CPUs)\n");
}

int bench_accept_main(int argc, char **argv)
{
    int cpus = 1;
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof(set), &set) == 0)
        cpus = CPU_COUNT(&set);
    accept_opts_t o = {.loops = cpus, .clients = cpus > 1 ? cpus : 2, .seconds = 2, .max = 200000};
    static const struct option longopts[] = {{"loops", required_argument, 0, 'n'},
                                             {"clients", required_argument, 0, 't'},
                                             {"seconds", required_argument, 0, 's'},
                                             {"max", required_argument, 0, 'm'},
                                             {"pin", no_argument, 0, 'p'},
                                             {"help", no_argument, 0, 'h'},
                                             {0, 0, 0, 0}};
    optind = 1;
    for (int ch; (ch = getopt_long(argc, argv, "n:t:s:m:ph", longopts, NULL)) != -1;) {
        switch (ch) {
        case 'n':
            o.loops = atoi(optarg);
            break;
        case 't':
            o.clients = atoi(optarg);
            break;
        case 's':
            o.seconds = atof(optarg);
            break;
        case 'm':
            o.max = atol(optarg);
            break;
        case 'p':
            o.pin = 1;
            break;
        case 'h':
            usage();
            return 0;
        default:
            usage();
            return 2;
        }
    }
    if (o.loops < 1 || o.loops > MAX_LOOPS || o.clients < 1 || o.seconds <= 0 || o.seconds > 600 || o.max < 1) {
        usage();
        return 2;
    }
    printf("accept: %d loops, %d client threads, %.1f s per mode (connect, 1-byte ping, close)\n", o.loops, o.clients,
           o.seconds);
    printf("%-10s %12s %10s  %s\n", "mode", "conns/s", "max/min", "per-loop share");
    static const ioloop_accept_mode_t modes[] = {IOLOOP_ACCEPT_REUSEPORT, IOLOOP_ACCEPT_EXCLUSIVE,
                                                 IOLOOP_ACCEPT_DISPATCH};
    int status = 0;
    for (size_t i = 0; i < sizeof(modes) / sizeof(modes[0]); i++) {
        status |= run_mode(&o, modes[i]);
        fflush(stdout);
    }
    return status;
}
