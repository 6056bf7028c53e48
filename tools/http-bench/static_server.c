/* static_server.c — ioloop_http_static_route alone, for the static-file
 * benchmark against nginx (tools/bench-static) and the real-client check
 * (tests/checks/static_clients.py): serves DIR at /.
 *
 *   static_server --root DIR [--port 8000] [--threads N] [--executor N] [--list yes] [--gzip-static yes]
 *                 [--cache-control VALUE] [--cache-ms MS]
 *
 * Threading rule: main owns the runtime; requests run on the loop that
 * accepted them, open/fstat on the runtime's executor. SIGINT/SIGTERM drain
 * and exit 0.
 */
#define _GNU_SOURCE
#include "ioloop/http.h"
#include "ioloop/runtime.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv)
{
    int port = 8000;
    const char *root = NULL;
    ioloop_runtime_options_t ro = {.loops = 1};
    ioloop_http_static_options_t so = {0};
    for (int i = 1; i + 1 < argc; i += 2) {
        const char *opt = argv[i], *v = argv[i + 1];
        if (!strcmp(opt, "--root"))
            root = v;
        else if (!strcmp(opt, "--port"))
            port = atoi(v);
        else if (!strcmp(opt, "--threads"))
            ro.loops = atoi(v);
        else if (!strcmp(opt, "--executor"))
            ro.executor_threads = atoi(v);
        else if (!strcmp(opt, "--list"))
            so.list_directories = !strcmp(v, "yes");
        else if (!strcmp(opt, "--gzip-static"))
            so.gzip_static = !strcmp(v, "yes");
        else if (!strcmp(opt, "--cache-ms"))
            so.cache_valid = IOLOOP_MSEC(atoi(v));
        else if (!strcmp(opt, "--cache-control"))
            so.cache_control = v;
        else
            root = NULL, i = argc;
    }
    if (!root || argc % 2 == 0) {
        fprintf(stderr,
                "usage: %s --root DIR [--port 8000] [--threads N] [--executor N] [--list yes] "
                "[--gzip-static yes] [--cache-control VALUE] [--cache-ms MS]\n",
                argv[0]);
        return 2;
    }
    ioloop_http_server_t *server;
    int err = ioloop_http_server_new(NULL, &server);
    if (!err)
        err = ioloop_http_static_route(server, "/", root, &so);
    ioloop_runtime_t *rt = NULL;
    ioloop_listener_t *listener = NULL;
    if (!err)
        err = ioloop_runtime_start(&ro, &rt);
    if (!err)
        err = ioloop_http_server_serve(server, rt, "127.0.0.1", port, IOLOOP_ACCEPT_DEFAULT, &listener);
    if (!err)
        err = ioloop_http_server_shutdown_on_signals(server, rt, listener, IOLOOP_SEC(10));
    if (err) {
        fprintf(stderr, "static_server: %s\n", strerror(-err));
        return 1;
    }
    printf("static_server: http://127.0.0.1:%d/ serves %s\n", ioloop_listener_port(listener), root);
    fflush(stdout);
    ioloop_runtime_join(rt);
    ioloop_listener_free(listener);
    ioloop_http_server_free(server);
    ioloop_runtime_free(rt);
    return 0;
}
