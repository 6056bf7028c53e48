/* test_http_response.c — the response writer's own rules: what status and
 * header calls refuse (1xx, a second or malformed Content-Length, control
 * characters in values), one flush completion at a time, and a Date header
 * that is an IMF-fixdate whatever LC_TIME says.
 * Threading rule: as test_http_util.h; handlers record results in atomics
 * and the test asserts them on the main thread.
 */
#include "test_http_util.h"

#include <locale.h>
#include <time.h>

/* White-box: the Date formatter (http/server.c). */
size_t ioloop__http_format_date(time_t t, char out[32]);

static void expect_served(int port)
{
    tresp_t r;
    tcli_request(port, "GET /ok HTTP/1.1\r\nHost: a\r\n\r\n", &r);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "ok");
    tresp_free(&r);
}

/* ---- status and headers ----------------------------------------------------- */

enum { RC_1XX_100, RC_1XX_101, RC_1XX_103, RC_199, RC_200, RC_CL_FIRST, RC_CL_SECOND, RC_CL_JUNK, RC_CL_SIGN, RC_MAX };
static atomic_int rcs[RC_MAX];

static void statuses(ioloop_http_request_t *req, void *arg)
{
    (void)arg;
    atomic_store(&rcs[RC_1XX_100], ioloop_http_response_status(req, 100));
    atomic_store(&rcs[RC_1XX_101], ioloop_http_response_status(req, 101));
    atomic_store(&rcs[RC_1XX_103], ioloop_http_response_status(req, 103));
    atomic_store(&rcs[RC_199], ioloop_http_response_status(req, 199));
    atomic_store(&rcs[RC_CL_JUNK], ioloop_http_response_header(req, "Content-Length", "2x"));
    atomic_store(&rcs[RC_CL_SIGN], ioloop_http_response_header(req, "Content-Length", "+2"));
    atomic_store(&rcs[RC_CL_FIRST], ioloop_http_response_header(req, "Content-Length", "2"));
    atomic_store(&rcs[RC_CL_SECOND], ioloop_http_response_header(req, "content-length", "2"));
    atomic_store(&rcs[RC_200], ioloop_http_response_status(req, 200));
    ioloop_http_response_write(req, "ok", 2);
    ioloop_http_response_finish(req);
}

static void test_interim_status_and_second_length_refused(void **state)
{
    tsrv_t *t = *state;
    int fd = tcli_connect(t->port);
    tcli_send(fd, "GET /statuses HTTP/1.1\r\nHost: a\r\n\r\n");
    tresp_t r;
    assert_int_equal(tcli_response_ex(fd, &r, false, true), 0);
    assert_int_equal(r.status, 200); /* the first thing on the wire: no 1xx */
    assert_string_equal(r.body, "ok");
    assert_false(strstr(r.head, "Content-Length: 2\r\nContent-Length") || strstr(r.head, "content-length"));
    tresp_free(&r);
    assert_int_equal(atomic_load(&rcs[RC_1XX_100]), -EINVAL);
    assert_int_equal(atomic_load(&rcs[RC_1XX_101]), -EINVAL);
    assert_int_equal(atomic_load(&rcs[RC_1XX_103]), -EINVAL);
    assert_int_equal(atomic_load(&rcs[RC_199]), -EINVAL);
    assert_int_equal(atomic_load(&rcs[RC_200]), 0);
    assert_int_equal(atomic_load(&rcs[RC_CL_JUNK]), -EINVAL);
    assert_int_equal(atomic_load(&rcs[RC_CL_SIGN]), -EINVAL);
    assert_int_equal(atomic_load(&rcs[RC_CL_FIRST]), 0);
    assert_int_equal(atomic_load(&rcs[RC_CL_SECOND]), -EINVAL);
    /* the connection is still in step */
    tcli_send(fd, "GET /ok HTTP/1.1\r\nHost: a\r\n\r\n");
    TCLI_EXPECT_BODY(fd, "ok");
    close(fd);
}

static const char *const bad_values[] = {"a\x01", "\x1b[31mred", "a\x7f", "x\x0b", "x\x0c", "a\rb", "a\nb", "\x1f"};
enum { NBAD = sizeof(bad_values) / sizeof(bad_values[0]) };
static atomic_int bad_rc[NBAD], tab_rc, obs_rc;

static void values(ioloop_http_request_t *req, void *arg)
{
    (void)arg;
    for (int i = 0; i < NBAD; i++)
        atomic_store(&bad_rc[i], ioloop_http_response_header(req, "X-Bad", bad_values[i]));
    atomic_store(&tab_rc, ioloop_http_response_header(req, "X-Tab", "a\tb"));
    atomic_store(&obs_rc, ioloop_http_response_header(req, "X-Obs", "caf\xc3\xa9"));
    ioloop_http_response_send(req, 200, "text/plain", "v", 1);
}

static void test_header_value_controls_refused(void **state)
{
    tsrv_t *t = *state;
    tresp_t r;
    tcli_request(t->port, "GET /values HTTP/1.1\r\nHost: a\r\n\r\n", &r);
    assert_int_equal(r.status, 200);
    assert_null(strstr(r.head, "X-Bad"));
    assert_non_null(strstr(r.head, "X-Tab: a\tb\r\n"));
    assert_non_null(strstr(r.head, "X-Obs: caf\xc3\xa9\r\n"));
    tresp_free(&r);
    for (int i = 0; i < NBAD; i++) {
        if (atomic_load(&bad_rc[i]) != -EINVAL)
            fprintf(stderr, "value %d accepted\n", i);
        assert_int_equal(atomic_load(&bad_rc[i]), -EINVAL);
    }
    assert_int_equal(atomic_load(&tab_rc), 0);
    assert_int_equal(atomic_load(&obs_rc), 0);
}

/* ---- flush completions ---------------------------------------------------- */

static atomic_int fa_calls, fa_status, fb_calls, fb_status, second_flush_rc, null_flush_rc, refill_rc;

static void flushed_b(ioloop_http_request_t *req, int status, void *arg)
{
    (void)arg;
    atomic_fetch_add(&fb_calls, 1);
    atomic_store(&fb_status, status);
    ioloop_http_response_finish(req);
}

static void flushed_a(ioloop_http_request_t *req, int status, void *arg)
{
    (void)arg;
    atomic_fetch_add(&fa_calls, 1);
    atomic_store(&fa_status, status);
    ioloop_http_response_write(req, "c", 1);
    atomic_store(&refill_rc, ioloop_http_response_flush(req, flushed_b, NULL)); /* A ran: allowed again */
}

static void two_flushes(ioloop_http_request_t *req, void *arg)
{
    (void)arg;
    ioloop_http_response_write(req, "a", 1);
    assert_int_equal(ioloop_http_response_flush(req, flushed_a, NULL), 0); /* sent now: its completion is queued */
    ioloop_http_response_write(req, "b", 1);
    atomic_store(&second_flush_rc, ioloop_http_response_flush(req, flushed_b, NULL));
    atomic_store(&null_flush_rc, ioloop_http_response_flush(req, NULL, NULL)); /* sends, keeps A's callback */
}

static void test_two_flushes_before_completion(void **state)
{
    tsrv_t *t = *state;
    atomic_store(&fa_calls, 0);
    atomic_store(&fb_calls, 0);
    int fd = tcli_connect(t->port);
    tcli_send(fd, "GET /flush2 HTTP/1.1\r\nHost: a\r\n\r\n");
    TCLI_EXPECT_BODY(fd, "abc");
    assert_int_equal(atomic_load(&second_flush_rc), -EBUSY);
    assert_int_equal(atomic_load(&null_flush_rc), 0);
    assert_int_equal(atomic_load(&refill_rc), 0);
    for (int i = 0; i < 100 && atomic_load(&fb_calls) == 0; i++)
        tu_sleep_ms(10);
    assert_int_equal(atomic_load(&fa_calls), 1);
    assert_int_equal(atomic_load(&fa_status), 0);
    assert_int_equal(atomic_load(&fb_calls), 1);
    assert_int_equal(atomic_load(&fb_status), 0);
    tcli_send(fd, "GET /ok HTTP/1.1\r\nHost: a\r\n\r\n"); /* the connection goes on */
    TCLI_EXPECT_BODY(fd, "ok");
    close(fd);
}

/* ---- Date ------------------------------------------------------------------ */

static void test_date_format(void **state)
{
    (void)state;
    char out[32];
    assert_int_equal(ioloop__http_format_date(784111777, out), 29);
    assert_string_equal(out, "Sun, 06 Nov 1994 08:49:37 GMT");
    assert_int_equal(ioloop__http_format_date(951782400, out), 29); /* a leap day */
    assert_string_equal(out, "Tue, 29 Feb 2000 00:00:00 GMT");
    assert_int_equal(ioloop__http_format_date(0, out), 29);
    assert_string_equal(out, "Thu, 01 Jan 1970 00:00:00 GMT");
}

static bool imf_fixdate(const char *d)
{
    static const char *days = "Mon Tue Wed Thu Fri Sat Sun",
                      *months = "Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec";
    char day[4], mon[4], gmt[4];
    int dd, yyyy, hh, mm, ss, n = 0;
    if (strlen(d) != 29 || sscanf(d, "%3[A-Za-z], %2d %3[A-Za-z] %4d %2d:%2d:%2d %3s%n", day, &dd, mon, &yyyy, &hh, &mm,
                                  &ss, gmt, &n) != 8)
        return false;
    return n == 29 && strstr(days, day) && strstr(months, mon) && strcmp(gmt, "GMT") == 0;
}

/* An embedder's setlocale(LC_TIME) must not reach the wire. A French locale
 * is built into a temporary directory (localedef, LOCPATH) when the machine
 * has the sources; the locale is set before the server's threads exist. */
static void test_date_ignores_locale(void **state)
{
    (void)state;
    char dir[] = "/tmp/ioloop-locale-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char cmd[256];
    snprintf(cmd, sizeof(cmd), "localedef -i fr_FR -f UTF-8 %s/fr_FR.UTF-8 >/dev/null 2>&1", dir);
    int built = system(cmd);
    setenv("LOCPATH", dir, 1);
    const char *set = built == 0 ? setlocale(LC_TIME, "fr_FR.UTF-8") : NULL;
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    if (!set) {
        unsetenv("LOCPATH");
        assert_int_equal(system(cmd), 0);
        fprintf(stderr, "no fr_FR locale could be built: the formatter test alone covers Date\n");
        skip();
    }
    char out[32];
    ioloop__http_format_date(784111777, out);
    assert_string_equal(out, "Sun, 06 Nov 1994 08:49:37 GMT");
    tsrv_t t;
    tsrv_init(&t, NULL);
    tsrv_route(&t, "/ok", (ioloop_http_route_t){.get = th_ok});
    tsrv_start(&t);
    tresp_t r;
    tcli_request(t.port, "GET /ok HTTP/1.1\r\nHost: a\r\n\r\n", &r);
    char date[64];
    assert_true(tresp_header(&r, "Date", date, sizeof(date)));
    tresp_free(&r);
    tsrv_stop(&t);
    setlocale(LC_TIME, "C");
    unsetenv("LOCPATH");
    assert_int_equal(system(cmd), 0);
    if (!imf_fixdate(date))
        fprintf(stderr, "Date: %s\n", date);
    assert_true(imf_fixdate(date));
}

static int setup(void **state)
{
    static tsrv_t t;
    tsrv_init(&t, NULL);
    tsrv_route(&t, "/ok", (ioloop_http_route_t){.get = th_ok});
    tsrv_route(&t, "/statuses", (ioloop_http_route_t){.get = statuses});
    tsrv_route(&t, "/values", (ioloop_http_route_t){.get = values});
    tsrv_route(&t, "/flush2", (ioloop_http_route_t){.get = two_flushes});
    tsrv_start(&t);
    *state = &t;
    return 0;
}

static int teardown(void **state)
{
    expect_served(((tsrv_t *)*state)->port);
    tsrv_stop(*state);
    return 0;
}

int main(void)
{
    const struct CMUnitTest shared[] = {
        cmocka_unit_test(test_interim_status_and_second_length_refused),
        cmocka_unit_test(test_header_value_controls_refused),
        cmocka_unit_test(test_two_flushes_before_completion),
    };
    const struct CMUnitTest alone[] = {
        cmocka_unit_test(test_date_format),
        cmocka_unit_test(test_date_ignores_locale),
    };
    int failed = cmocka_run_group_tests_name("shared server", shared, setup, teardown);
    return failed + cmocka_run_group_tests_name("date", alone, NULL, NULL);
}
