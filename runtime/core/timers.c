/* timers.c — call_at / call_later / remove_timeout: a binary min-heap of
 * (deadline, insertion sequence) over a slab of timer slots.
 *
 * Threading rule: loop thread only (or the thread that holds a loop nobody
 * runs); from another thread the calls fail with EPERM (ioloop__owner_check).
 *
 * Decisions:
 *  - FIFO among equal deadlines: the heap orders by (deadline, seq).
 *  - O(1) cancel, as Tornado does: the slot is marked cancelled and its heap
 *    entry dropped when it reaches the top; when cancelled entries are more
 *    than half the heap it is compacted in one O(n) pass, so a program that
 *    schedules and cancels forever keeps a small heap.
 *  - Handles carry the slot's generation: a handle for a timer that ran or was
 *    removed no longer matches and remove_timeout ignores it. Slots are
 *    recycled through a free list, so steady-state scheduling allocates nothing.
 *  - Like Tornado 4 (PollIOLoop.start), the timers due are collected at the
 *    start of an iteration, before its callbacks run, and run after them; one
 *    cancelled meanwhile does not run; one added during the iteration (by a
 *    callback, a timer or a handler) is due at the earliest in the next one,
 *    after the callbacks queued ahead of it: call_later(0) made after
 *    add_callback(1) and add_callback(2) runs 1, 2, then the timer.
 */
#include "internal.h"

#include <assert.h>
#include <errno.h>
#include <limits.h>
#include <stdlib.h>

enum { NO_SLOT = UINT32_MAX, COMPACT_MIN = 64 };

static bool earlier(const ioloop__heap_entry_t *a, const ioloop__heap_entry_t *b)
{
    return a->deadline < b->deadline || (a->deadline == b->deadline && a->seq < b->seq);
}

static void sift_up(ioloop__heap_entry_t *heap, size_t i)
{
    ioloop__heap_entry_t e = heap[i];
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!earlier(&e, &heap[parent]))
            break;
        heap[i] = heap[parent];
        i = parent;
    }
    heap[i] = e;
}

static void sift_down(ioloop__heap_entry_t *heap, size_t count, size_t i)
{
    ioloop__heap_entry_t e = heap[i];
    for (;;) {
        size_t child = 2 * i + 1;
        if (child >= count)
            break;
        if (child + 1 < count && earlier(&heap[child + 1], &heap[child]))
            child++;
        if (!earlier(&heap[child], &e))
            break;
        heap[i] = heap[child];
        i = child;
    }
    heap[i] = e;
}

static void heap_pop(ioloop__timers_t *t)
{
    assert(t->count > 0);
    t->heap[0] = t->heap[--t->count];
    if (t->count)
        sift_down(t->heap, t->count, 0);
}

static uint32_t slot_take(ioloop__timers_t *t)
{
    if (t->free_head != NO_SLOT) {
        uint32_t s = t->free_head;
        t->free_head = t->slots[s].next_free;
        return s;
    }
    if (t->slot_count == t->slot_capacity) {
        uint32_t capacity = t->slot_capacity ? t->slot_capacity * 2 : 64;
        ioloop__timer_slot_t *slots = realloc(t->slots, capacity * sizeof(*slots));
        if (!slots)
            return NO_SLOT;
        t->slots = slots;
        t->slot_capacity = capacity;
    }
    t->slots[t->slot_count] = (ioloop__timer_slot_t){.generation = 1};
    return t->slot_count++;
}

static void slot_release(ioloop__timers_t *t, uint32_t s)
{
    assert(s < t->slot_count);
    ioloop__timer_slot_t *slot = &t->slots[s];
    slot->fn = NULL;
    slot->in_heap = false;
    slot->generation++; /* every outstanding handle for it is now stale */
    slot->next_free = t->free_head;
    t->free_head = s;
}

int ioloop_call_at(ioloop_t *loop, ioloop_time_t deadline, ioloop_callback_fn fn, void *arg, ioloop_timer_t *out)
{
    if (out)
        *out = 0;
    ioloop__timers_t *t = &loop->timers;
    if (!fn)
        return -EINVAL;
    if (ioloop__owner_check(loop))
        return -EPERM;
    if (atomic_load_explicit(&loop->state, memory_order_relaxed) != IOLOOP__OPEN)
        return -ESHUTDOWN;
    if (t->count == t->capacity) {
        size_t capacity = t->capacity ? t->capacity * 2 : 64;
        ioloop__heap_entry_t *heap = realloc(t->heap, capacity * sizeof(*heap));
        if (!heap)
            return -ENOMEM;
        t->heap = heap;
        t->capacity = capacity;
    }
    uint32_t s = slot_take(t);
    if (s == NO_SLOT)
        return -ENOMEM;
    ioloop__timer_slot_t *slot = &t->slots[s];
    slot->fn = fn;
    slot->arg = arg;
    slot->in_heap = true;
    t->heap[t->count] = (ioloop__heap_entry_t){.deadline = deadline, .seq = t->next_seq++, .slot = s};
    sift_up(t->heap, t->count++);
    if (out)
        *out = ((uint64_t)slot->generation << 32) | ((uint64_t)s + 1);
    return 0;
}

int ioloop_call_later(ioloop_t *loop, ioloop_time_t delay, ioloop_callback_fn fn, void *arg, ioloop_timer_t *out)
{
    if (out)
        *out = 0;
    if (ioloop__owner_check(loop)) /* before the clock is read into loop->now */
        return -EPERM;
    /* A loop that is not running has not read its clock since it last ran
     * (or was made): measure the delay from now, not from then. */
    ioloop_time_t now = ioloop__on_loop_thread(loop) ? loop->now : ioloop__clock_now(loop);
    /* Saturate: a delay past the end of time is "never", not a wrap to the past. */
    ioloop_time_t deadline;
    if (delay > 0 && now > INT64_MAX - delay)
        deadline = INT64_MAX;
    else if (delay < 0 && now < INT64_MIN - delay)
        deadline = INT64_MIN;
    else
        deadline = now + delay;
    return ioloop_call_at(loop, deadline, fn, arg, out);
}

/* Drops cancelled entries and rebuilds the heap in O(n). */
static void compact(ioloop__timers_t *t)
{
    size_t kept = 0;
    for (size_t i = 0; i < t->count; i++) {
        uint32_t s = t->heap[i].slot;
        if (t->slots[s].fn)
            t->heap[kept++] = t->heap[i];
        else
            slot_release(t, s);
    }
    t->count = kept;
    t->cancelled = 0;
    for (size_t i = kept / 2; i-- > 0;)
        sift_down(t->heap, t->count, i);
}

int ioloop_remove_timeout(ioloop_t *loop, ioloop_timer_t timer)
{
    int err = ioloop__owner_check(loop);
    if (err)
        return err;
    ioloop__timers_t *t = &loop->timers;
    uint32_t s = (uint32_t)timer - 1;
    if (timer == 0 || s >= t->slot_count)
        return 0;
    ioloop__timer_slot_t *slot = &t->slots[s];
    if (slot->generation != (uint32_t)(timer >> 32) || !slot->fn)
        return 0; /* already ran or removed */
    slot->fn = NULL;
    slot->generation++;
    if (!slot->in_heap)
        return 0; /* collected as due in the current run: it is skipped there */
    t->cancelled++;
    if (t->cancelled > COMPACT_MIN && t->cancelled > t->count / 2)
        compact(t);
    return 0;
}

/* Pops cancelled entries off the top so the top is a live timer (or none). */
static void skip_cancelled(ioloop__timers_t *t)
{
    while (t->count && !t->slots[t->heap[0].slot].fn) {
        slot_release(t, t->heap[0].slot);
        heap_pop(t);
        t->cancelled--;
    }
}

int ioloop__timers_poll_timeout_ms(ioloop_t *loop)
{
    ioloop__timers_t *t = &loop->timers;
    skip_cancelled(t);
    if (!t->count)
        return -1;
    ioloop_time_t delta = t->heap[0].deadline - loop->now;
    if (delta <= 0)
        return 0;
    /* Rounded up, never wake early; written so that a far deadline cannot overflow. */
    ioloop_time_t ms = delta / IOLOOP_MSEC(1) + (delta % IOLOOP_MSEC(1) != 0);
    return ms > INT_MAX ? INT_MAX : (int)ms;
}

void ioloop__timers_collect_due(ioloop_t *loop)
{
    ioloop__timers_t *t = &loop->timers;
    assert(t->due_head == NO_SLOT); /* the last iteration ran what it collected */
    skip_cancelled(t);
    if (!t->count || t->heap[0].deadline > loop->now)
        return;
    /* Due slots are chained through next_free, which a slot does not use
     * while it is taken. */
    uint32_t due_tail = NO_SLOT;
    ioloop_time_t now = loop->now;
    while (t->count && t->heap[0].deadline <= now) {
        uint32_t s = t->heap[0].slot;
        heap_pop(t);
        if (!t->slots[s].fn) {
            slot_release(t, s);
            t->cancelled--;
            continue;
        }
        t->slots[s].in_heap = false;
        t->slots[s].next_free = NO_SLOT;
        if (due_tail == NO_SLOT)
            t->due_head = s;
        else
            t->slots[due_tail].next_free = s;
        due_tail = s;
    }
}

void ioloop__timers_run_collected(ioloop_t *loop)
{
    ioloop__timers_t *t = &loop->timers;
    uint32_t s = t->due_head;
    t->due_head = NO_SLOT;
    uint64_t fired = 0;
    while (s != NO_SLOT) {
        /* t->slots may move if a callback schedules: index, never hold a pointer. */
        uint32_t next = t->slots[s].next_free;
        ioloop_callback_fn fn = t->slots[s].fn;
        void *arg = t->slots[s].arg;
        slot_release(t, s);
        if (fn) { /* not cancelled since it was collected */
            IOLOOP__WATCH_RUNNING(loop, fn);
            fn(loop, arg);
            fired++;
        }
        s = next;
    }
    if (fired) {
        IOLOOP__WATCH_RUNNING(loop, NULL);
        IOLOOP__STAT_ADD(loop, timers_fired, fired);
    }
}

void ioloop__timers_init(ioloop__timers_t *t)
{
    *t = (ioloop__timers_t){.free_head = NO_SLOT, .due_head = NO_SLOT};
}

void ioloop__timers_free(ioloop__timers_t *t)
{
    free(t->heap);
    free(t->slots);
    ioloop__timers_init(t);
}
