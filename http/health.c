/* health.c — the health-check route (HAProxy's `option httpchk`, nginx
 * Plus's health_check, a Kubernetes readiness probe): 200 "ok" while the
 * server serves, 503 "draining" from the moment its shutdown began (the
 * drain_delay window included), so a load balancer takes the process out of
 * rotation before its listener closes.
 *
 * Threading rule: the route is added while configuring (ioloop_http_server_
 * route's rule); the handler runs on any loop and reads only the server's
 * atomic shutting_down flag.
 */
#include "internal.h"

#include <errno.h>
#include <stdatomic.h>

static void health_get(ioloop_http_request_t *req, void *arg)
{
    const ioloop_http_server_t *s = arg;
    /* no-store: a cache between the balancer and us must never answer for us */
    ioloop_http_response_header(req, "Cache-Control", "no-store");
    if (ioloop_http_server_draining(s))
        ioloop_http_response_send(req, 503, "text/plain", "draining", 8);
    else
        ioloop_http_response_send(req, 200, "text/plain", "ok", 2);
}

int ioloop_http_server_health_route(ioloop_http_server_t *s, const char *path)
{
    if (!s || !path || path[0] != '/')
        return -EINVAL;
    /* HEAD falls back to get with the body suppressed (the router's rule). */
    return ioloop_http_server_route(s, path, &(ioloop_http_route_t){.get = health_get, .arg = s});
}

bool ioloop_http_server_draining(const ioloop_http_server_t *s)
{
    return atomic_load_explicit(&((ioloop_http_server_t *)s)->shutting_down, memory_order_relaxed);
}
