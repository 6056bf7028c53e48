/* helloworld.c — the seed's Tornado hello world in C: GET / → "Hello, world".
 *
 *   helloworld [--port 8888] [--threads N] [--pin yes|no] [--accept reuseport|exclusive|dispatch]
 *              [--access-log FILE|-]
 *
 * Threading rule: main owns the runtime (one loop per CPU unless --threads);
 * the handler runs on whichever loop accepted the connection. SIGINT/SIGTERM
 * drain every loop (requests in flight are answered, with Connection: close)
 * and the process exits 0.
 */
#define _GNU_SOURCE
#include "ioloop/http.h"
#include "ioloop/runtime.h"

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

/* Reads the options into *port, *ro and *mode; false on anything else. */
static const char *access_log_path; /* --access-log: Common Log Format to FILE, or stdout for "-" */

static bool parse_args(int argc, char **argv, int *port, ioloop_runtime_options_t *ro, ioloop_accept_mode_t *mode)
{
    for (int i = 1; i + 1 < argc; i += 2) {
        const char *opt = argv[i], *v = argv[i + 1];
        if (!strcmp(opt, "--port") && atoi(v) > 0) {
            *port = atoi(v);
        } else if (!strcmp(opt, "--threads") && atoi(v) > 0) {
            ro->loops = atoi(v);
        } else if (!strcmp(opt, "--pin") && (!strcmp(v, "yes") || !strcmp(v, "no"))) {
            ro->pin = !strcmp(v, "yes");
        } else if (!strcmp(opt, "--access-log")) {
            access_log_path = v;
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
    return argc % 2 == 1;
}

int main(int argc, char **argv)
{
    int port = 8888;
    ioloop_runtime_options_t ro = {.pin = true}; /* loops = 0: one per CPU */
    ioloop_accept_mode_t mode = IOLOOP_ACCEPT_DEFAULT;
    if (!parse_args(argc, argv, &port, &ro, &mode)) {
        fprintf(stderr,
                "usage: %s [--port 8888] [--threads N] [--pin yes|no] [--accept reuseport|exclusive|dispatch]"
                " [--access-log FILE|-]\n",
                argv[0]);
        return 2;
    }

    ioloop_http_server_t *server = ioloop_http_server_new(NULL);
    ioloop_http_server_route(server, "/", &(ioloop_http_route_t){.get = main_handler_get});
    ioloop_http_access_log_t *access_log = NULL;
    if (access_log_path) {
        int lerr = ioloop_http_access_log_open(access_log_path, IOLOOP_HTTP_LOG_COMMON, &access_log);
        if (lerr) {
            fprintf(stderr, "helloworld: --access-log %s: %s\n", access_log_path, strerror(-lerr));
            return 1;
        }
        ioloop_http_server_set_log(server, ioloop_http_access_log_hook, access_log);
    }

    ioloop_runtime_t *rt;
    ioloop_listener_t *listener;
    int err = ioloop_runtime_start(&ro, &rt);
    if (!err)
        err = ioloop_http_server_serve(server, rt, "0.0.0.0", port, mode, &listener);
    if (!err)
        err = ioloop_http_server_shutdown_on_signals(server, rt, listener, IOLOOP_SEC(10));
    if (err) {
        fprintf(stderr, "helloworld: %s\n", strerror(-err));
        return 1;
    }
    printf("helloworld: http://127.0.0.1:%d/ on %d loop(s), accept %s\n", port, ioloop_runtime_size(rt),
           modes[ioloop_listener_mode(listener)]);
    fflush(stdout);

    ioloop_runtime_join(rt); /* until a signal has drained every loop */
    ioloop_listener_free(listener);
    ioloop_http_server_free(server);
    ioloop_http_access_log_close(access_log); /* nothing logs any more: writes what the loops buffered */
    ioloop_runtime_free(rt);
    return 0;
}
