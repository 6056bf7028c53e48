/* helloworld.c — the seed's Tornado hello world in C: GET / → "Hello, world".
 *
 *   helloworld [--port 8888] [--threads N] [--accept reuseport]
 *
 * Threading rule: one loop per thread (default: one per online CPU), each with
 * its own SO_REUSEPORT listener on the port, so the kernel balances accepts.
 * (The runtime's listener, with its other accept modes, replaces this once it
 * lands.) SIGINT/SIGTERM end the process.
 */
#define _GNU_SOURCE
#include "ioloop/http.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void main_handler_get(ioloop_http_request_t *req, void *arg)
{
    (void)arg;
    ioloop_http_response_write(req, "Hello, world", 12);
    ioloop_http_response_finish(req);
}

static ioloop_http_server_t *server;
static int port = 8888;

static void *serve(void *arg)
{
    (void)arg;
    ioloop_t *loop = ioloop_new(NULL);
    if (!loop || ioloop_http_server_listen(server, loop, "0.0.0.0", port) != 0) {
        perror("helloworld: listen");
        exit(1);
    }
    ioloop_start(loop);
    return NULL;
}

int main(int argc, char **argv)
{
    long threads = sysconf(_SC_NPROCESSORS_ONLN);
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--port"))
            port = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--threads"))
            threads = atol(argv[i + 1]);
        else if (strcmp(argv[i], "--accept") || strcmp(argv[i + 1], "reuseport"))
            return fprintf(stderr, "usage: %s [--port P] [--threads N] [--accept reuseport]\n", argv[0]), 2;
    }
    server = ioloop_http_server_new(NULL);
    ioloop_http_server_route(server, "/", &(ioloop_http_route_t){.get = main_handler_get});

    printf("helloworld: http://127.0.0.1:%d/ on %ld loop(s)\n", port, threads);
    fflush(stdout);
    pthread_t tid;
    for (long i = 1; i < threads; i++)
        pthread_create(&tid, NULL, serve, NULL);
    serve(NULL);
    return 0;
}
