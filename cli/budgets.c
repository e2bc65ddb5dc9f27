/*
 * budgets.c - --max-memory SPECs for the commands that take them (plan,
 * check, run), "auto" included (lib/machine.h).
 */
#include "cli.h"

#include "machine.h"

#include <math.h>
#include <string.h>

bm_status cli_budgets_add(const char *cmd, bm_budgets *b, const char *spec, bm_compat compat,
                          bool gpus, bool *auto_used, bm_error *err)
{
    if (strcmp(spec, "auto") != 0)
        return bm_budgets_parse(b, spec, compat, err);
    *auto_used = true;
    bm_machine_memory m;
    bm_status s = bm_machine_memory_read(&m, gpus, err);
    if (s == BM_OK)
        s = bm_machine_budgets(&m, b, err);
    if (s != BM_OK)
        return s;
    /* one line on stderr: what "auto" found */
    char line[1024], sz[32], tot[32];
    size_t n = (size_t)snprintf(line, sizeof line, "--max-memory auto:");
    for (int i = 0; i < m.n_gpus && n < sizeof line; i++)
        n += (size_t)snprintf(line + n, sizeof line - n, " %d=%s free of %s,", i,
                              bm_size_format(m.gpu_free[i], sz, sizeof sz),
                              bm_size_format(m.gpu_total[i], tot, sizeof tot));
    if (n < sizeof line)
        n += (size_t)snprintf(line + n, sizeof line - n, " cpu=%s available",
                              bm_size_format(m.cpu_available, sz, sizeof sz));
    if (!gpus && n < sizeof line)
        snprintf(line + n, sizeof line - n, " (RAM only: GPUs are read with --backend cuda)");
    else if (m.n_gpus == 0 && n < sizeof line)
        snprintf(line + n, sizeof line - n, " (no GPU: %s)", m.no_gpu);
    fprintf(stderr, "bmplan %s: %s\n", cmd, line);
    return BM_OK;
}

void cli_budgets_auto_reserve(const char *cmd, bm_budgets *b, bool auto_only, bool balanced)
{
    if (!auto_only || !balanced)
        return;
    int gpus = 0, first = -1;
    for (int i = 0; i < b->n; i++)
        if (b->e[i].dev.kind == BM_DEV_GPU && b->e[i].bits > 0) {
            gpus++;
            if (first < 0)
                first = i;
        }
    if (gpus != 1)
        return;
    /* accelerate multiplies the byte count by 0.9 (a float); in bits,
     * floor(bytes x 7.2) compares with whole sizes the same way */
    double bytes = (double)(b->e[first].bits / 8);
    b->e[first].bits = (int64_t)floor(bytes * 0.9 * 8.0);
    b->e[first].py_float = true;
    char sz[32];
    fprintf(stderr, "bmplan %s: one GPU: %s of it for the model, 10%% kept free (as accelerate "
                    "does for \"auto\")\n",
            cmd, bm_size_format_bits((uint64_t)b->e[first].bits, sz, sizeof sz));
}
