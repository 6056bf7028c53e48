/* test_websocket_frames.c — the WebSocket frame reader, UTF-8 validation,
 * close payloads, permessage-deflate negotiation and compression, as pure
 * functions (http/ws_frame.c, ws_reader.c, ws_deflate.c are compiled into
 * this suite: internal symbols). Every invalid input is checked for the close
 * code RFC 6455 asks for; every valid one also fed a byte at a time.
 */
#include "test_util.h"
#include "ws_internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    int n;
    int opcode[16];
    size_t len[16];
    char data[16][512];
    uint64_t sum[16]; /* of every byte, position-weighted */
} events_t;

static int record(void *arg, int opcode, const uint8_t *data, size_t len)
{
    events_t *e = arg;
    if (e->n < 16) {
        e->opcode[e->n] = opcode;
        e->len[e->n] = len;
        memcpy(e->data[e->n], data, len < 511 ? len : 511);
        e->data[e->n][len < 511 ? len : 511] = '\0';
        for (size_t i = 0; i < len; i++)
            e->sum[e->n] += (uint64_t)data[i] * (i + 1);
        assert_int_equal(data[len], '\0'); /* messages are NUL-terminated */
    }
    e->n++;
    return 0;
}

/* Feeds all of buf in slices of `step` bytes, keeping the unconsumed tail as a stream would. */
static ssize_t feed_sliced(ioloop__ws_reader_t *r, const uint8_t *buf, size_t len, size_t step, events_t *e)
{
    uint8_t *pending = malloc(len + 1);
    size_t have = 0, off = 0;
    while (off < len) {
        size_t k = len - off < step ? len - off : step;
        memcpy(pending + have, buf + off, k);
        have += k;
        off += k;
        ssize_t used = ioloop__ws_reader_feed(r, pending, have, record, e);
        if (used < 0) {
            free(pending);
            return -1;
        }
        memmove(pending, pending + used, have - (size_t)used);
        have -= (size_t)used;
    }
    free(pending);
    return (ssize_t)have;
}

static size_t frame(uint8_t *out, bool fin, uint8_t rsv, uint8_t opcode, const void *data, size_t len, bool masked)
{
    static const uint8_t mask[4] = {0x37, 0xfa, 0x21, 0x3d};
    uint8_t hdr[14];
    size_t hl = ioloop__ws_frame_header(hdr, fin, rsv, opcode, len, masked ? mask : NULL);
    memcpy(out, hdr, hl);
    for (size_t i = 0; i < len; i++)
        out[hl + i] = ((const uint8_t *)data)[i] ^ (masked ? mask[i & 3] : 0);
    return hl + len;
}

static void test_rfc_examples(void **state)
{
    (void)state;
    /* RFC 6455 5.7: a masked "Hello" (client to server) and an unmasked one. */
    const uint8_t masked[] = {0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58};
    const uint8_t plain[] = {0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f};
    /* fragmented: "Hel" then "lo", an unmasked ping "Hello" in between */
    const uint8_t frag[] = {0x01, 0x03, 0x48, 0x65, 0x6c, 0x89, 0x05, 0x48,
                            0x65, 0x6c, 0x6c, 0x6f, 0x80, 0x02, 0x6c, 0x6f};
    for (size_t step = 1; step <= 16; step += 15) {
        ioloop__ws_reader_t r;
        events_t e = {0};
        ioloop__ws_reader_init(&r, true, 0, NULL);
        assert_int_equal(feed_sliced(&r, masked, sizeof(masked), step, &e), 0);
        assert_int_equal(e.n, 1);
        assert_int_equal(e.opcode[0], IOLOOP_WS_TEXT);
        assert_string_equal(e.data[0], "Hello");
        ioloop__ws_reader_free(&r);

        memset(&e, 0, sizeof(e));
        ioloop__ws_reader_init(&r, false, 0, NULL);
        assert_int_equal(feed_sliced(&r, plain, sizeof(plain), step, &e), 0);
        assert_int_equal(feed_sliced(&r, frag, sizeof(frag), step, &e), 0);
        assert_int_equal(e.n, 3);
        assert_string_equal(e.data[0], "Hello");
        assert_int_equal(e.opcode[1], IOLOOP_WS_PING); /* the control frame comes out first */
        assert_string_equal(e.data[1], "Hello");
        assert_int_equal(e.opcode[2], IOLOOP_WS_TEXT);
        assert_string_equal(e.data[2], "Hello");
        ioloop__ws_reader_free(&r);
    }
}

static void test_lengths(void **state)
{
    (void)state;
    size_t sizes[] = {0, 125, 126, 65535, 65536, 300000};
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        size_t n = sizes[i];
        uint8_t *payload = malloc(n + 1), *buf = malloc(n + 14);
        uint64_t sum = 0;
        for (size_t k = 0; k < n; k++) {
            payload[k] = (uint8_t)(k * 7);
            sum += (uint64_t)payload[k] * (k + 1);
        }
        size_t fl = frame(buf, true, 0, IOLOOP_WS_BINARY, payload, n, true);
        ioloop__ws_frame_t f;
        ssize_t hl = ioloop__ws_frame_parse(buf, fl, &f);
        assert_int_equal(hl, n < 126 ? 6 : n <= 65535 ? 8 : 14);
        assert_int_equal(f.payload_len, n);
        assert_int_equal(ioloop__ws_frame_parse(buf, (size_t)hl - 1, &f), 0); /* a partial header: more bytes */
        ioloop__ws_reader_t r;
        ioloop__ws_reader_init(&r, true, 0, NULL);
        events_t e = {0};
        assert_int_equal(feed_sliced(&r, buf, fl, 4093, &e), 0);
        assert_int_equal(e.n, 1);
        assert_int_equal(e.len[0], n);
        assert_true(e.sum[0] == sum);
        ioloop__ws_reader_free(&r);
        free(payload);
        free(buf);
    }
    /* non-minimal lengths and the 64-bit top bit are protocol errors */
    const uint8_t nonmin16[] = {0x82, 0xfe, 0x00, 0x05};
    const uint8_t nonmin64[] = {0x82, 0xff, 0, 0, 0, 0, 0, 0, 0x01, 0x00};
    const uint8_t topbit[] = {0x82, 0xff, 0x80, 0, 0, 0, 0, 1, 0, 0};
    ioloop__ws_frame_t f;
    assert_int_equal(ioloop__ws_frame_parse(nonmin16, sizeof(nonmin16), &f), -1);
    assert_int_equal(ioloop__ws_frame_parse(nonmin64, sizeof(nonmin64), &f), -1);
    assert_int_equal(ioloop__ws_frame_parse(topbit, sizeof(topbit), &f), -1);
}

/* Feeds buf to a server-side reader (or client-side), expects failure with code. */
static void expect_error(const uint8_t *buf, size_t len, bool server, size_t max, ioloop__ws_deflate_t *d, int code)
{
    for (size_t step = 1; step <= len; step = step * 4 + 3) {
        ioloop__ws_reader_t r;
        ioloop__ws_reader_init(&r, server, max, d);
        events_t e = {0};
        assert_int_equal(feed_sliced(&r, buf, len, step, &e), -1);
        assert_int_equal(r.error, code);
        assert_non_null(r.reason);
        assert_int_equal(ioloop__ws_reader_feed(&r, buf, len, record, &e), -1); /* stays failed */
        ioloop__ws_reader_free(&r);
        if (d)
            ioloop__ws_deflate_free(d);
    }
}

static void test_protocol_errors(void **state)
{
    (void)state;
    uint8_t buf[512], big[200];
    memset(big, 'x', sizeof(big));
    size_t n;
    /* reserved bits without an extension */
    for (uint8_t rsv = 0x10; rsv <= 0x40; rsv <<= 1) {
        n = frame(buf, true, rsv, IOLOOP_WS_TEXT, "a", 1, true);
        expect_error(buf, n, true, 0, NULL, 1002);
    }
    /* reserved opcodes */
    const uint8_t ops[] = {3, 4, 5, 6, 7, 0xb, 0xc, 0xd, 0xe, 0xf};
    for (size_t i = 0; i < sizeof(ops); i++) {
        n = frame(buf, true, 0, ops[i], "a", 1, true);
        expect_error(buf, n, true, 0, NULL, 1002);
    }
    /* unmasked client frame at the server, masked server frame at the client */
    n = frame(buf, true, 0, IOLOOP_WS_TEXT, "a", 1, false);
    expect_error(buf, n, true, 0, NULL, 1002);
    n = frame(buf, true, 0, IOLOOP_WS_TEXT, "a", 1, true);
    expect_error(buf, n, false, 0, NULL, 1002);
    /* control frames: over 125 bytes, fragmented */
    n = frame(buf, true, 0, IOLOOP_WS_PING, big, 126, true);
    expect_error(buf, n, true, 0, NULL, 1002);
    n = frame(buf, false, 0, IOLOOP_WS_PONG, "a", 1, true);
    expect_error(buf, n, true, 0, NULL, 1002);
    /* a continuation without a message; a new message inside a fragmented one */
    n = frame(buf, true, 0, 0, "a", 1, true);
    expect_error(buf, n, true, 0, NULL, 1002);
    n = frame(buf, false, 0, IOLOOP_WS_TEXT, "a", 1, true);
    n += frame(buf + n, true, 0, IOLOOP_WS_BINARY, "b", 1, true);
    expect_error(buf, n, true, 0, NULL, 1002);
    /* close payloads: one byte, codes that may not be sent, a reason that is not UTF-8 */
    n = frame(buf, true, 0, IOLOOP_WS_CLOSE, "\x03", 1, true);
    expect_error(buf, n, true, 0, NULL, 1002);
    const int bad_codes[] = {0, 999, 1004, 1005, 1006, 1015, 1016, 2000, 2999, 5000, 65535};
    for (size_t i = 0; i < sizeof(bad_codes) / sizeof(bad_codes[0]); i++) {
        uint8_t p[2] = {(uint8_t)(bad_codes[i] >> 8), (uint8_t)bad_codes[i]};
        n = frame(buf, true, 0, IOLOOP_WS_CLOSE, p, 2, true);
        expect_error(buf, n, true, 0, NULL, 1002);
    }
    n = frame(buf, true, 0, IOLOOP_WS_CLOSE, "\x03\xe8\xff", 3, true);
    expect_error(buf, n, true, 0, NULL, 1007);
    /* the good ones pass */
    const int good_codes[] = {1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 4999};
    for (size_t i = 0; i < sizeof(good_codes) / sizeof(good_codes[0]); i++) {
        uint8_t p[2] = {(uint8_t)(good_codes[i] >> 8), (uint8_t)good_codes[i]};
        assert_int_equal(ioloop__ws_check_close(p, 2), 0);
    }
    assert_int_equal(ioloop__ws_check_close(NULL, 0), 0);
}

static void test_utf8(void **state)
{
    (void)state;
    /* invalid: overlong, surrogate, past U+10FFFF, lone continuation, bad lead bytes, truncated */
    const char *bad[] = {"\xc0\xaf", "\xe0\x80\xaf",     "\xed\xa0\x80", "\xf4\x90\x80\x80", "\x80",
                         "\xff",     "\xf5\x80\x80\x80", "abc\xce",      "\xe2\x82"};
    uint8_t buf[64];
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        size_t n = frame(buf, true, 0, IOLOOP_WS_TEXT, bad[i], strlen(bad[i]), true);
        expect_error(buf, n, true, 0, NULL, 1007);
    }
    /* valid, split across fragments inside a character: "κόσμε" and U+10FFFF */
    const char *good = "\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5 \xf4\x8f\xbf\xbf";
    size_t gl = strlen(good);
    for (size_t cut = 1; cut < gl; cut++) {
        size_t n = frame(buf, false, 0, IOLOOP_WS_TEXT, good, cut, true);
        n += frame(buf + n, true, 0, 0, good + cut, gl - cut, true);
        ioloop__ws_reader_t r;
        ioloop__ws_reader_init(&r, true, 0, NULL);
        events_t e = {0};
        assert_int_equal(feed_sliced(&r, buf, n, 3, &e), 0);
        assert_int_equal(e.n, 1);
        assert_string_equal(e.data[0], good);
        ioloop__ws_reader_free(&r);
    }
    /* invalid found at the first bad fragment, before the message ends (fail fast) */
    size_t n = frame(buf, false, 0, IOLOOP_WS_TEXT, "ok\xc0", 3, true);
    expect_error(buf, n, true, 0, NULL, 1007);
    /* binary is not checked */
    n = frame(buf, true, 0, IOLOOP_WS_BINARY, "\xff\xfe", 2, true);
    ioloop__ws_reader_t r;
    ioloop__ws_reader_init(&r, true, 0, NULL);
    events_t e = {0};
    assert_int_equal(feed_sliced(&r, buf, n, 1, &e), 0);
    assert_int_equal(e.n, 1);
    ioloop__ws_reader_free(&r);
}

static void test_too_big(void **state)
{
    (void)state;
    uint8_t buf[256];
    char data[100];
    memset(data, 'a', sizeof(data));
    size_t n = frame(buf, true, 0, IOLOOP_WS_TEXT, data, 100, true);
    expect_error(buf, n, true, 99, NULL, 1009);
    /* fragments that add up past the limit */
    n = frame(buf, false, 0, IOLOOP_WS_TEXT, data, 60, true);
    n += frame(buf + n, true, 0, 0, data, 60, true);
    expect_error(buf, n, true, 100, NULL, 1009);
    /* exactly the limit passes */
    n = frame(buf, true, 0, IOLOOP_WS_TEXT, data, 100, true);
    ioloop__ws_reader_t r;
    ioloop__ws_reader_init(&r, true, 100, NULL);
    events_t e = {0};
    assert_int_equal(feed_sliced(&r, buf, n, 7, &e), 0);
    assert_int_equal(e.n, 1);
    ioloop__ws_reader_free(&r);
    /* a header announcing 2^40 bytes fails at once, before any payload */
    const uint8_t huge[] = {0x82, 0xff, 0, 0, 0x01, 0, 0, 0, 0, 0, 1, 2, 3, 4};
    expect_error(huge, sizeof(huge), true, 0, NULL, 1009);
}

static ioloop__ws_deflate_t deflate_state(void)
{
    ioloop_websocket_options_t o = {.compression = true};
    ioloop__ws_deflate_t d;
    char out[128];
    assert_true(ioloop__ws_deflate_accept("permessage-deflate", &o, &d, out, sizeof(out)));
    return d;
}

static void test_deflate_roundtrip(void **state)
{
    (void)state;
    ioloop__ws_deflate_t tx = deflate_state(), rx = deflate_state();
    uint8_t *z = NULL, *buf = malloc(1 << 20);
    size_t cap = 0, zl;
    const char *msgs[] = {"Hello", "", "Hello Hello Hello Hello Hello", "\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5"};
    ioloop__ws_reader_t r;
    ioloop__ws_reader_init(&r, true, 0, &rx);
    for (int round = 0; round < 2; round++) { /* the second round uses the context taken over */
        for (size_t i = 0; i < sizeof(msgs) / sizeof(msgs[0]); i++) {
            assert_int_equal(ioloop__ws_deflate_message(&tx, msgs[i], strlen(msgs[i]), &z, &cap, &zl), 0);
            size_t n = frame(buf, true, 0x40, IOLOOP_WS_TEXT, z, zl, true);
            events_t e = {0};
            assert_int_equal(feed_sliced(&r, buf, n, 2, &e), 0);
            assert_int_equal(e.n, 1);
            assert_string_equal(e.data[0], msgs[i]);
        }
    }
    /* a compressed message in two fragments: RSV1 on the first only */
    assert_int_equal(ioloop__ws_deflate_message(&tx, "fragmented and compressed", 25, &z, &cap, &zl), 0);
    size_t n = frame(buf, false, 0x40, IOLOOP_WS_TEXT, z, 3, true);
    n += frame(buf + n, true, 0, 0, z + 3, zl - 3, true);
    events_t e = {0};
    assert_int_equal(feed_sliced(&r, buf, n, 5, &e), 0);
    assert_string_equal(e.data[0], "fragmented and compressed");
    ioloop__ws_reader_free(&r);
    ioloop__ws_deflate_free(&tx);
    ioloop__ws_deflate_free(&rx);

    /* RSV1 on a continuation frame or on a control frame: 1002 */
    ioloop__ws_deflate_t d = deflate_state();
    n = frame(buf, false, 0x40, IOLOOP_WS_TEXT, z, 3, true);
    n += frame(buf + n, true, 0x40, 0, z + 3, zl - 3, true);
    expect_error(buf, n, true, 0, &d, 1002);
    n = frame(buf, true, 0x40, IOLOOP_WS_PING, "", 0, true);
    expect_error(buf, n, true, 0, &d, 1002);
    /* garbage as deflate data: 1007 */
    n = frame(buf, true, 0x40, IOLOOP_WS_BINARY, "\xff\xff\xff\xff", 4, true);
    expect_error(buf, n, true, 0, &d, 1007);
    free(z);
    free(buf);
}

/* A zip bomb: 64 MiB of zeros deflate to ~64 KiB; inflating stops at the limit. */
static void test_deflate_bomb(void **state)
{
    (void)state;
    ioloop__ws_deflate_t tx = deflate_state(), d = deflate_state();
    size_t big = 64u << 20;
    char *zeros = calloc(1, big);
    uint8_t *z = NULL;
    size_t cap = 0, zl;
    assert_int_equal(ioloop__ws_deflate_message(&tx, zeros, big, &z, &cap, &zl), 0);
    assert_true(zl < big / 100);
    uint8_t *buf = malloc(zl + 14);
    size_t n = frame(buf, true, 0x40, IOLOOP_WS_BINARY, z, zl, true);
    ioloop__ws_reader_t r;
    ioloop__ws_reader_init(&r, true, 1u << 20, &d);
    events_t e = {0};
    assert_int_equal(ioloop__ws_reader_feed(&r, buf, n, record, &e), -1);
    assert_int_equal(r.error, 1009);
    assert_true(r.msg_cap <= (1u << 20) + 1); /* never more than the limit held */
    ioloop__ws_reader_free(&r);
    ioloop__ws_deflate_free(&d);
    ioloop__ws_deflate_free(&tx);
    free(zeros);
    free(z);
    free(buf);
}

static void test_negotiation(void **state)
{
    (void)state;
    ioloop_websocket_options_t o = {.compression = true};
    ioloop__ws_deflate_t d;
    char out[160];
    assert_true(ioloop__ws_deflate_accept("permessage-deflate; client_max_window_bits", &o, &d, out, sizeof(out)));
    assert_string_equal(out, "permessage-deflate");
    assert_false(d.our_no_context_takeover);
    /* an unknown extension first, then ours with the server's no context takeover */
    assert_true(ioloop__ws_deflate_accept("x-webkit-deflate-frame, permessage-deflate;server_no_context_takeover ; "
                                          "client_no_context_takeover",
                                          &o, &d, out, sizeof(out)));
    assert_string_equal(out, "permessage-deflate; server_no_context_takeover; client_no_context_takeover");
    assert_true(d.our_no_context_takeover && d.peer_no_context_takeover);
    /* a window of 8 cannot be honoured (zlib): the next offer is taken */
    assert_true(ioloop__ws_deflate_accept("permessage-deflate; server_max_window_bits=8, permessage-deflate; "
                                          "server_max_window_bits=\"10\"",
                                          &o, &d, out, sizeof(out)));
    assert_string_equal(out, "permessage-deflate; server_max_window_bits=10");
    assert_int_equal(d.our_window_bits, 10);
    /* unknown or repeated parameters, bad values: declined */
    assert_false(ioloop__ws_deflate_accept("permessage-deflate; foo", &o, &d, out, sizeof(out)));
    assert_false(ioloop__ws_deflate_accept("permessage-deflate; server_no_context_takeover; server_no_context_takeover",
                                           &o, &d, out, sizeof(out)));
    assert_false(ioloop__ws_deflate_accept("permessage-deflate; server_max_window_bits=16", &o, &d, out, sizeof(out)));
    assert_false(ioloop__ws_deflate_accept("permessage-deflate; server_max_window_bits", &o, &d, out, sizeof(out)));
    /* compression off: never */
    ioloop_websocket_options_t off = {0};
    assert_false(ioloop__ws_deflate_accept("permessage-deflate", &off, &d, out, sizeof(out)));
    /* our no_context_takeover option is announced */
    ioloop_websocket_options_t nct = {.compression = true, .no_context_takeover = true};
    assert_true(ioloop__ws_deflate_accept("permessage-deflate", &nct, &d, out, sizeof(out)));
    assert_string_equal(out, "permessage-deflate; server_no_context_takeover");

    /* the client's side of it */
    assert_int_equal(ioloop__ws_deflate_response("permessage-deflate", &o, &d), 0);
    assert_int_equal(ioloop__ws_deflate_response("permessage-deflate; server_no_context_takeover", &o, &d), 0);
    assert_true(d.peer_no_context_takeover);
    assert_int_equal(ioloop__ws_deflate_response("permessage-deflate; client_max_window_bits=12", &o, &d), 0);
    assert_int_equal(d.our_window_bits, 12);
    assert_int_equal(ioloop__ws_deflate_response("permessage-deflate; client_max_window_bits=8", &o, &d), -EPROTO);
    assert_int_equal(ioloop__ws_deflate_response("permessage-deflate; bar", &o, &d), -EPROTO);
    assert_int_equal(ioloop__ws_deflate_response("x-other", &o, &d), -EPROTO);
    assert_int_equal(ioloop__ws_deflate_response("permessage-deflate, permessage-deflate", &o, &d), -EPROTO);
    ioloop__ws_deflate_offer(&nct, out, sizeof(out));
    assert_string_equal(out, "permessage-deflate; client_max_window_bits; client_no_context_takeover");
}

static void test_accept_key_and_mask(void **state)
{
    (void)state;
    char out[29];
    assert_int_equal(ioloop__ws_accept_key("dGhlIHNhbXBsZSBub25jZQ==", 24, out), 0);
    assert_string_equal(out, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="); /* RFC 6455 1.3 */
    /* masking at every offset agrees with the byte-wise definition */
    uint8_t src[40], dst[40];
    const uint8_t mask[4] = {1, 2, 3, 250};
    for (int i = 0; i < 40; i++)
        src[i] = (uint8_t)(i * 13);
    for (size_t off = 0; off < 8; off++) {
        ioloop__ws_mask(dst, src, sizeof(src), mask, off);
        for (size_t i = 0; i < sizeof(src); i++)
            assert_int_equal(dst[i], src[i] ^ mask[(off + i) & 3]);
    }
    /* random masks differ */
    uint8_t a[16], b[16];
    ioloop__ws_random(a, sizeof(a));
    ioloop__ws_random(b, sizeof(b));
    assert_memory_not_equal(a, b, sizeof(a));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rfc_examples),
        cmocka_unit_test(test_lengths),
        cmocka_unit_test(test_protocol_errors),
        cmocka_unit_test(test_utf8),
        cmocka_unit_test(test_too_big),
        cmocka_unit_test(test_deflate_roundtrip),
        cmocka_unit_test(test_deflate_bomb),
        cmocka_unit_test(test_negotiation),
        cmocka_unit_test(test_accept_key_and_mask),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
