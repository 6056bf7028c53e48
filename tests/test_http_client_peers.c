/* test_http_client_peers.c — ioloop_http_fetch against real servers serving
 * files: nginx (nginx-light) and h2o, each started by the suite with a
 * generated configuration on a free port and its own temporary directory.
 * For each: keep-alive reuse counted through the server's access log (one
 * connection id for five requests), a gzip body sent chunked and inflated, a
 * redirect (nginx `return 301`, h2o `redirect`), a 304 to If-Modified-Since
 * followed by a GET on the same connection, a HEAD, a 404, and a 2 MiB file.
 * A peer that is not installed skips its tests.
 * Threading rule: the client loop runs on the test's thread; the peers are
 * processes.
 */
#include "test_http_client_util.h"

#include <sys/stat.h>

#define BIG_SIZE (2 * 1024 * 1024)

typedef struct {
    const char *name;
    pid_t pid;
    int port;
    char dir[128];
    char access_log[192];
    char *big;  /* the big file's content */
    char *text; /* the compressible file's content */
    size_t text_len;
} peer_t;

static peer_t nginx_peer = {.name = "nginx"}, h2o_peer = {.name = "h2o"};
static ioloop_t *loop;

static void write_file(const char *dir, const char *name, const void *data, size_t len)
{
    char path[256];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, len, f), len);
    fclose(f);
    chmod(path, 0644);
}

static void make_docroot(peer_t *p)
{
    char www[192];
    snprintf(www, sizeof(www), "%s/www", p->dir);
    assert_int_equal(mkdir(www, 0755), 0);
    write_file(www, "index.html", "hello from the peer\n", 20);
    p->big = malloc(BIG_SIZE);
    assert_non_null(p->big);
    for (size_t i = 0; i < BIG_SIZE; i++)
        p->big[i] = (char)('A' + (i * 7) % 26);
    write_file(www, "big.bin", p->big, BIG_SIZE);
    p->text_len = 0;
    p->text = malloc(100000);
    assert_non_null(p->text);
    while (p->text_len + 64 < 100000)
        p->text_len +=
            (size_t)snprintf(p->text + p->text_len, 100000 - p->text_len, "line %zu of a text file\n", p->text_len);
    write_file(www, "text.txt", p->text, p->text_len);
}

/* What starting either peer begins with: NULL if p->name is not installed;
 * else its directory, docroot, port and access log path made, and its
 * configuration file (DIR/NAME.conf, path in conf) open for writing. */
static FILE *peer_prepare(peer_t *p, char *conf, size_t cap)
{
    char cmd[64];
    snprintf(cmd, sizeof(cmd), "command -v %s >/dev/null 2>&1", p->name);
    if (system(cmd) != 0)
        return NULL;
    snprintf(p->dir, sizeof(p->dir), "/tmp/ioloop-client-%s-XXXXXX", p->name);
    assert_non_null(mkdtemp(p->dir));
    chmod(p->dir, 0755);
    make_docroot(p);
    p->port = tu_free_port();
    snprintf(p->access_log, sizeof(p->access_log), "%s/access.log", p->dir);
    snprintf(conf, cap, "%s/%s.conf", p->dir, p->name);
    FILE *f = fopen(conf, "w");
    assert_non_null(f);
    return f;
}

static bool start_nginx(peer_t *p)
{
    char conf[256];
    FILE *f = peer_prepare(p, conf, sizeof(conf));
    if (!f)
        return false;
    fprintf(f,
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid %1$s/nginx.pid;\n"
            "error_log %1$s/error.log warn;\nevents { worker_connections 64; }\n"
            "http {\n  log_format conn '$connection $connection_requests $status $request';\n"
            "  access_log %1$s/access.log conn;\n  keepalive_requests 1000;\n"
            "  client_body_temp_path %1$s/body;\n  proxy_temp_path %1$s/proxy;\n"
            "  fastcgi_temp_path %1$s/fastcgi;\n  uwsgi_temp_path %1$s/uwsgi;\n  scgi_temp_path %1$s/scgi;\n"
            "  types { text/plain txt; text/html html; application/octet-stream bin; }\n"
            "  server {\n    listen 127.0.0.1:%2$d;\n    root %1$s/www;\n"
            "    gzip on;\n    gzip_min_length 1;\n    gzip_types text/plain;\n"
            "    location = /moved { return 301 /index.html; }\n  }\n}\n",
            p->dir, p->port);
    fclose(f);
    char errlog[256];
    snprintf(errlog, sizeof(errlog), "%s/error.log", p->dir);
    char *argv[] = {"nginx", "-c", conf, "-p", p->dir, "-e", errlog, NULL};
    p->pid = tu_spawn(argv, p->port);
    return p->pid > 0;
}

static bool start_h2o(peer_t *p)
{
    char conf[256];
    FILE *f = peer_prepare(p, conf, sizeof(conf));
    if (!f)
        return false;
    fprintf(f,
            "listen:\n  host: 127.0.0.1\n  port: %2$d\n%3$s"
            "error-log: %1$s/error.log\n"
            "access-log:\n  path: %1$s/access.log\n  format: \"%%{connection-id}x 0 %%s %%r\"\n"
            "hosts:\n  default:\n    paths:\n"
            "      /moved:\n        redirect:\n          url: /index.html\n          status: 301\n"
            "      /:\n        file.dir: %1$s/www\n        compress: ON\n",
            p->dir, p->port, getuid() == 0 ? "user: nobody\n" : "");
    fclose(f);
    char *argv[] = {"h2o", "-c", conf, NULL};
    p->pid = tu_spawn(argv, p->port);
    return p->pid > 0;
}

static void stop_peer(peer_t *p)
{
    tu_kill(p->pid);
    p->pid = -1;
    free(p->big);
    free(p->text);
    if (p->dir[0]) {
        char cmd[256];
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", p->dir);
        assert_int_equal(system(cmd), 0);
    }
}

static int group_setup(void **state)
{
    (void)state;
    start_nginx(&nginx_peer);
    start_h2o(&h2o_peer);
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    stop_peer(&nginx_peer);
    stop_peer(&h2o_peer);
    return 0;
}

static int setup(void **state)
{
    peer_t *p = *state;
    if (p->pid <= 0)
        return 0;
    assert_int_equal(ioloop_new(NULL, &loop), 0);
    return 0;
}

static int teardown(void **state)
{
    peer_t *p = *state;
    if (p->pid > 0)
        assert_int_equal(ioloop_close(loop, false), 0);
    return 0;
}

static const char *purl(const peer_t *p, const char *path)
{
    static char buf[4][256];
    static int i;
    char *b = buf[i++ % 4];
    snprintf(b, 256, "http://127.0.0.1:%d%s", p->port, path);
    return b;
}

/* The access log's lines for path: the connection ids, in order. */
static int log_connections(const peer_t *p, const char *path, long *ids, int max)
{
    int n = 0;
    for (int tries = 0; tries < 100; tries++) {
        FILE *f = fopen(p->access_log, "r");
        if (!f) {
            tu_sleep_ms(10);
            continue;
        }
        char line[512];
        n = 0;
        while (fgets(line, sizeof(line), f) && n < max) {
            long id, reqs;
            int status;
            char method[16], target[256];
            if (sscanf(line, "%ld %ld %d %15s %255s", &id, &reqs, &status, method, target) == 5 &&
                strcmp(target, path) == 0)
                ids[n++] = id;
        }
        fclose(f);
        if (n >= max)
            break;
        tu_sleep_ms(10);
    }
    return n;
}

#define PEER_OR_SKIP(p)                                                                                                \
    peer_t *p = *state;                                                                                                \
    if (p->pid <= 0)                                                                                                   \
        skip();

static void test_keep_alive_counted_by_the_access_log(void **state)
{
    PEER_OR_SKIP(p);
    for (int i = 0; i < 5; i++) {
        tres_t r;
        cget(loop, purl(p, "/index.html?ka"), &r);
        assert_int_equal(r.error, 0);
        assert_int_equal(r.status, 200);
        assert_string_equal(r.body, "hello from the peer\n");
        tres_free(&r);
    }
    long ids[5];
    assert_int_equal(log_connections(p, "/index.html?ka", ids, 5), 5);
    for (int i = 1; i < 5; i++)
        assert_int_equal(ids[i], ids[0]); /* one connection carried all five */
    ioloop_http_client_stats_t st;
    ioloop_http_client_get_stats(loop, &st);
    assert_int_equal(st.connections_opened, 1);
    assert_int_equal(st.connections_reused, 4);
}

static void test_chunked_gzip(void **state)
{
    PEER_OR_SKIP(p);
    tres_t r;
    cfetch(loop, &(ioloop_http_client_request_t){.url = purl(p, "/text.txt"), .decompress = true}, &r);
    assert_int_equal(r.error, 0);
    assert_int_equal(r.status, 200);
    assert_non_null(strcasestr(r.headers, "transfer-encoding: chunked\n"));
    assert_non_null(strcasestr(r.headers, "content-encoding: gzip\n"));
    assert_int_equal(r.body_len, p->text_len);
    assert_memory_equal(r.body, p->text, p->text_len);
    tres_free(&r);
}

static void test_redirect(void **state)
{
    PEER_OR_SKIP(p);
    tres_t r;
    cfetch(loop, &(ioloop_http_client_request_t){.url = purl(p, "/moved"), .follow_redirects = true}, &r);
    assert_int_equal(r.error, 0);
    assert_int_equal(r.status, 200);
    assert_int_equal(r.redirects, 1);
    assert_string_equal(r.body, "hello from the peer\n");
    assert_non_null(strstr(r.url, "/index.html"));
    tres_free(&r);
    cget(loop, purl(p, "/moved"), &r);
    assert_int_equal(r.status, 301);
    tres_free(&r);
}

static void test_not_modified_then_get(void **state)
{
    PEER_OR_SKIP(p);
    tres_t r;
    cget(loop, purl(p, "/index.html"), &r);
    char lm[128] = "";
    const char *h = strcasestr(r.headers, "last-modified: ");
    assert_non_null(h);
    snprintf(lm, sizeof(lm), "%.*s", (int)strcspn(h + 15, "\n"), h + 15);
    tres_free(&r);
    ioloop_http_client_header_t ims = {"If-Modified-Since", lm};
    cfetch(loop, &(ioloop_http_client_request_t){.url = purl(p, "/index.html"), .headers = &ims, .nheaders = 1}, &r);
    assert_int_equal(r.error, 0);
    assert_int_equal(r.status, 304);
    assert_int_equal(r.body_len, 0);
    assert_true(r.timing.reused);
    tres_free(&r);
    cget(loop, purl(p, "/index.html"), &r); /* the 304 left nothing behind on the connection */
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "hello from the peer\n");
    assert_true(r.timing.reused);
    tres_free(&r);
}

static void test_head_404_and_big(void **state)
{
    PEER_OR_SKIP(p);
    tres_t r;
    cfetch(loop, &(ioloop_http_client_request_t){.url = purl(p, "/big.bin"), .method = "HEAD"}, &r);
    assert_int_equal(r.error, 0);
    assert_int_equal(r.status, 200);
    assert_int_equal(r.body_len, 0);
    assert_non_null(strcasestr(r.headers, "content-length: 2097152\n"));
    tres_free(&r);
    cget(loop, purl(p, "/absent"), &r);
    assert_int_equal(r.error, 0);
    assert_int_equal(r.status, 404);
    tres_free(&r);
    cget(loop, purl(p, "/big.bin"), &r);
    assert_int_equal(r.error, 0);
    assert_int_equal(r.body_len, BIG_SIZE);
    assert_memory_equal(r.body, p->big, BIG_SIZE);
    assert_true(r.timing.reused);
    tres_free(&r);
}

int main(void)
{
#define P(f, peer) cmocka_unit_test_prestate_setup_teardown(f, setup, teardown, &peer)
    const struct CMUnitTest tests[] = {
        P(test_keep_alive_counted_by_the_access_log, nginx_peer),
        P(test_chunked_gzip, nginx_peer),
        P(test_redirect, nginx_peer),
        P(test_not_modified_then_get, nginx_peer),
        P(test_head_404_and_big, nginx_peer),
        P(test_keep_alive_counted_by_the_access_log, h2o_peer),
        P(test_chunked_gzip, h2o_peer),
        P(test_redirect, h2o_peer),
        P(test_not_modified_then_get, h2o_peer),
        P(test_head_404_and_big, h2o_peer),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
