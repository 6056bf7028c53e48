/* http_main.c — the install check's HTTP program (CMake consumer of
 * ioloop::http and ioloop::http_static, and a plain `cc $(pkg-config --cflags
 * --libs ioloop-http)` one): serves GET / on one loop, fetches it once over
 * 127.0.0.1 with a blocking socket from the main thread, stops. Exits 0 when
 * the body came back. Threading: the handler runs on the runtime's loop
 * thread; main() holds the runtime.
 */
#define _GNU_SOURCE
#include <ioloop/http.h>
#include <ioloop/runtime.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static void hello(ioloop_http_request_t *req, void *arg)
{
    (void)arg;
    ioloop_http_response_write(req, "hello, consumer", 15);
    ioloop_http_response_finish(req);
}

/* One request over a fresh connection; the response (headers and body) in buf. */
static int fetch(int port, char *buf, size_t size)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    struct timeval tv = {.tv_sec = 10};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0)
        return -1;
    static const char request[] = "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    if (write(fd, request, sizeof(request) - 1) != (ssize_t)sizeof(request) - 1)
        return -1;
    size_t got = 0;
    ssize_t n;
    while (got < size - 1 && (n = read(fd, buf + got, size - 1 - got)) > 0)
        got += (size_t)n;
    buf[got] = '\0';
    close(fd);
    return 0;
}

int main(void)
{
    ioloop_http_server_t *server;
    ioloop_runtime_t *rt;
    ioloop_listener_t *listener;
    if (ioloop_http_server_new(NULL, &server) != 0 ||
        ioloop_http_server_route(server, "/", &(ioloop_http_route_t){.get = hello}) != 0 ||
        ioloop_runtime_start(&(ioloop_runtime_options_t){.loops = 1}, &rt) != 0 ||
        ioloop_http_server_serve(server, rt, "127.0.0.1", 0, IOLOOP_ACCEPT_DEFAULT, &listener) != 0) {
        fprintf(stderr, "http consumer: setup failed\n");
        return 1;
    }
    char response[4096];
    int err = fetch(ioloop_listener_port(listener), response, sizeof(response));
    ioloop_runtime_stop(rt);
    ioloop_runtime_join(rt);
    ioloop_listener_free(listener);
    ioloop_http_server_free(server);
    ioloop_runtime_free(rt);
    const char *body = err ? NULL : strstr(response, "\r\n\r\n");
    bool ok = body && strncmp(response, "HTTP/1.1 200", 12) == 0 && strcmp(body + 4, "hello, consumer") == 0;
    printf("http consumer: %s\n", ok ? "200 hello, consumer" : "no answer");
    return ok ? 0 : 1;
}
