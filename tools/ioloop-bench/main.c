/* main.c — ioloop-bench: the command line, the subcommand table and the
 * placement of threads on CPUs.
 *
 * Adding a subcommand is one line in `commands` (name, function, whether `all`
 * runs it, one-line help) plus its file in tools/ioloop-bench/ (globbed by
 * tools/CMakeLists.txt).
 *
 * Threading rule: main thread; workloads start and join their own threads.
 */
#define _GNU_SOURCE
#include "bench.h"
#include "bench_runtime.h"

#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

const bench_peer_t bench_ioloop_impl = {
    .name = "ioloop",
    .posts_local = bench_ioloop_posts_local,
    .posts_remote = bench_ioloop_posts_remote,
    .wake_latency = bench_ioloop_wake_latency,
    .timers_cancel = bench_ioloop_timers_cancel,
    .timers_fire = bench_ioloop_timers_fire,
    .pipes = bench_ioloop_pipes,
    .stream_echo = bench_ioloop_stream_echo,
};

const bench_peer_t *const bench_peers[] = {&bench_peer_libuv, &bench_peer_libevent};
const size_t bench_peer_count = sizeof(bench_peers) / sizeof(bench_peers[0]);

typedef struct {
    const char *name;
    int (*run)(const bench_options_t *o);
    bool in_all;
    const char *help;
} bench_command_t;

static const bench_command_t commands[] = {
    {"callbacks", bench_callbacks, true, "posts/s own thread and cross-thread, eventfd writes, wake-up latency"},
    {"timers", bench_timers, true, "1M schedule+cancel, 1M schedule+fire"},
    {"pipes", bench_pipes, true, "libevent test/bench.c: N socketpairs, A active, W writes"},
    {"stream", bench_stream, true, "TCP echo of 64 B and 16 KiB over 256 connections: server CPU per message"},
};

/* The runtime's benchmarks parse their own options (`ioloop-bench scale --help`). */
typedef struct {
    const char *name;
    int (*main)(int argc, char **argv);
    const char *help;
} bench_standalone_t;

static const bench_standalone_t standalone[] = {
    {"scale", bench_scale_main, "TCP ping-pong on 1..N loops: ops/s, CPU per op, per-loop share, CSV + PNG"},
    {"accept", bench_accept_main, "connections/s and per-loop balance for each accept mode"},
    {"post", bench_post_main, "cross-loop ping-pong latency p50/p99 and one-way post throughput"},
};

static void usage(FILE *out)
{
    fprintf(out, "usage: ioloop-bench [--repeat N] [--quick] [--no-pin] <command>...\n"
                 "       ioloop-bench scale|accept|post [options] (--help for theirs)\n\ncommands:\n");
    fprintf(out, "  %-10s %s\n", "all", "every command marked for it, in order");
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
        fprintf(out, "  %-10s %s\n", commands[i].name, commands[i].help);
    for (size_t i = 0; i < sizeof(standalone) / sizeof(standalone[0]); i++)
        fprintf(out, "  %-10s %s\n", standalone[i].name, standalone[i].help);
    fprintf(out, "\nEach figure is the median of --repeat runs (default 3) after a warm-up run.\n");
}

/* Picks two distinct CPUs this process may run on: the loop thread goes on the
 * first, producer threads on the second. */
static void choose_cpus(bench_options_t *o, bool pin)
{
    o->loop_cpu = o->producer_cpu = -1;
    cpu_set_t set;
    if (!pin || sched_getaffinity(0, sizeof(set), &set) < 0)
        return;
    for (int cpu = 0; cpu < CPU_SETSIZE; cpu++) {
        if (!CPU_ISSET(cpu, &set))
            continue;
        if (o->loop_cpu < 0)
            o->loop_cpu = cpu;
        else if (o->producer_cpu < 0)
            o->producer_cpu = cpu;
    }
    if (o->producer_cpu < 0)
        o->loop_cpu = -1; /* one CPU: pinning would only serialise the threads */
}

static const bench_command_t *find_command(const char *name)
{
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
        if (strcmp(commands[i].name, name) == 0)
            return &commands[i];
    return NULL;
}

int main(int argc, char **argv)
{
    for (size_t i = 0; argc > 1 && i < sizeof(standalone) / sizeof(standalone[0]); i++)
        if (strcmp(argv[1], standalone[i].name) == 0)
            return standalone[i].main(argc - 1, argv + 1);
    bench_options_t o = {.repeat = 3};
    bool pin = true;
    /* Options may come before or after the commands. */
    const char **names = calloc((size_t)argc, sizeof(*names));
    int count = 0;
    if (!names)
        return 1;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--quick") == 0) {
            o.quick = true;
        } else if (strcmp(argv[i], "--no-pin") == 0) {
            pin = false;
        } else if (strcmp(argv[i], "--repeat") == 0 && i + 1 < argc) {
            o.repeat = atoi(argv[++i]);
            if (o.repeat < 1 || o.repeat > 1000) {
                fprintf(stderr, "ioloop-bench: --repeat wants 1..1000\n");
                return 2;
            }
        } else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage(stdout);
            return 0;
        } else if (argv[i][0] == '-' || (strcmp(argv[i], "all") != 0 && !find_command(argv[i]))) {
            fprintf(stderr, "ioloop-bench: unknown argument '%s'\n", argv[i]);
            usage(stderr);
            return 2;
        } else {
            names[count++] = argv[i];
        }
    }
    if (count == 0) {
        usage(stderr);
        return 2;
    }

    choose_cpus(&o, pin);
    bench_pin_self(o.loop_cpu);
    printf("ioloop-bench: %s, median of %d run%s after a warm-up; ", o.quick ? "quick sizes" : "full sizes",
           o.repeat, o.repeat == 1 ? "" : "s");
    if (o.loop_cpu >= 0)
        printf("loop thread pinned to CPU %d, producer threads to CPU %d (sched_setaffinity)\n", o.loop_cpu,
               o.producer_cpu);
    else
        printf("threads not pinned (%s)\n", pin ? "fewer than 2 CPUs allowed" : "--no-pin");
    /* Other load skews every figure: say how busy the machine was. */
    FILE *loadavg = fopen("/proc/loadavg", "r");
    double load1 = -1;
    if (loadavg) {
        if (fscanf(loadavg, "%lf", &load1) != 1)
            load1 = -1;
        fclose(loadavg);
    }
    printf("machine: %ld CPUs online", sysconf(_SC_NPROCESSORS_ONLN));
    if (load1 >= 0)
        printf(", load average %.2f at start", load1);
    printf("\npeers:");
    for (size_t p = 0; p < bench_peer_count; p++)
        printf(" %s %s%s", bench_peers[p]->name, bench_peers[p]->posts_remote ? "built in" : "absent",
               p + 1 < bench_peer_count ? "," : "\n");

    int status = 0;
    for (int i = 0; i < count; i++) {
        for (size_t c = 0; c < sizeof(commands) / sizeof(commands[0]); c++) {
            const bench_command_t *cmd = &commands[c];
            bool all = strcmp(names[i], "all") == 0;
            if (all ? !cmd->in_all : strcmp(names[i], cmd->name) != 0)
                continue;
            fflush(stdout);
            int err = cmd->run(&o);
            if (err) {
                fprintf(stderr, "ioloop-bench %s: failed (%d)\n", cmd->name, err);
                status = 1;
            }
        }
    }
    free(names);
    printf("\n%d target%s missed\n", bench_failures, bench_failures == 1 ? "" : "s");
    /* A missed speed target is a finding, not a failure of the tool: the exit
     * status says only whether every workload ran. */
    return status;
}
