/* ws_internal.h — the WebSocket pieces shared by the http/ws_*.c files: the
 * frame reader (a pure function of the bytes: fuzzed), permessage-deflate
 * state and negotiation, and the connection object.
 *
 * Threading rule: a reader, a deflate state and a websocket belong to one
 * loop thread (the reader itself touches no loop at all).
 */
#ifndef IOLOOP_HTTP_WS_INTERNAL_H
#define IOLOOP_HTTP_WS_INTERNAL_H

#include "ioloop/websocket.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <zlib.h>

/* ---- frame header (ws_frame.c) -------------------------------------------- */

typedef struct {
    bool fin;
    uint8_t rsv;    /* the three reserved bits, as in the byte (0x40 RSV1, 0x20, 0x10) */
    uint8_t opcode; /* 0..15 */
    bool masked;
    uint8_t mask[4];
    uint64_t payload_len;
} ioloop__ws_frame_t;

/* Parses one frame header from buf[0..len): the header's length (2..14) and
 * *out, 0 when more bytes are needed, or -1 for a length that is not minimal
 * or has the top bit set (RFC 6455 5.2: a protocol error). Pure. */
ssize_t ioloop__ws_frame_parse(const void *buf, size_t len, ioloop__ws_frame_t *out);

/* Writes a frame header into out (at least 14 bytes): its length. A masked
 * header carries mask. */
size_t ioloop__ws_frame_header(uint8_t out[14], bool fin, uint8_t rsv, uint8_t opcode, uint64_t len,
                               const uint8_t *mask);

/* XORs len bytes of src into dst with mask, starting at mask offset `off`. */
void ioloop__ws_mask(uint8_t *dst, const uint8_t *src, size_t len, const uint8_t mask[4], size_t off);

/* Incremental UTF-8 validation (RFC 3629: no overlongs, surrogates or code
 * points past U+10FFFF). state 0 is "between characters". */
typedef struct {
    uint8_t need, lo, hi;
} ioloop__ws_utf8_t;
/* false at the first invalid byte. */
bool ioloop__ws_utf8_feed(ioloop__ws_utf8_t *st, const uint8_t *p, size_t len);

/* ---- permessage-deflate (ws_deflate.c) ------------------------------------- */

typedef struct {
    bool enabled;
    bool our_no_context_takeover;  /* our deflater resets after each message */
    bool peer_no_context_takeover; /* the peer's: our inflater resets after each message */
    int our_window_bits;           /* 9..15 */
    int level;
    z_stream deflater, inflater;
    bool deflater_ready, inflater_ready;
} ioloop__ws_deflate_t;

/* Server: reads a client's Sec-WebSocket-Extensions offers and accepts the
 * first permessage-deflate offer it can honour: fills *d (not yet
 * initialised streams) and the response value into out (size cap). true if
 * one was accepted. Pure. */
bool ioloop__ws_deflate_accept(const char *offers, const ioloop_websocket_options_t *opts, ioloop__ws_deflate_t *d,
                               char *out, size_t cap);
/* Client: the offer to send (into out). */
void ioloop__ws_deflate_offer(const ioloop_websocket_options_t *opts, char *out, size_t cap);
/* Client: reads the server's answer to our offer; 0 (d filled) or -EPROTO for
 * an answer we did not offer or cannot honour. Pure. */
int ioloop__ws_deflate_response(const char *value, const ioloop_websocket_options_t *opts, ioloop__ws_deflate_t *d);
/* Compresses one whole message into *out (grown with realloc, *cap): the
 * payload to send with RSV1 (the 00 00 ff ff tail removed). 0 or -ENOMEM/-EIO. */
int ioloop__ws_deflate_message(ioloop__ws_deflate_t *d, const void *data, size_t len, uint8_t **out, size_t *cap,
                               size_t *out_len);
/* Frees the zlib streams. */
void ioloop__ws_deflate_free(ioloop__ws_deflate_t *d);

/* ---- the frame reader (ws_reader.c): bytes in, messages out --------------- */

/* What the reader hands out: a whole data message (TEXT/BINARY, validated and
 * inflated) or a control frame (PING, PONG, CLOSE: for CLOSE, code and reason
 * already checked). data is valid during the call. Return 0 to go on, non-zero
 * to stop the feed there (the application closed the websocket). */
typedef int (*ioloop__ws_event_fn)(void *arg, int opcode, const uint8_t *data, size_t len);

typedef struct {
    /* configuration */
    bool server;                   /* frames must be masked (else: must not be) */
    size_t max_message_size;       /* > 0 */
    ioloop__ws_deflate_t *deflate; /* NULL, or negotiated: RSV1 allowed on a message's first frame */
    /* frame in progress */
    bool in_frame;
    ioloop__ws_frame_t frame;
    uint64_t frame_left; /* payload bytes of a data frame not yet read */
    uint64_t frame_off;  /* payload bytes read (the mask offset) */
    /* message in progress */
    bool in_message;
    uint8_t msg_opcode;
    bool msg_compressed;
    uint64_t msg_zbytes; /* compressed bytes of this message so far */
    ioloop__ws_utf8_t utf8;
    uint8_t *msg;
    size_t msg_len, msg_cap;
    /* the error: a close code (1002, 1007, 1009) and why, once failed */
    int error;
    const char *reason;
} ioloop__ws_reader_t;

/* Sets up a reader (no allocation until a message arrives). */
void ioloop__ws_reader_init(ioloop__ws_reader_t *r, bool server, size_t max_message_size,
                            ioloop__ws_deflate_t *deflate);
/* Feeds bytes: consumes what it can (a partial header stays for the next
 * call: the caller keeps the unconsumed rest and passes it again with what
 * follows) and calls ev for each message or control frame. Returns the bytes
 * consumed, or -1 once the stream is invalid (r->error and r->reason say
 * why; every later feed returns -1). Pure (no I/O, no loop). */
ssize_t ioloop__ws_reader_feed(ioloop__ws_reader_t *r, const void *data, size_t len, ioloop__ws_event_fn ev, void *arg);
/* Frees the message buffer. */
void ioloop__ws_reader_free(ioloop__ws_reader_t *r);

/* A close payload's validity: 0, or the close code to fail with (1002 for a
 * bad length or code, 1007 for a reason that is not UTF-8). Pure. */
int ioloop__ws_check_close(const uint8_t *data, size_t len);

/* ---- the connection (ws_conn.c) ------------------------------------------- */

/* Takes stream (already upgraded: the handshake's bytes are out, leftover
 * input is the websocket's) and makes the websocket. deflate is copied.
 * subprotocol and extensions are copied. 0 and *out, or -ENOMEM (the stream
 * is closed). on_open is not called here. */
int ioloop__ws_new(ioloop_stream_t *stream, bool server, const ioloop_websocket_options_t *opts,
                   const ioloop_websocket_handlers_t *handlers, void *arg, const ioloop__ws_deflate_t *deflate,
                   const char *subprotocol, const char *extensions, ioloop_websocket_t **out);
/* Starts reading (after on_open). */
void ioloop__ws_start(ioloop_websocket_t *ws);

/* The websockets a server holds on one loop (its worker's), so a drain can
 * close them (1001) and wait for them. A websocket leaves its list when it
 * ends, then calls gone(list). */
typedef struct ioloop__ws_list {
    ioloop_websocket_t *head;
    int count;
    void (*gone)(struct ioloop__ws_list *list);
} ioloop__ws_list_t;
void ioloop__ws_list_add(ioloop__ws_list_t *list, ioloop_websocket_t *ws);
/* Starts the close handshake of every websocket on the list (code, reason). */
void ioloop__ws_list_close_all(ioloop__ws_list_t *list, int code, const char *reason);
/* Ends every websocket on the list now (their on_close follows, 1006). */
void ioloop__ws_list_abort_all(ioloop__ws_list_t *list);
/* The list's owner goes away: the websockets go on, on no list. */
void ioloop__ws_list_forget(ioloop__ws_list_t *list);

/* Sec-WebSocket-Accept for key (28 chars and a NUL). 0 or -EINVAL. */
int ioloop__ws_accept_key(const char *key, size_t key_len, char out[29]);
/* Random bytes for keys and masks: a per-thread xoshiro PRNG seeded from getrandom. */
void ioloop__ws_random(void *out, size_t len);

#endif
