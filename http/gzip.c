/* gzip.c — dynamic gzip of responses through zlib (Tornado's
 * GZipContentEncoding, nginx's `gzip on`), behind the server option `gzip`.
 *
 * Decided once per response, just before its head is written: the client
 * accepts gzip (Accept-Encoding, q-values honoured), the status carries a
 * body (never 204/206/304, nor HEAD), the handler set neither its own
 * Content-Encoding nor Content-Length (a handler's length is a promise about
 * the bytes on the wire, so such a body goes as it is), the Content-Type is
 * compressible, and a body whose length is known is at least gzip_min_length.
 * A streamed (flushed) body is compressed chunk by chunk: Z_SYNC_FLUSH at each
 * flush, so every flushed part can be inflated as it arrives. Vary:
 * Accept-Encoding goes on every compressible response, compressed or not;
 * a strong ETag turns weak on a compressed one. The static route's files come
 * through ioloop__http_gzip_finish_file: read and deflated a block per flush
 * completion when compressed (paced by the client), else sent as they are.
 *
 * Threading rule: the loop thread that owns the request. Each worker keeps a
 * pool of deflate states (deflateReset between responses), so a warm loop
 * allocates nothing per response here.
 */
#define _GNU_SOURCE
#include "internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>
#include <zlib.h>

enum {
    GZIP_DEFAULT_LEVEL = 6,         /* Tornado's GZIP_LEVEL */
    GZIP_DEFAULT_MIN_LENGTH = 1024, /* Tornado's MIN_LENGTH */
    GZIP_POOL_KEEP = 16,            /* idle deflate states a worker keeps (~270 KiB each) */
    GZIP_OUT_KEEP = 256 * 1024,     /* a pooled state keeps an output buffer up to this size */
};

struct http_gzip {
    z_stream zs;
    hbuf_t out;   /* compressed bytes: swapped with req->rbody before they are framed */
    bool no_sync; /* a file pumped through (finish_file): no sync flush per part, as nginx */
    struct http_gzip *next_free;
};

/* Tornado's CONTENT_TYPES, with text/ as a prefix, plus a few more text formats. */
static const char *const default_types[] = {
    "text/*",
    "application/javascript",
    "application/x-javascript",
    "application/json",
    "application/ld+json",
    "application/manifest+json",
    "application/xml",
    "application/atom+xml",
    "application/rss+xml",
    "application/xhtml+xml",
    "image/svg+xml",
    NULL,
};

int ioloop__http_gzip_check_options(ioloop_http_server_options_t *opts)
{
    if (opts->gzip_level < 0 || opts->gzip_level > 9)
        return -EINVAL;
    if (!opts->gzip_level)
        opts->gzip_level = GZIP_DEFAULT_LEVEL;
    if (!opts->gzip_min_length)
        opts->gzip_min_length = GZIP_DEFAULT_MIN_LENGTH;
    return 0;
}

/* ---- Accept-Encoding ------------------------------------------------------ */

static bool is_ows(char ch)
{
    return ch == ' ' || ch == '\t';
}

/* A qvalue (RFC 9110 12.4.2) in thousandths; -1 if malformed. */
static int parse_qvalue(const char *s, size_t len)
{
    if (len == 0 || (s[0] != '0' && s[0] != '1'))
        return -1;
    int q = (s[0] - '0') * 1000;
    if (len == 1)
        return q;
    if (s[1] != '.' || len > 5)
        return -1;
    int scale = 100;
    for (size_t i = 2; i < len; i++, scale /= 10) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        q += (s[i] - '0') * scale;
    }
    return q > 1000 ? -1 : q;
}

/* Folds one Accept-Encoding value into the q of gzip and of "*" (-1: not named). */
static void scan_accept(const char *v, int *gzip_q, int *star_q)
{
    const char *p = v;
    while (*p) {
        while (*p == ',' || is_ows(*p))
            p++;
        if (!*p)
            break;
        const char *tok = p;
        while (*p && *p != ',' && *p != ';' && !is_ows(*p))
            p++;
        size_t tlen = (size_t)(p - tok);
        int q = 1000;
        /* parameters: only q matters */
        for (;;) {
            while (is_ows(*p))
                p++;
            if (*p != ';')
                break;
            p++;
            while (is_ows(*p))
                p++;
            const char *name = p;
            while (*p && *p != '=' && *p != ',' && *p != ';' && !is_ows(*p))
                p++;
            size_t nlen = (size_t)(p - name);
            while (is_ows(*p))
                p++;
            if (*p != '=')
                continue;
            p++;
            while (is_ows(*p))
                p++;
            const char *val = p;
            while (*p && *p != ',' && *p != ';' && !is_ows(*p))
                p++;
            if (nlen == 1 && (name[0] == 'q' || name[0] == 'Q')) {
                q = parse_qvalue(val, (size_t)(p - val));
                if (q < 0)
                    q = 0; /* a malformed weight: do not guess the client wants it */
            }
        }
        while (*p && *p != ',')
            p++; /* junk after the parameters */
        if ((tlen == 4 && !strncasecmp(tok, "gzip", 4)) || (tlen == 6 && !strncasecmp(tok, "x-gzip", 6))) {
            if (q > *gzip_q)
                *gzip_q = q;
        } else if (tlen == 1 && tok[0] == '*') {
            if (q > *star_q)
                *star_q = q;
        }
    }
}

/* Every Accept-Encoding line counts (a list may be split over several). */
static bool accepts_gzip(const ioloop_http_request_t *req)
{
    int gzip_q = -1, star_q = -1;
    /* Not through ioloop_http_request_header_at: finish marks req finished
     * (refusing the public calls) before it formats the head. */
    for (int i = 0; i < req->nhdrs; i++) {
        const http_hdr_t *h = &req->hdrs[i];
        if (h->name_len == 15 && !strncasecmp(req->base + h->name_off, "Accept-Encoding", 15))
            scan_accept(req->base + h->val_off, &gzip_q, &star_q);
    }
    if (gzip_q >= 0)
        return gzip_q > 0;
    return star_q > 0;
}

/* ---- the response's own headers -------------------------------------------- */

typedef struct {
    const char *ctype; /* the handler's Content-Type value (in rhdr), or NULL */
    size_t ctype_len;
    bool encoding; /* the handler set a Content-Encoding */
    bool vary_has; /* its Vary already names Accept-Encoding (or is "*") */
} user_headers_t;

static bool contains_token(const char *v, size_t len, const char *tok)
{
    size_t tl = strlen(tok);
    for (size_t i = 0; i + tl <= len; i++)
        if (!strncasecmp(v + i, tok, tl))
            return true;
    return false;
}

/* rhdr holds "Name: value\r\n" lines written by ioloop_http_response_header. */
static void scan_user_headers(const ioloop_http_request_t *req, user_headers_t *out)
{
    memset(out, 0, sizeof(*out));
    if (!req->rhdr.data)
        return; /* no header set: and NULL + 0 is undefined (UBSan, found by fuzz_http_request) */
    const char *p = req->rhdr.data, *end = p + req->rhdr.len;
    while (p < end) {
        const char *eol = memchr(p, '\r', (size_t)(end - p));
        if (!eol)
            break;
        const char *colon = memchr(p, ':', (size_t)(eol - p));
        if (colon) {
            size_t nlen = (size_t)(colon - p);
            const char *v = colon + 2 <= eol ? colon + 2 : eol;
            size_t vlen = (size_t)(eol - v);
            if (nlen == 12 && !strncasecmp(p, "Content-Type", 12)) {
                out->ctype = v;
                out->ctype_len = vlen;
            } else if (nlen == 16 && !strncasecmp(p, "Content-Encoding", 16)) {
                out->encoding = true;
            } else if (nlen == 4 && !strncasecmp(p, "Vary", 4)) {
                if (contains_token(v, vlen, "accept-encoding") || contains_token(v, vlen, "*"))
                    out->vary_has = true;
            }
        }
        p = eol + 2;
    }
}

static bool compressible(const ioloop_http_server_options_t *opts, const char *ctype, size_t len)
{
    if (!ctype)
        return true; /* the server's default, text/html */
    size_t n = 0;
    while (n < len && ctype[n] != ';' && !is_ows(ctype[n]))
        n++;
    for (const char *const *t = opts->gzip_types ? opts->gzip_types : default_types; *t; t++) {
        size_t tl = strlen(*t);
        if (tl >= 2 && (*t)[tl - 1] == '*') {
            if (n >= tl - 1 && !strncasecmp(ctype, *t, tl - 1))
                return true;
        } else if (tl == n && !strncasecmp(ctype, *t, n)) {
            return true;
        }
    }
    return false;
}

/* ---- deflate states ---------------------------------------------------------- */

static struct http_gzip *gzip_get(http_worker_t *w, int level)
{
    struct http_gzip *gz = w->gzip_free;
    if (gz) {
        w->gzip_free = gz->next_free;
        w->ngzip_free--;
        if (deflateReset(&gz->zs) == Z_OK)
            return gz;
        deflateEnd(&gz->zs);
        free(gz->out.data);
        free(gz);
    }
    gz = calloc(1, sizeof(*gz));
    if (!gz)
        return NULL;
    /* 15 + 16: a gzip wrapper (header and CRC trailer) around raw deflate. */
    if (deflateInit2(&gz->zs, level, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK) {
        free(gz);
        return NULL;
    }
    return gz;
}

static void gzip_destroy(struct http_gzip *gz)
{
    deflateEnd(&gz->zs);
    free(gz->out.data);
    free(gz);
}

void ioloop__http_gzip_release(ioloop_http_request_t *req)
{
    struct http_gzip *gz = req->gzip;
    if (!gz)
        return;
    req->gzip = NULL;
    http_worker_t *w = req->w;
    if (w->dead || w->ngzip_free >= GZIP_POOL_KEEP) {
        gzip_destroy(gz);
        return;
    }
    if (gz->out.cap > GZIP_OUT_KEEP) {
        free(gz->out.data);
        gz->out.data = NULL;
        gz->out.cap = 0;
    }
    gz->out.len = 0;
    gz->no_sync = false;
    gz->next_free = w->gzip_free;
    w->gzip_free = gz;
    w->ngzip_free++;
}

void ioloop__http_gzip_pool_free(http_worker_t *w)
{
    while (w->gzip_free) {
        struct http_gzip *gz = w->gzip_free;
        w->gzip_free = gz->next_free;
        gzip_destroy(gz);
    }
    w->ngzip_free = 0;
}

/* ---- the hooks response.c calls ---------------------------------------------- */

static int add_header(ioloop_http_request_t *req, const char *line, size_t len)
{
    return ioloop__hbuf_append(req->w, &req->rhdr, line, len);
}
#define ADD_HEADER(req, lit) add_header((req), (lit), sizeof(lit) - 1)

/* A strong ETag names the identity bytes: the gzip'd ones get it weak
 * (W/"..."), as nginx's gzip filter does, so no cache takes one for the
 * other in a byte-range or strong comparison. */
static int weaken_etag(ioloop_http_request_t *req)
{
    hbuf_t *h = &req->rhdr;
    for (size_t at = 0; at < h->len;) {
        char *line = h->data + at;
        char *eol = memchr(line, '\r', h->len - at);
        if (!eol)
            break;
        if ((size_t)(eol - line) > 7 && !strncasecmp(line, "ETag: \"", 7)) {
            int err = ioloop__hbuf_reserve(req->w, h, 2);
            if (err)
                return err;
            line = h->data + at; /* reserve may move the buffer */
            memmove(line + 8, line + 6, h->len - at - 6);
            memcpy(line + 6, "W/", 2);
            h->len += 2;
            return 0;
        }
        at = (size_t)(eol - h->data) + 2;
    }
    return 0;
}

enum { GZIP_NONE, GZIP_VARY, GZIP_COMPRESS };

/* What gzip does for req's response: nothing, Vary only, or compress. len:
 * the whole body's length when known_length. */
static int decide(const ioloop_http_request_t *req, bool known_length, uint64_t len, user_headers_t *uh)
{
    const ioloop_http_server_options_t *opts = &req->w->server->opts;
    if (!opts->gzip || req->gzip)
        return GZIP_NONE;
    int status = req->status;
    if (status < 200 || status == 204 || status == 206 || status == 304)
        return GZIP_NONE; /* no body, or a slice of one: a range of the gzip would be another entity */
    scan_user_headers(req, uh);
    if (uh->encoding || !compressible(opts, uh->ctype, uh->ctype_len))
        return GZIP_NONE;
    if (req->head || req->user_length || !accepts_gzip(req))
        return GZIP_VARY;
    if (known_length && len < opts->gzip_min_length)
        return GZIP_VARY;
    return GZIP_COMPRESS;
}

int ioloop__http_gzip_head(ioloop_http_request_t *req, bool known_length)
{
    user_headers_t uh;
    int what = decide(req, known_length, req->rbody.len, &uh);
    if (what == GZIP_NONE)
        return 0;
    int err = uh.vary_has ? 0 : ADD_HEADER(req, "Vary: Accept-Encoding\r\n");
    if (err || what != GZIP_COMPRESS)
        return err;
    struct http_gzip *gz = gzip_get(req->w, req->w->server->opts.gzip_level);
    if (!gz)
        return 0; /* no memory for a deflate state: the body goes as it is */
    req->gzip = gz;
    err = weaken_etag(req);
    if (!err)
        err = ADD_HEADER(req, "Content-Encoding: gzip\r\n");
    if (err)
        ioloop__http_gzip_release(req);
    return err;
}

int ioloop__http_gzip_body(ioloop_http_request_t *req, bool last)
{
    struct http_gzip *gz = req->gzip;
    if (!gz)
        return 0;
    if (req->rbody.len == 0 && !last)
        return 0; /* nothing new: an empty sync flush would only add a marker */
    http_worker_t *w = req->w;
    z_stream *zs = &gz->zs;
    zs->next_in = (Bytef *)req->rbody.data;
    zs->avail_in = (uInt)req->rbody.len;
    gz->out.len = 0;
    int flush = last ? Z_FINISH : gz->no_sync ? Z_NO_FLUSH : Z_SYNC_FLUSH;
    /* deflateBound covers a whole stream from here; a little more for the
     * sync marker and the trailer. Grown in the loop if ever short. */
    size_t want = deflateBound(zs, (uLong)req->rbody.len) + 64;
    for (;;) {
        int err = ioloop__hbuf_reserve(w, &gz->out, want);
        if (err)
            return err;
        zs->next_out = (Bytef *)gz->out.data + gz->out.len;
        zs->avail_out = (uInt)(gz->out.cap - gz->out.len);
        size_t before = zs->avail_out;
        int rc = deflate(zs, flush);
        gz->out.len += before - zs->avail_out;
        if (rc == Z_STREAM_END)
            break;
        if (rc != Z_OK && rc != Z_BUF_ERROR)
            return -EIO;
        if (zs->avail_out != 0 && zs->avail_in == 0)
            break;          /* a sync flush is complete once output room is left over */
        want = gz->out.cap; /* out of room: double */
    }
    /* The compressed bytes take rbody's place; rbody's buffer holds the next ones. */
    hbuf_t tmp = req->rbody;
    req->rbody = gz->out;
    gz->out = tmp;
    gz->out.len = 0;
    if (last)
        ioloop__http_gzip_release(req);
    return 0;
}

/* ---- a file through gzip (the static route's large files) ------------------ */

enum { GZIP_FILE_BLOCK = 128 * 1024 }; /* a file up to this goes in one read, with a Content-Length */

typedef struct {
    int fd;
    uint64_t offset, left;
} gzip_file_t;

/* One block per flush completion: read, compress, flush; the next block is
 * read only once the previous one reached the kernel, so a slow client paces
 * the file and memory stays flat. */
static void file_pump(ioloop_http_request_t *req, int status, void *arg)
{
    gzip_file_t *gf = arg;
    if (status == 0 && gf->left > 0) {
        size_t want = gf->left < GZIP_FILE_BLOCK ? (size_t)gf->left : GZIP_FILE_BLOCK;
        ssize_t n = -1;
        if (ioloop__hbuf_reserve(req->w, &req->rbody, want) == 0)
            n = pread(gf->fd, req->rbody.data + req->rbody.len, want, (off_t)gf->offset);
        if (n <= 0) {
            /* The file shrank or failed: a clean end would pass a cut file
             * for a whole one, so the connection ends instead. */
            if (req->c)
                ioloop__http_conn_close(req->c);
        } else {
            req->rbody.len += (size_t)n;
            gf->offset += (uint64_t)n;
            gf->left -= (uint64_t)n;
            /* the last block: finish compresses it with the trailer */
            if (gf->left == 0)
                goto done;
            if (ioloop_http_response_flush(req, file_pump, gf) == 0)
                return;
            if (req->c)
                ioloop__http_conn_close(req->c); /* cut short: never framed as the whole */
        }
    }
done:
    close(gf->fd);
    free(gf);
    ioloop_http_response_finish(req);
}

int ioloop__http_gzip_finish_file(ioloop_http_request_t *req, int fd, off_t offset, size_t len)
{
    user_headers_t uh;
    int what = req->headers_sent ? GZIP_NONE : decide(req, true, len, &uh);
    gzip_file_t *gf = what == GZIP_COMPRESS ? malloc(sizeof(*gf)) : NULL;
    int err = 0;
    if (gf) {
        err = ioloop__http_gzip_head(req, false); /* Vary, Content-Encoding, the deflate state */
        if (!err && req->gzip) {
            req->gzip->no_sync = true;
            *gf = (gzip_file_t){.fd = fd, .offset = (uint64_t)offset, .left = len};
            file_pump(req, 0, gf);
            return 0;
        }
        free(gf); /* no memory for the state: the file goes as it is, Vary already set */
    } else if (what != GZIP_NONE && !uh.vary_has) {
        err = ADD_HEADER(req, "Vary: Accept-Encoding\r\n");
    }
    (void)err; /* without room for Vary the file still goes: a cache keys on less */
    return ioloop__http_response_finish_file(req, fd, offset, len);
}
