/* ws_reader.c — the WebSocket frame reader: bytes in, whole messages and
 * control frames out (RFC 6455 5, RFC 7692 for RSV1 and inflate). A pure
 * state machine: no loop, no I/O, so the connection and the fuzzer drive it
 * the same way.
 *
 * Data frames are consumed as their payload arrives (unmasked, inflated and
 * UTF-8 checked chunk by chunk into the message buffer), so the input buffer
 * never has to hold a whole frame and a failure is found at the first bad
 * byte (Autobahn's "fail fast"). Control frames (<= 125 bytes) are handed out
 * only once whole. The message buffer is bounded by max_message_size, also
 * for inflated output (a zip bomb stops at the limit: 1009).
 *
 * Threading rule: a reader belongs to its caller's thread.
 */
#include "ws_internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* Single-frame messages up to this size, wholly in the input, skip the
 * connection's message buffer (a per-thread one serves every connection). */
#define WS_FAST_MAX 16384

void ioloop__ws_reader_init(ioloop__ws_reader_t *r, bool server, size_t max_message_size, ioloop__ws_deflate_t *deflate)
{
    memset(r, 0, sizeof(*r));
    r->server = server;
    r->max_message_size = max_message_size ? max_message_size : 10u << 20;
    r->deflate = deflate && deflate->enabled ? deflate : NULL;
}

void ioloop__ws_reader_free(ioloop__ws_reader_t *r)
{
    free(r->msg);
    r->msg = NULL;
    r->msg_len = r->msg_cap = 0;
}

static ssize_t fail(ioloop__ws_reader_t *r, int code, const char *reason)
{
    r->error = code;
    r->reason = reason;
    return -1;
}

/* Room for `want` more bytes in the message buffer, never beyond the limit
 * plus one (the byte that proves it was exceeded). The room obtained. */
static size_t msg_room(ioloop__ws_reader_t *r, size_t want)
{
    size_t limit = r->max_message_size + 1;
    if (r->msg_cap - r->msg_len >= want || r->msg_cap >= limit)
        return r->msg_cap - r->msg_len;
    size_t cap = r->msg_cap ? r->msg_cap : 4096;
    while (cap - r->msg_len < want && cap < limit)
        cap *= 2;
    if (cap > limit)
        cap = limit;
    uint8_t *p = realloc(r->msg, cap + 1); /* + the NUL handed out after the message */
    if (!p)
        return r->msg_cap - r->msg_len;
    r->msg = p;
    r->msg_cap = cap;
    return r->msg_cap - r->msg_len;
}

static int check_text(ioloop__ws_reader_t *r, const uint8_t *p, size_t n)
{
    if (r->msg_opcode == IOLOOP_WS_TEXT && !ioloop__ws_utf8_feed(&r->utf8, p, n))
        return -1;
    return 0;
}

/* Inflates n bytes (already unmasked) into the message. */
static ssize_t inflate_into(ioloop__ws_reader_t *r, const uint8_t *in, size_t n)
{
    z_stream *z = &r->deflate->inflater;
    if (!r->deflate->inflater_ready) {
        memset(z, 0, sizeof(*z));
        if (inflateInit2(z, -15) != Z_OK)
            return fail(r, IOLOOP_WS_CLOSE_INTERNAL, "out of memory");
        r->deflate->inflater_ready = true;
    }
    z->next_in = (Bytef *)in;
    z->avail_in = (uInt)n;
    for (;;) {
        size_t room = msg_room(r, n * 4 + 4096);
        if (room == 0) {
            if (r->msg_len > r->max_message_size)
                return fail(r, IOLOOP_WS_CLOSE_TOO_BIG, "message too big");
            return fail(r, IOLOOP_WS_CLOSE_INTERNAL, "out of memory");
        }
        if (room > UINT32_MAX)
            room = UINT32_MAX;
        z->next_out = r->msg + r->msg_len;
        z->avail_out = (uInt)room;
        int rc = inflate(z, Z_SYNC_FLUSH);
        size_t produced = room - z->avail_out;
        if (check_text(r, r->msg + r->msg_len, produced) != 0)
            return fail(r, IOLOOP_WS_CLOSE_INVALID_DATA, "invalid UTF-8 in a text message");
        r->msg_len += produced;
        if (r->msg_len > r->max_message_size)
            return fail(r, IOLOOP_WS_CLOSE_TOO_BIG, "message too big");
        if (rc == Z_STREAM_END) {
            inflateReset(z); /* a final block (BFINAL) inside a message: go on with a fresh stream */
            if (z->avail_in == 0)
                return 0;
            continue;
        }
        if (rc == Z_BUF_ERROR || (rc == Z_OK && z->avail_in == 0 && z->avail_out != 0))
            return 0; /* all input taken, all output out */
        if (rc != Z_OK)
            return fail(r, IOLOOP_WS_CLOSE_INVALID_DATA, "invalid compressed data");
    }
}

/* A chunk of a data frame's payload. */
static ssize_t payload(ioloop__ws_reader_t *r, const uint8_t *p, size_t n)
{
    const uint8_t *mask = r->frame.masked ? r->frame.mask : NULL;
    if (r->msg_compressed) {
        r->msg_zbytes += n;
        if (!mask)
            return inflate_into(r, p, n);
        uint8_t tmp[4096];
        for (size_t done = 0; done < n;) {
            size_t k = n - done < sizeof(tmp) ? n - done : sizeof(tmp);
            ioloop__ws_mask(tmp, p + done, k, mask, (size_t)(r->frame_off + done));
            if (inflate_into(r, tmp, k) < 0)
                return -1;
            done += k;
        }
        return 0;
    }
    if (r->msg_len + n > r->max_message_size)
        return fail(r, IOLOOP_WS_CLOSE_TOO_BIG, "message too big");
    if (msg_room(r, n) < n)
        return fail(r, IOLOOP_WS_CLOSE_INTERNAL, "out of memory");
    uint8_t *dst = r->msg + r->msg_len;
    if (mask)
        ioloop__ws_mask(dst, p, n, mask, (size_t)r->frame_off);
    else
        memcpy(dst, p, n);
    if (check_text(r, dst, n) != 0)
        return fail(r, IOLOOP_WS_CLOSE_INVALID_DATA, "invalid UTF-8 in a text message");
    r->msg_len += n;
    return 0;
}

/* The last frame of a message is in: inflate's tail, the UTF-8 end, then out. */
static int message_done(ioloop__ws_reader_t *r, ioloop__ws_event_fn ev, void *arg)
{
    /* An empty payload is an empty message: the tail alone would not be a
     * valid block (a sender's sync flush with nothing new emits nothing). */
    if (r->msg_compressed && r->msg_zbytes) {
        static const uint8_t tail[4] = {0x00, 0x00, 0xff, 0xff};
        if (inflate_into(r, tail, sizeof(tail)) < 0)
            return -1;
        if (r->deflate->peer_no_context_takeover)
            inflateReset(&r->deflate->inflater);
    }
    if (r->msg_opcode == IOLOOP_WS_TEXT && r->utf8.need)
        return (int)fail(r, IOLOOP_WS_CLOSE_INVALID_DATA, "text message ends inside a UTF-8 sequence");
    static uint8_t empty[1]; /* a message with no byte before any buffer exists */
    r->in_message = false;
    size_t len = r->msg_len;
    r->msg_len = 0;
    if (r->msg)
        r->msg[len] = '\0'; /* the buffer has one byte beyond its cap for this */
    int stop = ev(arg, r->msg_opcode, r->msg ? r->msg : empty, len);
    /* A large message's buffer goes back; a small one stays for the next. */
    if (r->msg_cap > (256u << 10))
        ioloop__ws_reader_free(r);
    return stop ? 1 : 0;
}

ssize_t ioloop__ws_reader_feed(ioloop__ws_reader_t *r, const void *data, size_t len, ioloop__ws_event_fn ev, void *arg)
{
    const uint8_t *p = data;
    size_t used = 0;
    if (r->error)
        return -1;
    while (used < len || (r->in_frame && r->frame_left == 0)) {
        if (!r->in_frame) {
            ioloop__ws_frame_t f;
            ssize_t hl = ioloop__ws_frame_parse(p + used, len - used, &f);
            if (hl == 0)
                break;
            if (hl < 0)
                return fail(r, IOLOOP_WS_CLOSE_PROTOCOL_ERROR, "bad frame length");
            bool control = f.opcode & 0x8;
            if (f.opcode != 0 && f.opcode != IOLOOP_WS_TEXT && f.opcode != IOLOOP_WS_BINARY &&
                f.opcode != IOLOOP_WS_CLOSE && f.opcode != IOLOOP_WS_PING && f.opcode != IOLOOP_WS_PONG)
                return fail(r, IOLOOP_WS_CLOSE_PROTOCOL_ERROR, "reserved opcode");
            uint8_t allowed = r->deflate && !control && f.opcode != 0 ? 0x40 : 0;
            if (f.rsv & ~allowed)
                return fail(r, IOLOOP_WS_CLOSE_PROTOCOL_ERROR, "reserved bits set");
            if (f.masked != r->server)
                return fail(r, IOLOOP_WS_CLOSE_PROTOCOL_ERROR,
                            r->server ? "unmasked client frame" : "masked server frame");
            if (control) {
                if (!f.fin)
                    return fail(r, IOLOOP_WS_CLOSE_PROTOCOL_ERROR, "fragmented control frame");
                if (f.payload_len > 125)
                    return fail(r, IOLOOP_WS_CLOSE_PROTOCOL_ERROR, "control frame over 125 bytes");
                if (len - used < (size_t)hl + f.payload_len)
                    break; /* wait for all of it */
                uint8_t body[126];
                size_t n = (size_t)f.payload_len;
                if (f.masked)
                    ioloop__ws_mask(body, p + used + hl, n, f.mask, 0);
                else
                    memcpy(body, p + used + hl, n);
                body[n] = '\0';
                used += (size_t)hl + n;
                if (f.opcode == IOLOOP_WS_CLOSE) {
                    int bad = ioloop__ws_check_close(body, n);
                    if (bad)
                        return fail(r, bad,
                                    bad == IOLOOP_WS_CLOSE_PROTOCOL_ERROR ? "bad close frame"
                                                                          : "invalid UTF-8 in a close reason");
                }
                if (ev(arg, f.opcode, body, n))
                    return (ssize_t)used;
                continue;
            }
            if (f.opcode == 0 && !r->in_message)
                return fail(r, IOLOOP_WS_CLOSE_PROTOCOL_ERROR, "continuation frame without a message");
            if (f.opcode != 0 && r->in_message)
                return fail(r, IOLOOP_WS_CLOSE_PROTOCOL_ERROR, "new message inside a fragmented one");
            /* The common case: a small uncompressed message in one frame,
             * all of it here. It is unmasked into a per-thread buffer and
             * handed out from there, so an idle connection holds no message
             * buffer and a small message costs no copy into one. */
            if (f.fin && f.opcode != 0 && !(f.rsv & 0x40) && f.payload_len <= WS_FAST_MAX &&
                f.payload_len <= r->max_message_size && len - used >= (size_t)hl + f.payload_len) {
                static _Thread_local uint8_t fast[WS_FAST_MAX + 1];
                size_t n = (size_t)f.payload_len;
                if (f.masked)
                    ioloop__ws_mask(fast, p + used + hl, n, f.mask, 0);
                else if (n)
                    memcpy(fast, p + used + hl, n);
                fast[n] = '\0';
                ioloop__ws_utf8_t st = {0};
                if (f.opcode == IOLOOP_WS_TEXT && (!ioloop__ws_utf8_feed(&st, fast, n) || st.need))
                    return fail(r, IOLOOP_WS_CLOSE_INVALID_DATA, "invalid UTF-8 in a text message");
                used += (size_t)hl + n;
                if (ev(arg, f.opcode, fast, n))
                    return (ssize_t)used;
                continue;
            }
            if (f.opcode != 0) {
                r->in_message = true;
                r->msg_opcode = f.opcode;
                r->msg_compressed = (f.rsv & 0x40) != 0;
                r->msg_zbytes = 0;
                memset(&r->utf8, 0, sizeof(r->utf8));
                r->msg_len = 0;
            }
            if (!r->msg_compressed && r->msg_len + f.payload_len > r->max_message_size)
                return fail(r, IOLOOP_WS_CLOSE_TOO_BIG, "message too big");
            r->frame = f;
            r->in_frame = true;
            r->frame_left = f.payload_len;
            r->frame_off = 0;
            used += (size_t)hl;
        }
        if (r->frame_left) {
            size_t take = len - used < r->frame_left ? len - used : (size_t)r->frame_left;
            if (take == 0)
                break;
            if (payload(r, p + used, take) < 0)
                return -1;
            used += take;
            r->frame_left -= take;
            r->frame_off += take;
            if (r->frame_left)
                break;
        }
        r->in_frame = false;
        if (r->frame.fin) {
            int rc = message_done(r, ev, arg);
            if (rc < 0)
                return -1;
            if (rc > 0)
                return (ssize_t)used;
        }
    }
    return (ssize_t)used;
}
