/* ws-load.c — a WebSocket load client on the runtime (our client,
 * ioloop_websocket_connect), for tools/bench-ws, and a conformance check of
 * our client against any echo server (tests/checks/websocket_peers.py runs
 * it against Python's websockets).
 *
 *   ws-load URL [-c CONNS] [-d SECONDS] [-s SIZE] [-p PIPELINE] [--threads N] [--compress]
 *       CONNS connections spread over N loops, each keeping PIPELINE messages
 *       of SIZE bytes in flight against an echo server; prints messages/s
 *       (echoes received per second over the run, after a 1 s warm-up);
 *       with --server-pid PID also the server's CPU time per message over
 *       the same window (/proc/PID/stat).
 *   ws-load URL --check [--compress | --no-context-takeover]
 *       text, binary, 16 MiB, ping/pong, close 4000: "check ok" or why not
 *       (--no-context-takeover: compressed, each message deflated afresh).
 *
 * Threading rule: each connection lives on the loop that opened it; the
 * counters are per loop (relaxed atomics), summed by the main thread.
 */
#define _GNU_SOURCE
#include "ioloop/runtime.h"
#include "ioloop/websocket.h"

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

typedef struct {
    _Atomic unsigned long long messages, opened, errors, closed;
} counters_t;

static struct {
    const char *url;
    int conns, seconds, size, pipeline, threads, server_pid;
    bool compress, check, no_context_takeover;
    ioloop_runtime_t *rt;
    counters_t *per_loop;
    char *payload;
} cfg = {.conns = 100, .seconds = 10, .size = 64, .pipeline = 1};

static counters_t *counters(ioloop_t *loop)
{
    return &cfg.per_loop[ioloop_runtime_index(loop)];
}

/* ---- load ------------------------------------------------------------------- */

static void load_message(ioloop_websocket_t *ws, int opcode, const char *data, size_t len, void *arg)
{
    (void)opcode, (void)data, (void)len;
    counters_t *c = arg;
    atomic_fetch_add_explicit(&c->messages, 1, memory_order_relaxed);
    if (ioloop_websocket_send(ws, IOLOOP_WS_BINARY, cfg.payload, (size_t)cfg.size) != 0)
        atomic_fetch_add_explicit(&c->errors, 1, memory_order_relaxed);
}

static void load_close(ioloop_websocket_t *ws, int code, const char *reason, size_t len, void *arg)
{
    (void)ws, (void)code, (void)reason, (void)len;
    counters_t *c = arg;
    atomic_fetch_add_explicit(&c->closed, 1, memory_order_relaxed);
}

static void load_connected(ioloop_t *loop, int status, ioloop_websocket_t *ws, void *arg)
{
    (void)loop;
    counters_t *c = arg;
    if (status != 0) {
        atomic_fetch_add_explicit(&c->errors, 1, memory_order_relaxed);
        return;
    }
    atomic_fetch_add_explicit(&c->opened, 1, memory_order_relaxed);
    for (int i = 0; i < cfg.pipeline; i++)
        ioloop_websocket_send(ws, IOLOOP_WS_BINARY, cfg.payload, (size_t)cfg.size);
}

/* Runs on loop i: opens its share of the connections. */
static void start_loop(ioloop_t *loop, void *arg)
{
    int n = (int)(intptr_t)arg;
    counters_t *c = counters(loop);
    ioloop_websocket_connect_options_t o = {
        .handlers = {.on_message = load_message, .on_close = load_close},
        .options = {.compression = cfg.compress},
        .arg = c,
    };
    for (int i = 0; i < n; i++)
        if (ioloop_websocket_connect(loop, cfg.url, &o, load_connected, c) != 0)
            atomic_fetch_add_explicit(&c->errors, 1, memory_order_relaxed);
}

static unsigned long long sum(size_t offset)
{
    unsigned long long total = 0;
    for (int i = 0; i < ioloop_runtime_size(cfg.rt); i++)
        total += atomic_load((_Atomic unsigned long long *)((char *)&cfg.per_loop[i] + offset));
    return total;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void sleep_s(double s)
{
    struct timespec ts = {.tv_sec = (time_t)s, .tv_nsec = (long)((s - (double)(time_t)s) * 1e9)};
    nanosleep(&ts, NULL);
}

/* A process's CPU time (utime + stime of all its threads), in clock ticks; -1 if unreadable. */
static long long process_ticks(int pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof(path), "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    const char *p = strrchr(buf, ')'); /* the command may hold spaces */
    unsigned long long utime, stime;
    if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &utime, &stime) != 2)
        return -1;
    return (long long)(utime + stime);
}

static int run_load(void)
{
    ioloop_runtime_options_t ro = {.loops = cfg.threads};
    if (ioloop_runtime_start(&ro, &cfg.rt) != 0)
        return 1;
    int n = ioloop_runtime_size(cfg.rt);
    cfg.per_loop = calloc((size_t)n, sizeof(counters_t));
    cfg.payload = calloc(1, (size_t)cfg.size + 1);
    memset(cfg.payload, 'x', (size_t)cfg.size);
    for (int i = 0; i < n; i++)
        ioloop_add_callback(ioloop_runtime_loop(cfg.rt, i), start_loop,
                            (void *)(intptr_t)(cfg.conns / n + (i < cfg.conns % n)));
    double t0 = now_s();
    while (sum(offsetof(counters_t, opened)) + sum(offsetof(counters_t, errors)) < (unsigned long long)cfg.conns &&
           now_s() - t0 < 30)
        sleep_s(0.01);
    sleep_s(1.0); /* warm-up */
    long long c0 = cfg.server_pid ? process_ticks(cfg.server_pid) : -1;
    struct timespec u0, u1;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &u0);
    unsigned long long m0 = sum(offsetof(counters_t, messages));
    double start = now_s();
    sleep_s(cfg.seconds);
    unsigned long long m1 = sum(offsetof(counters_t, messages));
    double elapsed = now_s() - start;
    long long c1 = cfg.server_pid ? process_ticks(cfg.server_pid) : -1;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &u1);
    double own_cpu = (double)(u1.tv_sec - u0.tv_sec) + (double)(u1.tv_nsec - u0.tv_nsec) / 1e9;
    printf("ws-load: %llu connections open, %llu errors, %llu closed early\n", sum(offsetof(counters_t, opened)),
           sum(offsetof(counters_t, errors)), sum(offsetof(counters_t, closed)));
    printf("ws-load: %llu messages in %.2f s: %.0f messages/s\n", m1 - m0, elapsed, (double)(m1 - m0) / elapsed);
    if (m1 > m0)
        printf("ws-load: client CPU %.3f us/message (%.0f%% of one CPU)\n", own_cpu * 1e6 / (double)(m1 - m0),
               own_cpu / elapsed * 100);
    if (c0 >= 0 && c1 >= c0 && m1 > m0)
        printf("ws-load: server CPU %.3f us/message (%lld ticks)\n",
               (double)(c1 - c0) / (double)sysconf(_SC_CLK_TCK) * 1e6 / (double)(m1 - m0), c1 - c0);
    fflush(stdout);
    ioloop_runtime_stop(cfg.rt);
    ioloop_runtime_join(cfg.rt);
    ioloop_runtime_free(cfg.rt);
    free(cfg.per_loop);
    free(cfg.payload);
    return m1 > m0 ? 0 : 1;
}

/* ---- check -------------------------------------------------------------------- */

static struct {
    ioloop_t *loop;
    int step, pongs, close_code;
    char *big;
    const char *failed;
} chk;

enum { BIG = 16 << 20 };

static void check_fail(ioloop_websocket_t *ws, const char *why)
{
    if (!chk.failed)
        chk.failed = why;
    if (ws)
        ioloop_websocket_close(ws, IOLOOP_WS_CLOSE_POLICY, NULL, 0);
    else
        ioloop_stop(chk.loop);
}

/* Each echo moves to the next step. */
static void check_next(ioloop_websocket_t *ws)
{
    int rc = 0;
    switch (++chk.step) {
    case 1:
        rc = ioloop_websocket_send(ws, IOLOOP_WS_TEXT, "hello \xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5", 17);
        break;
    case 2: {
        char bin[256];
        for (int i = 0; i < 256; i++)
            bin[i] = (char)i;
        rc = ioloop_websocket_send(ws, IOLOOP_WS_BINARY, bin, sizeof(bin));
        break;
    }
    case 3:
        rc = ioloop_websocket_send(ws, IOLOOP_WS_BINARY, chk.big, BIG);
        break;
    case 4:
        rc = ioloop_websocket_send(ws, IOLOOP_WS_PING, "are you there", 13);
        break;
    default:
        rc = ioloop_websocket_close(ws, 4000, "done", 4);
        break;
    }
    if (rc != 0)
        check_fail(ws, "a send was refused");
}

static void check_message(ioloop_websocket_t *ws, int opcode, const char *data, size_t len, void *arg)
{
    (void)arg;
    bool ok = false;
    if (chk.step == 1)
        ok = opcode == IOLOOP_WS_TEXT && len == 17 && memcmp(data, "hello \xce\xba", 8) == 0;
    else if (chk.step == 2)
        ok = opcode == IOLOOP_WS_BINARY && len == 256 && (unsigned char)data[255] == 255;
    else if (chk.step == 3)
        ok = opcode == IOLOOP_WS_BINARY && len == BIG && memcmp(data, chk.big, BIG) == 0;
    if (!ok) {
        check_fail(ws, "an echo differs");
        return;
    }
    printf("ws-load: step %d echoed (%zu bytes)\n", chk.step, len);
    check_next(ws);
}

static void check_pong(ioloop_websocket_t *ws, const char *data, size_t len, void *arg)
{
    (void)arg;
    if (chk.step != 4 || len != 13 || memcmp(data, "are you there", 13) != 0) {
        check_fail(ws, "a pong differs");
        return;
    }
    printf("ws-load: pong\n");
    chk.pongs++;
    check_next(ws);
}

static void check_close(ioloop_websocket_t *ws, int code, const char *reason, size_t len, void *arg)
{
    (void)ws, (void)reason, (void)len, (void)arg;
    chk.close_code = code;
    ioloop_stop(chk.loop);
}

static void check_connected(ioloop_t *loop, int status, ioloop_websocket_t *ws, void *arg)
{
    (void)loop, (void)arg;
    if (status != 0) {
        fprintf(stderr, "ws-load: connect: %s\n", ioloop_strerror(status));
        check_fail(NULL, "connect failed");
        return;
    }
    const char *ext = ioloop_websocket_extensions(ws);
    printf("ws-load: connected, extensions: %s\n", ext ? ext : "(none)");
    if (cfg.compress && !ext) {
        check_fail(ws, "compression was not negotiated");
        return;
    }
    check_next(ws);
}

static int run_check(void)
{
    if (ioloop_new(NULL, &chk.loop) != 0)
        return 1;
    chk.big = malloc(BIG);
    for (size_t i = 0; i < BIG; i++)
        chk.big[i] = (char)(i * 31 + i / 4096);
    ioloop_websocket_connect_options_t o = {
        .handlers = {.on_message = check_message, .on_close = check_close, .on_pong = check_pong},
        .options = {.compression = cfg.compress,
                    .no_context_takeover = cfg.no_context_takeover,
                    .max_message_size = 2 * BIG},
    };
    int rc = ioloop_websocket_connect(chk.loop, cfg.url, &o, check_connected, NULL);
    if (rc == 0)
        ioloop_start(chk.loop);
    ioloop_close(chk.loop, true);
    free(chk.big);
    if (rc != 0 || chk.failed || chk.close_code != 4000 || chk.pongs != 1) {
        printf("ws-load: check FAILED: %s (close code %d)\n",
               rc           ? ioloop_strerror(rc)
               : chk.failed ? chk.failed
                            : "",
               chk.close_code);
        return 1;
    }
    printf("ws-load: closed with 4000\nws-load: check ok\n");
    return 0;
}

int main(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        bool more = i + 1 < argc;
        if (!strcmp(a, "-c") && more)
            cfg.conns = atoi(argv[++i]);
        else if (!strcmp(a, "-d") && more)
            cfg.seconds = atoi(argv[++i]);
        else if (!strcmp(a, "-s") && more)
            cfg.size = atoi(argv[++i]);
        else if (!strcmp(a, "-p") && more)
            cfg.pipeline = atoi(argv[++i]);
        else if (!strcmp(a, "--threads") && more)
            cfg.threads = atoi(argv[++i]);
        else if (!strcmp(a, "--server-pid") && more)
            cfg.server_pid = atoi(argv[++i]);
        else if (!strcmp(a, "--compress"))
            cfg.compress = true;
        else if (!strcmp(a, "--no-context-takeover"))
            cfg.compress = cfg.no_context_takeover = true;
        else if (!strcmp(a, "--check"))
            cfg.check = true;
        else if (a[0] != '-' && !cfg.url)
            cfg.url = a;
        else
            cfg.url = NULL, i = argc;
    }
    if (!cfg.url || cfg.conns <= 0 || cfg.seconds <= 0 || cfg.size < 0 || cfg.pipeline <= 0) {
        fprintf(stderr,
                "usage: %s URL [-c CONNS] [-d SECONDS] [-s SIZE] [-p PIPELINE] [--threads N] [--compress] "
                "[--server-pid PID]\n"
                "       %s URL --check [--compress | --no-context-takeover]\n",
                argv[0], argv[0]);
        return 2;
    }
    return cfg.check ? run_check() : run_load();
}
