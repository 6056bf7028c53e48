/* backend_kqueue.c — the BSD/macOS backend, compiled only where kqueue exists.
 * READ and WRITE are separate kevent filters; the handler's token rides in
 * udata so that dispatch can drop stale events, as with epoll.
 *
 * Threading rule: add/mod/del run under loop->handlers_lock from any thread
 * (kevent changes are thread-safe against a concurrent wait); wait runs on the
 * loop thread only. On Linux this file defines an absent backend (init NULL).
 */
#include "internal.h"

#if defined(__APPLE__) || defined(__FreeBSD__) || defined(__OpenBSD__) || defined(__NetBSD__) ||             \
    defined(__DragonFly__)
#include <errno.h>
#include <sys/event.h>
#include <sys/time.h>
#include <unistd.h>

static int kq_init(ioloop_t *loop)
{
    loop->backend_fd = kqueue();
    return loop->backend_fd < 0 ? -errno : 0;
}

static void kq_destroy(ioloop_t *loop)
{
    if (loop->backend_fd >= 0)
        close(loop->backend_fd);
    loop->backend_fd = -1;
}

static int kq_apply(ioloop_t *loop, int fd, unsigned events, uint64_t token)
{
    struct kevent changes[2];
    EV_SET(&changes[0], fd, EVFILT_READ, (events & IOLOOP_READ) ? EV_ADD | EV_ENABLE : EV_ADD | EV_DISABLE, 0, 0,
           (void *)(uintptr_t)token);
    EV_SET(&changes[1], fd, EVFILT_WRITE, (events & IOLOOP_WRITE) ? EV_ADD | EV_ENABLE : EV_ADD | EV_DISABLE, 0, 0,
           (void *)(uintptr_t)token);
    return kevent(loop->backend_fd, changes, 2, NULL, 0, NULL) < 0 ? -errno : 0;
}

/* EV_ADD on a live registration just changes it, and kqueue cannot be asked
 * whether fd is registered: a taken slot stays -EEXIST (remove_handler before
 * close, as ioloop.h asks). */
static int kq_add(ioloop_t *loop, int fd, unsigned events, uint64_t token)
{
    ioloop__fdtable_t *t = atomic_load_explicit(&loop->fdtable, memory_order_relaxed);
    if (fd < t->capacity && atomic_load_explicit(&t->slots[fd], memory_order_relaxed))
        return -EEXIST;
    return kq_apply(loop, fd, events, token);
}

static int kq_del(ioloop_t *loop, int fd)
{
    struct kevent changes[2];
    EV_SET(&changes[0], fd, EVFILT_READ, EV_DELETE, 0, 0, NULL);
    EV_SET(&changes[1], fd, EVFILT_WRITE, EV_DELETE, 0, 0, NULL);
    return kevent(loop->backend_fd, changes, 2, NULL, 0, NULL) < 0 ? -errno : 0;
}

static int kq_wait(ioloop_t *loop, int timeout_ms, ioloop__ready_t *out, int max)
{
    struct kevent events[max];
    struct timespec ts = {timeout_ms / 1000, (long)(timeout_ms % 1000) * 1000000L};
    int n = kevent(loop->backend_fd, NULL, 0, events, max, timeout_ms < 0 ? NULL : &ts);
    if (n < 0)
        return errno == EINTR ? 0 : -errno;
    for (int i = 0; i < n; i++) {
        unsigned e = events[i].filter == EVFILT_READ ? IOLOOP_READ : events[i].filter == EVFILT_WRITE ? IOLOOP_WRITE : 0;
        if (events[i].flags & (EV_EOF | EV_ERROR))
            e |= IOLOOP_ERROR;
        out[i] = (ioloop__ready_t){.fd = (int)events[i].ident, .events = e, .token = (uint64_t)(uintptr_t)events[i].udata};
    }
    return n;
}

const ioloop__backend_ops_t ioloop__backend_kqueue = {
    .name = "kqueue",
    .init = kq_init,
    .destroy = kq_destroy,
    .add = kq_add,
    .mod = kq_apply,
    .del = kq_del,
    .wait = kq_wait,
    .wake_on_foreign_change = false,
};
#else
const ioloop__backend_ops_t ioloop__backend_kqueue = {.name = "kqueue"}; /* absent: init is NULL */
#endif
