/* main.c — ioloop-load, a wrk-like HTTP load generator on the runtime: the
 * command line, the URL, the run (one worker per loop, connections spread
 * over them), and the report.
 *
 *   ioloop-load -c CONNS -d SECONDS [-p PIPELINE] [--threads N] [-H 'Name: value']...
 *               [--timeout SECONDS] [--cacert FILE | -k] [--pin] [--json] URL
 *
 * It prints req/s, bytes/s, latency percentiles from a log-linear histogram
 * merged across the loops (p50, p90, p99, p99.9, max), errors by kind, and
 * its own CPU time per request. Exit status: 0 after a run (errors are
 * reported, not fatal), 1 when the run could not start, 2 for bad usage.
 *
 * Threading rule: the main thread parses, starts the runtime, posts each
 * worker's start to its loop, waits (SIGINT/SIGTERM end the wait early),
 * posts the finish, joins the loops and only then reads the workers.
 */
#define _GNU_SOURCE
#include "load.h"

#include "ioloop/runtime.h"
#ifdef IOLOOP_LOAD_TLS
#include "ioloop/tls.h"
#endif

#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

typedef struct {
    load_options_t opts;
    const char *url;
    char *host_header; /* "host[:port]" as the URL has it */
    char *host;        /* owned; opts.host points at it */
    const char *path;
    const char *headers[64];
    int nheaders;
    const char *cacert;
    bool insecure, pin, json;
} cli_t;

static void usage(FILE *out)
{
    fprintf(out, "usage: ioloop-load -c CONNS -d SECONDS [-p PIPELINE] [--threads N] [-H 'Name: value']...\n"
                 "                   [--timeout SECONDS] [--cacert FILE | -k] [--pin] [--json] URL\n"
                 "  URL: http://host[:port]/path or https://... (IPv6 as [::1])\n"
                 "  -c CONNS      connections, spread over the loops (default 10)\n"
                 "  -d SECONDS    duration, e.g. 10, 1.5, 500ms (default 10)\n"
                 "  -p PIPELINE   requests per write; the next batch goes once all are answered (default 1)\n"
                 "  --threads N   loops (default: the CPUs this process may run on)\n"
                 "  --timeout S   no response byte for this long: a timeout error, reconnect (default 2)\n"
                 "  --cacert FILE verify https against these roots; -k: do not verify\n"
                 "  --pin         pin loop i to the i-th CPU of the affinity mask\n"
                 "  --json        one JSON object instead of the text report\n");
}

/* "10", "1.5", "1.5s", "500ms" -> seconds; -1 if malformed. */
static double parse_seconds(const char *text)
{
    char *end;
    errno = 0;
    double v = strtod(text, &end);
    if (errno || end == text || !(v >= 0) || !isfinite(v))
        return -1;
    if (!strcmp(end, "ms"))
        return v / 1000;
    return !strcmp(end, "") || !strcmp(end, "s") ? v : -1;
}

static int parse_positive(const char *text)
{
    char *end;
    long v = strtol(text, &end, 10);
    return *text && !*end && v > 0 && v <= 1000000 ? (int)v : -1;
}

/* http[s]://host[:port][/path]: fills host, port, tls, host_header, path. */
static int parse_url(cli_t *cli, const char *url)
{
    const char *rest;
    if (!strncmp(url, "http://", 7)) {
        rest = url + 7;
        cli->opts.tls = false;
    } else if (!strncmp(url, "https://", 8)) {
        rest = url + 8;
        cli->opts.tls = true;
    } else {
        return -1;
    }
    size_t authority_len = strcspn(rest, "/?#");
    cli->path = rest[authority_len] ? rest + authority_len : ""; /* "/p?q", "?q" or "": "/" goes before the last two */
    if (authority_len == 0 || rest[authority_len] == '#' || strchr(cli->path, '#'))
        return -1;
    if (!(cli->host_header = strndup(rest, authority_len)) || !(cli->host = strndup(rest, authority_len)))
        return -1;
    char *host = cli->host, *port = NULL;
    if (host[0] == '[') { /* [v6]:port */
        char *close = strchr(host, ']');
        if (!close || (close[1] && close[1] != ':'))
            return -1;
        *close = '\0';
        port = close[1] ? close + 2 : NULL;
        memmove(host, host + 1, strlen(host + 1) + 1);
    } else if ((port = strchr(host, ':')) != NULL) {
        *port++ = '\0';
    }
    cli->opts.port = cli->opts.tls ? 443 : 80;
    if (port && (cli->opts.port = parse_positive(port)) > 65535)
        return -1;
    if (cli->opts.port < 0 || !*host)
        return -1;
    cli->opts.host = host;
    return 0;
}

/* The batch: `pipeline` copies of the request, built once. */
static int build_batch(cli_t *cli)
{
    size_t one = 0;
    char *request = NULL;
    FILE *f = open_memstream(&request, &one);
    if (!f)
        return -ENOMEM;
    fprintf(f, "GET %s%s HTTP/1.1\r\nHost: %s\r\n", cli->path[0] == '/' ? "" : "/", cli->path, cli->host_header);
    for (int i = 0; i < cli->nheaders; i++)
        fprintf(f, "%s\r\n", cli->headers[i]);
    fprintf(f, "\r\n");
    if (fclose(f) != 0)
        return -ENOMEM;
    size_t total = one * (size_t)cli->opts.pipeline;
    char *batch = malloc(total);
    if (!batch) {
        free(request);
        return -ENOMEM;
    }
    for (int i = 0; i < cli->opts.pipeline; i++)
        memcpy(batch + one * (size_t)i, request, one);
    free(request);
    cli->opts.batch = batch;
    cli->opts.batch_len = total;
    return 0;
}

static int parse_args(cli_t *cli, int argc, char **argv)
{
    cli->opts.connections = 10;
    cli->opts.pipeline = 1;
    cli->opts.duration = 10;
    cli->opts.timeout = IOLOOP_SEC(2);
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        const char *value = i + 1 < argc ? argv[i + 1] : NULL;
        bool takes = true;
        if (!strcmp(arg, "-c") && value)
            cli->opts.connections = parse_positive(value);
        else if (!strcmp(arg, "-d") && value)
            cli->opts.duration = parse_seconds(value);
        else if (!strcmp(arg, "-p") && value)
            cli->opts.pipeline = parse_positive(value);
        else if ((!strcmp(arg, "--threads") || !strcmp(arg, "-t")) && value)
            cli->opts.threads = parse_positive(value);
        else if (!strcmp(arg, "--timeout") && value) {
            double s = parse_seconds(value);
            cli->opts.timeout = s > 0 ? (ioloop_time_t)(s * 1e9) : -1;
        } else if (!strcmp(arg, "-H") && value) {
            if (cli->nheaders == (int)(sizeof(cli->headers) / sizeof(cli->headers[0])) || !strchr(value, ':') ||
                strpbrk(value, "\r\n"))
                return -1;
            cli->headers[cli->nheaders++] = value;
        } else if (!strcmp(arg, "--cacert") && value)
            cli->cacert = value;
        else {
            takes = false;
            if (!strcmp(arg, "-k") || !strcmp(arg, "--insecure"))
                cli->insecure = true;
            else if (!strcmp(arg, "--pin"))
                cli->pin = true;
            else if (!strcmp(arg, "--json"))
                cli->json = true;
            else if (arg[0] != '-' && !cli->url)
                cli->url = arg;
            else
                return -1;
        }
        if (takes)
            i++;
    }
    if (!cli->url || cli->opts.connections <= 0 || cli->opts.pipeline <= 0 || cli->opts.threads < 0 ||
        cli->opts.duration <= 0 || cli->opts.timeout <= 0 || parse_url(cli, cli->url) < 0)
        return -1;
    return 0;
}

/* ---- the run ---------------------------------------------------------------------- */

typedef struct {
    ioloop_runtime_t *rt;
    atomic_int unfinished; /* workers whose finish has not run yet: the last one stops the runtime */
} run_t;

static run_t run;

static void finish_worker(ioloop_t *loop, void *arg)
{
    (void)loop;
    load_worker_finish(arg);
    if (atomic_fetch_sub(&run.unfinished, 1) == 1)
        ioloop_runtime_stop(run.rt);
}

typedef struct {
    int loops;
    double elapsed, cpu;
    uint64_t requests, bytes, errors[LOAD_ERR_KINDS], error_total;
    hist_t latency;
} totals_t;

static void format_time(char *buf, size_t size, double ns)
{
    if (ns < 1e3)
        snprintf(buf, size, "%.0fns", ns);
    else if (ns < 1e6)
        snprintf(buf, size, "%.1fus", ns / 1e3);
    else if (ns < 1e9)
        snprintf(buf, size, "%.2fms", ns / 1e6);
    else
        snprintf(buf, size, "%.2fs", ns / 1e9);
}

static const double percentiles[] = {50, 90, 99, 99.9};

static void report_text(const cli_t *cli, const totals_t *t)
{
    printf("ioloop-load %s: %.2f s, %d connection(s) on %d loop(s), pipeline %d\n", cli->url, t->elapsed,
           cli->opts.connections, t->loops, cli->opts.pipeline);
    printf("  requests  %llu, %.1f req/s\n", (unsigned long long)t->requests, (double)t->requests / t->elapsed);
    printf("  read      %llu bytes, %.2f MB/s\n", (unsigned long long)t->bytes, (double)t->bytes / t->elapsed / 1e6);
    char buf[32];
    format_time(buf, sizeof(buf), hist_mean(&t->latency));
    printf("  latency   mean %s", buf);
    for (size_t i = 0; i < sizeof(percentiles) / sizeof(percentiles[0]); i++) {
        format_time(buf, sizeof(buf), (double)hist_percentile(&t->latency, percentiles[i]));
        printf("  p%g %s", percentiles[i], buf);
    }
    format_time(buf, sizeof(buf), (double)t->latency.max);
    printf("  max %s\n", buf);
    printf("  errors    %llu:", (unsigned long long)t->error_total);
    for (int k = 0; k < LOAD_ERR_KINDS; k++)
        printf(" %s %llu%s", load_error_names[k], (unsigned long long)t->errors[k],
               k + 1 < LOAD_ERR_KINDS ? "," : "\n");
    printf("  client    %.2f us CPU per request, %.0f%% of one CPU\n",
           t->requests ? t->cpu * 1e6 / (double)t->requests : 0.0, t->cpu / t->elapsed * 100);
}

static void report_json(const cli_t *cli, const totals_t *t)
{
    printf("{\"url\": \"%s\", \"connections\": %d, \"loops\": %d, \"pipeline\": %d, \"seconds\": %.3f, "
           "\"requests\": %llu, \"requests_per_s\": %.1f, \"bytes\": %llu, \"bytes_per_s\": %.1f, "
           "\"cpu_seconds\": %.4f, \"latency_ns\": {\"mean\": %.0f",
           cli->url, cli->opts.connections, t->loops, cli->opts.pipeline, t->elapsed, (unsigned long long)t->requests,
           (double)t->requests / t->elapsed, (unsigned long long)t->bytes, (double)t->bytes / t->elapsed, t->cpu,
           hist_mean(&t->latency));
    for (size_t i = 0; i < sizeof(percentiles) / sizeof(percentiles[0]); i++)
        printf(", \"p%g\": %llu", percentiles[i], (unsigned long long)hist_percentile(&t->latency, percentiles[i]));
    printf(", \"max\": %llu}, \"errors\": {", (unsigned long long)t->latency.max);
    for (int k = 0; k < LOAD_ERR_KINDS; k++)
        printf("\"%s\": %llu, ", load_error_names[k], (unsigned long long)t->errors[k]);
    printf("\"total\": %llu}}\n", (unsigned long long)t->error_total);
}

static double cpu_seconds(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
           (double)ru.ru_stime.tv_usec / 1e6;
}

#ifdef IOLOOP_LOAD_TLS
static ioloop_tls_context_t *tls_context;

static int setup_tls(cli_t *cli)
{
    static const char *const alpn[] = {"http/1.1"};
    ioloop_tls_options_t to = {.ca_file = cli->cacert,
                               .alpn = alpn,
                               .nalpn = 1,
                               .verify = cli->insecure ? IOLOOP_TLS_VERIFY_OFF : IOLOOP_TLS_VERIFY_DEFAULT};
    int err = ioloop_tls_context_new(&to, &tls_context);
    if (err == 0)
        err = ioloop_tls_client_options(tls_context, cli->opts.host, &cli->opts.connect);
    if (err < 0)
        fprintf(stderr, "ioloop-load: TLS: %s %s\n", ioloop_strerror(err), ioloop_tls_error_message());
    return err;
}
#else
static int setup_tls(cli_t *cli)
{
    (void)cli;
    fprintf(stderr, "ioloop-load: built without TLS (IOLOOP_TLS off): no https://\n");
    return -ENOTSUP;
}
#endif

static void cli_free(cli_t *cli)
{
#ifdef IOLOOP_LOAD_TLS
    if (tls_context)
        ioloop_tls_context_free(tls_context);
#endif
    free((char *)cli->opts.batch);
    free(cli->host);
    free(cli->host_header);
}

/* Waits `seconds`, or less if SIGINT/SIGTERM comes (blocked in every thread). */
static void wait_for(const sigset_t *stop_signals, double seconds, ioloop_time_t started)
{
    for (;;) {
        double left = seconds - (double)(load_clock() - started) / 1e9;
        if (left <= 0)
            return;
        struct timespec wait = {.tv_sec = (time_t)floor(left), .tv_nsec = (long)((left - floor(left)) * 1e9)};
        if (sigtimedwait(stop_signals, NULL, &wait) >= 0 || errno != EINTR)
            return;
    }
}

/* The run on a started runtime: workers out, wait, finish, join, totals in. */
static int run_workers(const cli_t *cli, const sigset_t *stop_signals, totals_t *t)
{
    int loops = ioloop_runtime_size(run.rt), err = 0;
    load_worker_t *workers = calloc((size_t)loops, sizeof(*workers));
    load_conn_t *conns = calloc((size_t)cli->opts.connections, sizeof(*conns));
    if (!workers || !conns) {
        free(workers);
        free(conns);
        return -ENOMEM;
    }
    atomic_store(&run.unfinished, loops);
    ioloop_time_t started = load_clock();
    for (int i = 0, next = 0; i < loops && err == 0; i++) {
        load_worker_t *worker = &workers[i];
        worker->opts = &cli->opts;
        worker->nconns = cli->opts.connections / loops + (i < cli->opts.connections % loops);
        worker->conns = conns + next;
        next += worker->nconns;
        hist_init(&worker->latency);
        err = ioloop_add_callback(ioloop_runtime_loop(run.rt, i), load_worker_start, worker);
    }
    if (err == 0)
        wait_for(stop_signals, cli->opts.duration, started);
    ioloop_time_t ended = load_clock();
    for (int i = 0; i < loops; i++)
        if (ioloop_add_callback(ioloop_runtime_loop(run.rt, i), finish_worker, &workers[i]) < 0)
            ioloop_runtime_stop(run.rt); /* cannot happen on a running loop; never wait forever */
    ioloop_runtime_join(run.rt);

    t->loops = loops;
    t->elapsed = (double)(ended - started) / 1e9;
    t->cpu = cpu_seconds();
    for (int i = 0; i < loops; i++) {
        t->requests += workers[i].requests;
        t->bytes += workers[i].bytes;
        for (int k = 0; k < LOAD_ERR_KINDS; k++) {
            t->errors[k] += workers[i].errors[k];
            t->error_total += workers[i].errors[k];
        }
        hist_merge(&t->latency, &workers[i].latency);
    }
    ioloop_runtime_free(run.rt); /* the close callbacks run here, and only account */
    free(conns);
    free(workers);
    return err;
}

int main(int argc, char **argv)
{
    cli_t cli = {0};
    if (argc > 1 && (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help"))) {
        usage(stdout);
        return 0;
    }
    if (parse_args(&cli, argc, argv) < 0) {
        usage(stderr);
        cli_free(&cli);
        return 2;
    }
    cli.opts.connect.nodelay = true;
    cli.opts.connect.timeout = cli.opts.timeout;
    cli.opts.connect.stream.read_timeout = cli.opts.timeout;
    totals_t *t = calloc(1, sizeof(*t));
    int err = t ? build_batch(&cli) : -ENOMEM;
    if (err == 0 && cli.opts.tls)
        err = setup_tls(&cli);
    if (err < 0) {
        free(t);
        cli_free(&cli);
        return 1;
    }
    hist_init(&t->latency);
    load_settings_init();

    /* SIGINT/SIGTERM end the wait early (the runtime's threads block them too). */
    sigset_t stop_signals;
    sigemptyset(&stop_signals);
    sigaddset(&stop_signals, SIGINT);
    sigaddset(&stop_signals, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &stop_signals, NULL);

    ioloop_runtime_options_t ro = {.loops = cli.opts.threads, .pin = cli.pin};
    if ((err = ioloop_runtime_start(&ro, &run.rt)) < 0)
        fprintf(stderr, "ioloop-load: runtime: %s\n", ioloop_strerror(err));
    else if ((err = run_workers(&cli, &stop_signals, t)) < 0)
        fprintf(stderr, "ioloop-load: %s\n", ioloop_strerror(err));
    if (err == 0 && cli.json)
        report_json(&cli, t);
    else if (err == 0)
        report_text(&cli, t);
    free(t);
    cli_free(&cli);
    return err < 0 ? 1 : 0;
}
