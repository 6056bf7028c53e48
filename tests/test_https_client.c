/* test_https_client.c — our TLS client (ioloop_tcp_connect +
 * ioloop_tls_client_options) against a real peer: nginx with TLS (spawned
 * with a generated config on a free port, ssl_protocols TLSv1.2 TLSv1.3, the
 * test CA's certificate). A page is fetched over TLS 1.3 and 1.2 with
 * verification on; a wrong server name, and a CA nobody passed (the system
 * store does not know the test CA), end the stream with IOLOOP_ECERT and a
 * message naming the reason. Skipped when nginx is not installed.
 * Threading rule: everything runs on the test's thread (its own loop per
 * fetch); nginx is a child process, stopped in the group teardown.
 */
#include "test_https_util.h"

#include <errno.h>
#include <signal.h>

static tcerts_t certs;
static pid_t nginx_pid = -1;
static int nginx_port;
static ioloop_tls_context_t *client_ctx, *client12_ctx, *system_ctx;

static int group_setup(void **state)
{
    (void)state;
    if (system("command -v nginx >/dev/null 2>&1") != 0)
        return 0; /* each test skips */
    tcerts_make(&certs);
    nginx_port = tu_free_port();
    char conf[256];
    snprintf(conf, sizeof(conf), "%s/nginx.conf", certs.dir);
    FILE *f = fopen(conf, "w");
    assert_non_null(f);
    fprintf(f,
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid %1$s/nginx.pid;\n"
            "error_log %1$s/error.log warn;\nevents { worker_connections 64; }\n"
            "http {\n  access_log off;\n  client_body_temp_path %1$s/body;\n  proxy_temp_path %1$s/proxy;\n"
            "  fastcgi_temp_path %1$s/fastcgi;\n  uwsgi_temp_path %1$s/uwsgi;\n  scgi_temp_path %1$s/scgi;\n"
            "  server {\n    listen 127.0.0.1:%2$d ssl;\n    ssl_certificate %3$s;\n    ssl_certificate_key %4$s;\n"
            "    ssl_protocols TLSv1.2 TLSv1.3;\n"
            "    location / { default_type text/plain; return 200 \"Hello from nginx\"; }\n  }\n}\n",
            certs.dir, nginx_port, certs.cert, certs.key);
    fclose(f);
    char errlog[256];
    snprintf(errlog, sizeof(errlog), "%s/error.log", certs.dir);
    char dir[256];
    snprintf(dir, sizeof(dir), "%s", certs.dir);
    char *argv[] = {"nginx", "-c", conf, "-p", dir, "-e", errlog, NULL};
    nginx_pid = tu_spawn(argv, nginx_port);
    assert_true(nginx_pid > 0);
    client_ctx = tcerts_client_context(certs.ca, IOLOOP_TLS_VERSION_DEFAULT);
    client12_ctx = tcerts_client_context(certs.ca, IOLOOP_TLS_1_2);
    system_ctx = tcerts_client_context(NULL, IOLOOP_TLS_VERSION_DEFAULT);
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    if (nginx_pid < 0)
        return 0;
    tu_kill(nginx_pid);
    ioloop_tls_context_free(client_ctx);
    ioloop_tls_context_free(client12_ctx);
    ioloop_tls_context_free(system_ctx);
    tcerts_remove(&certs);
    return 0;
}

static const char request[] = "GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";

static void expect_page(ioloop_tls_context_t *ctx, const char *version)
{
    tfetch_t f = {.request = request};
    tfetch(&f, nginx_port, ctx, "localhost");
    assert_int_equal(f.connect_status, 0);
    assert_int_equal(f.read_status, IOLOOP_EOF);
    assert_string_equal(f.version, version);
    assert_non_null(f.data);
    assert_non_null(strstr(f.data, "HTTP/1.1 200 OK\r\n"));
    const char *body = strstr(f.data, "\r\n\r\n");
    assert_non_null(body);
    assert_string_equal(body + 4, "Hello from nginx");
    free(f.data);
}

static void test_fetch_verified(void **state)
{
    (void)state;
    if (nginx_pid < 0)
        skip();
    expect_page(client_ctx, "TLSv1.3");
    expect_page(client12_ctx, "TLSv1.2");
}

static void expect_refused(ioloop_tls_context_t *ctx, const char *server_name)
{
    tfetch_t f = {.request = request};
    tfetch(&f, nginx_port, ctx, server_name);
    /* TCP connected; the handshake then ends the stream (while the request is
     * written or read: the write may be accepted or refused, the read may not
     * have started) with IOLOOP_ECERT. */
    assert_int_equal(f.connect_status, 0);
    assert_int_equal(f.close_error, IOLOOP_ECERT);
    assert_int_equal(f.len, 0); /* not one byte of the page */
    print_message("  %s: %s\n", server_name, f.tls_message);
    assert_non_null(strstr(f.tls_message, "certificate verify failed"));
    free(f.data);
}

static void test_wrong_server_name_is_refused(void **state)
{
    (void)state;
    if (nginx_pid < 0)
        skip();
    expect_refused(client_ctx, "wrong.example");
}

static void test_unknown_ca_is_refused(void **state)
{
    (void)state;
    if (nginx_pid < 0)
        skip();
    expect_refused(system_ctx, "localhost");
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fetch_verified),
        cmocka_unit_test(test_wrong_server_name_is_refused),
        cmocka_unit_test(test_unknown_ca_is_refused),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
