/* test_sd_notify.c — ioloop_sd_notify against a datagram receiver of our
 * own: nothing to do without NOTIFY_SOCKET, a path and an abstract "@name"
 * both receive the state verbatim and in order, and the failures (a name
 * that is no unix address, nobody listening) come back as errno values.
 * The end-to-end check with helloworld is tests/checks/socket_activation.py.
 * Threading rule: single-threaded.
 */
#define _GNU_SOURCE
#include "ioloop/runtime.h"
#include "test_util.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

/* A bound datagram receiver; `name` as NOTIFY_SOCKET spells it. */
static int receiver(const char *name)
{
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    struct sockaddr_un un = {.sun_family = AF_UNIX};
    size_t len = strlen(name);
    memcpy(un.sun_path, name, len);
    if (name[0] == '@')
        un.sun_path[0] = '\0';
    socklen_t alen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len + (name[0] == '/'));
    assert_int_equal(bind(fd, (struct sockaddr *)&un, alen), 0);
    struct timeval tv = {.tv_sec = 5};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    return fd;
}

static void expect_message(int fd, const char *want)
{
    char buf[256];
    ssize_t n = recv(fd, buf, sizeof(buf) - 1, 0);
    assert_true(n >= 0);
    buf[n] = '\0';
    assert_string_equal(buf, want);
}

static void check_name(const char *name)
{
    int fd = receiver(name);
    setenv("NOTIFY_SOCKET", name, 1);
    assert_int_equal(ioloop_sd_notify("READY=1"), 0);
    assert_int_equal(ioloop_sd_notify("STATUS=serving\nMAINPID=1"), 0);
    assert_int_equal(ioloop_sd_notify("STOPPING=1"), 0);
    expect_message(fd, "READY=1");
    expect_message(fd, "STATUS=serving\nMAINPID=1");
    expect_message(fd, "STOPPING=1");
    unsetenv("NOTIFY_SOCKET");
    close(fd);
}

static void test_path_and_abstract(void **state)
{
    (void)state;
    char path[64], abstract[64];
    snprintf(path, sizeof(path), "/tmp/ioloop-notify-%d", (int)getpid());
    snprintf(abstract, sizeof(abstract), "@ioloop-notify-%d", (int)getpid());
    unlink(path);
    check_name(path);
    unlink(path);
    check_name(abstract);
}

static void test_unset_and_failures(void **state)
{
    (void)state;
    unsetenv("NOTIFY_SOCKET");
    assert_int_equal(ioloop_sd_notify("READY=1"), 0); /* no manager: nothing to do */
    setenv("NOTIFY_SOCKET", "", 1);
    assert_int_equal(ioloop_sd_notify("READY=1"), 0);
    setenv("NOTIFY_SOCKET", "relative/path", 1);
    assert_int_equal(ioloop_sd_notify("READY=1"), -EINVAL);
    setenv("NOTIFY_SOCKET", "vsock:2:1234", 1);
    assert_int_equal(ioloop_sd_notify("READY=1"), -EINVAL);
    char longname[200];
    memset(longname, 'a', sizeof(longname) - 1);
    longname[0] = '/';
    longname[sizeof(longname) - 1] = '\0';
    setenv("NOTIFY_SOCKET", longname, 1);
    assert_int_equal(ioloop_sd_notify("READY=1"), -EINVAL);
    setenv("NOTIFY_SOCKET", "/nonexistent-dir/notify", 1);
    assert_int_equal(ioloop_sd_notify("READY=1"), -ENOENT);
    char abstract[64];
    snprintf(abstract, sizeof(abstract), "@ioloop-nobody-%d", (int)getpid());
    setenv("NOTIFY_SOCKET", abstract, 1);
    assert_int_equal(ioloop_sd_notify("READY=1"), -ECONNREFUSED);
    assert_int_equal(ioloop_sd_notify(NULL), -EINVAL);
    unsetenv("NOTIFY_SOCKET");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_path_and_abstract),
        cmocka_unit_test(test_unset_and_failures),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
