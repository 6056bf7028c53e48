/* main.c — the install_consumer check's program: runs one callback on an
 * installed ioloop and exits 0 if it ran. Single-threaded. */
#include <ioloop/ioloop.h>
#include <stdio.h>

static void done(ioloop_t *loop, void *arg)
{
    *(int *)arg = 1;
    ioloop_stop(loop);
}

int main(void)
{
    int ran = 0;
    ioloop_t *loop;
    if (ioloop_new(NULL, &loop) != 0)
        return 1;
    ioloop_add_callback(loop, done, &ran);
    ioloop_start(loop);
    ioloop_close(loop, false);
    printf("consumer ran: %d\n", ran);
    return ran ? 0 : 1;
}
