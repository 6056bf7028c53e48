/* accept_dispatch.c — DISPATCH mode: the acceptor loop hands each accepted
 * fd to the loop with the fewest live connections.
 *
 * Threading rule: ioloop__dispatch_accepted runs on the acceptor loop's
 * thread; it reads every loop's live_connections stat (a relaxed atomic each
 * loop writes for itself) and the per-loop count of handoffs in flight
 * (atomics: raised here, lowered by the receiving loop once the connection
 * is counted live there). A handoff is an ordinary cross-thread post.
 *
 * The pick: the next loop in turn (round-robin: ties rotate, and with short
 * connections, where every load is about 0, no loop is favoured), unless it
 * is really more loaded than another (more than one live connection above
 * the fewest, or a full accept batch handed to it and not yet taken); then
 * the least loaded by live connections + hand-offs in flight, so a burst
 * accepted in one batch spreads out. The acceptor's own loop gets its
 * connections by a post like the others (counted in flight until it runs):
 * served at once, a connection that ends at once kept its load at 0 while the
 * others counted theirs in flight, and it took most of them.
 */
#define _GNU_SOURCE
#include "runtime_internal.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct {
    ioloop_listener_t *listener;
    int index; /* the receiving loop */
    int fd;
    socklen_t peer_len;
    struct sockaddr_storage peer;
} handoff_t;

static void receive_handoff(ioloop_t *loop, void *arg)
{
    handoff_t *h = arg;
    ioloop_listener_t *l = h->listener;
    ioloop__listener_hand_over(l, loop, h->fd, (struct sockaddr *)&h->peer, h->peer_len);
    atomic_fetch_sub_explicit(&l->inflight[h->index], 1, memory_order_relaxed);
    free(h);
    ioloop__listener_unref(l);
}

/* Hand-offs in flight to one loop that do not count against it yet: under
 * CPU contention a loop that simply has not been scheduled since its last
 * wakeup lags by up to an accept batch (64) without being busy. */
enum { INFLIGHT_SLACK = 64 };

static int64_t live_of(ioloop_listener_t *l, int i)
{
    return atomic_load_explicit(&l->loops[i]->stats.live_connections, memory_order_relaxed);
}

static int64_t inflight_of(ioloop_listener_t *l, int i)
{
    return atomic_load_explicit(&l->inflight[i], memory_order_relaxed);
}

/* The next loop in turn (round-robin, so ties rotate and no loop is
 * favoured), unless it is really more loaded than another: more than one live
 * connection above the fewest, or a full accept batch of hand-offs it has not
 * taken yet (blocked, or far behind). Then the least loaded, counting live
 * connections and hand-offs in flight, so that a burst still spreads out. */
static int least_loaded(ioloop_listener_t *l)
{
    int n = l->nloops;
    unsigned start = l->next_start++;
    int turn = (int)(start % (unsigned)n), best = turn;
    int64_t fewest_live = live_of(l, turn), best_load = fewest_live + inflight_of(l, turn);
    for (int k = 1; k < n; k++) {
        int i = (int)((start + (unsigned)k) % (unsigned)n);
        int64_t live = live_of(l, i), load = live + inflight_of(l, i);
        if (live < fewest_live)
            fewest_live = live;
        if (load < best_load) {
            best_load = load;
            best = i;
        }
    }
    if (live_of(l, turn) <= fewest_live + 1 && inflight_of(l, turn) <= INFLIGHT_SLACK)
        return turn;
    return best;
}

void ioloop__dispatch_accepted(ioloop_listener_t *l, ioloop_t *from, int fd, const struct sockaddr *peer,
                               socklen_t peer_len)
{
    if (l->nloops == 1) { /* no choice to make */
        ioloop__listener_hand_over(l, from, fd, peer, peer_len);
        return;
    }
    int i = least_loaded(l);
    ioloop_t *to = l->loops[i];
    /* A hand-off to the acceptor's own loop is posted too (the cheap
     * own-thread path), not served at once: served at once, a connection
     * that ends at once leaves this loop's load at 0 while every other
     * loop's counts its hand-off in flight, and this loop would win every
     * pick of an accept batch. */
    handoff_t *h = malloc(sizeof(*h));
    if (!h) {
        ioloop__listener_hand_over(l, from, fd, peer, peer_len); /* serve it here rather than drop it */
        return;
    }
    h->listener = l;
    h->index = i;
    h->fd = fd;
    h->peer_len = peer_len <= sizeof(h->peer) ? peer_len : (socklen_t)sizeof(h->peer);
    memcpy(&h->peer, peer, h->peer_len);
    ioloop__listener_ref(l);
    atomic_fetch_add_explicit(&l->inflight[i], 1, memory_order_relaxed);
    if (ioloop_add_callback(to, receive_handoff, h) < 0) {
        atomic_fetch_sub_explicit(&l->inflight[i], 1, memory_order_relaxed);
        free(h);
        ioloop__listener_unref(l);
        ioloop__listener_hand_over(l, from, fd, peer, peer_len);
    }
}
