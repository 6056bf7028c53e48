/* backend_poll.c — the portable fallback on poll(2), selectable on Linux too
 * (IOLOOP_BACKEND=poll) so that the fallback runs the whole test suite.
 *
 * Threading rule: add/mod/del (any thread, under loop->handlers_lock) only mark
 * the pollfd set dirty; the loop thread rebuilds it from the handler table,
 * under the same lock, before it polls. A change made from another thread while
 * the loop sleeps wakes it (wake_on_foreign_change) so it polls the new set.
 *
 * poll(2) does not forget a closed fd as epoll does, so this backend tracks
 * the file behind each registered fd (fstat at add): add refuses a bad fd
 * with -EBADF, accepts a reused number whose file changed (the old entry's fd
 * was closed without remove_handler), and a registered fd that turns out
 * closed (POLLNVAL) is dropped and reported, instead of waking the loop
 * forever.
 */
#define _GNU_SOURCE
#include "internal.h"

#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <sys/stat.h>

typedef struct {
    dev_t dev;
    ino_t ino;
} file_id_t;

typedef struct {
    struct pollfd *fds;
    uint64_t *tokens;
    size_t count, capacity;
    bool dirty;       /* under handlers_lock */
    file_id_t *files; /* under handlers_lock: by fd, the file registered (ino 0: none) */
    size_t files_capacity;
    size_t scan_start; /* loop thread: where the next scan of revents begins */
} poll_set_t;

static int poll_init(ioloop_t *loop)
{
    poll_set_t *set = calloc(1, sizeof(*set));
    if (!set)
        return -ENOMEM;
    set->dirty = true;
    loop->backend_data = set;
    return 0;
}

static void poll_destroy(ioloop_t *loop)
{
    poll_set_t *set = loop->backend_data;
    if (set) {
        free(set->fds);
        free(set->tokens);
        free(set->files);
        free(set);
    }
    loop->backend_data = NULL;
}

static int mark_dirty(ioloop_t *loop)
{
    ((poll_set_t *)loop->backend_data)->dirty = true;
    return 0;
}

static int poll_add(ioloop_t *loop, int fd, unsigned events, uint64_t token)
{
    (void)events, (void)token;
    poll_set_t *set = loop->backend_data;
    struct stat st;
    if (fstat(fd, &st) < 0)
        return -errno;
    if ((size_t)fd >= set->files_capacity) {
        size_t capacity = set->files_capacity ? set->files_capacity : 64;
        while (capacity <= (size_t)fd)
            capacity *= 2;
        file_id_t *files = realloc(set->files, capacity * sizeof(*files));
        if (!files)
            return -ENOMEM;
        for (size_t i = set->files_capacity; i < capacity; i++)
            files[i] = (file_id_t){0};
        set->files = files;
        set->files_capacity = capacity;
    }
    file_id_t *f = &set->files[fd];
    if (f->ino && f->dev == st.st_dev && f->ino == st.st_ino)
        return -EEXIST; /* the registered file is still behind this fd */
    *f = (file_id_t){st.st_dev, st.st_ino};
    return mark_dirty(loop);
}

static int poll_mod(ioloop_t *loop, int fd, unsigned events, uint64_t token)
{
    (void)fd, (void)events, (void)token;
    return mark_dirty(loop);
}

static int poll_del(ioloop_t *loop, int fd)
{
    poll_set_t *set = loop->backend_data;
    if ((size_t)fd < set->files_capacity)
        set->files[fd] = (file_id_t){0};
    return mark_dirty(loop);
}

static void append_handler(ioloop__handler_t *h, void *arg)
{
    poll_set_t *set = arg;
    if (set->count == set->capacity)
        return; /* sized by count_handler beforehand; never hit */
    unsigned events = atomic_load_explicit(&h->events, memory_order_relaxed);
    set->fds[set->count] = (struct pollfd){
        .fd = h->fd,
        .events = (short)(((events & IOLOOP_READ) ? POLLIN : 0) | ((events & IOLOOP_WRITE) ? POLLOUT : 0)),
    };
    set->tokens[set->count] = h->token;
    set->count++;
}

static void count_handler(ioloop__handler_t *h, void *arg)
{
    (void)h;
    ++*(size_t *)arg;
}

/* handlers_lock held. */
static int rebuild(ioloop_t *loop, poll_set_t *set)
{
    size_t needed = 0;
    ioloop__handlers_foreach_locked(loop, count_handler, &needed);
    if (needed > set->capacity) {
        size_t capacity = needed * 2;
        struct pollfd *fds = realloc(set->fds, capacity * sizeof(*fds));
        if (!fds)
            return -ENOMEM;
        set->fds = fds;
        uint64_t *tokens = realloc(set->tokens, capacity * sizeof(*tokens));
        if (!tokens)
            return -ENOMEM;
        set->tokens = tokens;
        set->capacity = capacity;
    }
    set->count = 0;
    ioloop__handlers_foreach_locked(loop, append_handler, set);
    set->dirty = false;
    return 0;
}

static int poll_wait_ready(ioloop_t *loop, int timeout_ms, ioloop__ready_t *out, int max)
{
    poll_set_t *set = loop->backend_data;
    int err = 0;
    pthread_mutex_lock(&loop->handlers_lock);
    if (set->dirty)
        err = rebuild(loop, set);
    pthread_mutex_unlock(&loop->handlers_lock);
    if (err)
        return err;
    int n = poll(set->fds, (nfds_t)set->count, timeout_ms);
    if (n < 0)
        return errno == EINTR ? 0 : -errno;
    /* The scan starts where the last one stopped: with more than max fds
     * ready (level-triggered, they stay ready), a scan from index 0 would
     * report the same lowest max fds every time and starve the rest. */
    int filled = 0;
    size_t start = set->count ? set->scan_start % set->count : 0, k = 0;
    for (; k < set->count && filled < max && n > 0; k++) {
        size_t i = (start + k) % set->count;
        short r = set->fds[i].revents;
        if (!r)
            continue;
        n--;
        if (r & POLLNVAL) {
            /* Closed without remove_handler: it would be reported again on
             * every poll. Only marks the set dirty; this pass goes on. */
            ioloop__handler_forget_invalid(loop, set->fds[i].fd, set->tokens[i]);
            continue;
        }
        out[filled++] = (ioloop__ready_t){
            .fd = set->fds[i].fd,
            .token = set->tokens[i],
            .events = ((r & POLLIN) ? IOLOOP_READ : 0u) | ((r & POLLOUT) ? IOLOOP_WRITE : 0u) |
                      ((r & (POLLERR | POLLHUP)) ? IOLOOP_ERROR : 0u),
        };
    }
    set->scan_start = set->count ? (start + k) % set->count : 0;
    return filled;
}

const ioloop__backend_ops_t ioloop__backend_poll = {
    .name = "poll",
    .init = poll_init,
    .destroy = poll_destroy,
    .add = poll_add,
    .mod = poll_mod,
    .del = poll_del,
    .wait = poll_wait_ready,
    .wake_on_foreign_change = true,
};
