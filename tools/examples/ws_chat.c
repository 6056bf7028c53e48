/* ws_chat.c — a chat room over WebSocket on every core: a message from any
 * client on /chat is posted to every loop (ioloop_add_callback) and sent
 * there to every client that loop holds. Each loop keeps its own list of
 * clients (its "room"), touched only by its own thread, so no lock is taken
 * anywhere: the only shared object is the message, reference-counted.
 *
 *   ws_chat [--port 8766] [--threads N]
 *
 * Prints "ws_chat: listening on port N"; SIGINT or SIGTERM stops it. A
 * client that does not read loses messages (send -ENOBUFS: counted, dropped)
 * rather than growing the server's memory.
 */
#include "ioloop/http.h"
#include "ioloop/runtime.h"
#include "ioloop/websocket.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct room room_t;
typedef struct client {
    ioloop_websocket_t *ws;
    room_t *room; /* its loop's (on_close may run as the runtime is freed, when the loop has no index any more) */
    struct client *prev, *next;
} client_t;

struct room {
    client_t *clients; /* this loop's, touched only by its thread */
    unsigned long dropped;
};

typedef struct {
    atomic_int refs; /* one per loop it was posted to */
    int opcode;
    size_t len;
    char data[];
} message_t;

static ioloop_runtime_t *rt;
static room_t *rooms; /* one per loop, by ioloop_runtime_index */

static room_t *room_of(ioloop_t *loop)
{
    return &rooms[ioloop_runtime_index(loop)];
}

static void on_open(ioloop_websocket_t *ws, ioloop_http_request_t *req, void *arg)
{
    (void)req, (void)arg;
    room_t *room = room_of(ioloop_websocket_loop(ws));
    client_t *c = calloc(1, sizeof(*c));
    if (!c) {
        ioloop_websocket_close(ws, IOLOOP_WS_CLOSE_INTERNAL, NULL, 0);
        return;
    }
    c->ws = ws;
    c->room = room;
    c->next = room->clients;
    if (room->clients)
        room->clients->prev = c;
    room->clients = c;
    ioloop_websocket_set_user_data(ws, c);
}

static void on_close(ioloop_websocket_t *ws, int code, const char *reason, size_t len, void *arg)
{
    (void)code, (void)reason, (void)len, (void)arg;
    client_t *c = ioloop_websocket_user_data(ws);
    if (!c)
        return;
    room_t *room = c->room;
    if (c->prev)
        c->prev->next = c->next;
    else
        room->clients = c->next;
    if (c->next)
        c->next->prev = c->prev;
    free(c);
}

/* Runs on each loop: the message to every client there. */
static void deliver(ioloop_t *loop, void *arg)
{
    message_t *m = arg;
    room_t *room = room_of(loop);
    for (client_t *c = room->clients; c; c = c->next)
        if (ioloop_websocket_send(c->ws, m->opcode, m->data, m->len) == -ENOBUFS)
            room->dropped++;
    if (atomic_fetch_sub(&m->refs, 1) == 1)
        free(m);
}

static void on_message(ioloop_websocket_t *ws, int opcode, const char *data, size_t len, void *arg)
{
    (void)ws, (void)arg;
    int n = ioloop_runtime_size(rt);
    message_t *m = malloc(sizeof(*m) + len + 1);
    if (!m)
        return;
    atomic_init(&m->refs, n);
    m->opcode = opcode;
    m->len = len;
    memcpy(m->data, data, len + 1);
    for (int i = 0; i < n; i++)
        if (ioloop_add_callback(ioloop_runtime_loop(rt, i), deliver, m) != 0 && atomic_fetch_sub(&m->refs, 1) == 1)
            free(m); /* that loop is closing */
}

int main(int argc, char **argv)
{
    int port = 8766;
    ioloop_runtime_options_t ro = {.pin = true};
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--port") && i + 1 < argc) {
            port = atoi(argv[++i]);
        } else if (!strcmp(argv[i], "--threads") && i + 1 < argc) {
            ro.loops = atoi(argv[++i]);
        } else {
            fprintf(stderr, "usage: %s [--port 8766] [--threads N]\n", argv[0]);
            return 2;
        }
    }
    ioloop_websocket_route_t route = {.handlers = {.on_open = on_open, .on_message = on_message, .on_close = on_close}};
    ioloop_http_server_t *server = NULL;
    (void)ioloop_http_server_new(NULL, &server);
    ioloop_listener_t *listener;
    int err = server ? ioloop_http_websocket_route(server, "/chat", &route) : -1;
    if (!err)
        err = ioloop_runtime_start(&ro, &rt);
    if (!err && !(rooms = calloc((size_t)ioloop_runtime_size(rt), sizeof(*rooms))))
        err = -1;
    if (!err)
        err = ioloop_http_server_serve(server, rt, "127.0.0.1", port, IOLOOP_ACCEPT_DEFAULT, &listener);
    if (!err)
        err = ioloop_http_server_shutdown_on_signals(server, rt, listener, IOLOOP_SEC(1));
    if (err) {
        fprintf(stderr, "ws_chat: %s\n", ioloop_strerror(err));
        return 1;
    }
    printf("ws_chat: listening on port %d, %d loop(s)\n", ioloop_listener_port(listener), ioloop_runtime_size(rt));
    fflush(stdout);
    ioloop_runtime_join(rt);
    ioloop_listener_free(listener);
    ioloop_http_server_free(server);
    ioloop_runtime_free(rt); /* the clients' on_close run here, on this thread */
    free(rooms);
    return 0;
}
