/* signals.c — ioloop_signal_watch: Unix signals delivered as ordinary
 * callbacks on a loop.
 *
 * Linux: each watching loop has one signalfd holding the set of signals it
 * watches, registered as an fd handler; the signals are blocked, so the
 * kernel leaves them pending and the signalfd reads them. Elsewhere: a
 * sigaction handler writes the signal number into the watching loop's
 * self-pipe (write(2) is async-signal-safe) and the loop reads it.
 *
 * Threading rule: watch/unwatch from any thread, serialised by one mutex
 * over the table of watchers (signal number -> loop, fn, arg); the callback
 * runs on the watching loop's thread, after looking its watcher up under the
 * mutex, so an unwatch from another thread is seen at once; a source's fd
 * is closed, and the source freed, on its loop's thread. One loop per
 * signal: a process-directed signal is consumed by one reader anyway.
 * A loop's first source posts it a callback that registers a close hook
 * (the loop's own mechanism, so the core never calls up into this file):
 * ioloop_close runs it on the closing thread, and it unwatches whatever the
 * loop still watched.
 */
#define _GNU_SOURCE
#include "runtime_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/signalfd.h>
#endif

typedef struct {
    ioloop_t *loop; /* NULL: not watched */
    ioloop_signal_fn fn;
    void *arg;
} watcher_t;

/* One per watching loop. Freed on its loop's thread (see free_source). */
typedef struct sigsource {
    struct sigsource *next;
    ioloop_t *loop;
    int read_fd, write_fd; /* signalfd: both the same */
    sigset_t mask;
    int count;
    bool live; /* under lock: in `sources`, its fds open */
} sigsource_t;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static watcher_t watchers[NSIG];
static sigsource_t *sources;

#ifndef __linux__
static _Atomic int pipe_for_signal[NSIG]; /* write end, read by the handler */

static void on_signal(int signo)
{
    int saved = errno;
    int fd = atomic_load(&pipe_for_signal[signo]);
    unsigned char b = (unsigned char)signo;
    if (fd >= 0)
        (void)write(fd, &b, 1);
    errno = saved;
}
#endif

static bool catchable(int signo)
{
    return signo > 0 && signo < NSIG && signo != SIGKILL && signo != SIGSTOP && signo != SIGSEGV && signo != SIGBUS &&
           signo != SIGFPE && signo != SIGILL;
}

static void deliver(ioloop_t *loop, int signo)
{
    if (signo <= 0 || signo >= NSIG)
        return;
    pthread_mutex_lock(&lock);
    watcher_t w = watchers[signo];
    pthread_mutex_unlock(&lock);
    if (w.loop == loop && w.fn)
        w.fn(loop, signo, w.arg);
}

static int source_readable(ioloop_t *loop, int fd, unsigned events, void *arg)
{
    (void)fd, (void)events;
    sigsource_t *s = arg; /* valid: freed only by a callback on this thread */
    /* Read under the lock that also guards changing the signalfd's mask:
     * the kernel orders the two anyway, but ThreadSanitizer models the mask
     * change as a write to the fd and would see a race. Signals are rare.
     * An unwatch from another thread may have retired the source since this
     * call was dispatched: then there is nothing to read. */
    int signos[64], n = 0;
    pthread_mutex_lock(&lock);
    if (!s->live) {
        pthread_mutex_unlock(&lock);
        return 0;
    }
    fd = s->read_fd;
#ifdef __linux__
    struct signalfd_siginfo info[8];
    ssize_t got;
    while (n + 8 <= 64 && (got = read(fd, info, sizeof(info))) > 0)
        for (size_t i = 0; i < (size_t)got / sizeof(info[0]); i++)
            signos[n++] = (int)info[i].ssi_signo;
#else
    unsigned char buf[64];
    ssize_t got = read(fd, buf, sizeof(buf));
    for (ssize_t i = 0; i < got; i++)
        signos[n++] = buf[i];
#endif
    pthread_mutex_unlock(&lock);
    for (int i = 0; i < n; i++)
        deliver(loop, signos[i]);
    return 0;
}

/* lock held */
static sigsource_t *find_source(ioloop_t *loop)
{
    for (sigsource_t *s = sources; s; s = s->next)
        if (s->loop == loop)
            return s;
    return NULL;
}

static void forget(ioloop_t *loop);

/* ioloop_close runs it (see the file comment): the loop's watchers go with it. */
static void forget_on_close(ioloop_t *loop, ioloop__close_hook_t *hook)
{
    forget(loop);
    free(hook);
}

/* Loop thread (close hooks are the loop thread's list): one hook per loop. */
static void add_close_hook(ioloop_t *loop, void *arg)
{
    ioloop__close_hook_t *hook = arg;
    if (ioloop__close_hook_find(loop, forget_on_close)) {
        free(hook); /* a source made after an earlier one was freed */
        return;
    }
    hook->fn = forget_on_close;
    ioloop__close_hook_add(loop, hook);
}

/* lock held. Creates loop's source with an empty mask. -ESHUTDOWN when the
 * loop is closing: nothing could forget the source then. */
static int new_source(ioloop_t *loop, sigsource_t **out)
{
    ioloop__close_hook_t *hook = calloc(1, sizeof(*hook));
    if (!hook)
        return -ENOMEM;
    /* Accepted posts run even when the loop closes before it runs again, so
     * the hook is in place before the close hooks run. */
    int posted = ioloop_add_callback(loop, add_close_hook, hook);
    if (posted) {
        free(hook);
        return posted;
    }
    /* From here a failure leaves the hook posted: it then forgets nothing. */
    sigsource_t *s = calloc(1, sizeof(*s));
    if (!s)
        return -ENOMEM;
    sigemptyset(&s->mask);
#ifdef __linux__
    s->read_fd = s->write_fd = signalfd(-1, &s->mask, SFD_NONBLOCK | SFD_CLOEXEC);
    if (s->read_fd < 0) {
        free(s);
        return -errno;
    }
#else
    int fds[2];
    if (pipe(fds) < 0) {
        free(s);
        return -errno;
    }
    for (int i = 0; i < 2; i++) {
        fcntl(fds[i], F_SETFL, fcntl(fds[i], F_GETFL) | O_NONBLOCK);
        fcntl(fds[i], F_SETFD, FD_CLOEXEC);
    }
    s->read_fd = fds[0];
    s->write_fd = fds[1];
#endif
    s->live = true;
    int err = ioloop_add_handler(loop, s->read_fd, IOLOOP_READ, source_readable, s);
    if (err) {
        close(s->read_fd);
        if (s->write_fd != s->read_fd)
            close(s->write_fd);
        free(s);
        return err;
    }
    s->loop = loop;
    s->next = sources;
    sources = s;
    *out = s;
    return 0;
}

static void close_source(sigsource_t *s)
{
    close(s->read_fd);
    if (s->write_fd != s->read_fd)
        close(s->write_fd);
    free(s);
}

static void close_source_cb(ioloop_t *loop, void *arg)
{
    (void)loop;
    close_source(arg);
}

/* lock held. Seen from another thread than the one running the loop, the
 * handler may be running right now (ioloop_remove_handler's contract): it
 * sees `live` false under the lock and reads nothing, and the fds are closed
 * and the memory freed by a callback posted after the removal, which runs on
 * the loop thread after any such call. On the loop's own thread, or for a
 * loop nobody runs (or one closing, which takes no callbacks), nothing can be
 * reading: done here. */
static void free_source(sigsource_t *s)
{
    for (sigsource_t **link = &sources; *link; link = &(*link)->next)
        if (*link == s) {
            *link = s->next;
            break;
        }
    s->live = false;
    ioloop_remove_handler(s->loop, s->read_fd);
    if (ioloop__owner_check(s->loop) == 0 || ioloop_add_callback(s->loop, close_source_cb, s) != 0)
        close_source(s);
}

/* lock held: makes the OS deliver signo to s (or stop doing so). */
static int apply_mask(sigsource_t *s, int signo, bool on)
{
#ifdef __linux__
    sigset_t mask = s->mask;
    if (on)
        sigaddset(&mask, signo);
    else
        sigdelset(&mask, signo);
    if (signalfd(s->read_fd, &mask, 0) < 0)
        return -errno;
    s->mask = mask;
#else
    struct sigaction sa = {0};
    sa.sa_handler = on ? on_signal : SIG_DFL;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    atomic_store(&pipe_for_signal[signo], on ? s->write_fd : -1);
    if (sigaction(signo, &sa, NULL) < 0)
        return -errno;
    if (on)
        sigaddset(&s->mask, signo);
    else
        sigdelset(&s->mask, signo);
#endif
    return 0;
}

/* Blocks or unblocks signo in the calling thread; returns whether it was
 * blocked before. */
static bool set_blocked(int signo, bool blocked)
{
#ifdef __linux__
    sigset_t one, old;
    sigemptyset(&one);
    sigaddset(&one, signo);
    if (pthread_sigmask(blocked ? SIG_BLOCK : SIG_UNBLOCK, &one, &old) != 0)
        return blocked;
    return sigismember(&old, signo) == 1;
#else
    (void)signo, (void)blocked; /* the handler catches it in any thread */
    return false;
#endif
}

int ioloop_signal_watch(ioloop_t *loop, int signo, ioloop_signal_fn fn, void *arg)
{
    if (!loop || !fn || !catchable(signo))
        return -EINVAL;
    int err = 0;
    pthread_mutex_lock(&lock);
    if (watchers[signo].loop && watchers[signo].loop != loop) {
        err = -EBUSY;
    } else if (watchers[signo].loop == loop) {
        watchers[signo].fn = fn; /* replace the callback */
        watchers[signo].arg = arg;
    } else {
        /* Block first: a signal arriving between now and the signalfd
         * update then stays pending and is read, instead of killing us. */
        bool was_blocked = set_blocked(signo, true);
        sigsource_t *s = find_source(loop);
        if (!s)
            err = new_source(loop, &s);
        if (!err)
            err = apply_mask(s, signo, true);
        if (!err) {
            watchers[signo] = (watcher_t){.loop = loop, .fn = fn, .arg = arg};
            s->count++;
        } else {
            if (s && s->count == 0)
                free_source(s);
            /* Nobody reads it: blocked, the signal would stay pending for
             * good instead of taking its action. Leave the mask as it was. */
            if (!was_blocked)
                set_blocked(signo, false);
        }
    }
    pthread_mutex_unlock(&lock);
    return err;
}

/* The closing thread, with ioloop_current() == loop (a close hook). */
static void forget(ioloop_t *loop)
{
    pthread_mutex_lock(&lock);
    sigsource_t *s = find_source(loop);
    if (s) {
        for (int signo = 1; signo < NSIG; signo++) {
            if (watchers[signo].loop != loop)
                continue;
            watchers[signo] = (watcher_t){0};
            (void)apply_mask(s, signo, false);
            set_blocked(signo, false); /* as ioloop_signal_unwatch does */
        }
        free_source(s);
    }
    pthread_mutex_unlock(&lock);
}

int ioloop_signal_unwatch(ioloop_t *loop, int signo)
{
    if (!catchable(signo))
        return -EINVAL;
    int err = 0;
    pthread_mutex_lock(&lock);
    sigsource_t *s = find_source(loop);
    if (watchers[signo].loop != loop || !s) {
        err = -ENOENT;
    } else {
        watchers[signo] = (watcher_t){0};
        (void)apply_mask(s, signo, false);
        if (--s->count == 0)
            free_source(s);
        set_blocked(signo, false);
    }
    pthread_mutex_unlock(&lock);
    return err;
}
