/* stream_socket.c — the plain socket transport under ioloop_stream
 * (ioloop_stream_transport_socket): recv, send/sendmsg with MSG_NOSIGNAL,
 * shutdown(SHUT_WR). EINTR is retried here; EWOULDBLOCK becomes -EAGAIN.
 *
 * Threading rule: called by the stream on its loop's thread; stateless (ctx
 * is unused), so any thread may call it on its own fd.
 */
#define _GNU_SOURCE
#include "ioloop/stream.h"

#include <errno.h>
#include <stddef.h>
#include <sys/socket.h>
#include <sys/uio.h>

static ssize_t socket_read(void *ctx, int fd, char *buf, size_t len)
{
    (void)ctx;
    for (;;) {
        ssize_t n = recv(fd, buf, len, 0);
        if (n >= 0)
            return n;
        if (errno != EINTR)
            return errno == EWOULDBLOCK ? -EAGAIN : -errno;
    }
}

static ssize_t socket_writev(void *ctx, int fd, const struct iovec *iov, int iovcnt)
{
    (void)ctx;
    struct msghdr msg = {.msg_iov = (struct iovec *)iov, .msg_iovlen = (size_t)iovcnt};
#ifdef MSG_NOSIGNAL
    int flags = MSG_NOSIGNAL;
#else
    int flags = 0; /* SO_NOSIGPIPE was set at creation */
#endif
    for (;;) {
        /* One buffer (the usual echo or response): send() skips the kernel's
         * msghdr and iovec import, measurably cheaper than sendmsg. */
        ssize_t n = iovcnt == 1 ? send(fd, iov[0].iov_base, iov[0].iov_len, flags) : sendmsg(fd, &msg, flags);
        if (n >= 0)
            return n;
        if (errno != EINTR)
            return errno == EWOULDBLOCK ? -EAGAIN : -errno;
    }
}

static int socket_shutdown(void *ctx, int fd)
{
    (void)ctx;
    return shutdown(fd, SHUT_WR) < 0 ? -errno : 0;
}

const ioloop_stream_transport_t ioloop_stream_transport_socket = {
    .name = "socket",
    .read = socket_read,
    .writev = socket_writev,
    .shutdown = socket_shutdown,
};
