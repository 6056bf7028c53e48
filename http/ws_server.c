/* ws_server.c — the server side of the WebSocket handshake (RFC 6455 4.2):
 * ioloop_http_websocket_route, the checks of the upgrade request (400, 403,
 * 405, 426), the subprotocol and origin hooks, permessage-deflate's
 * negotiation, Sec-WebSocket-Accept (SHA-1 and base64 from libcrypto), the
 * 101, and the hand-off of the connection's stream (conn.c's upgrade).
 *
 * Threading rule: routes are added before serving (read-only afterwards);
 * the handshake runs on the connection's loop thread.
 */
#define _GNU_SOURCE
#include "internal.h"
#include "ws_internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

struct ws_route {
    ioloop_websocket_route_t route;
    struct ws_route *next;
};

/* Does a comma-separated header value hold token (case-insensitive)? */
static bool has_token(const char *value, const char *token)
{
    size_t tl = strlen(token);
    for (const char *p = value; p && *p;) {
        while (*p == ' ' || *p == '\t' || *p == ',')
            p++;
        const char *e = p;
        while (*e && *e != ',')
            e++;
        const char *t = e;
        while (t > p && (t[-1] == ' ' || t[-1] == '\t'))
            t--;
        if ((size_t)(t - p) == tl && strncasecmp(p, token, tl) == 0)
            return true;
        p = e;
    }
    return false;
}

/* A key is base64 of 16 bytes: 22 characters of the alphabet and "==". */
static bool valid_key(const char *key)
{
    if (!key || strlen(key) != 24 || key[22] != '=' || key[23] != '=')
        return false;
    for (int i = 0; i < 22; i++) {
        char ch = key[i];
        if (!((ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '+' ||
              ch == '/'))
            return false;
    }
    return true;
}

/* Tornado's check_origin: the Origin's host[:port] must equal Host. */
static bool same_origin(ioloop_http_request_t *req, const char *origin)
{
    const char *host = ioloop_http_request_host(req);
    const char *p = strstr(origin, "://");
    if (!p || !host)
        return false;
    p += 3;
    size_t n = strcspn(p, "/");
    return strlen(host) == n && strncasecmp(p, host, n) == 0;
}

static void refuse(ioloop_http_request_t *req, int status, const char *msg)
{
    if (status == 426)
        ioloop_http_response_header(req, "Sec-WebSocket-Version", "13");
    ioloop_http_response_send(req, status, "text/plain; charset=utf-8", msg, strlen(msg));
}

typedef struct {
    struct ws_route *wr;
    ioloop__ws_deflate_t deflate;
    const char *subprotocol;
    const char *extensions;
} upgrade_t;

static void take_stream(ioloop_stream_t *stream, ioloop_http_request_t *req, void *arg)
{
    upgrade_t *up = arg;
    const ioloop_websocket_route_t *r = &up->wr->route;
    ioloop_websocket_t *ws;
    if (ioloop__ws_new(stream, true, &r->options, &r->handlers, r->arg, &up->deflate, up->subprotocol, up->extensions,
                       &ws) != 0)
        return;
    http_worker_t *w = req->w;
    ioloop__ws_list_add(&w->websockets, ws); /* the server's drain closes it (1001) and waits for it */
    if (r->handlers.on_open)
        r->handlers.on_open(ws, req, r->arg);
    ioloop__ws_start(ws);
    if (w->draining) /* upgraded as the drain began */
        ioloop__ws_list_close_all(&w->websockets, IOLOOP_WS_CLOSE_GOING_AWAY, "server shutting down");
}

static void ws_get(ioloop_http_request_t *req, void *arg)
{
    struct ws_route *wr = arg;
    const ioloop_websocket_route_t *r = &wr->route;
    const char *upgrade = ioloop_http_request_header(req, "Upgrade");
    const char *connection = ioloop_http_request_header(req, "Connection");
    const char *version = ioloop_http_request_header(req, "Sec-WebSocket-Version");
    const char *key = ioloop_http_request_header(req, "Sec-WebSocket-Key");
    if (strcmp(ioloop_http_request_method(req), "GET") != 0 ||
        strcmp(ioloop_http_request_version(req), "HTTP/1.1") != 0 || !upgrade || !has_token(upgrade, "websocket")) {
        refuse(req, 400, "Can \"Upgrade\" only to \"WebSocket\".\n");
        return;
    }
    if (!connection || !has_token(connection, "upgrade")) {
        refuse(req, 400, "\"Connection\" must be \"Upgrade\".\n");
        return;
    }
    if (!version || strcmp(version, "13") != 0) {
        refuse(req, 426, "Unsupported WebSocket version: Sec-WebSocket-Version 13 only.\n");
        return;
    }
    if (!valid_key(key)) {
        refuse(req, 400, "Missing or invalid Sec-WebSocket-Key.\n");
        return;
    }
    const char *origin = ioloop_http_request_header(req, "Origin");
    if (r->check_origin ? !r->check_origin(req, origin, r->arg) : (origin && !same_origin(req, origin))) {
        refuse(req, 403, "Cross origin websockets not allowed\n");
        return;
    }
    upgrade_t up = {.wr = wr};
    /* Subprotocols: every Sec-WebSocket-Protocol line, split at commas. */
    char protos_buf[1024];
    const char *offered[32];
    int noffered = 0;
    size_t used = 0;
    const char *name, *value;
    for (int i = 0; ioloop_http_request_header_at(req, i, &name, &value) == 0; i++) {
        if (strcasecmp(name, "Sec-WebSocket-Protocol") != 0)
            continue;
        for (const char *p = value; *p && noffered < 32;) {
            while (*p == ' ' || *p == '\t' || *p == ',')
                p++;
            size_t n = strcspn(p, ", \t");
            if (n && used + n + 1 <= sizeof(protos_buf)) {
                memcpy(protos_buf + used, p, n);
                protos_buf[used + n] = '\0';
                offered[noffered++] = protos_buf + used;
                used += n + 1;
            }
            p += n;
        }
    }
    if (noffered && r->select_subprotocol) {
        const char *chosen = r->select_subprotocol(req, offered, noffered, r->arg);
        for (int i = 0; chosen && i < noffered; i++)
            if (strcmp(chosen, offered[i]) == 0)
                up.subprotocol = offered[i];
    }
    char ext[160];
    for (int i = 0; ioloop_http_request_header_at(req, i, &name, &value) == 0; i++) {
        if (strcasecmp(name, "Sec-WebSocket-Extensions") == 0 &&
            ioloop__ws_deflate_accept(value, &r->options, &up.deflate, ext, sizeof(ext))) {
            up.extensions = ext;
            break;
        }
    }
    char accept[29];
    if (ioloop__ws_accept_key(key, strlen(key), accept) != 0) {
        refuse(req, 400, "Missing or invalid Sec-WebSocket-Key.\n");
        return;
    }
    char head[1536];
    int n = snprintf(head, sizeof(head),
                     "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Accept: %s\r\n%s%s%s%s%s%s\r\n",
                     accept, up.subprotocol ? "Sec-WebSocket-Protocol: " : "", up.subprotocol ? up.subprotocol : "",
                     up.subprotocol ? "\r\n" : "", up.extensions ? "Sec-WebSocket-Extensions: " : "",
                     up.extensions ? up.extensions : "", up.extensions ? "\r\n" : "");
    if (n < 0 || (size_t)n >= sizeof(head)) {
        refuse(req, 400, "Handshake too large.\n");
        return;
    }
    ioloop__http_conn_upgrade(req, head, (size_t)n, take_stream, &up);
}

int ioloop_http_websocket_route(ioloop_http_server_t *s, const char *pattern, const ioloop_websocket_route_t *route)
{
    if (!s || !pattern || !route)
        return -EINVAL;
    struct ws_route *wr = calloc(1, sizeof(*wr));
    if (!wr)
        return -ENOMEM;
    wr->route = *route;
    ioloop_http_route_t hr = {.get = ws_get, .arg = wr};
    int err = ioloop_http_server_route(s, pattern, &hr);
    if (err) {
        free(wr);
        return err;
    }
    wr->next = s->ws_routes;
    s->ws_routes = wr;
    return 0;
}

void ioloop__http_ws_routes_free(ioloop_http_server_t *s)
{
    while (s->ws_routes) {
        struct ws_route *wr = s->ws_routes;
        s->ws_routes = wr->next;
        free(wr);
    }
}
