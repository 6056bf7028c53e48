/* executor.c — ioloop_run_in_executor: a pool of threads for blocking or
 * CPU-bound work, whose results come back to the asking loop as futures.
 *
 * Threading rule: run_in_executor is called on the asking loop's thread; the
 * queue is a mutex + condition variable (work items are coarse: a lock per
 * item is nothing next to the work); a pool thread completes the future,
 * which posts the done callback back to the asking loop (future.c).
 *
 * Which pool: a runtime loop uses its runtime's pool (size from the options,
 * default the CPUs in the affinity mask, at least 2 so that one blocked job
 * cannot starve every other); any other loop uses a process-wide pool of the
 * same default size, created on first use and kept until the process exits.
 *
 * Shutdown (ioloop_runtime_free): work still queued never starts and its
 * future completes with -ECANCELED; work already running is waited for. The
 * loops are closed after that, and closing runs the done callbacks those
 * completions posted, so no future or argument is leaked.
 */
#define _GNU_SOURCE
#include "runtime_internal.h"

#include <errno.h>
#include <sched.h>
#include <stdlib.h>

typedef struct job {
    struct job *next;
    ioloop_work_fn work;
    void *arg;
    ioloop_future_t *future; /* the job's own reference */
} job_t;

struct ioloop__executor {
    pthread_mutex_t lock;
    pthread_cond_t ready;
    job_t *head, *tail; /* under lock */
    bool shutting_down; /* under lock */
    int nthreads;
    pthread_t threads[];
};

static void *worker_main(void *arg)
{
    ioloop__executor_t *ex = arg;
    pthread_mutex_lock(&ex->lock);
    for (;;) {
        while (!ex->head && !ex->shutting_down)
            pthread_cond_wait(&ex->ready, &ex->lock);
        job_t *job = ex->head;
        if (!job)
            break; /* shutting down and nothing queued */
        ex->head = job->next;
        if (!ex->head)
            ex->tail = NULL;
        pthread_mutex_unlock(&ex->lock);

        int status = 0;
        void *result = job->work(job->arg, &status);
        ioloop_future_complete(job->future, status, result);
        ioloop_future_unref(job->future);
        free(job);

        pthread_mutex_lock(&ex->lock);
    }
    pthread_mutex_unlock(&ex->lock);
    return NULL;
}

ioloop__executor_t *ioloop__executor_new(int threads)
{
    if (threads < 1)
        threads = 1;
    ioloop__executor_t *ex = calloc(1, sizeof(*ex) + (size_t)threads * sizeof(pthread_t));
    if (!ex)
        return NULL;
    pthread_mutex_init(&ex->lock, NULL);
    pthread_cond_init(&ex->ready, NULL);
    for (int i = 0; i < threads; i++) {
        int err = ioloop__thread_create(&ex->threads[i], worker_main, ex);
        if (err) {
            ioloop__executor_free(ex);
            errno = -err;
            return NULL;
        }
        ex->nthreads++;
    }
    return ex;
}

void ioloop__executor_free(ioloop__executor_t *ex)
{
    pthread_mutex_lock(&ex->lock);
    ex->shutting_down = true;
    job_t *queued = ex->head;
    ex->head = ex->tail = NULL;
    pthread_cond_broadcast(&ex->ready);
    pthread_mutex_unlock(&ex->lock);
    while (queued) {
        job_t *next = queued->next;
        ioloop_future_complete(queued->future, -ECANCELED, NULL);
        ioloop_future_unref(queued->future);
        free(queued);
        queued = next;
    }
    for (int i = 0; i < ex->nthreads; i++)
        pthread_join(ex->threads[i], NULL);
    pthread_cond_destroy(&ex->ready);
    pthread_mutex_destroy(&ex->lock);
    free(ex);
}

/* ---- the process-wide pool, for loops outside a runtime ------------------ */

static ioloop__executor_t *global_pool;
static pthread_once_t global_pool_once = PTHREAD_ONCE_INIT;

static void make_global_pool(void)
{
    int cpus[IOLOOP__MAX_CPUS];
    int n = ioloop__allowed_cpus(cpus, IOLOOP__MAX_CPUS);
    global_pool = ioloop__executor_new(n < 2 ? 2 : n);
}

static ioloop__executor_t *pool_for(ioloop_t *loop)
{
    ioloop_runtime_t *rt = ioloop_runtime_current();
    if (rt) {
        for (int i = 0; i < rt->n; i++)
            if (rt->loops[i] == loop)
                return rt->executor;
    }
    pthread_once(&global_pool_once, make_global_pool);
    return global_pool;
}

int ioloop_run_in_executor(ioloop_t *loop, ioloop_work_fn work, void *arg, ioloop_future_t **out)
{
    *out = NULL;
    if (!loop || !work)
        return -EINVAL;
    ioloop__executor_t *ex = pool_for(loop);
    job_t *job = malloc(sizeof(*job));
    ioloop_future_t *f = NULL;
    if (!ex || !job || ioloop_future_new(loop, &f)) {
        free(job);
        ioloop_future_unref(f);
        return -ENOMEM;
    }
    ioloop_future_ref(f); /* the job's */
    *job = (job_t){.work = work, .arg = arg, .future = f};
    pthread_mutex_lock(&ex->lock);
    bool accepted = !ex->shutting_down;
    if (accepted) {
        if (ex->tail)
            ex->tail->next = job;
        else
            ex->head = job;
        ex->tail = job;
        pthread_cond_signal(&ex->ready);
    }
    pthread_mutex_unlock(&ex->lock);
    if (!accepted) {
        ioloop_future_complete(f, -ECANCELED, NULL);
        ioloop_future_unref(f);
        free(job);
    }
    *out = f;
    return 0;
}
