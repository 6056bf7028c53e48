/* resolve.c — host names to addresses for ioloop_tcp_connect: literals and
 * RFC 6761's "invalid" names on the spot, everything else by getaddrinfo on
 * the executor, never on a loop thread (it may block for seconds).
 *
 * Threading rule: lookup_start / abandon and the result callback are for the
 * loop's thread; lookup_work runs on a pool thread and touches only its
 * lookup's own fields (host in, result out). A lookup has two owners, the
 * work and the loop side, and the last to let go frees it: a cancelled
 * connect abandons its lookup, which finishes on the pool and is freed there.
 * The loop side lets go in the future's done callback, or in the loop's close
 * hook when that callback can no longer come (a closed loop refuses the
 * completion's post): each loop keeps its lookups in flight on a list for
 * that. Work that never ran (the runtime's pool shut down first) completes
 * with a NULL result: the loop side drops the work's share.
 */
#define _GNU_SOURCE
#include "tcp_internal.h"

#include "ioloop/runtime.h"
#include "ioloop/stream.h"

#include <arpa/inet.h>
#include <assert.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

typedef struct lookup_home lookup_home_t;

struct ioloop__lookup {
    _Atomic int owners; /* the work and the loop side */
    /* loop side (loop thread) */
    ioloop_t *loop;
    ioloop_future_t *future;
    lookup_home_t *home; /* on its list until the loop side lets go */
    ioloop__lookup_t *prev, *next;
    ioloop__lookup_fn fn; /* NULL once abandoned or called */
    void *arg;
    /* in: read by the work */
    int family;
    /* out: written by the work before it completes the future */
    int gai_err;
    struct addrinfo *result;
    char host[];
};

/* A loop's lookups in flight, for its close hook (made on first use). */
struct lookup_home {
    ioloop__close_hook_t hook; /* first: the hook is the home */
    ioloop__lookup_t *head;
};

static _Atomic int lookups_live;

int ioloop__lookups_live(void)
{
    return atomic_load(&lookups_live);
}

static void lookup_release(ioloop__lookup_t *lookup)
{
    if (atomic_fetch_sub_explicit(&lookup->owners, 1, memory_order_acq_rel) != 1)
        return;
    if (lookup->result)
        freeaddrinfo(lookup->result);
    free(lookup);
    atomic_fetch_sub(&lookups_live, 1);
}

int ioloop__resolve_error(int gai_err)
{
    switch (gai_err) {
    case 0:
        return 0;
    case EAI_NONAME:
#ifdef EAI_NODATA
    case EAI_NODATA:
#endif
#ifdef EAI_ADDRFAMILY
    case EAI_ADDRFAMILY: /* the name exists, with no address of the family asked */
#endif
        return IOLOOP_ENONAME;
    case EAI_MEMORY:
        return -ENOMEM;
    default:
        /* EAI_AGAIN, EAI_FAIL, EAI_SYSTEM (the resolver's own socket
         * failed: its errno would read as the peer's, e.g. "connection
         * refused" by a DNS server), ... */
        return IOLOOP_EDNS;
    }
}

/* RFC 6761 6.4: "invalid" and names under it never resolve, and resolver
 * libraries should say so at once instead of asking the network. */
static bool reserved_invalid(const char *host)
{
    size_t len = strlen(host);
    if (len && host[len - 1] == '.')
        len--; /* the root label */
    if (len < 7 || strncasecmp(host + len - 7, "invalid", 7) != 0)
        return false;
    return len == 7 || host[len - 8] == '.';
}

int ioloop__resolve_literal(const char *host, int family, struct sockaddr_storage *ss, socklen_t *len)
{
    memset(ss, 0, sizeof(*ss));
    char buf[INET6_ADDRSTRLEN + 2];
    size_t hlen = strlen(host);
    if (hlen >= 2 && host[0] == '[' && host[hlen - 1] == ']' && hlen - 2 < sizeof(buf)) {
        memcpy(buf, host + 1, hlen - 2); /* "[::1]", as in URLs */
        buf[hlen - 2] = '\0';
        host = buf;
    }
    struct sockaddr_in *sin = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;
    if (inet_pton(AF_INET, host, &sin->sin_addr) == 1) {
        sin->sin_family = AF_INET;
        *len = sizeof(*sin);
    } else if (inet_pton(AF_INET6, host, &sin6->sin6_addr) == 1) {
        sin6->sin6_family = AF_INET6;
        *len = sizeof(*sin6);
    } else {
        return reserved_invalid(host) ? IOLOOP_ENONAME : 0;
    }
    if (family != AF_UNSPEC && family != ss->ss_family)
        return -EAFNOSUPPORT;
    return 1;
}

static void home_unlink(ioloop__lookup_t *lookup)
{
    if (!lookup->home)
        return;
    if (lookup->prev)
        lookup->prev->next = lookup->next;
    else
        lookup->home->head = lookup->next;
    if (lookup->next)
        lookup->next->prev = lookup->prev;
    lookup->home = NULL;
    lookup->prev = lookup->next = NULL;
}

/* Pool thread. */
static void *lookup_work(void *arg, int *status)
{
    ioloop__lookup_t *lookup = arg;
    struct addrinfo hints = {.ai_family = lookup->family, .ai_socktype = SOCK_STREAM, .ai_protocol = IPPROTO_TCP};
    /* No AI_ADDRCONFIG: glibc ignores loopback addresses for it, so on a host
     * whose only interface is lo "localhost" would not resolve. A family
     * that cannot be reached fails its attempt and Happy Eyeballs moves on. */
    lookup->gai_err = getaddrinfo(lookup->host, NULL, &hints, &lookup->result);
    if (lookup->gai_err)
        lookup->result = NULL;
    *status = 0;
    /* Only the pointer's value goes into the future (the done callback tells
     * "ran" from "never started" by it); the loop side, if still there, owns
     * the memory from here. */
    lookup_release(lookup);
    return lookup;
}

/* Loop thread: the lookup's outcome, then the loop side lets go. */
static void lookup_done(ioloop_future_t *future, void *arg)
{
    ioloop__lookup_t *lookup = arg;
    home_unlink(lookup);
    int status;
    if (!ioloop_future_result(future)) {
        /* Never started: the pool was shut down (-ECANCELED). */
        status = ioloop_future_status(future) ? ioloop_future_status(future) : -ECANCELED;
        lookup_release(lookup); /* the work's share */
    } else {
        status = ioloop__resolve_error(lookup->gai_err);
        if (!status && !lookup->result)
            status = IOLOOP_ENONAME;
    }
    ioloop__lookup_fn fn = lookup->fn;
    lookup->fn = NULL;
    if (fn)
        fn(lookup->arg, status, status ? NULL : lookup->result);
    ioloop_future_unref(future);
    lookup_release(lookup);
}

/* The loop is closing (after the posts it accepted ran): the done callbacks
 * of the lookups still on its list can no longer come. */
static void home_close(ioloop_t *loop, ioloop__close_hook_t *hook)
{
    (void)loop;
    lookup_home_t *home = (lookup_home_t *)hook;
    while (home->head) {
        ioloop__lookup_t *lookup = home->head;
        home_unlink(lookup);
        ioloop_future_on_done(lookup->future, NULL, NULL); /* detach (a late settle finds nothing) */
        /* Not done yet: the work is queued or running on the process-wide
         * pool and lets go when it ends. Done with a NULL result: a pool
         * shutdown cancelled the work, which will not run, and the loop
         * refused the completion's post, so the work's share goes here
         * (runtime_free shuts the pool down before it closes the loops, so
         * that post is normally accepted and lookup_done drops it). */
        if (ioloop_future_done(lookup->future) && !ioloop_future_result(lookup->future))
            lookup_release(lookup);
        ioloop__lookup_fn fn = lookup->fn;
        lookup->fn = NULL;
        if (fn)
            fn(lookup->arg, -ESHUTDOWN, NULL);
        ioloop_future_unref(lookup->future);
        lookup_release(lookup);
    }
    free(home);
}

static lookup_home_t *home_of(ioloop_t *loop)
{
    lookup_home_t *home = (lookup_home_t *)ioloop__close_hook_find(loop, home_close);
    if (!home && (home = calloc(1, sizeof(*home))) != NULL) {
        home->hook.fn = home_close;
        ioloop__close_hook_add(loop, &home->hook);
    }
    return home;
}

int ioloop__lookup_start(ioloop_t *loop, const char *host, int family, ioloop__lookup_fn fn, void *arg,
                         ioloop__lookup_t **out)
{
    lookup_home_t *home = home_of(loop);
    size_t hlen = strlen(host);
    ioloop__lookup_t *lookup = home ? malloc(sizeof(*lookup) + hlen + 1) : NULL;
    if (!lookup)
        return -ENOMEM;
    memset(lookup, 0, sizeof(*lookup));
    atomic_init(&lookup->owners, 2);
    lookup->loop = loop;
    lookup->fn = fn;
    lookup->arg = arg;
    lookup->family = family;
    memcpy(lookup->host, host, hlen + 1);
    atomic_fetch_add(&lookups_live, 1);
    if (ioloop_run_in_executor(loop, lookup_work, lookup, &lookup->future) != 0) {
        free(lookup);
        atomic_fetch_sub(&lookups_live, 1);
        return -ENOMEM;
    }
    /* The future cannot have settled yet: settling is a post to this loop,
     * which runs only after we return. */
    int err = ioloop_future_on_done(lookup->future, lookup_done, lookup);
    assert(!err);
    (void)err;
    lookup->home = home;
    lookup->next = home->head;
    if (home->head)
        home->head->prev = lookup;
    home->head = lookup;
    *out = lookup;
    return 0;
}

void ioloop__lookup_abandon(ioloop__lookup_t *lookup)
{
    /* The lookup itself goes when its done callback (or the close hook)
     * runs: the work may still be writing its result until then. */
    lookup->fn = NULL;
}
