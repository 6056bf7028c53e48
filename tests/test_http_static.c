/* test_http_static.c — ioloop_http_static_route against a raw-socket client:
 * identical bytes for 0 B, 1 B, 4 KiB, 10 MiB and a 1 GiB sparse file (the
 * large ones through sendfile; the 1 GiB one is skipped under sanitizers and
 * valgrind, where it is only slow), Content-Type, Cache-Control, 304 with
 * If-None-Match and If-Modified-Since, ranges (206 for bytes=0-0, -1, 100-;
 * 416 with bytes * /size; several ranges: the whole file; If-Range), HEAD,
 * every traversal form (.., %2e%2e, %2f, %00, backslashes, //, symlinks out
 * of the root unless follow_symlinks), a file deleted before it is opened,
 * directories (redirect, index.html, 403, the listing with escaped names),
 * gzip_static, and a slow client of a large file: the server's memory stays
 * flat.
 *
 * Threading rule: the server runs on its runtime's loop thread; the client
 * and every assertion on the test's main thread (the deletion hook runs on
 * an executor thread and only unlinks).
 */
#define _GNU_SOURCE
#include "test_http_util.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <time.h>

/* White-box (http/internal.h): runs on the executor before a path is opened. */
typedef void (*ioloop__http_static_hook_fn)(const char *relative_path);
extern _Atomic(ioloop__http_static_hook_fn) ioloop__http_static_test_hook;
extern atomic_bool ioloop__http_static_no_openat2; /* the realpath fallback */

static char root[64];    /* the served directory */
static char outside[96]; /* a file next to it, outside the root */
static unsigned char *content_10m;

enum { TEN_MIB = 10 * 1024 * 1024 };

static void write_file(const char *name, const void *data, size_t len)
{
    char path[256];
    snprintf(path, sizeof(path), "%s/%s", root, name);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    assert_true(fd >= 0);
    const char *p = data;
    while (len) {
        ssize_t n = write(fd, p, len);
        assert_true(n > 0);
        p += n;
        len -= (size_t)n;
    }
    close(fd);
}

static int group_setup(void **state)
{
    (void)state;
    char base[] = "/tmp/ioloop-static-XXXXXX";
    assert_non_null(mkdtemp(base));
    snprintf(root, sizeof(root), "%s/root", base);
    assert_int_equal(mkdir(root, 0755), 0);
    snprintf(outside, sizeof(outside), "%s/secret.txt", base);
    int fd = open(outside, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    assert_int_equal(write(fd, "SECRET", 6), 6);
    close(fd);
    write_file("empty.txt", "", 0);
    write_file("one.txt", "x", 1);
    char k4[4096];
    for (size_t i = 0; i < sizeof(k4); i++)
        k4[i] = (char)('a' + i % 26);
    write_file("f4k.css", k4, sizeof(k4));
    content_10m = malloc(TEN_MIB);
    uint32_t x = 88172645u;
    for (size_t i = 0; i < TEN_MIB; i++) {
        x ^= x << 13, x ^= x >> 17, x ^= x << 5;
        content_10m[i] = (unsigned char)x;
    }
    write_file("f10m.bin", content_10m, TEN_MIB);
    write_file("a.txt", "plain text, not compressed", 26);
    write_file("a.txt.gz", "GZIPPED-BYTES", 13);
    write_file("strange.unknownext", "?", 1);
    char path[256];
    snprintf(path, sizeof(path), "%s/sub", root);
    assert_int_equal(mkdir(path, 0755), 0);
    write_file("sub/index.html", "<p>index</p>", 12);
    snprintf(path, sizeof(path), "%s/bare", root);
    assert_int_equal(mkdir(path, 0755), 0);
    write_file("bare/<b>&\"q\".txt", "e", 1);
    snprintf(path, sizeof(path), "%s/bare/inner", root);
    assert_int_equal(mkdir(path, 0755), 0);
    snprintf(path, sizeof(path), "%s/escape.txt", root);
    assert_int_equal(symlink(outside, path), 0);
    snprintf(path, sizeof(path), "%s/updir", root);
    assert_int_equal(symlink("..", path), 0);
    snprintf(path, sizeof(path), "%s/inside.txt", root);
    assert_int_equal(symlink("one.txt", path), 0);
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    char cmd[160];
    snprintf(cmd, sizeof(cmd), "rm -rf '%.*s'", (int)(strrchr(root, '/') - root), root);
    assert_int_equal(system(cmd), 0);
    free(content_10m);
    return 0;
}

static void start(tsrv_t *t, const ioloop_http_static_options_t *opts)
{
    tsrv_init(t, NULL);
    assert_int_equal(ioloop_http_static_route(t->server, "/static/", root, opts), 0);
    tsrv_start(t);
}

static void get(int fd, const char *target, const char *extra_headers, tresp_t *r)
{
    char req[1024];
    snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nHost: t\r\n%s\r\n", target, extra_headers ? extra_headers : "");
    tcli_send(fd, req);
    assert_int_equal(tcli_response(fd, r), 0);
}

static int status_of(int port, const char *target)
{
    int fd = tcli_connect(port);
    tresp_t r;
    get(fd, target, NULL, &r);
    int status = r.status;
    tresp_free(&r);
    close(fd);
    return status;
}

/* ---- bytes ------------------------------------------------------------------------ */

static void test_bytes_identical(void **state)
{
    (void)state;
    tsrv_t t;
    start(&t, NULL);
    int fd = tcli_connect(t.port); /* one keep-alive connection for all of them */
    tresp_t r;
    char v[128];
    get(fd, "/static/empty.txt", NULL, &r);
    assert_int_equal(r.status, 200);
    assert_int_equal(r.body_len, 0);
    assert_true(tresp_has(&r, "Content-Length", "0"));
    tresp_free(&r);
    get(fd, "/static/one.txt", NULL, &r);
    assert_int_equal(r.status, 200);
    assert_int_equal(r.body_len, 1);
    assert_memory_equal(r.body, "x", 1);
    assert_true(tresp_has(&r, "Content-Type", "text/plain; charset=utf-8"));
    tresp_free(&r);
    get(fd, "/static/f4k.css", NULL, &r);
    assert_int_equal(r.status, 200);
    assert_int_equal(r.body_len, 4096);
    for (size_t i = 0; i < 4096; i++)
        assert_int_equal(r.body[i], (char)('a' + i % 26));
    assert_true(tresp_has(&r, "Content-Type", "text/css; charset=utf-8"));
    assert_true(tresp_has(&r, "Accept-Ranges", "bytes"));
    assert_false(tresp_header(&r, "Cache-Control", v, sizeof(v)));
    tresp_free(&r);
    get(fd, "/static/f10m.bin", NULL, &r);
    assert_int_equal(r.status, 200);
    assert_int_equal(r.body_len, TEN_MIB);
    assert_memory_equal(r.body, content_10m, TEN_MIB);
    assert_true(tresp_has(&r, "Content-Type", "application/octet-stream"));
    tresp_free(&r);
    get(fd, "/static/strange.unknownext?query=1", NULL, &r);
    assert_int_equal(r.status, 200);
    assert_true(tresp_has(&r, "Content-Type", "application/octet-stream"));
    tresp_free(&r);
    get(fd, "/static/missing.txt", NULL, &r);
    assert_int_equal(r.status, 404);
    tresp_free(&r);
    close(fd);
    tsrv_stop(&t);
}

/* Connection: close and HTTP/1.0: the file goes out whole before our FIN
 * (the shutdown waits for the file entry, which follows the head). */
static void test_file_then_close(void **state)
{
    (void)state;
    tsrv_t t;
    start(&t, NULL);
    const char *reqs[] = {"GET /static/f10m.bin HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
                          "GET /static/f10m.bin HTTP/1.0\r\n\r\n"};
    for (int i = 0; i < 2; i++) {
        int fd = tcli_connect(t.port);
        tcli_send(fd, reqs[i]);
        tresp_t r;
        assert_int_equal(tcli_response(fd, &r), 0);
        assert_int_equal(r.status, 200);
        assert_int_equal(r.body_len, TEN_MIB);
        assert_memory_equal(r.body, content_10m, TEN_MIB);
        assert_true(tresp_has(&r, "Connection", "close"));
        assert_int_equal(tcli_closed(fd, 3000, NULL), 1);
        tresp_free(&r);
        close(fd);
    }
    tsrv_stop(&t);
}

static bool huge_case_skipped(void)
{
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
    return true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
    return true;
#endif
#endif
    const char *preload = getenv("LD_PRELOAD");
    return getenv("IOLOOP_SKIP_HUGE") || (preload && strstr(preload, "valgrind"));
}

/* A 1 GiB sparse file with markers: the client checks every byte as it
 * reads (zeros but the markers) and never holds more than a buffer. */
static void test_one_gib_sparse_file(void **state)
{
    (void)state;
    if (huge_case_skipped()) {
        fprintf(stderr, "skipped: the 1 GiB file under a sanitizer or valgrind\n");
        return;
    }
    const uint64_t size = 1ull << 30;
    const uint64_t marks[] = {0, 123456789, size / 2, size - 1};
    char path[256];
    snprintf(path, sizeof(path), "%s/huge.bin", root);
    int hfd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    assert_true(hfd >= 0);
    assert_int_equal(ftruncate(hfd, (off_t)size), 0);
    for (size_t i = 0; i < 4; i++)
        assert_int_equal(pwrite(hfd, "M", 1, (off_t)marks[i]), 1);
    close(hfd);
    tsrv_t t;
    start(&t, NULL);
    int fd = tcli_connect(t.port);
    tcli_send(fd, "GET /static/huge.bin HTTP/1.1\r\nHost: t\r\n\r\n");
    char line[1024];
    char head[4096] = "";
    while (tcli_line(fd, line, sizeof(line)) > 2)
        strncat(head, line, sizeof(head) - strlen(head) - 1);
    assert_non_null(strstr(head, "HTTP/1.1 200"));
    assert_non_null(strstr(head, "Content-Length: 1073741824\r\n"));
    enum { BUF = 1 << 20 };
    char *buf = malloc(BUF);
    assert_non_null(buf);
    uint64_t got = 0, nonzero = 0;
    size_t next_mark = 0;
    while (got < size) {
        ssize_t n = recv(fd, buf, BUF, 0);
        assert_true(n > 0);
        for (ssize_t i = 0; i < n; i++) {
            if (buf[i] == 0)
                continue;
            assert_true(next_mark < 4);
            assert_int_equal(got + (uint64_t)i, marks[next_mark]);
            assert_int_equal(buf[i], 'M');
            next_mark++;
            nonzero++;
        }
        got += (uint64_t)n;
    }
    assert_int_equal(got, size);
    assert_int_equal(nonzero, 4);
    free(buf);
    /* still in sync: the next response on the same connection */
    tresp_t r;
    get(fd, "/static/one.txt", NULL, &r);
    assert_int_equal(r.status, 200);
    assert_memory_equal(r.body, "x", 1);
    tresp_free(&r);
    close(fd);
    tsrv_stop(&t);
    unlink(path);
}

/* ---- conditional ------------------------------------------------------------------ */

static void test_conditional_304(void **state)
{
    (void)state;
    ioloop_http_static_options_t opts = {.cache_control = "public, max-age=60"};
    tsrv_t t;
    start(&t, &opts);
    int fd = tcli_connect(t.port);
    tresp_t r;
    char etag[128], lastmod[64], hdrs[512];
    const char *files[] = {"/static/f4k.css", "/static/f10m.bin"}; /* copied and sendfile bodies */
    for (int i = 0; i < 2; i++) {
        get(fd, files[i], NULL, &r);
        assert_int_equal(r.status, 200);
        assert_true(tresp_header(&r, "ETag", etag, sizeof(etag)));
        assert_true(tresp_header(&r, "Last-Modified", lastmod, sizeof(lastmod)));
        assert_true(tresp_has(&r, "Cache-Control", "public, max-age=60"));
        assert_true(etag[0] == '"' && etag[strlen(etag) - 1] == '"'); /* strong */
        tresp_free(&r);

        snprintf(hdrs, sizeof(hdrs), "If-None-Match: \"other\", %s\r\n", etag);
        get(fd, files[i], hdrs, &r);
        assert_int_equal(r.status, 304);
        assert_int_equal(r.body_len, 0);
        assert_true(tresp_has(&r, "ETag", etag));
        assert_true(tresp_has(&r, "Cache-Control", "public, max-age=60"));
        tresp_free(&r);

        snprintf(hdrs, sizeof(hdrs), "If-Modified-Since: %s\r\n", lastmod);
        get(fd, files[i], hdrs, &r);
        assert_int_equal(r.status, 304);
        assert_int_equal(r.body_len, 0);
        tresp_free(&r);

        /* older than the file: the body */
        get(fd, files[i], "If-Modified-Since: Sun, 06 Nov 1994 08:49:37 GMT\r\n", &r);
        assert_int_equal(r.status, 200);
        tresp_free(&r);
        /* a non-matching If-None-Match overrides a matching If-Modified-Since */
        snprintf(hdrs, sizeof(hdrs), "If-None-Match: \"nope\"\r\nIf-Modified-Since: %s\r\n", lastmod);
        get(fd, files[i], hdrs, &r);
        assert_int_equal(r.status, 200);
        tresp_free(&r);
    }
    /* the connection is still in sync after the bodiless 304s */
    get(fd, "/static/one.txt", NULL, &r);
    assert_int_equal(r.status, 200);
    assert_memory_equal(r.body, "x", 1);
    tresp_free(&r);
    close(fd);
    tsrv_stop(&t);
}

/* ---- ranges ------------------------------------------------------------------------- */

static void expect_range(int fd, const char *file, const char *range, int status, const char *content_range,
                         const void *body, size_t len)
{
    char hdrs[256];
    snprintf(hdrs, sizeof(hdrs), "Range: %s\r\n", range);
    tresp_t r;
    get(fd, file, hdrs, &r);
    if (r.status != status)
        fprintf(stderr, "%s %s: %s\n", file, range, r.head);
    assert_int_equal(r.status, status);
    if (content_range)
        assert_true(tresp_has(&r, "Content-Range", content_range));
    assert_int_equal(r.body_len, len);
    if (len)
        assert_memory_equal(r.body, body, len);
    tresp_free(&r);
}

static void test_ranges(void **state)
{
    (void)state;
    tsrv_t t;
    start(&t, NULL);
    int fd = tcli_connect(t.port);
    char k4[4096];
    for (size_t i = 0; i < sizeof(k4); i++)
        k4[i] = (char)('a' + i % 26);
    expect_range(fd, "/static/f4k.css", "bytes=0-0", 206, "bytes 0-0/4096", k4, 1);
    expect_range(fd, "/static/f4k.css", "bytes=-1", 206, "bytes 4095-4095/4096", k4 + 4095, 1);
    expect_range(fd, "/static/f4k.css", "bytes=100-", 206, "bytes 100-4095/4096", k4 + 100, 3996);
    expect_range(fd, "/static/f4k.css", "bytes=10-19", 206, "bytes 10-19/4096", k4 + 10, 10);
    expect_range(fd, "/static/f4k.css", "bytes=4000-9999", 206, "bytes 4000-4095/4096", k4 + 4000, 96);
    expect_range(fd, "/static/f4k.css", "bytes=-99999", 206, "bytes 0-4095/4096", k4, 4096);
    expect_range(fd, "/static/f4k.css", "bytes=4096-", 416, "bytes */4096", NULL, 0);
    expect_range(fd, "/static/f4k.css", "bytes=-0", 416, "bytes */4096", NULL, 0);
    expect_range(fd, "/static/empty.txt", "bytes=0-", 416, "bytes */0", NULL, 0);
    /* several ranges: the whole file (Tornado); a malformed one too */
    expect_range(fd, "/static/f4k.css", "bytes=0-1,5-6", 200, NULL, k4, 4096);
    expect_range(fd, "/static/f4k.css", "bytes=9-3", 200, NULL, k4, 4096);
    expect_range(fd, "/static/f4k.css", "items=0-1", 200, NULL, k4, 4096);
    /* through sendfile: offsets into the large file */
    expect_range(fd, "/static/f10m.bin", "bytes=100-", 206, "bytes 100-10485759/10485760", content_10m + 100,
                 TEN_MIB - 100);
    expect_range(fd, "/static/f10m.bin", "bytes=-1", 206, "bytes 10485759-10485759/10485760", content_10m + TEN_MIB - 1,
                 1);
    expect_range(fd, "/static/f10m.bin", "bytes=5000000-5065535", 206, "bytes 5000000-5065535/10485760",
                 content_10m + 5000000, 65536);
    /* If-Range with another validator: the whole file */
    tresp_t r;
    get(fd, "/static/f4k.css", "Range: bytes=0-0\r\nIf-Range: \"stale\"\r\n", &r);
    assert_int_equal(r.status, 200);
    assert_int_equal(r.body_len, 4096);
    tresp_free(&r);
    close(fd);
    tsrv_stop(&t);
}

/* ---- HEAD ------------------------------------------------------------------------------ */

static void test_head(void **state)
{
    (void)state;
    tsrv_t t;
    start(&t, NULL);
    int fd = tcli_connect(t.port);
    const char *files[] = {"/static/f10m.bin", "/static/f4k.css", "/static/empty.txt"};
    const char *lengths[] = {"10485760", "4096", "0"};
    for (int i = 0; i < 3; i++) {
        char req[256];
        snprintf(req, sizeof(req), "HEAD %s HTTP/1.1\r\nHost: t\r\n\r\n", files[i]);
        tcli_send(fd, req);
        tresp_t r;
        assert_int_equal(tcli_response_ex(fd, &r, true, false), 0);
        assert_int_equal(r.status, 200);
        assert_true(tresp_has(&r, "Content-Length", lengths[i]));
        tresp_free(&r);
    }
    /* no body bytes were sent: the next response starts right here */
    tresp_t r;
    get(fd, "/static/one.txt", NULL, &r);
    assert_int_equal(r.status, 200);
    assert_memory_equal(r.body, "x", 1);
    tresp_free(&r);
    /* HEAD of a range */
    tcli_send(fd, "HEAD /static/f10m.bin HTTP/1.1\r\nHost: t\r\nRange: bytes=100-\r\n\r\n");
    assert_int_equal(tcli_response_ex(fd, &r, true, false), 0);
    assert_int_equal(r.status, 206);
    assert_true(tresp_has(&r, "Content-Length", "10485660"));
    tresp_free(&r);
    get(fd, "/static/one.txt", NULL, &r);
    assert_int_equal(r.status, 200);
    tresp_free(&r);
    close(fd);
    tsrv_stop(&t);
}

/* ---- traversal ----------------------------------------------------------------------- */

static void traversal_case(bool no_openat2)
{
    atomic_store(&ioloop__http_static_no_openat2, no_openat2);
    tsrv_t t;
    start(&t, NULL);
    const char *forms[] = {
        "/static/../secret.txt",
        "/static/sub/../../secret.txt",
        "/static/%2e%2e/secret.txt",
        "/static/%2E%2E/secret.txt",
        "/static/.%2e/secret.txt",
        "/static/sub/%2e%2e%2f%2e%2e%2fsecret.txt",
        "/static/..%2fsecret.txt",
        "/static/sub%2findex.html",
        "/static/one.txt%00.css",
        "/static/%00",
        "/static/..%5csecret.txt",
        "/static/sub%5c..%5c..%5csecret.txt",
        "/static//etc/passwd",
        "/static/./one.txt",
        "/static/sub//index.html",
        "/static/%zz",
        "/static/%2",
        "/static/escape.txt",       /* a symlink to a file outside the root */
        "/static/updir/secret.txt", /* a symlink to the root's parent */
    };
    for (size_t i = 0; i < sizeof(forms) / sizeof(forms[0]); i++) {
        int status = status_of(t.port, forms[i]);
        if (status != 404 && status != 403)
            fprintf(stderr, "%s: %d\n", forms[i], status);
        assert_true(status == 404 || status == 403);
    }
    assert_int_equal(status_of(t.port, "/static/escape.txt"), 403);
    /* a raw backslash: refused by the parser (400) or by us (404), never served */
    int bs = status_of(t.port, "/static/..\\secret.txt");
    assert_true(bs == 400 || bs == 404);
    /* a symlink that stays inside is fine */
    assert_int_equal(status_of(t.port, "/static/inside.txt"), 200);
    tsrv_stop(&t);

    /* follow_symlinks: the link out is followed, ".." still is not */
    ioloop_http_static_options_t opts = {.follow_symlinks = true};
    start(&t, &opts);
    int fd = tcli_connect(t.port);
    tresp_t r;
    get(fd, "/static/escape.txt", NULL, &r);
    assert_int_equal(r.status, 200);
    assert_memory_equal(r.body, "SECRET", 6);
    tresp_free(&r);
    close(fd);
    assert_int_equal(status_of(t.port, "/static/../secret.txt"), 404);
    assert_int_equal(status_of(t.port, "/static/%2e%2e/secret.txt"), 404);
    tsrv_stop(&t);
    atomic_store(&ioloop__http_static_no_openat2, false);
}

static void test_traversal_refused(void **state)
{
    (void)state;
    traversal_case(false);
}

/* The same on the path for kernels without openat2 (open, then where the fd is). */
static void test_traversal_refused_without_openat2(void **state)
{
    (void)state;
    traversal_case(true);
}

/* ---- a file deleted before it is opened ------------------------------------------------ */

static char doomed[256];

static void delete_hook(const char *rel)
{
    if (!strcmp(rel, "doomed.txt"))
        unlink(doomed);
}

static void test_deleted_between_stat_and_open(void **state)
{
    (void)state;
    write_file("doomed.txt", "soon gone", 9);
    snprintf(doomed, sizeof(doomed), "%s/doomed.txt", root);
    struct stat sb;
    assert_int_equal(stat(doomed, &sb), 0);
    tsrv_t t;
    start(&t, NULL);
    atomic_store(&ioloop__http_static_test_hook, delete_hook);
    int fd = tcli_connect(t.port);
    tresp_t r;
    get(fd, "/static/doomed.txt", NULL, &r);
    assert_int_equal(r.status, 404);
    tresp_free(&r);
    get(fd, "/static/one.txt", NULL, &r); /* and the server goes on */
    assert_int_equal(r.status, 200);
    tresp_free(&r);
    atomic_store(&ioloop__http_static_test_hook, (ioloop__http_static_hook_fn)NULL);
    close(fd);
    tsrv_stop(&t);
}

/* ---- the small-file cache ------------------------------------------------------------------ */

static atomic_int hook_calls;

static void count_hook(const char *rel)
{
    (void)rel;
    atomic_fetch_add(&hook_calls, 1);
}

/* With cache_valid, a small file is read once per period: later requests
 * are answered from memory (no executor job: the hook does not run; the
 * file may even be gone), and after the period it is read again. */
static void test_small_file_cache(void **state)
{
    (void)state;
    write_file("cached.txt", "version 1", 9);
    char path[256];
    snprintf(path, sizeof(path), "%s/cached.txt", root);
    ioloop_http_static_options_t opts = {.cache_valid = IOLOOP_MSEC(300)};
    tsrv_t t;
    start(&t, &opts);
    atomic_store(&hook_calls, 0);
    atomic_store(&ioloop__http_static_test_hook, count_hook);
    int fd = tcli_connect(t.port);
    tresp_t r;
    char etag[128], hdrs[256];
    get(fd, "/static/cached.txt", NULL, &r);
    assert_string_equal(r.body, "version 1");
    assert_true(tresp_header(&r, "ETag", etag, sizeof(etag)));
    tresp_free(&r);
    assert_int_equal(atomic_load(&hook_calls), 1);
    unlink(path);
    get(fd, "/static/cached.txt", "Range: bytes=0-6\r\n", &r); /* from memory, ranges included */
    assert_int_equal(r.status, 206);
    assert_string_equal(r.body, "version");
    tresp_free(&r);
    snprintf(hdrs, sizeof(hdrs), "If-None-Match: %s\r\n", etag);
    get(fd, "/static/cached.txt", hdrs, &r);
    assert_int_equal(r.status, 304);
    tresp_free(&r);
    assert_int_equal(atomic_load(&hook_calls), 1);
    tu_sleep_ms(400);
    get(fd, "/static/cached.txt", NULL, &r); /* expired: opened again, and gone */
    assert_int_equal(r.status, 404);
    tresp_free(&r);
    assert_int_equal(atomic_load(&hook_calls), 2);
    atomic_store(&ioloop__http_static_test_hook, (ioloop__http_static_hook_fn)NULL);
    close(fd);
    tsrv_stop(&t);
}

/* ---- a job that outlives the server ------------------------------------------------------------ */

static atomic_int job_entered, job_may_go;

static void blocking_hook(const char *rel)
{
    if (strcmp(rel, "one.txt") != 0)
        return;
    atomic_store(&job_entered, 1);
    while (!atomic_load(&job_may_go))
        tu_sleep_ms(1);
}

/* The executor job still runs when the server is freed (the documented
 * order frees the server before the runtime): it keeps the route's state
 * alive (ASan: no use after free), and its completion finishes the request
 * when the runtime frees the loop. */
static void test_job_outlives_server(void **state)
{
    (void)state;
    atomic_store(&job_entered, 0);
    atomic_store(&job_may_go, 0);
    tsrv_t t;
    start(&t, NULL);
    atomic_store(&ioloop__http_static_test_hook, blocking_hook);
    int fd = tcli_connect(t.port);
    tcli_send(fd, "GET /static/one.txt HTTP/1.1\r\nHost: t\r\n\r\n");
    for (int i = 0; i < 5000 && !atomic_load(&job_entered); i++)
        tu_sleep_ms(1);
    assert_int_equal(atomic_load(&job_entered), 1);
    t.expect_live = 0;
    close(fd);
    ioloop_runtime_stop(t.rt);
    assert_int_equal(ioloop_runtime_join(t.rt), 0);
    ioloop_listener_free(t.listener);
    ioloop_http_server_free(t.server); /* the job is still inside the route's state */
    t.server = NULL;
    atomic_store(&job_may_go, 1);
    atomic_store(&ioloop__http_static_test_hook, (ioloop__http_static_hook_fn)NULL);
    ioloop_runtime_free(t.rt); /* waits for the job; its completion runs as the loop closes */
}

/* ---- directories --------------------------------------------------------------------- */

static void test_directories(void **state)
{
    (void)state;
    tsrv_t t;
    start(&t, NULL);
    int fd = tcli_connect(t.port);
    tresp_t r;
    get(fd, "/static/sub?x=1", NULL, &r);
    assert_int_equal(r.status, 301);
    assert_true(tresp_has(&r, "Location", "/static/sub/?x=1"));
    tresp_free(&r);
    get(fd, "/static/sub/", NULL, &r);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "<p>index</p>");
    assert_true(tresp_has(&r, "Content-Type", "text/html; charset=utf-8"));
    tresp_free(&r);
    get(fd, "/static/", NULL, &r); /* the root, no index */
    assert_int_equal(r.status, 403);
    tresp_free(&r);
    get(fd, "/static/bare/", NULL, &r);
    assert_int_equal(r.status, 403);
    tresp_free(&r);
    get(fd, "/static/one.txt/", NULL, &r);
    assert_int_equal(r.status, 404);
    tresp_free(&r);
    close(fd);
    tsrv_stop(&t);

    ioloop_http_static_options_t opts = {.list_directories = true};
    start(&t, &opts);
    fd = tcli_connect(t.port);
    get(fd, "/static/bare/", NULL, &r);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.body, "Index of /static/bare/"));
    assert_non_null(strstr(r.body, "<a href=\"%3Cb%3E%26%22q%22.txt\">&lt;b&gt;&amp;&quot;q&quot;.txt</a>"));
    assert_non_null(strstr(r.body, "<a href=\"inner/\">inner/</a>"));
    assert_null(strstr(r.body, "<b>"));
    tresp_free(&r);
    get(fd, "/static/sub/", NULL, &r); /* an index still wins */
    assert_string_equal(r.body, "<p>index</p>");
    tresp_free(&r);
    close(fd);
    tsrv_stop(&t);
}

/* ---- gzip_static ---------------------------------------------------------------------- */

static void test_gzip_static(void **state)
{
    (void)state;
    ioloop_http_static_options_t opts = {.gzip_static = true};
    tsrv_t t;
    start(&t, &opts);
    int fd = tcli_connect(t.port);
    tresp_t r;
    char etag[128], hdrs[256];
    get(fd, "/static/a.txt", "Accept-Encoding: br, gzip;q=0.8\r\n", &r);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "GZIPPED-BYTES");
    assert_true(tresp_has(&r, "Content-Encoding", "gzip"));
    assert_true(tresp_has(&r, "Vary", "Accept-Encoding"));
    assert_true(tresp_has(&r, "Content-Type", "text/plain; charset=utf-8"));
    assert_true(tresp_header(&r, "ETag", etag, sizeof(etag)));
    tresp_free(&r);
    /* its 304 has no body (nor the twin's) */
    snprintf(hdrs, sizeof(hdrs), "Accept-Encoding: gzip\r\nIf-None-Match: %s\r\n", etag);
    get(fd, "/static/a.txt", hdrs, &r);
    assert_int_equal(r.status, 304);
    assert_int_equal(r.body_len, 0);
    assert_true(tresp_has(&r, "Vary", "Accept-Encoding"));
    tresp_free(&r);
    const char *plain[] = {"", "Accept-Encoding: identity\r\n", "Accept-Encoding: gzip;q=0\r\n",
                           "Accept-Encoding: xgzip\r\n"};
    for (int i = 0; i < 4; i++) {
        get(fd, "/static/a.txt", plain[i], &r);
        assert_int_equal(r.status, 200);
        assert_string_equal(r.body, "plain text, not compressed");
        assert_false(tresp_header(&r, "Content-Encoding", hdrs, sizeof(hdrs)));
        assert_true(tresp_has(&r, "Vary", "Accept-Encoding"));
        tresp_free(&r);
    }
    /* never for a range */
    get(fd, "/static/a.txt", "Accept-Encoding: gzip\r\nRange: bytes=0-4\r\n", &r);
    assert_int_equal(r.status, 206);
    assert_string_equal(r.body, "plain");
    assert_false(tresp_header(&r, "Content-Encoding", hdrs, sizeof(hdrs)));
    tresp_free(&r);
    /* a file without a twin: no Vary */
    get(fd, "/static/one.txt", "Accept-Encoding: gzip\r\n", &r);
    assert_false(tresp_header(&r, "Vary", hdrs, sizeof(hdrs)));
    assert_false(tresp_header(&r, "Content-Encoding", hdrs, sizeof(hdrs)));
    tresp_free(&r);
    close(fd);
    tsrv_stop(&t);
    /* off by default */
    start(&t, NULL);
    fd = tcli_connect(t.port);
    get(fd, "/static/a.txt", "Accept-Encoding: gzip\r\n", &r);
    assert_string_equal(r.body, "plain text, not compressed");
    tresp_free(&r);
    close(fd);
    tsrv_stop(&t);
}

/* ---- a slow client of a large file ------------------------------------------------------ */

static long rss_kib(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    long pages = 0, resident = 0;
    if (f) {
        if (fscanf(f, "%ld %ld", &pages, &resident) != 2)
            resident = 0;
        fclose(f);
    }
    return resident * (sysconf(_SC_PAGESIZE) / 1024);
}

static void test_slow_client_memory_flat(void **state)
{
    (void)state;
    const uint64_t size = 256ull << 20; /* sparse: no disk, no page-cache reads to speak of */
    char path[256];
    snprintf(path, sizeof(path), "%s/slow.bin", root);
    int hfd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    assert_true(hfd >= 0);
    assert_int_equal(ftruncate(hfd, (off_t)size), 0);
    close(hfd);
    tsrv_t t;
    start(&t, NULL);
    int fd = tcli_connect(t.port);
    int small = 16384;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
    long before = rss_kib();
    tcli_send(fd, "GET /static/slow.bin HTTP/1.1\r\nHost: t\r\n\r\n");
    /* read slowly for a while: 1 MiB in 4 KiB sips */
    char buf[4096];
    size_t got = 0;
    while (got < (1u << 20)) {
        ssize_t n = recv(fd, buf, sizeof(buf), 0);
        assert_true(n > 0);
        got += (size_t)n;
        if (got % (64 * 1024) < 4096)
            tu_sleep_ms(2);
    }
    long during = rss_kib();
    /* the file is 256 MiB; the server holds none of it */
    fprintf(stderr, "rss before %ld KiB, while sending %ld KiB\n", before, during);
    assert_true(during - before < 16 * 1024);
    close(fd);
    tsrv_stop(&t);
    unlink(path);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bytes_identical),
        cmocka_unit_test(test_file_then_close),
        cmocka_unit_test(test_one_gib_sparse_file),
        cmocka_unit_test(test_conditional_304),
        cmocka_unit_test(test_ranges),
        cmocka_unit_test(test_head),
        cmocka_unit_test(test_traversal_refused),
        cmocka_unit_test(test_traversal_refused_without_openat2),
        cmocka_unit_test(test_deleted_between_stat_and_open),
        cmocka_unit_test(test_small_file_cache),
        cmocka_unit_test(test_job_outlives_server),
        cmocka_unit_test(test_directories),
        cmocka_unit_test(test_gzip_static),
        cmocka_unit_test(test_slow_client_memory_flat),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
