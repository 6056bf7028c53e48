/* gzip_server.c — the ioloop side of tools/bench-gzip: GET / answers a text
 * file's bytes (read once at start, written from memory per request) as
 * text/plain through the server's dynamic gzip (gzip on, --level N); any
 * path answers the same.
 *
 *   http-bench-gzip-server FILE --port P [--level N] [--threads N]
 *
 * Threading rule: main owns the runtime; the handler runs on the loop that
 * accepted the connection and only reads the shared, immutable body.
 */
#define _GNU_SOURCE
#include "ioloop/http.h"
#include "ioloop/runtime.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char *body;
static size_t body_len;

static void get_text(ioloop_http_request_t *req, void *arg)
{
    (void)arg;
    ioloop_http_response_send(req, 200, "text/plain", body, body_len);
}

static int read_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return -1;
    size_t cap = 1 << 20;
    body = malloc(cap);
    body_len = body ? fread(body, 1, cap, f) : 0;
    int bad = !body || ferror(f) || !feof(f);
    fclose(f);
    return bad ? -1 : 0;
}

int main(int argc, char **argv)
{
    int port = 0, level = 1, threads = 1;
    for (int i = 2; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--port"))
            port = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--level"))
            level = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--threads"))
            threads = atoi(argv[i + 1]);
    }
    if (argc < 2 || argc % 2 != 0 || port <= 0 || threads <= 0 || read_file(argv[1]) != 0) {
        fprintf(stderr, "usage: %s FILE(<1 MiB) --port P [--level 1..9] [--threads N]\n", argv[0]);
        return 2;
    }
    ioloop_http_server_options_t opts = {.gzip = true, .gzip_level = level};
    ioloop_http_server_t *server;
    if (ioloop_http_server_new(&opts, &server) != 0) {
        fprintf(stderr, "gzip_server: bad options\n");
        return 2;
    }
    ioloop_http_server_route(server, "/.*", &(ioloop_http_route_t){.get = get_text});
    ioloop_runtime_options_t ro = {.loops = threads};
    ioloop_runtime_t *rt;
    ioloop_listener_t *listener = NULL;
    int err = ioloop_runtime_start(&ro, &rt);
    if (!err)
        err = ioloop_http_server_serve(server, rt, "127.0.0.1", port, IOLOOP_ACCEPT_DEFAULT, &listener);
    if (!err)
        err = ioloop_http_server_shutdown_on_signals(server, rt, listener, IOLOOP_SEC(5));
    if (err) {
        fprintf(stderr, "gzip_server: %s\n", strerror(-err));
        return 1;
    }
    ioloop_runtime_join(rt);
    ioloop_listener_free(listener);
    ioloop_http_server_free(server);
    ioloop_runtime_free(rt);
    free(body);
    return 0;
}
