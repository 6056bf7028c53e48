/* listen_fds.c — systemd socket activation without libsystemd: the
 * LISTEN_PID / LISTEN_FDS / LISTEN_FDNAMES protocol of sd_listen_fds(3),
 * which is a few environment variables and fds from 3 on; a library
 * dependency (and its dlopen) for that was not worth it.
 *
 * Threading rule: any thread, but it reads and unsets process-wide
 * environment variables: call it once, early, before threads that read the
 * environment start (ioloop_http_server_serve calls it; the variables are
 * gone afterwards, so a second call returns 0).
 */
#define _GNU_SOURCE
#include "ioloop/runtime.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <unistd.h>

enum { LISTEN_FDS_START = 3 }; /* SD_LISTEN_FDS_START */

/* A decimal number without sign or junk, in [lo, hi]; -1 otherwise. */
static long parse_decimal(const char *s, long lo, long hi)
{
    if (!s || *s < '0' || *s > '9')
        return -1;
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || v < lo || v > hi)
        return -1;
    return v;
}

int ioloop_listen_fds(int *fds, int max)
{
    if (max < 0 || (max > 0 && !fds))
        return -EINVAL;
    const char *pid_text = getenv("LISTEN_PID");
    const char *n_text = getenv("LISTEN_FDS");
    if (!pid_text || !n_text)
        return 0;
    long pid = parse_decimal(pid_text, 1, LONG_MAX);
    if (pid < 0)
        return -EINVAL;
    if ((pid_t)pid != getpid())
        return 0; /* meant for another process (our parent, before a fork) */
    long n = parse_decimal(n_text, 0, INT_MAX - LISTEN_FDS_START);
    if (n < 0)
        return -EINVAL;
    if (n > max)
        return -E2BIG;
    for (int i = 0; i < (int)n; i++) {
        int fd = LISTEN_FDS_START + i;
        int flags = fcntl(fd, F_GETFD);
        if (flags < 0)
            return -EBADF;
        /* sd_listen_fds does the same: a program we start must not inherit them. */
        if (!(flags & FD_CLOEXEC) && fcntl(fd, F_SETFD, flags | FD_CLOEXEC) < 0)
            return -errno;
        fds[i] = fd;
    }
    unsetenv("LISTEN_PID");
    unsetenv("LISTEN_FDS");
    unsetenv("LISTEN_FDNAMES");
    return (int)n;
}
