/* test_http_gzip.c — dynamic gzip (the server option `gzip`, http/gzip.c):
 * bodies inflate back to what the handler wrote (zlib here, Python's gzip
 * module and curl --compressed in tests/checks/gzip_clients.py, which runs
 * this binary with --serve), and compression stays off where it must:
 * without Accept-Encoding, with q=0, for images, below the minimum length,
 * for 206, 304, HEAD, a handler's own Content-Encoding or Content-Length.
 * A streamed body's first flushed part inflates before the handler finishes.
 * Static files: small ones compressed whole, large ones a block at a time,
 * with a weak ETag; ranges, images and HEAD stay identity.
 * Threading rule: as test_http_util.h; the streaming handler parks its
 * request in an atomic and the test posts the rest to the loop.
 */
#include "test_http_util.h"

#include <zlib.h>

static char text[64 * 1024]; /* compressible text, filled by fill_text */

static void fill_text(void)
{
    size_t n = 0;
    for (int i = 0; n + 64 < sizeof(text); i++)
        n += (size_t)snprintf(text + n, sizeof(text) - n, "line %d: the quick brown fox jumps over the lazy dog\n", i);
    text[n] = '\0';
}

/* ---- handlers ------------------------------------------------------------------ */

static void h_text(ioloop_http_request_t *req, void *arg)
{
    size_t len = (size_t)(uintptr_t)arg;
    ioloop_http_response_header(req, "Content-Type", "text/plain; charset=utf-8");
    ioloop_http_response_write(req, text, len);
    ioloop_http_response_finish(req);
}

static void h_html_default(ioloop_http_request_t *req, void *arg)
{
    (void)arg; /* no Content-Type: the server's text/html */
    ioloop_http_response_write(req, text, 8192);
    ioloop_http_response_finish(req);
}

static void h_png(ioloop_http_request_t *req, void *arg)
{
    (void)arg;
    ioloop_http_response_send(req, 200, "image/png", text, 8192);
}

static void h_svg(ioloop_http_request_t *req, void *arg)
{
    (void)arg;
    ioloop_http_response_send(req, 200, "image/svg+xml", text, 8192);
}

static void h_range(ioloop_http_request_t *req, void *arg)
{
    (void)arg;
    ioloop_http_response_header(req, "Content-Range", "bytes 0-8191/65536");
    ioloop_http_response_send(req, 206, "text/plain", text, 8192);
}

static void h_304(ioloop_http_request_t *req, void *arg)
{
    (void)arg;
    ioloop_http_response_header(req, "ETag", "\"x\"");
    ioloop_http_response_send(req, 304, "text/plain", NULL, 0);
}

static void h_own_encoding(ioloop_http_request_t *req, void *arg)
{
    (void)arg;
    ioloop_http_response_header(req, "Content-Encoding", "br");
    ioloop_http_response_send(req, 200, "text/plain", text, 8192);
}

static void h_own_length(ioloop_http_request_t *req, void *arg)
{
    (void)arg;
    ioloop_http_response_header(req, "Content-Length", "8192");
    ioloop_http_response_send(req, 200, "text/plain", text, 8192);
}

static void h_own_vary(ioloop_http_request_t *req, void *arg)
{
    (void)arg;
    ioloop_http_response_header(req, "Vary", "Cookie");
    ioloop_http_response_send(req, 200, "application/json", text, 8192);
}

/* Streaming: part one is flushed and the request parked; the test inflates
 * it, then posts finish_stream to write part two and finish. */
enum { PART = 5000 };
static _Atomic(ioloop_http_request_t *) parked;

static void h_stream(ioloop_http_request_t *req, void *arg)
{
    (void)arg;
    ioloop_http_response_header(req, "Content-Type", "text/plain");
    ioloop_http_response_write(req, text, PART);
    ioloop_http_response_flush(req, NULL, NULL);
    atomic_store(&parked, req);
}

static void finish_stream(ioloop_t *loop, void *arg)
{
    (void)loop;
    ioloop_http_request_t *req = arg;
    ioloop_http_response_write(req, text + PART, PART);
    ioloop_http_response_flush(req, NULL, NULL);
    ioloop_http_response_write(req, text + 2 * PART, 10); /* a tail smaller than any minimum */
    ioloop_http_response_finish(req);
}

/* ---- helpers -------------------------------------------------------------------- */

/* Inflates a whole gzip member; returns the length, -1 if it is not one. */
static long gunzip(const char *in, size_t in_len, char *out, size_t cap)
{
    z_stream zs = {0};
    assert_int_equal(inflateInit2(&zs, 15 + 16), Z_OK);
    zs.next_in = (Bytef *)in;
    zs.avail_in = (uInt)in_len;
    zs.next_out = (Bytef *)out;
    zs.avail_out = (uInt)cap;
    int rc = inflate(&zs, Z_FINISH);
    long n = rc == Z_STREAM_END && zs.avail_in == 0 ? (long)zs.total_out : -1;
    inflateEnd(&zs);
    return n;
}

static void get(int port, const char *path, const char *extra_headers, tresp_t *r)
{
    char raw[1024];
    snprintf(raw, sizeof(raw), "GET %s HTTP/1.1\r\nHost: a\r\n%s\r\n", path, extra_headers);
    tcli_request(port, raw, r);
}

/* Asserts a gzip'd response that inflates to text[0..len). */
static void expect_gzip(const tresp_t *r, size_t len)
{
    assert_int_equal(r->status, 200);
    assert_true(tresp_has(r, "Content-Encoding", "gzip"));
    assert_true(tresp_has(r, "Vary", "Accept-Encoding"));
    assert_true(r->body_len < len); /* it did compress */
    static char out[sizeof(text)];
    assert_int_equal(gunzip(r->body, r->body_len, out, sizeof(out)), (long)len);
    assert_memory_equal(out, text, len);
}

/* Asserts an identity response carrying text[0..len). */
static void expect_plain(const tresp_t *r, int status, size_t len)
{
    char v[64];
    assert_int_equal(r->status, status);
    assert_false(tresp_header(r, "Content-Encoding", v, sizeof(v)) && !strcasecmp(v, "gzip"));
    assert_int_equal(r->body_len, len);
    assert_memory_equal(r->body, text, len);
}

/* ---- tests ---------------------------------------------------------------------- */

static void test_roundtrip_and_reuse(void **state)
{
    tsrv_t *t = *state;
    /* several on one connection: the pooled deflate state is reset each time */
    int fd = tcli_connect(t->port);
    for (int i = 0; i < 5; i++) {
        tcli_send(fd, i % 2 ? "GET /big HTTP/1.1\r\nHost: a\r\nAccept-Encoding: gzip, deflate\r\n\r\n"
                            : "GET /text HTTP/1.1\r\nHost: a\r\nAccept-Encoding: gzip\r\n\r\n");
        tresp_t r;
        assert_int_equal(tcli_response(fd, &r), 0);
        expect_gzip(&r, i % 2 ? sizeof(text) - 1 : 4096);
        assert_false(r.chunked); /* a known length: Content-Length of the compressed body */
        tresp_free(&r);
    }
    close(fd);
    tresp_t r;
    get(t->port, "/html", "Accept-Encoding: gzip\r\n", &r);
    expect_gzip(&r, 8192);
    tresp_free(&r);
    get(t->port, "/svg", "Accept-Encoding: gzip\r\n", &r);
    expect_gzip(&r, 8192);
    tresp_free(&r);
}

static void test_no_accept_encoding(void **state)
{
    tsrv_t *t = *state;
    tresp_t r;
    get(t->port, "/text", "", &r);
    expect_plain(&r, 200, 4096);
    assert_true(tresp_has(&r, "Vary", "Accept-Encoding")); /* a cache must still key on it */
    tresp_free(&r);
    get(t->port, "/text", "Accept-Encoding: identity, br\r\n", &r);
    expect_plain(&r, 200, 4096);
    tresp_free(&r);
}

static void test_qvalues(void **state)
{
    tsrv_t *t = *state;
    static const struct {
        const char *header;
        bool gzip;
    } cases[] = {
        {"Accept-Encoding: gzip;q=0\r\n", false},
        {"Accept-Encoding: gzip; q=0.000\r\n", false},
        {"Accept-Encoding: deflate, gzip;q=0, *\r\n", false},
        {"Accept-Encoding: *;q=0\r\n", false},
        {"Accept-Encoding: gzip;q=bogus\r\n", false},
        {"Accept-Encoding: gzip;q=0.5\r\n", true},
        {"Accept-Encoding: GZIP;Q=1\r\n", true},
        {"Accept-Encoding: *\r\n", true},
        {"Accept-Encoding: br;q=1.0, x-gzip;q=0.1\r\n", true},
        {"Accept-Encoding: br\r\nAccept-Encoding: gzip\r\n", true}, /* the list split over two lines */
        {"Accept-Encoding: gzipx\r\n", false},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        tresp_t r;
        get(t->port, "/text", cases[i].header, &r);
        if (cases[i].gzip)
            expect_gzip(&r, 4096);
        else
            expect_plain(&r, 200, 4096);
        tresp_free(&r);
    }
}

static void test_never_compressed(void **state)
{
    tsrv_t *t = *state;
    const char *ae = "Accept-Encoding: gzip\r\n";
    char v[64];
    tresp_t r;
    get(t->port, "/png", ae, &r); /* an image: not compressible, no Vary */
    expect_plain(&r, 200, 8192);
    assert_false(tresp_header(&r, "Vary", v, sizeof(v)));
    tresp_free(&r);
    get(t->port, "/small", ae, &r); /* below gzip_min_length */
    expect_plain(&r, 200, 1023);
    assert_true(tresp_has(&r, "Vary", "Accept-Encoding"));
    tresp_free(&r);
    get(t->port, "/range", ae, &r);
    expect_plain(&r, 206, 8192);
    tresp_free(&r);
    get(t->port, "/304", ae, &r);
    expect_plain(&r, 304, 0);
    tresp_free(&r);
    get(t->port, "/own-encoding", ae, &r);
    assert_true(tresp_has(&r, "Content-Encoding", "br"));
    assert_int_equal(r.body_len, 8192);
    assert_memory_equal(r.body, text, 8192);
    tresp_free(&r);
    get(t->port, "/own-length", ae, &r);
    expect_plain(&r, 200, 8192);
    assert_true(tresp_has(&r, "Content-Length", "8192"));
    tresp_free(&r);
    /* HEAD: no body to compress, Content-Length of the identity body */
    int fd = tcli_connect(t->port);
    tcli_send(fd, "HEAD /text HTTP/1.1\r\nHost: a\r\nAccept-Encoding: gzip\r\n\r\n");
    assert_int_equal(tcli_response_ex(fd, &r, true, false), 0);
    assert_int_equal(r.status, 200);
    assert_false(tresp_header(&r, "Content-Encoding", v, sizeof(v)));
    assert_true(tresp_has(&r, "Content-Length", "4096"));
    assert_true(tresp_has(&r, "Vary", "Accept-Encoding"));
    tresp_free(&r);
    tcli_send(fd, "GET /text HTTP/1.1\r\nHost: a\r\nAccept-Encoding: gzip\r\n\r\n"); /* still in step */
    assert_int_equal(tcli_response(fd, &r), 0);
    expect_gzip(&r, 4096);
    tresp_free(&r);
    close(fd);
}

static void test_handler_vary_kept(void **state)
{
    tsrv_t *t = *state;
    tresp_t r;
    get(t->port, "/own-vary", "Accept-Encoding: gzip\r\n", &r);
    assert_true(tresp_has(&r, "Content-Encoding", "gzip"));
    /* a second Vary line: a list field may be split over lines (RFC 9110 5.3) */
    assert_non_null(strstr(r.head, "Vary: Cookie\r\n"));
    assert_non_null(strstr(r.head, "Vary: Accept-Encoding\r\n"));
    tresp_free(&r);
}

/* Reads one chunk (size line, data, CRLF) into buf; returns its size. */
static size_t read_chunk(int fd, char *buf, size_t cap)
{
    char line[64];
    assert_true(tcli_line(fd, line, sizeof(line)) > 0);
    size_t n = strtoul(line, NULL, 16);
    assert_true(n <= cap);
    for (size_t i = 0; i < n; i++)
        assert_int_equal(tcli_getc(fd, &buf[i]), 1);
    assert_true(tcli_line(fd, line, sizeof(line)) == 2);
    return n;
}

static void test_streaming_chunks_inflate_as_flushed(void **state)
{
    tsrv_t *t = *state;
    atomic_store(&parked, NULL);
    int fd = tcli_connect(t->port);
    tcli_send(fd, "GET /stream HTTP/1.1\r\nHost: a\r\nAccept-Encoding: gzip\r\n\r\n");
    char line[1024], head[4096] = "";
    do {
        assert_true(tcli_line(fd, line, sizeof(line)) > 0);
        strncat(head, line, sizeof(head) - strlen(head) - 1);
    } while (strcmp(line, "\r\n") != 0);
    assert_non_null(strstr(head, "Transfer-Encoding: chunked\r\n"));
    assert_non_null(strstr(head, "Content-Encoding: gzip\r\n"));
    assert_non_null(strstr(head, "Vary: Accept-Encoding\r\n"));

    /* the handler has not finished: what was flushed inflates on its own */
    static char chunk[65536], out[65536];
    size_t n = read_chunk(fd, chunk, sizeof(chunk));
    assert_true(n > 0 && n < PART);
    z_stream zs = {0};
    assert_int_equal(inflateInit2(&zs, 15 + 16), Z_OK);
    zs.next_in = (Bytef *)chunk;
    zs.avail_in = (uInt)n;
    zs.next_out = (Bytef *)out;
    zs.avail_out = sizeof(out);
    assert_int_equal(inflate(&zs, Z_SYNC_FLUSH), Z_OK);
    assert_int_equal(zs.total_out, PART);
    assert_memory_equal(out, text, PART);
    ioloop_http_request_t *req;
    while (!(req = atomic_load(&parked)))
        tu_sleep_ms(1); /* the handler parks right after its flush */
    assert_non_null(req);
    assert_int_equal(ioloop_add_callback(t->loop, finish_stream, req), 0);

    /* the rest: chunks until the terminal one, the stream ends with the member */
    int rc = Z_OK;
    for (;;) {
        n = read_chunk(fd, chunk, sizeof(chunk));
        if (n == 0)
            break;
        zs.next_in = (Bytef *)chunk;
        zs.avail_in = (uInt)n;
        rc = inflate(&zs, Z_SYNC_FLUSH);
        assert_true(rc == Z_OK || rc == Z_STREAM_END);
    }
    assert_int_equal(rc, Z_STREAM_END);
    assert_int_equal(zs.total_out, 2 * PART + 10);
    assert_memory_equal(out, text, 2 * PART + 10);
    inflateEnd(&zs);
    /* keep-alive still in step */
    tcli_send(fd, "GET /text HTTP/1.1\r\nHost: a\r\nAccept-Encoding: gzip\r\n\r\n");
    tresp_t r;
    assert_int_equal(tcli_response(fd, &r), 0);
    expect_gzip(&r, 4096);
    tresp_free(&r);
    close(fd);
}

/* ---- options ---------------------------------------------------------------------- */

static void test_off_by_default(void **state)
{
    (void)state;
    tsrv_t t;
    tsrv_init(&t, NULL);
    tsrv_route(&t, "/text", (ioloop_http_route_t){.get = h_text, .arg = (void *)(uintptr_t)4096});
    tsrv_start(&t);
    tresp_t r;
    char v[64];
    get(t.port, "/text", "Accept-Encoding: gzip\r\n", &r);
    expect_plain(&r, 200, 4096);
    assert_false(tresp_header(&r, "Vary", v, sizeof(v)));
    tresp_free(&r);
    tsrv_stop(&t);
}

static void test_options(void **state)
{
    (void)state;
    ioloop_http_server_t *refused = NULL;
    assert_int_equal(ioloop_http_server_new(&(ioloop_http_server_options_t){.gzip = true, .gzip_level = 10}, &refused),
                     -EINVAL);
    assert_null(refused);
    assert_int_equal(ioloop_http_server_new(&(ioloop_http_server_options_t){.gzip = true, .gzip_level = -1}, &refused),
                     -EINVAL);
    /* a level, a minimum and a type list of one's own */
    static const char *const types[] = {"application/x-custom", "image/*", NULL};
    tsrv_t t;
    tsrv_init(
        &t, &(ioloop_http_server_options_t){.gzip = true, .gzip_level = 1, .gzip_min_length = 10, .gzip_types = types});
    tsrv_route(&t, "/text", (ioloop_http_route_t){.get = h_text, .arg = (void *)(uintptr_t)100});
    tsrv_route(&t, "/png", (ioloop_http_route_t){.get = h_png});
    tsrv_start(&t);
    tresp_t r;
    get(t.port, "/png", "Accept-Encoding: gzip\r\n", &r);
    expect_gzip(&r, 8192); /* image/ * listed */
    tresp_free(&r);
    get(t.port, "/text", "Accept-Encoding: gzip\r\n", &r);
    expect_plain(&r, 200, 100); /* text/ is not in this list */
    tresp_free(&r);
    tsrv_stop(&t);
}

/* ---- static files (the static route) through gzip ------------------------------------ */

static void write_file(const char *path, const void *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, len, f), len);
    fclose(f);
}

static void test_static_files(void **state)
{
    (void)state;
    char dir[] = "/tmp/test_http_gzip.XXXXXX", path[128];
    assert_non_null(mkdtemp(dir));
    /* past the static route's in-memory size, and more than one of gzip.c's 128 KiB blocks */
    enum { BIG = 3 * (sizeof(text) - 1) };
    static char big[BIG], out[BIG];
    for (int i = 0; i < 3; i++)
        memcpy(big + i * (sizeof(text) - 1), text, sizeof(text) - 1);
    snprintf(path, sizeof(path), "%s/big.txt", dir);
    write_file(path, big, BIG);
    snprintf(path, sizeof(path), "%s/small.txt", dir);
    write_file(path, text, 4096);
    snprintf(path, sizeof(path), "%s/pic.png", dir);
    write_file(path, text, 4096);
    tsrv_t t;
    tsrv_init(&t, &(ioloop_http_server_options_t){.gzip = true});
    assert_int_equal(ioloop_http_static_route(t.server, "/s/", dir, NULL), 0);
    tsrv_start(&t);
    const char *ae = "Accept-Encoding: gzip\r\n";
    tresp_t r;
    char etag[128], v[128];
    for (int i = 0; i < 2; i++) { /* twice: the second on a warm pool */
        get(t.port, "/s/big.txt", ae, &r);
        assert_true(tresp_has(&r, "Content-Encoding", "gzip"));
        assert_true(r.chunked); /* streamed a block at a time */
        assert_int_equal(gunzip(r.body, r.body_len, out, sizeof(out)), BIG);
        assert_memory_equal(out, big, BIG);
        assert_true(tresp_header(&r, "ETag", etag, sizeof(etag)));
        assert_true(strncmp(etag, "W/\"", 3) == 0); /* the gzip'd bytes are another representation */
        tresp_free(&r);
    }
    get(t.port, "/s/small.txt", ae, &r);
    expect_gzip(&r, 4096);
    assert_false(r.chunked);
    tresp_free(&r);
    /* identity: no Accept-Encoding, a range, an image; the strong ETag stays */
    get(t.port, "/s/big.txt", "", &r);
    assert_int_equal(r.status, 200);
    assert_false(tresp_header(&r, "Content-Encoding", v, sizeof(v)));
    assert_int_equal(r.body_len, BIG);
    assert_true(tresp_header(&r, "ETag", v, sizeof(v)) && v[0] == '"');
    assert_true(tresp_has(&r, "Vary", "Accept-Encoding"));
    assert_string_equal(v, etag + 2);
    tresp_free(&r);
    get(t.port, "/s/big.txt", "Accept-Encoding: gzip\r\nRange: bytes=0-999\r\n", &r);
    expect_plain(&r, 206, 1000);
    tresp_free(&r);
    get(t.port, "/s/pic.png", ae, &r);
    expect_plain(&r, 200, 4096);
    tresp_free(&r);
    /* the weak ETag revalidates: 304, no body, no Content-Encoding */
    char inm[256];
    snprintf(inm, sizeof(inm), "Accept-Encoding: gzip\r\nIf-None-Match: %s\r\n", etag);
    get(t.port, "/s/big.txt", inm, &r);
    expect_plain(&r, 304, 0);
    tresp_free(&r);
    /* HEAD of the large file: its identity length, no body */
    int fd = tcli_connect(t.port);
    tcli_send(fd, "HEAD /s/big.txt HTTP/1.1\r\nHost: a\r\nAccept-Encoding: gzip\r\n\r\n");
    assert_int_equal(tcli_response_ex(fd, &r, true, false), 0);
    assert_false(tresp_header(&r, "Content-Encoding", v, sizeof(v)));
    tresp_free(&r);
    close(fd);
    tsrv_stop(&t);
    const char *names[] = {"big.txt", "small.txt", "pic.png"};
    for (int i = 0; i < 3; i++) {
        snprintf(path, sizeof(path), "%s/%s", dir, names[i]);
        unlink(path);
    }
    rmdir(dir);
}

/* ---- the shared server ---------------------------------------------------------------- */

static void add_routes(tsrv_t *t)
{
    tsrv_route(t, "/text", (ioloop_http_route_t){.get = h_text, .arg = (void *)(uintptr_t)4096});
    tsrv_route(t, "/big", (ioloop_http_route_t){.get = h_text, .arg = (void *)(uintptr_t)(sizeof(text) - 1)});
    tsrv_route(t, "/small", (ioloop_http_route_t){.get = h_text, .arg = (void *)(uintptr_t)1023});
    tsrv_route(t, "/html", (ioloop_http_route_t){.get = h_html_default});
    tsrv_route(t, "/png", (ioloop_http_route_t){.get = h_png});
    tsrv_route(t, "/svg", (ioloop_http_route_t){.get = h_svg});
    tsrv_route(t, "/range", (ioloop_http_route_t){.get = h_range});
    tsrv_route(t, "/304", (ioloop_http_route_t){.get = h_304});
    tsrv_route(t, "/own-encoding", (ioloop_http_route_t){.get = h_own_encoding});
    tsrv_route(t, "/own-length", (ioloop_http_route_t){.get = h_own_length});
    tsrv_route(t, "/own-vary", (ioloop_http_route_t){.get = h_own_vary});
}

static int setup(void **state)
{
    static tsrv_t t;
    tsrv_init(&t, &(ioloop_http_server_options_t){.gzip = true});
    add_routes(&t);
    tsrv_route(&t, "/stream", (ioloop_http_route_t){.get = h_stream});
    tsrv_start(&t);
    *state = &t;
    return 0;
}

static int teardown(void **state)
{
    tsrv_stop(*state);
    return 0;
}

/* --serve: the same routes for the real clients of tests/checks/gzip_clients.py;
 * prints the port, serves until stdin closes. */
static int serve(void)
{
    tsrv_t t;
    tsrv_init(&t, &(ioloop_http_server_options_t){.gzip = true});
    add_routes(&t);
    tsrv_start(&t);
    printf("%d\n", t.port);
    fflush(stdout);
    char buf[64];
    while (fread(buf, 1, sizeof(buf), stdin) > 0)
        ;
    tsrv_stop(&t);
    return 0;
}

int main(int argc, char **argv)
{
    fill_text();
    if (argc > 1 && !strcmp(argv[1], "--serve"))
        return serve();
    const struct CMUnitTest shared[] = {
        cmocka_unit_test(test_roundtrip_and_reuse),
        cmocka_unit_test(test_no_accept_encoding),
        cmocka_unit_test(test_qvalues),
        cmocka_unit_test(test_never_compressed),
        cmocka_unit_test(test_handler_vary_kept),
        cmocka_unit_test(test_streaming_chunks_inflate_as_flushed),
    };
    const struct CMUnitTest alone[] = {
        cmocka_unit_test(test_off_by_default),
        cmocka_unit_test(test_options),
        cmocka_unit_test(test_static_files),
    };
    int failed = cmocka_run_group_tests_name("gzip server", shared, setup, teardown);
    return failed + cmocka_run_group_tests_name("gzip options", alone, NULL, NULL);
}
