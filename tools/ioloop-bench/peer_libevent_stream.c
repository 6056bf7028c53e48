/* peer_libevent_stream.c — `ioloop-bench stream`'s echo server the way a
 * libevent 2.1 program writes it: a bufferevent per socket on a lock-free
 * base, and in the read callback the whole input buffer moved to the output
 * (evbuffer_add_buffer: chains change hands, no copy); the bufferevent
 * writes it when the socket is writable. Built only with libevent
 * (IOLOOP_BENCH_HAVE_LIBEVENT).
 *
 * Threading rule: the event_base runs on the calling thread.
 */
#define _GNU_SOURCE
#include "bench.h"

#ifdef IOLOOP_BENCH_HAVE_LIBEVENT
#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <unistd.h>

typedef struct {
    struct event_base *base;
    int open;
} ev_echo_t;

static void ev_echo_read(struct bufferevent *bev, void *arg)
{
    (void)arg;
    evbuffer_add_buffer(bufferevent_get_output(bev), bufferevent_get_input(bev));
}

static void ev_echo_event(struct bufferevent *bev, short what, void *arg)
{
    ev_echo_t *server = arg;
    if (!(what & (BEV_EVENT_EOF | BEV_EVENT_ERROR)))
        return;
    bufferevent_free(bev); /* BEV_OPT_CLOSE_ON_FREE: closes the socket */
    if (--server->open == 0)
        event_base_loopbreak(server->base);
}

int bench_libevent_stream_echo(const int *fds, int n)
{
    struct event_config *cfg = event_config_new();
    if (cfg)
        event_config_set_flag(cfg, EVENT_BASE_FLAG_NOLOCK);
    ev_echo_t server = {.base = cfg ? event_base_new_with_config(cfg) : NULL};
    if (cfg)
        event_config_free(cfg);
    int err = server.base ? 0 : -ENOMEM;
    for (int i = 0; i < n; i++) {
        struct bufferevent *bev = err ? NULL : bufferevent_socket_new(server.base, fds[i], BEV_OPT_CLOSE_ON_FREE);
        if (!bev) {
            close(fds[i]);
            err = -ENOMEM;
            continue;
        }
        server.open++;
        bufferevent_setcb(bev, ev_echo_read, NULL, ev_echo_event, &server);
        bufferevent_setwatermark(bev, EV_READ, 0, BENCH_STREAM_READ);
        if (bufferevent_enable(bev, EV_READ) < 0)
            err = -EIO; /* the driver still closes its end: this one ends on EOF */
    }
    if (server.open > 0)
        event_base_dispatch(server.base);
    if (server.base)
        event_base_free(server.base);
    return err;
}
#endif
