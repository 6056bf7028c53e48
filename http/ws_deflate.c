/* ws_deflate.c — permessage-deflate (RFC 7692): the negotiation of
 * Sec-WebSocket-Extensions on both sides and compressing a message with zlib
 * (raw deflate, sync flush, the 00 00 ff ff tail removed). Inflating is the
 * reader's (ws_reader.c), bounded by max_message_size.
 *
 * Decisions: we always inflate with a 32 KiB window (what any peer's
 * *_max_window_bits allows), so a window limit only ever constrains our
 * deflater. zlib cannot make a raw deflate stream for a 256-byte window (it
 * uses 512), so an offer that needs server_max_window_bits=8 is declined
 * (the next offer is tried) and a server that asks client_max_window_bits=8
 * fails the client's handshake.
 *
 * Threading rule: a deflate state belongs to its websocket's loop thread.
 */
#include "ws_internal.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* One extension's parameters. */
typedef struct {
    bool server_nct, client_nct;
    int server_bits;       /* 0: absent */
    bool client_bits;      /* present (with or without a value) */
    int client_bits_value; /* 0: no value */
    bool bad;
} pmd_params_t;

static const char *skip_ws(const char *p, const char *end)
{
    while (p < end && (*p == ' ' || *p == '\t'))
        p++;
    return p;
}

static size_t trim_len(const char *p, size_t n)
{
    while (n && (p[n - 1] == ' ' || p[n - 1] == '\t'))
        n--;
    return n;
}

static bool name_is(const char *p, size_t n, const char *name)
{
    return strlen(name) == n && strncasecmp(p, name, n) == 0;
}

/* Window bits "8".."15" (quotes allowed), else -1. */
static int parse_bits(const char *v, size_t n)
{
    if (n >= 2 && v[0] == '"' && v[n - 1] == '"') {
        v++;
        n -= 2;
    }
    if (n == 0 || n > 2)
        return -1;
    int x = 0;
    for (size_t i = 0; i < n; i++) {
        if (!isdigit((unsigned char)v[i]))
            return -1;
        x = x * 10 + (v[i] - '0');
    }
    return x >= 8 && x <= 15 ? x : -1;
}

/* Parses "name; p1; p2=v" in [p, end): true if the name is
 * permessage-deflate (params filled, bad set for unknown or repeated ones). */
static bool parse_extension(const char *p, const char *end, pmd_params_t *out)
{
    memset(out, 0, sizeof(*out));
    const char *semi = memchr(p, ';', (size_t)(end - p));
    const char *name_end = semi ? semi : end;
    p = skip_ws(p, name_end);
    if (!name_is(p, trim_len(p, (size_t)(name_end - p)), "permessage-deflate"))
        return false;
    bool seen[4] = {false, false, false, false};
    while (semi) {
        p = semi + 1;
        semi = memchr(p, ';', (size_t)(end - p));
        const char *pe = semi ? semi : end;
        p = skip_ws(p, pe);
        size_t n = trim_len(p, (size_t)(pe - p));
        const char *eq = memchr(p, '=', n);
        size_t nl = eq ? trim_len(p, (size_t)(eq - p)) : n;
        const char *v = NULL;
        size_t vl = 0;
        if (eq) {
            v = skip_ws(eq + 1, p + n);
            vl = (size_t)(p + n - v);
        }
        int idx;
        if (name_is(p, nl, "server_no_context_takeover") && !eq) {
            idx = 0;
            out->server_nct = true;
        } else if (name_is(p, nl, "client_no_context_takeover") && !eq) {
            idx = 1;
            out->client_nct = true;
        } else if (name_is(p, nl, "server_max_window_bits") && eq) {
            idx = 2;
            out->server_bits = parse_bits(v, vl);
            if (out->server_bits < 0)
                out->bad = true;
        } else if (name_is(p, nl, "client_max_window_bits")) {
            idx = 3;
            out->client_bits = true;
            if (eq && (out->client_bits_value = parse_bits(v, vl)) < 0)
                out->bad = true;
        } else {
            out->bad = true;
            continue;
        }
        if (seen[idx])
            out->bad = true;
        seen[idx] = true;
    }
    return true;
}

static void base_state(const ioloop_websocket_options_t *opts, ioloop__ws_deflate_t *d)
{
    memset(d, 0, sizeof(*d));
    d->enabled = true;
    d->our_no_context_takeover = opts->no_context_takeover;
    d->our_window_bits = opts->max_window_bits >= 9 && opts->max_window_bits <= 15 ? opts->max_window_bits : 15;
    d->level = opts->compression_level >= 1 && opts->compression_level <= 9 ? opts->compression_level : 6;
}

bool ioloop__ws_deflate_accept(const char *offers, const ioloop_websocket_options_t *opts, ioloop__ws_deflate_t *d,
                               char *out, size_t cap)
{
    if (!offers || !opts->compression)
        return false;
    const char *p = offers, *end = offers + strlen(offers);
    while (p < end) {
        const char *comma = memchr(p, ',', (size_t)(end - p));
        const char *oe = comma ? comma : end;
        pmd_params_t pm;
        if (parse_extension(p, oe, &pm) && !pm.bad && pm.server_bits != 8) {
            base_state(opts, d);
            if (pm.server_nct)
                d->our_no_context_takeover = true;
            if (pm.server_bits && pm.server_bits < d->our_window_bits)
                d->our_window_bits = pm.server_bits;
            d->peer_no_context_takeover = pm.client_nct;
            int n = snprintf(out, cap, "permessage-deflate%s%s",
                             d->our_no_context_takeover ? "; server_no_context_takeover" : "",
                             pm.client_nct ? "; client_no_context_takeover" : "");
            if (n > 0 && (size_t)n < cap && (pm.server_bits || d->our_window_bits < 15))
                snprintf(out + n, cap - (size_t)n, "; server_max_window_bits=%d", d->our_window_bits);
            return true;
        }
        p = oe + 1;
    }
    return false;
}

void ioloop__ws_deflate_offer(const ioloop_websocket_options_t *opts, char *out, size_t cap)
{
    snprintf(out, cap, "permessage-deflate; client_max_window_bits%s",
             opts->no_context_takeover ? "; client_no_context_takeover" : "");
}

int ioloop__ws_deflate_response(const char *value, const ioloop_websocket_options_t *opts, ioloop__ws_deflate_t *d)
{
    const char *end = value + strlen(value);
    if (memchr(value, ',', (size_t)(end - value)))
        return -EPROTO; /* we offered one extension */
    pmd_params_t pm;
    if (!parse_extension(value, end, &pm) || pm.bad)
        return -EPROTO;
    base_state(opts, d);
    d->peer_no_context_takeover = pm.server_nct;
    if (pm.client_nct)
        d->our_no_context_takeover = true;
    if (pm.client_bits) {
        if (pm.client_bits_value == 8)
            return -EPROTO;
        if (pm.client_bits_value && pm.client_bits_value < d->our_window_bits)
            d->our_window_bits = pm.client_bits_value;
    }
    return 0;
}

int ioloop__ws_deflate_message(ioloop__ws_deflate_t *d, const void *data, size_t len, uint8_t **out, size_t *cap,
                               size_t *out_len)
{
    z_stream *z = &d->deflater;
    if (!d->deflater_ready) {
        memset(z, 0, sizeof(*z));
        if (deflateInit2(z, d->level, Z_DEFLATED, -d->our_window_bits, 8, Z_DEFAULT_STRATEGY) != Z_OK)
            return -ENOMEM;
        d->deflater_ready = true;
    }
    size_t need = deflateBound(z, (uLong)len) + 16;
    if (*cap < need) {
        uint8_t *p = realloc(*out, need);
        if (!p)
            return -ENOMEM;
        *out = p;
        *cap = need;
    }
    z->next_in = (Bytef *)data;
    z->avail_in = (uInt)len;
    size_t produced = 0;
    for (;;) {
        z->next_out = *out + produced;
        z->avail_out = (uInt)(*cap - produced);
        int rc = deflate(z, Z_SYNC_FLUSH);
        produced = *cap - z->avail_out;
        if (rc != Z_OK && rc != Z_BUF_ERROR)
            return -EIO;
        if (z->avail_out != 0)
            break;
        size_t ncap = *cap * 2;
        uint8_t *p = realloc(*out, ncap);
        if (!p)
            return -ENOMEM;
        *out = p;
        *cap = ncap;
    }
    if (produced >= 4 && memcmp(*out + produced - 4, "\x00\x00\xff\xff", 4) == 0)
        produced -= 4;
    if (produced == 0) /* nothing new since the last flush: an empty block (RFC 7692 7.2.3.6) */
        (*out)[produced++] = 0x00;
    *out_len = produced;
    if (d->our_no_context_takeover)
        deflateReset(z);
    return 0;
}

void ioloop__ws_deflate_free(ioloop__ws_deflate_t *d)
{
    if (d->deflater_ready)
        deflateEnd(&d->deflater);
    if (d->inflater_ready)
        inflateEnd(&d->inflater);
    d->deflater_ready = d->inflater_ready = false;
}
