/* post_queue.c — the callback queue the libuv and libevent peers use to
 * receive posts: a growable array under a mutex, swapped out whole by the
 * consumer (two arrays ping-pong, so steady state allocates nothing).
 *
 * Threading rule: push from any thread when the queue is locked (from the
 * consumer's thread only when not); take from the consumer thread only.
 */
#include "bench.h"

#include <errno.h>
#include <stdlib.h>

void bench_queue_init(bench_queue_t *q, bool locked)
{
    *q = (bench_queue_t){.locked = locked};
    pthread_mutex_init(&q->lock, NULL);
}

void bench_queue_destroy(bench_queue_t *q)
{
    free(q->items);
    free(q->spare);
    pthread_mutex_destroy(&q->lock);
}

int bench_queue_push(bench_queue_t *q, void (*fn)(void *, void *), void *arg, bool *was_empty)
{
    if (q->locked)
        pthread_mutex_lock(&q->lock);
    int err = 0;
    if (q->count == q->capacity) {
        size_t capacity = q->capacity ? q->capacity * 2 : 1024;
        bench_item_t *items = realloc(q->items, capacity * sizeof(*items));
        if (items) {
            q->items = items;
            q->capacity = capacity;
        } else {
            err = -ENOMEM;
        }
    }
    if (!err) {
        if (was_empty)
            *was_empty = q->count == 0;
        q->items[q->count++] = (bench_item_t){fn, arg};
    }
    if (q->locked)
        pthread_mutex_unlock(&q->lock);
    return err;
}

size_t bench_queue_take(bench_queue_t *q, bench_item_t **items)
{
    if (q->locked)
        pthread_mutex_lock(&q->lock);
    bench_item_t *taken = q->items;
    size_t count = q->count, capacity = q->capacity;
    q->items = q->spare;
    q->capacity = q->spare_capacity;
    q->count = 0;
    q->spare = taken;
    q->spare_capacity = capacity;
    if (q->locked)
        pthread_mutex_unlock(&q->lock);
    *items = taken;
    return count;
}
