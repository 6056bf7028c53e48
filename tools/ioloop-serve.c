/* ioloop-serve — the `python3 -m http.server` of ioloop, on every core:
 * serves DIR (default: the current directory) over HTTP/1.1, index.html for
 * a directory, else a listing page; files go out with sendfile, with ETag /
 * Last-Modified / Range answered; --gzip compresses text on the fly (and a
 * precompressed FILE.gz is served when it exists); --access-log writes the
 * Common Log Format to FILE or standard output (-); --metrics serves the
 * Prometheus metrics at /metrics (which then shadows a file of that name).
 *
 *   ioloop-serve [DIR] [--port 8000] [--bind ADDR] [--threads N] [--gzip] [--gzip-level N]
 *                [--access-log FILE|-] [--file-cache MS] [--accept MODE] [--proxy-protocol]
 *                [--healthz PATH|off] [--drain-delay MS] [--metrics]
 *
 * GET /healthz (--healthz moves it, "off" removes it; it shadows a file of
 * that name) answers 200 "ok", and 503 "draining" once SIGTERM came:
 * --drain-delay keeps serving that long first, so a load balancer's checks
 * take the process out before its listener closes. --accept reuseport lets
 * a new process bind the same port beside the old one for a restart.
 *
 * --file-cache (default 1000 ms, 0: off) keeps small files and what their
 * open/fstat found in memory per loop for that long, like nginx's
 * open_file_cache_valid: a changed file may be served stale for up to that
 * long, and a request for a cached file skips the executor round trip.
 *
 * --proxy-protocol requires a PROXY header (v1 or v2) on every connection:
 * behind HAProxy's send-proxy, the log shows the client, not the proxy.
 * Under systemd socket activation (LISTEN_FDS) it serves on the inherited
 * sockets (--bind and --port ignored); with NOTIFY_SOCKET, READY=1 and
 * STOPPING=1 reach the service manager.
 *
 * Threading rule: main parses, configures the server and owns the runtime
 * (one loop per CPU unless --threads); requests are served on whichever loop
 * accepted them. SIGINT/SIGTERM drain every loop, then the process exits 0.
 */
#define _GNU_SOURCE
#include "ioloop/http.h"
#include "ioloop/runtime.h"

#include <errno.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

typedef struct {
    const char *dir, *bind, *access_log, *healthz;
    int port, threads, gzip_level, file_cache_ms, drain_delay_ms;
    ioloop_accept_mode_t accept_mode;
    bool gzip, proxy_protocol, metrics;
} serve_args_t;

static void usage(FILE *to, const char *argv0)
{
    fprintf(to,
            "usage: %s [DIR] [--port 8000] [--bind 0.0.0.0] [--threads N] [--gzip] [--gzip-level 1..9]\n"
            "       [--access-log FILE|-] [--file-cache MS (default 1000, 0: off)] [--proxy-protocol]\n"
            "       [--accept default|reuseport|exclusive|dispatch] [--healthz PATH|off] [--drain-delay MS]\n"
            "       [--metrics]\n"
            "Serves DIR (default .) on every CPU: index.html or a listing for directories.\n",
            argv0);
}

/* A positive int in [lo, hi], or -1. */
static int parse_int(const char *s, int lo, int hi)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi)
        return -1;
    return (int)v;
}

/* 0, 1 for --help, -1 on a bad command line (said on stderr). */
static int parse_args(int argc, char **argv, serve_args_t *a)
{
    static const char *const modes[] = {"default", "reuseport", "exclusive", "dispatch"};
    *a = (serve_args_t){.dir = ".", .bind = "0.0.0.0", .port = 8000, .file_cache_ms = 1000, .healthz = "/healthz"};
    bool have_dir = false;
    for (int i = 1; i < argc; i++) {
        const char *opt = argv[i];
        bool has_value = i + 1 < argc;
        if (!strcmp(opt, "-h") || !strcmp(opt, "--help"))
            return 1;
        if (!strcmp(opt, "--metrics")) {
            a->metrics = true;
        } else if (!strcmp(opt, "--gzip")) {
            a->gzip = true;
        } else if (!strcmp(opt, "--proxy-protocol")) {
            a->proxy_protocol = true;
        } else if (!strcmp(opt, "--port") && has_value) {
            if ((a->port = parse_int(argv[++i], 0, 65535)) < 0)
                goto bad_value;
        } else if (!strcmp(opt, "--threads") && has_value) {
            if ((a->threads = parse_int(argv[++i], 1, 4096)) < 0)
                goto bad_value;
        } else if (!strcmp(opt, "--gzip-level") && has_value) {
            if ((a->gzip_level = parse_int(argv[++i], 1, 9)) < 0)
                goto bad_value;
            a->gzip = true;
        } else if (!strcmp(opt, "--file-cache") && has_value) {
            if ((a->file_cache_ms = parse_int(argv[++i], 0, 3600 * 1000)) < 0)
                goto bad_value;
        } else if (!strcmp(opt, "--drain-delay") && has_value) {
            if ((a->drain_delay_ms = parse_int(argv[++i], 0, 3600 * 1000)) < 0)
                goto bad_value;
        } else if (!strcmp(opt, "--healthz") && has_value) {
            a->healthz = argv[++i];
            if (strcmp(a->healthz, "off") && a->healthz[0] != '/')
                goto bad_value;
        } else if (!strcmp(opt, "--accept") && has_value) {
            const char *v = argv[++i];
            int m = 0;
            while (m < 4 && strcmp(v, modes[m]))
                m++;
            if (m == 4)
                goto bad_value;
            a->accept_mode = (ioloop_accept_mode_t)(IOLOOP_ACCEPT_DEFAULT + m);
        } else if (!strcmp(opt, "--bind") && has_value) {
            a->bind = argv[++i];
        } else if (!strcmp(opt, "--access-log") && has_value) {
            a->access_log = argv[++i];
        } else if (opt[0] != '-' && !have_dir) {
            a->dir = opt;
            have_dir = true;
        } else {
            fprintf(stderr, "ioloop-serve: unknown option or missing value: %s\n", opt);
            return -1;
        }
        continue;
    bad_value:
        fprintf(stderr, "ioloop-serve: bad value for %s: %s\n", opt, argv[i]);
        return -1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    serve_args_t args;
    int rc = parse_args(argc, argv, &args);
    if (rc) {
        usage(rc > 0 ? stdout : stderr, argv[0]);
        return rc > 0 ? 0 : 2;
    }
    struct stat st;
    char root[PATH_MAX];
    if (!realpath(args.dir, root) || stat(root, &st) != 0 || !S_ISDIR(st.st_mode)) {
        fprintf(stderr, "ioloop-serve: %s: not a directory\n", args.dir);
        return 2;
    }

    ioloop_http_server_options_t opts = {
        .gzip = args.gzip, .gzip_level = args.gzip_level, .drain_delay = IOLOOP_MSEC(args.drain_delay_ms)};
    ioloop_http_server_t *server;
    int serr = ioloop_http_server_new(&opts, &server);
    if (serr) {
        fprintf(stderr, "ioloop-serve: %s\n", ioloop_strerror(serr));
        return 1;
    }
    /* Everything under /: index.html or a listing for directories; with
     * --gzip a FILE.gz next to FILE is served as it is (gzip_static) and
     * other text is compressed on the fly (the server's gzip option). */
    ioloop_http_static_options_t sopts = {.list_directories = true,
                                          .gzip_static = args.gzip,
                                          .cache_valid = IOLOOP_MSEC(args.file_cache_ms)};
    int err = strcmp(args.healthz, "off") ? ioloop_http_server_health_route(server, args.healthz) : 0;
    if (err) {
        fprintf(stderr, "ioloop-serve: --healthz %s: %s\n", args.healthz, strerror(-err));
        return 1;
    }
    err = args.metrics ? ioloop_http_server_metrics_route(server, "/metrics") : 0;
    if (err) {
        fprintf(stderr, "ioloop-serve: --metrics: %s\n", strerror(-err));
        return 1;
    }
    err = ioloop_http_static_route(server, "/", root, &sopts);
    if (err) {
        fprintf(stderr, "ioloop-serve: %s: %s\n", root, strerror(-err));
        return 1;
    }
    ioloop_http_access_log_t *log = NULL;
    if (args.access_log) {
        err = ioloop_http_access_log_open(args.access_log, IOLOOP_HTTP_LOG_COMMON, &log);
        if (err) {
            fprintf(stderr, "ioloop-serve: --access-log %s: %s\n", args.access_log, strerror(-err));
            return 1;
        }
        ioloop_http_server_set_log(server, ioloop_http_access_log_hook, log);
    }

    ioloop_runtime_options_t ro = {.loops = args.threads}; /* 0: one loop per CPU */
    ioloop_runtime_t *rt = NULL;
    ioloop_listener_t *listener = NULL;
    ioloop_listener_options_t lo = {.address = args.bind, .port = args.port, .mode = args.accept_mode};
    if (args.proxy_protocol)
        lo.proxy_protocol = IOLOOP_PROXY_PROTOCOL_REQUIRED;
    err = ioloop_runtime_start(&ro, &rt);
    if (!err)
        err = ioloop_http_server_serve_with(server, rt, &lo, &listener);
    if (!err)
        err = ioloop_http_server_shutdown_on_signals(server, rt, listener, IOLOOP_SEC(10));
    if (err) {
        fprintf(stderr, "ioloop-serve: %s:%d: %s\n", args.bind, args.port, strerror(-err));
        return 1;
    }
    /* The port on its own line first: scripts (and the test) read it when --port 0. */
    printf("Serving HTTP on %s port %d (http://%s:%d/) from %s, %d loop(s)%s\n", args.bind,
           ioloop_listener_port(listener), strcmp(args.bind, "0.0.0.0") ? args.bind : "127.0.0.1",
           ioloop_listener_port(listener), root, ioloop_runtime_size(rt), args.gzip ? ", gzip" : "");
    fflush(stdout);

    ioloop_runtime_join(rt); /* until a signal has drained every loop */
    ioloop_listener_free(listener);
    ioloop_http_server_free(server);
    if (log)
        ioloop_http_access_log_close(log); /* nothing logs any more: writes what the loops buffered */
    ioloop_runtime_free(rt);
    return 0;
}
