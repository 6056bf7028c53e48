/* ws_echo.c — a WebSocket echo server on /ws, one loop per core: every
 * message comes back as it came (text or binary), compressed when the client
 * offers permessage-deflate and --compress is given. Flow control: when the
 * output to a client reaches its mark, reading from that client stops until
 * it drained (on_drain), so a client that never reads holds bounded memory.
 *
 *   ws_echo [--port 8765] [--threads N] [--compress] [--max-message-size BYTES]
 *
 * Prints "ws_echo: listening on port N" (port 0: the kernel's choice); SIGINT
 * or SIGTERM stops it. Threading rule: each connection lives on the loop that
 * accepted it; nothing is shared.
 */
#include "ioloop/http.h"
#include "ioloop/runtime.h"
#include "ioloop/websocket.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void on_message(ioloop_websocket_t *ws, int opcode, const char *data, size_t len, void *arg)
{
    (void)arg;
    if (ioloop_websocket_send(ws, opcode, data, len) != 0 || !ioloop_websocket_writable(ws))
        ioloop_websocket_pause(ws); /* the output is at its mark: read on once it drained */
}

static void on_drain(ioloop_websocket_t *ws, void *arg)
{
    (void)arg;
    ioloop_websocket_resume(ws);
}

int main(int argc, char **argv)
{
    int port = 8765;
    ioloop_runtime_options_t ro = {.pin = true};
    ioloop_websocket_route_t route = {.handlers = {.on_message = on_message, .on_drain = on_drain}};
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--port") && i + 1 < argc) {
            port = atoi(argv[++i]);
        } else if (!strcmp(argv[i], "--threads") && i + 1 < argc) {
            ro.loops = atoi(argv[++i]);
        } else if (!strcmp(argv[i], "--compress")) {
            route.options.compression = true;
        } else if (!strcmp(argv[i], "--max-message-size") && i + 1 < argc) {
            route.options.max_message_size = strtoull(argv[++i], NULL, 10);
        } else {
            fprintf(stderr, "usage: %s [--port 8765] [--threads N] [--compress] [--max-message-size BYTES]\n", argv[0]);
            return 2;
        }
    }
    ioloop_http_server_t *server = NULL;
    (void)ioloop_http_server_new(NULL, &server);
    ioloop_runtime_t *rt;
    ioloop_listener_t *listener;
    int err = server ? ioloop_http_websocket_route(server, "/ws", &route) : -1;
    if (!err)
        err = ioloop_runtime_start(&ro, &rt);
    if (!err)
        err = ioloop_http_server_serve(server, rt, "127.0.0.1", port, IOLOOP_ACCEPT_DEFAULT, &listener);
    if (!err)
        err = ioloop_http_server_shutdown_on_signals(server, rt, listener, IOLOOP_SEC(1));
    if (err) {
        fprintf(stderr, "ws_echo: %s\n", ioloop_strerror(err));
        return 1;
    }
    printf("ws_echo: listening on port %d, %d loop(s)\n", ioloop_listener_port(listener), ioloop_runtime_size(rt));
    fflush(stdout);
    ioloop_runtime_join(rt); /* until a signal */
    ioloop_listener_free(listener);
    ioloop_http_server_free(server);
    ioloop_runtime_free(rt); /* closes the websockets still open */
    return 0;
}
