/* backend_epoll.c — the Linux backend: add/update/remove are
 * EPOLL_CTL_ADD/MOD/DEL, level-triggered, each event carrying the handler's
 * token in epoll_event.data so that dispatch can drop stale events. The
 * kernel forgets an fd when its file is closed, so EPOLL_CTL_ADD failing with
 * EEXIST is exactly "still registered" (what handlers.c asks of add).
 *
 * Threading rule: add/mod/del run under loop->handlers_lock from any thread
 * (epoll_ctl is thread-safe against a concurrent epoll_wait); wait runs on the
 * loop thread only.
 */
#define _GNU_SOURCE
#include "internal.h"

#ifdef __linux__
#include <errno.h>
#include <sys/epoll.h>
#include <unistd.h>

static uint32_t to_epoll(unsigned events)
{
    uint32_t e = 0;
    if (events & IOLOOP_READ)
        e |= EPOLLIN;
    if (events & IOLOOP_WRITE)
        e |= EPOLLOUT;
    if (events & IOLOOP__EXCLUSIVE)
        e |= EPOLLEXCLUSIVE;
    return e; /* EPOLLERR and EPOLLHUP are always reported */
}

static int epoll_init(ioloop_t *loop)
{
    loop->backend_fd = epoll_create1(EPOLL_CLOEXEC);
    return loop->backend_fd < 0 ? -errno : 0;
}

static void epoll_destroy(ioloop_t *loop)
{
    if (loop->backend_fd >= 0)
        close(loop->backend_fd);
    loop->backend_fd = -1;
}

static int epoll_ctl_token(ioloop_t *loop, int op, int fd, unsigned events, uint64_t token)
{
    struct epoll_event ev = {.events = to_epoll(events), .data.u64 = token};
    return epoll_ctl(loop->backend_fd, op, fd, &ev) < 0 ? -errno : 0;
}

static int epoll_add(ioloop_t *loop, int fd, unsigned events, uint64_t token)
{
    return epoll_ctl_token(loop, EPOLL_CTL_ADD, fd, events, token);
}

static int epoll_mod(ioloop_t *loop, int fd, unsigned events, uint64_t token)
{
    return epoll_ctl_token(loop, EPOLL_CTL_MOD, fd, events, token);
}

static int epoll_del(ioloop_t *loop, int fd)
{
    struct epoll_event unused = {0}; /* pre-2.6.9 kernels want non-NULL */
    return epoll_ctl(loop->backend_fd, EPOLL_CTL_DEL, fd, &unused) < 0 ? -errno : 0;
}

static int epoll_wait_ready(ioloop_t *loop, int timeout_ms, ioloop__ready_t *out, int max)
{
    struct epoll_event events[max];
    int n = epoll_wait(loop->backend_fd, events, max, timeout_ms);
    if (n < 0)
        return errno == EINTR ? 0 : -errno;
    for (int i = 0; i < n; i++) {
        uint32_t e = events[i].events;
        out[i].token = events[i].data.u64;
        out[i].fd = (int)(uint32_t)events[i].data.u64;
        out[i].events = ((e & EPOLLIN) ? IOLOOP_READ : 0u) | ((e & EPOLLOUT) ? IOLOOP_WRITE : 0u) |
                        ((e & (EPOLLERR | EPOLLHUP)) ? IOLOOP_ERROR : 0u);
    }
    return n;
}

const ioloop__backend_ops_t ioloop__backend_epoll = {
    .name = "epoll",
    .init = epoll_init,
    .destroy = epoll_destroy,
    .add = epoll_add,
    .mod = epoll_mod,
    .del = epoll_del,
    .wait = epoll_wait_ready,
    .wake_on_foreign_change = false,
};
#else
const ioloop__backend_ops_t ioloop__backend_epoll = {.name = "epoll"}; /* absent: init is NULL */
#endif
