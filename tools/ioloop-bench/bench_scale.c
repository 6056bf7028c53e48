/* bench_scale.c — `ioloop-bench scale`: the same work on 1..N loops.
 *
 * The work: client threads keep C TCP connections busy with a ping-pong (a
 * fixed-size message, echoed back, then the next) against an echo server on
 * an ioloop runtime of n loops (REUSEPORT listener), for a fixed time. For
 * each n it prints and writes to CSV: round trips per second, the server's
 * CPU time per round trip (the loop threads' own CPU clocks, so the clients
 * do not count), and each loop's share of the round trips; then plots ops/s
 * and CPU/op against n with gnuplot.
 *
 * On a machine with few cores the clients and loops compete for the same
 * CPUs, so ops/s cannot scale; CPU per op can still be compared: with no
 * shared state on the hot path it stays flat as loops are added. The table
 * prints each row's CPU/op as a ratio to the 1-loop row (the peer).
 *
 * Threading rule: runs on the calling thread; starts the runtime and the
 * client threads and joins them before returning. Bounded: every phase has a
 * deadline.
 */
#define _GNU_SOURCE
#include "bench_runtime.h"

#include "ioloop/runtime.h"

#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum { MAX_LOOPS = 1024, MAX_MSG = 4096 };

typedef struct {
    int loops_max, clients, connections, msg_size, pin, repeat;
    double seconds;
    const char *csv, *png;
} scale_opts_t;

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* ---- the server: echo, counting round trips per loop ---------------------- */

typedef struct {
    _Alignas(64) _Atomic uint64_t ops; /* one cache line per loop: no sharing */
    _Atomic int64_t cpu_ns;
} loop_slot_t;

typedef struct {
    ioloop_runtime_t *rt;
    loop_slot_t *slots;
    int msg_size;
    _Atomic int cpu_reads;
} server_t;

static int slot_of(server_t *s, ioloop_t *loop)
{
    for (int i = 0; i < ioloop_runtime_size(s->rt); i++)
        if (ioloop_runtime_loop(s->rt, i) == loop)
            return i;
    return 0;
}

typedef struct {
    server_t *server;
    int slot;
} conn_t;

static int echo_readable(ioloop_t *loop, int fd, unsigned events, void *arg)
{
    (void)events;
    conn_t *c = arg;
    char buf[MAX_MSG];
    ssize_t n = read(fd, buf, sizeof(buf));
    if (n > 0) {
        /* Small messages on loopback: the send buffer always has room. */
        if (send(fd, buf, (size_t)n, MSG_NOSIGNAL) == n) {
            loop_slot_t *slot = &c->server->slots[c->slot];
            atomic_store_explicit(&slot->ops, atomic_load_explicit(&slot->ops, memory_order_relaxed) + 1,
                                  memory_order_relaxed);
            return 0;
        }
    } else if (n < 0 && errno == EAGAIN) {
        return 0;
    }
    ioloop_remove_handler(loop, fd);
    close(fd);
    ioloop_connection_closed(loop);
    free(c);
    return 0;
}

static void echo_accept(ioloop_t *loop, int fd, const struct sockaddr *peer, socklen_t len, void *arg)
{
    (void)peer, (void)len;
    conn_t *c = malloc(sizeof(*c));
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (!c || ioloop_add_handler(loop, fd, IOLOOP_READ, echo_readable, c) < 0) {
        free(c);
        close(fd);
        ioloop_connection_closed(loop);
        return;
    }
    c->server = arg;
    c->slot = slot_of(arg, loop);
}

static void read_thread_cpu(ioloop_t *loop, void *arg)
{
    server_t *s = arg;
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    atomic_store(&s->slots[slot_of(s, loop)].cpu_ns, (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec);
    atomic_fetch_add(&s->cpu_reads, 1);
}

/* Total CPU time of the loop threads so far, read on each loop's thread. */
static int64_t loops_cpu_ns(server_t *s)
{
    int n = ioloop_runtime_size(s->rt);
    atomic_store(&s->cpu_reads, 0);
    for (int i = 0; i < n; i++)
        ioloop_add_callback(ioloop_runtime_loop(s->rt, i), read_thread_cpu, s);
    int64_t deadline = now_ns() + 5000000000LL;
    while (atomic_load(&s->cpu_reads) < n && now_ns() < deadline)
        usleep(100);
    int64_t total = 0;
    for (int i = 0; i < n; i++)
        total += atomic_load(&s->slots[i].cpu_ns);
    return total;
}

/* ---- the clients: epoll over their share of connections -------------------- */

typedef struct {
    int port, connections, msg_size;
    _Atomic bool *stop;
    uint64_t ops;
    int failed;
} client_t;

static void *client_main(void *arg)
{
    client_t *c = arg;
    int ep = epoll_create1(EPOLL_CLOEXEC);
    int *fds = calloc((size_t)c->connections, sizeof(int));
    char msg[MAX_MSG], buf[MAX_MSG];
    memset(msg, 'p', sizeof(msg));
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)c->port)};
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    int *got = calloc((size_t)c->connections, sizeof(int));
    for (int i = 0; i < c->connections; i++) {
        fds[i] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        int one = 1;
        setsockopt(fds[i], IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        if (fds[i] < 0 || connect(fds[i], (struct sockaddr *)&a, sizeof(a)) < 0) {
            c->failed++;
            continue;
        }
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
        epoll_ctl(ep, EPOLL_CTL_ADD, fds[i], &ev);
        if (send(fds[i], msg, (size_t)c->msg_size, MSG_NOSIGNAL) != c->msg_size)
            c->failed++;
    }
    struct epoll_event events[256];
    while (!atomic_load_explicit(c->stop, memory_order_relaxed)) {
        int n = epoll_wait(ep, events, 256, 50);
        for (int k = 0; k < n; k++) {
            int i = (int)events[k].data.u32;
            ssize_t r = read(fds[i], buf, sizeof(buf));
            if (r <= 0) {
                if (r < 0 && errno == EAGAIN)
                    continue;
                epoll_ctl(ep, EPOLL_CTL_DEL, fds[i], NULL);
                c->failed++;
                continue;
            }
            got[i] += (int)r;
            if (got[i] >= c->msg_size) { /* a whole echo: one round trip */
                got[i] = 0;
                c->ops++;
                send(fds[i], msg, (size_t)c->msg_size, MSG_NOSIGNAL);
            }
        }
    }
    for (int i = 0; i < c->connections; i++)
        if (fds[i] >= 0)
            close(fds[i]);
    close(ep);
    free(fds);
    free(got);
    return NULL;
}

/* ---- one run on n loops ----------------------------------------------------- */

typedef struct {
    int loops;
    double ops_per_s, cpu_us_per_op, share_min, share_max;
    double events_per_iteration; /* batching: what one poll returns on average */
    double share[MAX_LOOPS];
    int failed;
} row_t;

static int run_once(const scale_opts_t *o, int loops, row_t *row)
{
    server_t s = {.msg_size = o->msg_size};
    s.slots = aligned_alloc(64, sizeof(loop_slot_t) * (size_t)loops);
    if (!s.slots)
        return -ENOMEM;
    memset(s.slots, 0, sizeof(loop_slot_t) * (size_t)loops);
    ioloop_runtime_options_t ro = {.loops = loops, .pin = o->pin, .executor_threads = 1};
    int err = ioloop_runtime_start(&ro, &s.rt);
    if (err) {
        free(s.slots);
        return err;
    }
    ioloop_listener_t *l = NULL;
    ioloop_listener_options_t lo = {
        .address = "127.0.0.1", .mode = IOLOOP_ACCEPT_REUSEPORT, .on_accept = echo_accept, .arg = &s};
    err = ioloop_listener_start(s.rt, &lo, &l);
    if (err) {
        ioloop_runtime_free(s.rt);
        free(s.slots);
        return err;
    }
    _Atomic bool stop = false;
    int nclients = o->clients;
    client_t *clients = calloc((size_t)nclients, sizeof(*clients));
    pthread_t *threads = calloc((size_t)nclients, sizeof(*threads));
    for (int i = 0; i < nclients; i++) {
        clients[i] = (client_t){.port = ioloop_listener_port(l),
                                .connections = o->connections / nclients + (i < o->connections % nclients),
                                .msg_size = o->msg_size,
                                .stop = &stop};
        pthread_create(&threads[i], NULL, client_main, &clients[i]);
    }
    /* Warm up, then measure a window. */
    usleep(300000);
    uint64_t ops0[MAX_LOOPS];
    for (int i = 0; i < loops; i++)
        ops0[i] = atomic_load(&s.slots[i].ops);
    uint64_t iter0 = 0, ev0 = 0, iter1 = 0, ev1 = 0;
    for (int i = 0; i < loops; i++) {
        ioloop_stats_t st;
        ioloop_get_stats(ioloop_runtime_loop(s.rt, i), &st);
        iter0 += st.iterations;
        ev0 += st.events_dispatched;
    }
    int64_t cpu0 = loops_cpu_ns(&s), t0 = now_ns();
    usleep((useconds_t)(o->seconds * 1e6));
    int64_t cpu1 = loops_cpu_ns(&s), t1 = now_ns();
    for (int i = 0; i < loops; i++) {
        ioloop_stats_t st;
        ioloop_get_stats(ioloop_runtime_loop(s.rt, i), &st);
        iter1 += st.iterations;
        ev1 += st.events_dispatched;
    }
    row->events_per_iteration = iter1 > iter0 ? (double)(ev1 - ev0) / (double)(iter1 - iter0) : 0;
    uint64_t total = 0, per[MAX_LOOPS];
    for (int i = 0; i < loops; i++) {
        per[i] = atomic_load(&s.slots[i].ops) - ops0[i];
        total += per[i];
    }
    atomic_store(&stop, true);
    row->failed = 0;
    for (int i = 0; i < nclients; i++) {
        pthread_join(threads[i], NULL);
        row->failed += clients[i].failed;
    }
    free(clients);
    free(threads);
    ioloop_listener_free(l);
    ioloop_runtime_free(s.rt);
    free(s.slots);

    row->loops = loops;
    row->ops_per_s = (double)total / ((double)(t1 - t0) / 1e9);
    row->cpu_us_per_op = total ? (double)(cpu1 - cpu0) / 1e3 / (double)total : 0;
    row->share_min = 1, row->share_max = 0;
    for (int i = 0; i < loops; i++) {
        row->share[i] = total ? (double)per[i] / (double)total : 0;
        if (row->share[i] < row->share_min)
            row->share_min = row->share[i];
        if (row->share[i] > row->share_max)
            row->share_max = row->share[i];
    }
    return 0;
}

static int cmp_cpu(const void *a, const void *b)
{
    double x = ((const row_t *)a)->cpu_us_per_op, y = ((const row_t *)b)->cpu_us_per_op;
    return (x > y) - (x < y);
}

static void plot(const scale_opts_t *o)
{
    FILE *g = popen("gnuplot 2>/dev/null", "w");
    if (!g) {
        fprintf(stderr, "scale: gnuplot not found, no plot\n");
        return;
    }
    fprintf(g,
            "set terminal png size 900,500\n"
            "set output '%s'\n"
            "set datafile separator ','\n"
            "set key top left\n"
            "set xlabel 'loops'\n"
            "set xtics 1\n"
            "set ylabel 'round trips/s'\n"
            "set y2label 'server CPU us per round trip'\n"
            "set y2tics\n"
            "set ytics nomirror\n"
            /* headroom above the highest point, so a flat line is not
             * drawn on the frame */
            "stats '%s' using 2 skip 1 name 'OPS' nooutput\n"
            "stats '%s' using 3 skip 1 name 'CPU' nooutput\n"
            "set yrange [0:OPS_max * 1.3]\n"
            "set y2range [0:CPU_max * 1.5]\n"
            "set title 'ioloop scale: TCP ping-pong, %d connections'\n"
            "plot '%s' using 1:2 skip 1 with linespoints lw 2 pt 7 title 'ops/s' axes x1y1, "
            "'%s' using 1:3 skip 1 with linespoints lw 2 pt 5 title 'CPU us/op' axes x1y2\n",
            o->png, o->csv, o->csv, o->connections, o->csv, o->csv);
    if (pclose(g) != 0)
        fprintf(stderr, "scale: gnuplot failed, no plot\n");
}

static void usage(void)
{
    printf("usage: ioloop-bench scale [--loops-max N] [--clients T] [--connections C] [--msg-size B]\n"
           "                          [--seconds S] [--repeat R] [--pin] [--csv FILE] [--png FILE]\n"
           "  runs a TCP ping-pong on 1..N loops (default N: the CPUs in the affinity mask;\n"
           "  every count up to 8, then doubling, then N)\n");
}

int bench_scale_main(int argc, char **argv)
{
    int cpus = 1;
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof(set), &set) == 0)
        cpus = CPU_COUNT(&set);
    scale_opts_t o = {.loops_max = cpus,
                      /* Enough load that every loop has a deep poll batch: with a thin
                       * load, more loops means fewer events per wakeup and the CPU per op
                       * measures batching, not the runtime (ev/poll shows it). */
                      .clients = cpus > 2 ? cpus : 2,
                      .connections = cpus * 32 > 256 ? cpus * 32 : 256,
                      .msg_size = 64,
                      .seconds = 2,
                      .repeat = 3,
                      .csv = "scale.csv",
                      .png = "scale.png"};
    static const struct option longopts[] = {{"loops-max", required_argument, 0, 'n'},
                                             {"clients", required_argument, 0, 't'},
                                             {"connections", required_argument, 0, 'c'},
                                             {"msg-size", required_argument, 0, 'm'},
                                             {"seconds", required_argument, 0, 's'},
                                             {"pin", no_argument, 0, 'p'},
                                             {"csv", required_argument, 0, 'o'},
                                             {"png", required_argument, 0, 'g'},
                                             {"repeat", required_argument, 0, 'r'},
                                             {"help", no_argument, 0, 'h'},
                                             {0, 0, 0, 0}};
    optind = 1;
    for (int ch; (ch = getopt_long(argc, argv, "n:t:c:m:s:po:g:r:h", longopts, NULL)) != -1;) {
        switch (ch) {
        case 'n':
            o.loops_max = atoi(optarg);
            break;
        case 't':
            o.clients = atoi(optarg);
            break;
        case 'c':
            o.connections = atoi(optarg);
            break;
        case 'm':
            o.msg_size = atoi(optarg);
            break;
        case 's':
            o.seconds = atof(optarg);
            break;
        case 'p':
            o.pin = 1;
            break;
        case 'o':
            o.csv = optarg;
            break;
        case 'g':
            o.png = optarg;
            break;
        case 'r':
            o.repeat = atoi(optarg);
            break;
        case 'h':
            usage();
            return 0;
        default:
            usage();
            return 2;
        }
    }
    if (o.loops_max < 1 || o.loops_max > MAX_LOOPS || o.clients < 1 || o.connections < o.clients || o.msg_size < 1 ||
        o.msg_size > MAX_MSG || o.seconds <= 0 || o.seconds > 600 || o.repeat < 1 || o.repeat > 100) {
        usage();
        return 2;
    }
    FILE *csv = fopen(o.csv, "w");
    if (!csv) {
        perror(o.csv);
        return 1;
    }
    fprintf(csv, "loops,ops_per_s,cpu_us_per_op,share_min,share_max,events_per_poll,shares\n");
    printf("scale: %d connections, %d client threads, %d-byte messages, %.1f s per run, median of %d runs\n"
           "       (the runs of each loop count are interleaved, so drift on a shared machine hits all alike)\n",
           o.connections, o.clients, o.msg_size, o.seconds, o.repeat);
    printf("%5s %12s %12s %10s %8s  %s\n", "loops", "ops/s", "CPU us/op", "vs 1 loop", "ev/poll", "per-loop share");
    /* Loop counts: every one up to 8, then doubling, and the maximum, so a
     * 64-CPU machine runs 11 rows instead of 64. */
    int counts[64], ncounts = 0;
    for (int n = 1; n <= o.loops_max && ncounts < 63; n = n < 8 ? n + 1 : n * 2)
        counts[ncounts++] = n;
    if (counts[ncounts - 1] != o.loops_max)
        counts[ncounts++] = o.loops_max;
    row_t *runs = calloc((size_t)ncounts * (size_t)o.repeat, sizeof(row_t));
    if (!runs) {
        fclose(csv);
        return 1;
    }
    int status = 0;
    for (int r = 0; r < o.repeat && !status; r++)
        for (int k = 0; k < ncounts && !status; k++) {
            int err = run_once(&o, counts[k], &runs[(size_t)k * (size_t)o.repeat + (size_t)r]);
            if (err) {
                fprintf(stderr, "scale: %d loops: %s\n", counts[k], strerror(-err));
                status = 1;
            }
        }
    double base = 0;
    for (int k = 0; k < ncounts && !status; k++) {
        int n = counts[k];
        row_t *same_n = &runs[(size_t)k * (size_t)o.repeat];
        qsort(same_n, (size_t)o.repeat, sizeof(row_t), cmp_cpu);
        row_t row = same_n[o.repeat / 2]; /* the median run by CPU per op */
        if (n == 1)
            base = row.cpu_us_per_op;
        printf("%5d %12.0f %12.2f %9.2fx %8.1f  ", n, row.ops_per_s, row.cpu_us_per_op,
               base > 0 ? row.cpu_us_per_op / base : 0, row.events_per_iteration);
        fprintf(csv, "%d,%.0f,%.3f,%.4f,%.4f,%.2f,", n, row.ops_per_s, row.cpu_us_per_op, row.share_min, row.share_max,
                row.events_per_iteration);
        for (int i = 0; i < n; i++) {
            printf("%s%.0f%%", i ? " " : "", row.share[i] * 100);
            fprintf(csv, "%s%.4f", i ? " " : "", row.share[i]);
        }
        printf(row.failed ? "  (%d client errors)\n" : "\n", row.failed);
        fprintf(csv, "\n");
    }
    free(runs);
    fclose(csv);
    if (!status)
        plot(&o);
    printf("wrote %s and %s\n", o.csv, o.png);
    return status;
}
