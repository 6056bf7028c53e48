/* websocket.h — WebSocket (RFC 6455) with permessage-deflate (RFC 7692):
 * Tornado's WebSocketHandler and websocket_connect in C, on ioloop streams.
 *
 * Server: ioloop_http_websocket_route adds a route whose GET upgrades (the
 * handshake checked, 400/403/426 otherwise); the connection's stream then
 * leaves the HTTP server and belongs to the websocket. Client:
 * ioloop_websocket_connect (ws:// and wss://). Either side gets the same
 * ioloop_websocket_t: send, close, and the handlers below.
 *
 * Threading rule: a websocket belongs to the loop of its stream; every call
 * is for that loop's thread (send and close return -EPERM elsewhere, pause
 * and resume do nothing) and every handler runs there. Another loop posts
 * (ioloop_add_callback to ioloop_websocket_loop(ws)) and sends from there.
 *
 * Life cycle: on_open, then on_message for each message, then on_close
 * exactly once (after the close handshake, a protocol error, a timeout or the
 * peer going away); the pointer is invalid once on_close has returned.
 *
 * Errors: 0 or a negative errno.
 */
#ifndef IOLOOP_WEBSOCKET_H
#define IOLOOP_WEBSOCKET_H

#include "ioloop/http.h"
#include "ioloop/ioloop.h"
#include "ioloop/stream.h"

#include <stdbool.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct ioloop_websocket ioloop_websocket_t;
struct ioloop_tls_context;

/* Opcodes (RFC 6455 5.2). */
enum {
    IOLOOP_WS_TEXT = 0x1,
    IOLOOP_WS_BINARY = 0x2,
    IOLOOP_WS_CLOSE = 0x8,
    IOLOOP_WS_PING = 0x9,
    IOLOOP_WS_PONG = 0xA,
};

/* Close codes (RFC 6455 7.4.1). */
enum {
    IOLOOP_WS_CLOSE_NORMAL = 1000,
    IOLOOP_WS_CLOSE_GOING_AWAY = 1001,
    IOLOOP_WS_CLOSE_PROTOCOL_ERROR = 1002,
    IOLOOP_WS_CLOSE_UNSUPPORTED = 1003,
    IOLOOP_WS_CLOSE_NO_STATUS = 1005, /* the peer's close frame had no code (never sent) */
    IOLOOP_WS_CLOSE_ABNORMAL = 1006,  /* no close frame: the connection dropped or timed out (never sent) */
    IOLOOP_WS_CLOSE_INVALID_DATA = 1007,
    IOLOOP_WS_CLOSE_POLICY = 1008,
    IOLOOP_WS_CLOSE_TOO_BIG = 1009,
    IOLOOP_WS_CLOSE_INTERNAL = 1011,
};

typedef struct {
    /* The websocket is open (server: after the 101 was queued; req is the
     * upgrade request, valid only during the call: headers, path arguments;
     * client: NULL, the connect callback ran just before). */
    void (*on_open)(ioloop_websocket_t *ws, ioloop_http_request_t *req, void *arg);
    /* A whole message (fragments reassembled, inflated, text validated as
     * UTF-8). data is valid only during the call; it is NUL-terminated. */
    void (*on_message)(ioloop_websocket_t *ws, int opcode, const char *data, size_t len, void *arg);
    /* Exactly once, at the end: the peer's close code (IOLOOP_WS_CLOSE_NO_STATUS
     * if its close frame had none), else the code we closed with for a
     * protocol error (1002, 1007, 1009), else IOLOOP_WS_CLOSE_ABNORMAL. reason
     * is the peer's (len bytes, NUL-terminated), "" otherwise. */
    void (*on_close)(ioloop_websocket_t *ws, int code, const char *reason, size_t len, void *arg);
    /* The output drained after it reached its mark (or a send was refused
     * with -ENOBUFS): send more now (and resume reading, if paused for it).
     * NULL: none. */
    void (*on_drain)(ioloop_websocket_t *ws, void *arg);
    /* A pong arrived (ours to a keep-alive ping, or unsolicited). NULL: none. */
    void (*on_pong)(ioloop_websocket_t *ws, const char *data, size_t len, void *arg);
} ioloop_websocket_handlers_t;

/* Options; zero means the default. */
typedef struct {
    size_t max_message_size;      /* 0: 10 MiB (Tornado's). Larger (also once inflated): close 1009 */
    ioloop_time_t ping_interval;  /* keep-alive pings this often; 0: none */
    ioloop_time_t ping_timeout;   /* no pong within this after a ping: the connection is dropped
                                     (on_close 1006); 0: ping_interval */
    ioloop_time_t close_timeout;  /* the close handshake (and a failing peer) within this; 0: 5 s */
    bool compression;             /* permessage-deflate: the client offers it, the server accepts an offer */
    bool no_context_takeover;     /* our deflater starts afresh with each message (less memory, worse
                                     ratio); the server also grants a client's request for this */
    int compression_level;        /* 1..9; 0: 6 */
    int max_window_bits;          /* our deflater's window, 9..15; 0: 15 (server_max_window_bits / offered) */
    size_t max_write_buffer_size; /* client only (the server uses its HTTP streams' mark, 256 KiB):
                                     at or above it sends are refused with -ENOBUFS; 0: 1 MiB */
} ioloop_websocket_options_t;

/* ---- server -------------------------------------------------------------- */

typedef struct {
    ioloop_websocket_handlers_t handlers;
    ioloop_websocket_options_t options;
    /* Picks a subprotocol among the client's Sec-WebSocket-Protocol list
     * (offered[0..n), in its order): return one of them, or NULL for none.
     * NULL hook: no subprotocol. */
    const char *(*select_subprotocol)(ioloop_http_request_t *req, const char *const *offered, int n, void *arg);
    /* Accepts or refuses (403) the handshake's Origin (NULL when the request
     * has none). NULL hook: Tornado's rule, the Origin's host must equal the
     * Host header (a request without Origin, a non-browser client, passes). */
    bool (*check_origin)(ioloop_http_request_t *req, const char *origin, void *arg);
    void *arg; /* every handler's and hook's arg */
} ioloop_websocket_route_t;

/* Adds a route (pattern as ioloop_http_server_route) whose GET is a
 * WebSocket handshake: method GET (405 otherwise), HTTP/1.1, Upgrade:
 * websocket, Connection: upgrade, a 16-byte base64 Sec-WebSocket-Key (400
 * otherwise), Sec-WebSocket-Version 13 (426 with the version we speak
 * otherwise), the origin hook (403). Then 101 with Sec-WebSocket-Accept, the
 * chosen subprotocol and extension, and the connection is the websocket's.
 * It still counts in ioloop_http_server_connections, and a drain (or
 * ioloop_http_server_shutdown) closes it with 1001 "server shutting down"
 * and waits for the close handshake, until the drain's timeout ends it.
 * Configure before serving. 0, or ioloop_http_server_route's error. */
IOLOOP_API int ioloop_http_websocket_route(ioloop_http_server_t *s, const char *pattern,
                                           const ioloop_websocket_route_t *route);

/* ---- client -------------------------------------------------------------- */

typedef struct {
    ioloop_websocket_handlers_t handlers;
    ioloop_websocket_options_t options;
    const char *const *subprotocols; /* offered, in preference order; nsubprotocols of them */
    int nsubprotocols;
    const char *origin;             /* sent as Origin; NULL: none */
    const char *const *headers;     /* extra header lines "Name: value", NULL-terminated list */
    struct ioloop_tls_context *tls; /* wss://: NULL is a verifying client context on the system's
                                       roots (built once per process) */
    ioloop_time_t connect_timeout;  /* connect, TLS and the handshake; 0: 20 s */
    void *arg;                      /* the handlers' arg */
} ioloop_websocket_connect_options_t;

/* The connect result: status 0 and an open websocket, or a negative errno
 * (the connect's, -EPROTO for a handshake that is not a valid 101: wrong
 * status, Upgrade, Connection or Sec-WebSocket-Accept, an extension or
 * subprotocol not offered; -ETIMEDOUT). Runs once; on success on_open follows. */
typedef void (*ioloop_websocket_connect_fn)(ioloop_t *loop, int status, ioloop_websocket_t *ws, void *arg);

/* Connects to url ("ws://host[:port]/path?query", "wss://...", IPv6 as
 * "[::1]"). Loop thread. 0 (cb runs later), or -EINVAL (a bad URL or
 * options), -ENOTSUP (wss:// in a build without TLS), -ENOMEM, -EPERM. */
IOLOOP_API int ioloop_websocket_connect(ioloop_t *loop, const char *url, const ioloop_websocket_connect_options_t *opts,
                                        ioloop_websocket_connect_fn cb, void *arg);

/* ---- either side ------------------------------------------------------------ */

/* Sends one message (IOLOOP_WS_TEXT, IOLOOP_WS_BINARY) or control frame
 * (IOLOOP_WS_PING, IOLOOP_WS_PONG: at most 125 bytes), compressed when
 * permessage-deflate was negotiated (data messages only). The bytes are
 * copied. 0; -ENOBUFS when the output is at or above its mark (nothing
 * queued: on_drain tells when to try again; one send may take it past the
 * mark); -EPIPE once closing or closed; -EINVAL (an opcode or size not
 * allowed); -ENOMEM. Loop thread (-EPERM otherwise). */
IOLOOP_API int ioloop_websocket_send(ioloop_websocket_t *ws, int opcode, const void *data, size_t len);

/* Starts the close handshake with code (1000..4999 except 1004..1006, 1015;
 * 0: a close frame without code) and a reason of at most 123 bytes. Messages
 * still arriving are dropped; on_close follows once the peer answered (or
 * close_timeout passed). 0, -EALREADY if already closing, -EINVAL. */
IOLOOP_API int ioloop_websocket_close(ioloop_websocket_t *ws, int code, const char *reason, size_t len);

/* True while a send would be accepted (the output is below its mark). */
IOLOOP_API bool ioloop_websocket_writable(const ioloop_websocket_t *ws);
/* Stops reading messages (flow control: an echo or a relay whose output is
 * at its mark waits for on_drain), and resumes. Pings are not answered
 * while paused. Idempotent. */
IOLOOP_API void ioloop_websocket_pause(ioloop_websocket_t *ws);
IOLOOP_API void ioloop_websocket_resume(ioloop_websocket_t *ws);
/* Bytes queued to the peer and not yet taken by the kernel. */
IOLOOP_API size_t ioloop_websocket_buffered(const ioloop_websocket_t *ws);
/* The loop the websocket belongs to (any thread). */
IOLOOP_API ioloop_t *ioloop_websocket_loop(const ioloop_websocket_t *ws);
/* The negotiated subprotocol, or NULL. */
IOLOOP_API const char *ioloop_websocket_subprotocol(const ioloop_websocket_t *ws);
/* The negotiated Sec-WebSocket-Extensions value ("permessage-deflate; ..."), or NULL. */
IOLOOP_API const char *ioloop_websocket_extensions(const ioloop_websocket_t *ws);
/* One pointer for the application (per connection state). */
IOLOOP_API void ioloop_websocket_set_user_data(ioloop_websocket_t *ws, void *data);
IOLOOP_API void *ioloop_websocket_user_data(const ioloop_websocket_t *ws);

#ifdef __cplusplus
}
#endif
#endif
