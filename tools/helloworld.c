/* helloworld.c — the seed's Tornado hello world in C: GET / → "Hello, world",
 * and GET /healthz → 200 "ok" (503 "draining" once SIGTERM came).
 *
 *   helloworld [--port 8888] [--bind 0.0.0.0] [--threads N] [--pin yes|no] [--accept reuseport|exclusive|dispatch]
 *              [--tls-cert FILE --tls-key FILE] [--access-log FILE|-] [--proxy-protocol]
 *              [--drain-delay MS] [--exit-stats] [--metrics]
 *
 * With a certificate and its key it serves https:// (TLS 1.2 and 1.3, ALPN
 * http/1.1) on the same port; that needs a build with IOLOOP_TLS (libioloop-tls).
 * --port 0 lets the kernel pick: the banner names the port. --access-log
 * writes Common Log Format lines to FILE, or stdout for "-". --proxy-protocol
 * requires a PROXY header (v1 or v2, HAProxy's send-proxy) on every
 * connection; the logged address is the one it carries. --metrics serves
 * the Prometheus metrics (ioloop_http_server_metrics_route) at /metrics.
 * Under systemd socket activation (LISTEN_FDS) it serves on the inherited
 * sockets and --port is ignored (`systemd-socket-activate -l 8080
 * helloworld`); with NOTIFY_SOCKET set it reports READY=1 and STOPPING=1.
 * --drain-delay (default 0) keeps serving that long after SIGTERM with
 * /healthz at 503, so a load balancer's health checks take it out before
 * the listener closes. Restarting on one port without a failed request:
 * tools/deploy/restart-under-load (an inherited socket, or --accept
 * reuseport beside the old process).
 *
 * Threading rule: main owns the runtime (one loop per CPU unless --threads);
 * the handler runs on whichever loop accepted the connection. SIGINT/SIGTERM
 * drain every loop (requests in flight are answered, with Connection: close),
 * with --exit-stats a last line on stderr counts the requests and connections
 * served, and the process exits 0.
 */
#define _GNU_SOURCE
#include "ioloop/http.h"
#include "ioloop/runtime.h"
#ifdef IOLOOP_HELLO_TLS
#include "ioloop/tls.h"
#endif

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void main_handler_get(ioloop_http_request_t *req, void *arg)
{
    (void)arg;
    ioloop_http_response_write(req, "Hello, world", 12);
    ioloop_http_response_finish(req);
}

static const char *modes[] = {"default", "reuseport", "exclusive", "dispatch"};

typedef struct {
    int port;
    ioloop_runtime_options_t ro;
    ioloop_accept_mode_t mode;
    const char *tls_cert, *tls_key;
    const char *access_log_path;
    const char *bind; /* the listening address: 0.0.0.0 unless --bind */
    int drain_delay_ms;
    bool proxy_protocol;
    bool exit_stats;
    bool metrics;
} hello_args_t;

/* Reads the options into *a; false on anything else. */
static bool parse_args(int argc, char **argv, hello_args_t *a)
{
    int *port = &a->port;
    ioloop_runtime_options_t *ro = &a->ro;
    ioloop_accept_mode_t *mode = &a->mode;
    for (int i = 1; i < argc; i++) {
        const char *opt = argv[i];
        if (!strcmp(opt, "--proxy-protocol")) {
            a->proxy_protocol = true;
            continue;
        }
        if (!strcmp(opt, "--exit-stats")) {
            a->exit_stats = true;
            continue;
        }
        if (!strcmp(opt, "--metrics")) {
            a->metrics = true;
            continue;
        }
        if (i + 1 >= argc)
            return false;
        const char *v = argv[++i];
        if (!strcmp(opt, "--port") && (atoi(v) > 0 || !strcmp(v, "0"))) {
            *port = atoi(v);
        } else if (!strcmp(opt, "--tls-cert")) {
            a->tls_cert = v;
        } else if (!strcmp(opt, "--tls-key")) {
            a->tls_key = v;
        } else if (!strcmp(opt, "--bind")) {
            a->bind = v;
        } else if (!strcmp(opt, "--access-log")) {
            a->access_log_path = v;
        } else if (!strcmp(opt, "--drain-delay") && (atoi(v) > 0 || !strcmp(v, "0"))) {
            a->drain_delay_ms = atoi(v);
        } else if (!strcmp(opt, "--threads") && atoi(v) > 0) {
            ro->loops = atoi(v);
        } else if (!strcmp(opt, "--pin") && (!strcmp(v, "yes") || !strcmp(v, "no"))) {
            ro->pin = !strcmp(v, "yes");
        } else if (!strcmp(opt, "--accept")) {
            for (*mode = IOLOOP_ACCEPT_DEFAULT; *mode <= IOLOOP_ACCEPT_DISPATCH; (*mode)++)
                if (!strcmp(v, modes[*mode]))
                    break;
            if (*mode > IOLOOP_ACCEPT_DISPATCH)
                return false;
        } else {
            return false;
        }
    }
    return !a->tls_cert == !a->tls_key; /* both or neither */
}

/* The listener's options: plain, or a TLS session per connection on *tls. */
static int listen_options(const hello_args_t *a, ioloop_listener_options_t *lo, void **tls)
{
    *lo = (ioloop_listener_options_t){.address = a->bind,
                                      .port = a->port,
                                      .mode = a->mode,
                                      .proxy_protocol = a->proxy_protocol ? IOLOOP_PROXY_PROTOCOL_REQUIRED
                                                                          : IOLOOP_PROXY_PROTOCOL_OFF};
    *tls = NULL;
    if (!a->tls_cert)
        return 0;
#ifdef IOLOOP_HELLO_TLS
    static const char *const alpn[] = {"http/1.1"};
    ioloop_tls_cert_t cert = {.cert_file = a->tls_cert, .key_file = a->tls_key};
    ioloop_tls_options_t to = {.server = true, .certs = &cert, .ncerts = 1, .alpn = alpn, .nalpn = 1};
    ioloop_tls_context_t *ctx;
    int err = ioloop_tls_context_new(&to, &ctx);
    if (err) {
        fprintf(stderr, "helloworld: %s: %s %s\n", a->tls_cert, ioloop_strerror(err), ioloop_tls_error_message());
        return err;
    }
    ioloop_tls_server_options(ctx, lo);
    *tls = ctx;
    return 0;
#else
    fprintf(stderr, "helloworld: built without TLS (IOLOOP_TLS off)\n");
    return -ENOTSUP;
#endif
}

static void free_tls(void *tls)
{
#ifdef IOLOOP_HELLO_TLS
    ioloop_tls_context_free(tls);
#else
    (void)tls;
#endif
}

int main(int argc, char **argv)
{
    hello_args_t a = {
        .port = 8888, .ro = {.pin = true}, .mode = IOLOOP_ACCEPT_DEFAULT, .bind = "0.0.0.0"}; /* loops: one per CPU */
    if (!parse_args(argc, argv, &a)) {
        fprintf(stderr,
                "usage: %s [--port 8888] [--threads N] [--pin yes|no] [--accept reuseport|exclusive|dispatch]\n"
                "          [--bind 0.0.0.0] [--tls-cert FILE --tls-key FILE] [--access-log FILE|-] [--proxy-protocol]\n"
                "          [--drain-delay MS] [--exit-stats] [--metrics]\n",
                argv[0]);
        return 2;
    }
    ioloop_listener_options_t lo;
    void *tls;
    if (listen_options(&a, &lo, &tls) != 0)
        return 1;

    ioloop_http_server_options_t so = {.drain_delay = IOLOOP_MSEC(a.drain_delay_ms)};
    ioloop_http_server_t *server;
    int serr = ioloop_http_server_new(&so, &server);
    if (serr) {
        fprintf(stderr, "helloworld: %s\n", ioloop_strerror(serr));
        return 1;
    }
    ioloop_http_server_route(server, "/", &(ioloop_http_route_t){.get = main_handler_get});
    ioloop_http_server_health_route(server, "/healthz");
    if (a.metrics)
        ioloop_http_server_metrics_route(server, "/metrics");
    ioloop_http_access_log_t *access_log = NULL;
    if (a.access_log_path) {
        int lerr = ioloop_http_access_log_open(a.access_log_path, IOLOOP_HTTP_LOG_COMMON, &access_log);
        if (lerr) {
            fprintf(stderr, "helloworld: --access-log %s: %s\n", a.access_log_path, ioloop_strerror(lerr));
            return 1;
        }
        ioloop_http_server_set_log(server, ioloop_http_access_log_hook, access_log);
    }

    ioloop_runtime_t *rt = NULL;
    ioloop_listener_t *listener = NULL;
    int err = ioloop_runtime_start(&a.ro, &rt);
    if (!err)
        err = ioloop_http_server_serve_with(server, rt, &lo, &listener);
    if (!err)
        err = ioloop_http_server_shutdown_on_signals(server, rt, listener, IOLOOP_SEC(10));
    if (err) {
        /* e.g. LISTEN_FDS naming a non-socket: everything made so far goes,
         * so a leak checker sees a clean refusal. */
        fprintf(stderr, "helloworld: %s\n", ioloop_strerror(err));
        if (rt) {
            ioloop_runtime_stop(rt);
            ioloop_runtime_join(rt);
        }
        if (listener)
            ioloop_listener_free(listener);
        ioloop_http_server_free(server);
        ioloop_http_access_log_close(access_log);
        if (rt)
            ioloop_runtime_free(rt);
        free_tls(tls);
        return 1;
    }
    printf("helloworld: %s://127.0.0.1:%d/ on %d loop(s), accept %s%s\n", tls ? "https" : "http",
           ioloop_listener_port(listener), ioloop_runtime_size(rt), modes[ioloop_listener_mode(listener)],
           a.proxy_protocol ? ", PROXY protocol required" : "");
    fflush(stdout);

    ioloop_runtime_join(rt); /* until a signal has drained every loop */
    /* --exit-stats: what a deployment check compares (keep-alive upstreams
     * reuse connections: far fewer connections than requests). */
    ioloop_http_server_stats_t st;
    ioloop_http_server_get_stats(server, &st);
    if (a.exit_stats)
        fprintf(stderr, "helloworld: served %llu request(s) on %llu connection(s)\n", (unsigned long long)st.requests,
                (unsigned long long)st.connections); /* stderr: stdout may be the access log (-) */
    ioloop_listener_free(listener);
    ioloop_http_server_free(server);
    ioloop_http_access_log_close(access_log); /* nothing logs any more: writes what the loops buffered */
    ioloop_runtime_free(rt);
    free_tls(tls); /* after the loops: their sessions hold references until they close */
    return 0;
}
