/* bench_runtime.h — the runtime's benchmarks for ioloop-bench: each is a
 * subcommand entry point (argv[0] is the subcommand's name), returns a
 * process exit status, and prints --help.
 *   scale  — TCP ping-pong over many connections on 1..N loops: ops/s, CPU
 *            per op, per-loop share; writes a CSV and a gnuplot PNG.
 *   accept — connections/s and per-loop balance for each accept mode.
 *   post   — cross-loop ping-pong latency (p50/p99) and one-way post
 *            throughput, next to a mutex+condvar handoff between two threads.
 * Threading rule: each runs on the calling thread and starts its own threads.
 */
#ifndef IOLOOP_BENCH_RUNTIME_H
#define IOLOOP_BENCH_RUNTIME_H

int bench_scale_main(int argc, char **argv);
int bench_accept_main(int argc, char **argv);
int bench_post_main(int argc, char **argv);

#endif
