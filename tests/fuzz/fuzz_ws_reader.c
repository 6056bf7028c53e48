/* fuzz_ws_reader.c — libFuzzer target: the WebSocket frame header parser and
 * the frame reader (http/ws_frame.c, ws_reader.c, ws_deflate.c): frames in,
 * messages out, with fragments, masks, control frames, UTF-8 and
 * permessage-deflate.
 *
 * Threading rule: the fuzzer's thread; the reader touches no loop.
 *
 * Input: the first byte picks the side (bit 0: server, so frames must be
 * masked), permessage-deflate (bit 1; bit 2: the peer resets its context per
 * message) and the slice size (bits 3-7, 0: all at once); the rest is the
 * peer's bytes, fed as a stream would (the unconsumed tail goes again with the
 * next slice). Checks beyond the sanitizers: a header is 2..14 bytes; feed
 * never claims more than it was given; a failure carries a close code
 * (1002, 1007, 1009, 1011) and a reason; a message is at most
 * max_message_size, a TEXT one is valid UTF-8 (checked here independently),
 * a control frame at most 125 bytes.
 */
#define _GNU_SOURCE
#include "ws_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_CHECK(cond)                                                                                               \
    do {                                                                                                               \
        if (!(cond)) {                                                                                                 \
            fprintf(stderr, "fuzz_ws_reader: %s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);                   \
            abort();                                                                                                   \
        }                                                                                                              \
    } while (0)

enum { MAX_MESSAGE = 65536 };

/* RFC 3629 UTF-8, written apart from the reader's own validator. */
static bool utf8_valid(const uint8_t *s, size_t n)
{
    for (size_t i = 0; i < n;) {
        uint8_t c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t need;
        uint32_t cp;
        if (c >= 0xc2 && c <= 0xdf)
            need = 1, cp = c & 0x1f;
        else if (c >= 0xe0 && c <= 0xef)
            need = 2, cp = c & 0x0f;
        else if (c >= 0xf0 && c <= 0xf4)
            need = 3, cp = c & 0x07;
        else
            return false;
        if (n - i <= need)
            return false;
        for (size_t k = 1; k <= need; k++) {
            if ((s[i + k] & 0xc0) != 0x80)
                return false;
            cp = (cp << 6) | (s[i + k] & 0x3f);
        }
        if ((need == 2 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) ||
            (need == 3 && (cp < 0x10000 || cp > 0x10ffff)))
            return false;
        i += need + 1;
    }
    return true;
}

static int on_event(void *arg, int opcode, const uint8_t *msg, size_t len)
{
    (void)arg;
    switch (opcode) {
    case IOLOOP_WS_TEXT:
        FUZZ_CHECK(len <= MAX_MESSAGE && utf8_valid(msg, len));
        break;
    case IOLOOP_WS_BINARY:
        FUZZ_CHECK(len <= MAX_MESSAGE);
        break;
    case IOLOOP_WS_CLOSE:
        FUZZ_CHECK(len <= 125 && len != 1 && ioloop__ws_check_close(msg, len) == 0);
        break;
    case IOLOOP_WS_PING:
    case IOLOOP_WS_PONG:
        FUZZ_CHECK(len <= 125);
        break;
    default:
        FUZZ_CHECK(!"an opcode the reader must not hand out");
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    bool server = data[0] & 1, deflate_on = data[0] & 2;
    size_t slice = data[0] >> 3;
    const uint8_t *p = data + 1;
    size_t left = size - 1;

    ioloop__ws_frame_t frame;
    ssize_t h = ioloop__ws_frame_parse(p, left, &frame);
    FUZZ_CHECK(h == -1 || h == 0 || (h >= 2 && h <= 14 && (size_t)h <= left));
    if (h > 0)
        FUZZ_CHECK(frame.opcode <= 15 && frame.payload_len < ((uint64_t)1 << 63));

    ioloop__ws_deflate_t deflate = {
        .enabled = true, .our_window_bits = 15, .level = 6, .peer_no_context_takeover = data[0] & 4};
    ioloop__ws_reader_t r;
    ioloop__ws_reader_init(&r, server, MAX_MESSAGE, deflate_on ? &deflate : NULL);
    uint8_t *pend = malloc(left + 1);
    size_t pend_len = 0;
    while (pend && left > 0) {
        size_t len = slice && slice < left ? slice : left;
        memcpy(pend + pend_len, p, len);
        pend_len += len;
        p += len;
        left -= len;
        ssize_t n = ioloop__ws_reader_feed(&r, pend, pend_len, on_event, NULL);
        if (n < 0) {
            FUZZ_CHECK(n == -1 && r.reason != NULL);
            FUZZ_CHECK(r.error == 1002 || r.error == 1007 || r.error == 1009 || r.error == 1011);
            FUZZ_CHECK(ioloop__ws_reader_feed(&r, pend, pend_len, on_event, NULL) == -1);
            break;
        }
        FUZZ_CHECK((size_t)n <= pend_len);
        memmove(pend, pend + n, pend_len - (size_t)n);
        pend_len -= (size_t)n;
    }
    free(pend);
    ioloop__ws_reader_free(&r);
    ioloop__ws_deflate_free(&deflate);
    return 0;
}
