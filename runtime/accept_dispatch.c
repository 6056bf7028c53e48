/* accept_dispatch.c — DISPATCH mode: the acceptor loop hands each accepted
 * fd to the loop with the fewest live connections.
 *
 * Threading rule: ioloop__dispatch_accepted runs on the acceptor loop's
 * thread; it reads every loop's live_connections stat (a relaxed atomic each
 * loop writes for itself) and the per-loop count of handoffs in flight
 * (atomics: raised here, lowered by the receiving loop once the connection
 * is counted live there). A handoff is an ordinary cross-thread post.
 *
 * Load = live connections + handoffs in flight, so a burst accepted in one
 * batch spreads out instead of all going to the loop that looked emptiest
 * when the batch began. Ties go round-robin (the scan starts one further each
 * time), which is what short-lived connections, where every load is 0, need.
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

static int least_loaded(ioloop_listener_t *l)
{
    int n = l->nloops, best = 0;
    int64_t best_load = INT64_MAX;
    unsigned start = l->next_start++;
    for (int k = 0; k < n; k++) {
        int i = (int)((start + (unsigned)k) % (unsigned)n);
        int64_t load = atomic_load_explicit(&l->loops[i]->stats.live_connections, memory_order_relaxed) +
                       atomic_load_explicit(&l->inflight[i], memory_order_relaxed);
        if (load < best_load) {
            best_load = load;
            best = i;
        }
    }
    return best;
}

void ioloop__dispatch_accepted(ioloop_listener_t *l, ioloop_t *from, int fd, const struct sockaddr *peer,
                               socklen_t peer_len)
{
    int i = least_loaded(l);
    ioloop_t *to = l->loops[i];
    if (to == from) {
        ioloop__listener_hand_over(l, from, fd, peer, peer_len);
        return;
    }
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
