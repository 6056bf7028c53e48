/* ws_frame.c — WebSocket frame headers (RFC 6455 5.2), masking and the
 * masks' PRNG, incremental UTF-8 validation, the close payload's rules and
 * the handshake's Sec-WebSocket-Accept (SHA-1 + base64 from libcrypto): pure
 * functions of bytes, used by the reader, the sender and both handshakes.
 *
 * Threading rule: none (no state beyond the arguments; the PRNG is per thread).
 */
#define _GNU_SOURCE
#include "ws_internal.h"

#include <errno.h>
#include <openssl/evp.h>
#include <string.h>
#include <sys/random.h>

int ioloop__ws_accept_key(const char *key, size_t key_len, char out[29])
{
    static const char guid[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    char buf[64 + sizeof(guid)];
    if (key_len > 64)
        return -EINVAL;
    memcpy(buf, key, key_len);
    memcpy(buf + key_len, guid, sizeof(guid) - 1);
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    if (!EVP_Digest(buf, key_len + sizeof(guid) - 1, md, &mdlen, EVP_sha1(), NULL) || mdlen != 20)
        return -EINVAL;
    EVP_EncodeBlock((unsigned char *)out, md, 20); /* 28 characters and a NUL */
    return 0;
}

/* ---- randomness: keys and masks ------------------------------------------- */

/* xoshiro256** per thread, seeded from getrandom: masks need to be
 * unpredictable to a script in a browser, not cryptographic (RFC 6455 10.3),
 * and one getrandom per frame would cost a syscall each. */
static _Thread_local uint64_t rng_state[4];
static _Thread_local bool rng_seeded;

static uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

static uint64_t rng_next(void)
{
    if (!rng_seeded) {
        if (getrandom(rng_state, sizeof(rng_state), 0) != (ssize_t)sizeof(rng_state) ||
            !(rng_state[0] | rng_state[1] | rng_state[2] | rng_state[3])) {
            /* no entropy source: a fixed non-zero state still masks (10.3's goal is against caching proxies) */
            rng_state[0] = 0x9e3779b97f4a7c15ull ^ (uint64_t)(uintptr_t)&rng_state;
            rng_state[1] = 0xbf58476d1ce4e5b9ull;
            rng_state[2] = 0x94d049bb133111ebull;
            rng_state[3] = 1;
        }
        rng_seeded = true;
    }
    uint64_t *s = rng_state;
    uint64_t result = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

void ioloop__ws_random(void *out, size_t len)
{
    uint8_t *p = out;
    while (len) {
        uint64_t r = rng_next();
        size_t k = len < 8 ? len : 8;
        memcpy(p, &r, k);
        p += k;
        len -= k;
    }
}

ssize_t ioloop__ws_frame_parse(const void *buf, size_t len, ioloop__ws_frame_t *out)
{
    const uint8_t *p = buf;
    if (len < 2)
        return 0;
    out->fin = (p[0] & 0x80) != 0;
    out->rsv = p[0] & 0x70;
    out->opcode = p[0] & 0x0f;
    out->masked = (p[1] & 0x80) != 0;
    uint64_t n = p[1] & 0x7f;
    size_t hl = 2;
    if (n == 126) {
        if (len < 4)
            return 0;
        n = (uint64_t)p[2] << 8 | p[3];
        if (n < 126)
            return -1; /* not the minimal encoding */
        hl = 4;
    } else if (n == 127) {
        if (len < 10)
            return 0;
        n = 0;
        for (int i = 0; i < 8; i++)
            n = n << 8 | p[2 + i];
        if (n >> 63 || n <= 0xffff)
            return -1; /* the most significant bit must be 0; and minimal */
        hl = 10;
    }
    if (out->masked) {
        if (len < hl + 4)
            return 0;
        memcpy(out->mask, p + hl, 4);
        hl += 4;
    } else {
        memset(out->mask, 0, 4);
    }
    out->payload_len = n;
    return (ssize_t)hl;
}

size_t ioloop__ws_frame_header(uint8_t out[14], bool fin, uint8_t rsv, uint8_t opcode, uint64_t len,
                               const uint8_t *mask)
{
    size_t hl = 2;
    out[0] = (uint8_t)((fin ? 0x80 : 0) | (rsv & 0x70) | (opcode & 0x0f));
    uint8_t m = mask ? 0x80 : 0;
    if (len < 126) {
        out[1] = (uint8_t)(m | len);
    } else if (len <= 0xffff) {
        out[1] = m | 126;
        out[2] = (uint8_t)(len >> 8);
        out[3] = (uint8_t)len;
        hl = 4;
    } else {
        out[1] = m | 127;
        for (int i = 0; i < 8; i++)
            out[2 + i] = (uint8_t)(len >> (56 - 8 * i));
        hl = 10;
    }
    if (mask) {
        memcpy(out + hl, mask, 4);
        hl += 4;
    }
    return hl;
}

void ioloop__ws_mask(uint8_t *dst, const uint8_t *src, size_t len, const uint8_t mask[4], size_t off)
{
    size_t i = 0;
    /* Word at a time once the mask is rotated to the offset. */
    uint8_t m[8];
    for (int k = 0; k < 8; k++)
        m[k] = mask[(off + (size_t)k) & 3];
    uint64_t mw;
    memcpy(&mw, m, 8);
    for (; i + 8 <= len; i += 8) {
        uint64_t w;
        memcpy(&w, src + i, 8);
        w ^= mw;
        memcpy(dst + i, &w, 8);
    }
    for (; i < len; i++)
        dst[i] = src[i] ^ m[i & 7];
}

bool ioloop__ws_utf8_feed(ioloop__ws_utf8_t *st, const uint8_t *p, size_t len)
{
    size_t i = 0;
    while (i < len) {
        if (st->need == 0) {
            /* ASCII runs, 8 bytes at a time. */
            while (i + 8 <= len) {
                uint64_t w;
                memcpy(&w, p + i, 8);
                if (w & 0x8080808080808080ull)
                    break;
                i += 8;
            }
            if (i >= len)
                break;
            uint8_t b = p[i++];
            if (b < 0x80)
                continue;
            st->lo = 0x80;
            st->hi = 0xbf;
            if (b >= 0xc2 && b <= 0xdf) {
                st->need = 1;
            } else if (b >= 0xe0 && b <= 0xef) {
                st->need = 2;
                if (b == 0xe0)
                    st->lo = 0xa0; /* overlong */
                else if (b == 0xed)
                    st->hi = 0x9f; /* surrogates */
            } else if (b >= 0xf0 && b <= 0xf4) {
                st->need = 3;
                if (b == 0xf0)
                    st->lo = 0x90; /* overlong */
                else if (b == 0xf4)
                    st->hi = 0x8f; /* past U+10FFFF */
            } else {
                return false;
            }
        } else {
            uint8_t b = p[i++];
            if (b < st->lo || b > st->hi)
                return false;
            st->need--;
            st->lo = 0x80;
            st->hi = 0xbf;
        }
    }
    return true;
}

int ioloop__ws_check_close(const uint8_t *data, size_t len)
{
    if (len == 0)
        return 0;
    if (len == 1 || len > 125)
        return IOLOOP_WS_CLOSE_PROTOCOL_ERROR;
    int code = data[0] << 8 | data[1];
    bool ok = (code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1014) || (code >= 3000 && code <= 4999);
    if (!ok)
        return IOLOOP_WS_CLOSE_PROTOCOL_ERROR;
    ioloop__ws_utf8_t st = {0};
    if (!ioloop__ws_utf8_feed(&st, data + 2, len - 2) || st.need)
        return IOLOOP_WS_CLOSE_INVALID_DATA;
    return 0;
}
