/* thread_signals.h — the signal mask of the threads ioloop starts (see
 * thread_signals.c). Include it after defining _GNU_SOURCE or
 * _POSIX_C_SOURCE: sigset_t is POSIX, not C11. */
#ifndef IOLOOP_RUNTIME_THREAD_SIGNALS_H
#define IOLOOP_RUNTIME_THREAD_SIGNALS_H

#include <signal.h>

/* Blocks every asynchronous signal in the calling thread (the old mask goes
 * to *old), so that threads started meanwhile inherit the block: the
 * runtime's loop threads and liburcu's call_rcu worker leave process-directed
 * signals to the application's threads and the watchers. */
void ioloop__block_async_signals(sigset_t *old);

#endif
