/* table.c — prints one benchmark's results as a table: workload, the figure
 * for ioloop and for each peer, the ratios ioloop/peer, the target and
 * PASS/FAIL. Absent peers show as "absent".
 *
 * Threading rule: main thread only (bench_failures is a plain global).
 */
#include "bench.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

int bench_failures;

void bench_row_judge(bench_row_t *row)
{
    if (row->verdict >= 0 || !row->target_mask)
        return;
    int verdict = 1;
    bool judged = false;
    for (size_t p = 0; p < bench_peer_count; p++) {
        if (!(row->target_mask & (1u << p)))
            continue;
        double io = row->value[0], peer = row->value[p + 1];
        if (isnan(io) || isnan(peer) || io < 0 || peer <= 0)
            continue;
        double ratio = io / peer;
        judged = true;
        if (row->sense == BENCH_LOWER_IS_BETTER ? ratio > row->target_ratio : ratio < row->target_ratio)
            verdict = 0;
    }
    row->verdict = judged ? verdict : -1;
}

static void format_value(char *buf, size_t size, double v)
{
    if (isnan(v))
        snprintf(buf, size, "absent");
    else if (v < 0)
        snprintf(buf, size, "n/a");
    else if (v != 0 && fabs(v) < 0.01)
        snprintf(buf, size, "%.4f", v);
    else if (fabs(v) < 100)
        snprintf(buf, size, "%.2f", v);
    else
        snprintf(buf, size, "%.0f", v);
}

void bench_table_print(const char *title, const char *note, bench_row_t *rows, size_t n)
{
    printf("\n== %s ==\n", title);
    if (note && *note)
        printf("%s\n", note);
    printf("%-40s %-9s %10s", "workload", "unit", "ioloop");
    for (size_t p = 0; p < bench_peer_count; p++)
        printf(" %10s", bench_peers[p]->name);
    for (size_t p = 0; p < bench_peer_count; p++) {
        char head[24];
        snprintf(head, sizeof(head), "io/%.6s", bench_peers[p]->name);
        printf(" %9s", head);
    }
    printf("  %-24s %s\n", "target", "result");
    for (size_t r = 0; r < n; r++) {
        bench_row_t *row = &rows[r];
        bench_row_judge(row);
        char buf[32];
        format_value(buf, sizeof(buf), row->value[0]);
        printf("%-40s %-9s %10s", row->workload, row->unit, buf);
        for (size_t p = 0; p < bench_peer_count; p++) {
            format_value(buf, sizeof(buf), row->value[p + 1]);
            printf(" %10s", buf);
        }
        for (size_t p = 0; p < bench_peer_count; p++) {
            double io = row->value[0], peer = row->value[p + 1];
            if (row->sense == BENCH_INFO || isnan(io) || isnan(peer) || io < 0 || peer <= 0)
                snprintf(buf, sizeof(buf), "-");
            else
                snprintf(buf, sizeof(buf), "%.2fx", io / peer);
            printf(" %9s", buf);
        }
        char target[64] = "-";
        if (row->target_text) {
            snprintf(target, sizeof(target), "%s", row->target_text);
        } else if (row->target_mask) {
            char who[32] = "";
            for (size_t p = 0; p < bench_peer_count; p++)
                if (row->target_mask & (1u << p)) {
                    strncat(who, who[0] ? "," : "", sizeof(who) - strlen(who) - 1);
                    strncat(who, bench_peers[p]->name, sizeof(who) - strlen(who) - 1);
                }
            snprintf(target, sizeof(target), "%s%.1fx %s", row->sense == BENCH_LOWER_IS_BETTER ? "<=" : ">=",
                     row->target_ratio, who[0] ? who : "(no peer)");
        }
        const char *result = row->verdict < 0 ? (row->target_mask || row->target_text ? "n/a" : "")
                             : row->verdict ? "PASS"
                                            : "FAIL";
        if (row->verdict == 0)
            bench_failures++;
        printf("  %-24s %s\n", target, result);
    }
    printf("(ratio = ioloop / peer: for times lower is better, for rates higher is better)\n");
}
