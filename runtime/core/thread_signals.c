/* thread_signals.c — the signal mask of the threads ioloop itself starts.
 *
 * Asynchronous signals belong to the application's threads and to the
 * watchers of runtime/signals.c: a thread ioloop creates (a runtime's loop
 * thread, liburcu's call_rcu worker) is started with them blocked, so a
 * process-directed signal never lands where nobody expects it. The core owns
 * this because rcu.c, below the runtime, starts a thread too.
 *
 * Threading rule: acts on the calling thread's mask only.
 */
#define _GNU_SOURCE
#include "thread_signals.h"

void ioloop__block_async_signals(sigset_t *old)
{
    sigset_t all;
    sigfillset(&all);
    static const int synchronous[] = {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP, SIGABRT, SIGSYS};
    for (size_t i = 0; i < sizeof(synchronous) / sizeof(synchronous[0]); i++)
        sigdelset(&all, synchronous[i]);
    pthread_sigmask(SIG_BLOCK, &all, old);
}
