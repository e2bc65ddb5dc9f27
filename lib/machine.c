/*
 * machine.c - the memory of this machine for `--max-memory auto`
 * (machine.h).
 */
#include "machine.h"

#include "device.h"

#include <stdlib.h>
#include <string.h>

/* The value of "Key:   123 kB" lines, in bytes; false when absent. */
static bool meminfo_value(const char *text, size_t len, const char *key, uint64_t *out,
                          bool *bad)
{
    size_t kl = strlen(key);
    const char *p = text, *end = text + len;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *le = nl ? nl : end;
        if ((size_t)(le - p) > kl && memcmp(p, key, kl) == 0 && p[kl] == ':') {
            const char *q = p + kl + 1;
            while (q < le && (*q == ' ' || *q == '\t'))
                q++;
            uint64_t v = 0;
            const char *d0 = q;
            while (q < le && *q >= '0' && *q <= '9') {
                if (v > (UINT64_MAX - 9) / 10) {
                    *bad = true;
                    return false;
                }
                v = v * 10 + (uint64_t)(*q - '0');
                q++;
            }
            if (q == d0) {
                *bad = true;
                return false;
            }
            while (q < le && (*q == ' ' || *q == '\t'))
                q++;
            uint64_t unit = 1;
            if (le - q >= 2 && (q[0] == 'k' || q[0] == 'K') && q[1] == 'B') {
                unit = 1024;
                q += 2;
            }
            if (q != le || v > UINT64_MAX / unit) {
                *bad = true;
                return false;
            }
            *out = v * unit;
            return true;
        }
        p = nl ? nl + 1 : end;
    }
    return false;
}

bm_status bm_meminfo_available(const char *path, uint64_t *bytes, bm_error *err)
{
    *bytes = 0;
    char *text;
    size_t len;
    bm_status s = bm_read_file(path, 1u << 20, &text, &len, err);
    if (s != BM_OK)
        return s;
    bool bad = false;
    uint64_t avail = 0, fr = 0, buffers = 0, cached = 0;
    if (meminfo_value(text, len, "MemAvailable", &avail, &bad)) {
        *bytes = avail;
    } else if (!bad && meminfo_value(text, len, "MemFree", &fr, &bad)) {
        (void)meminfo_value(text, len, "Buffers", &buffers, &bad);
        (void)meminfo_value(text, len, "Cached", &cached, &bad);
        if (!bad && (fr > UINT64_MAX - buffers || fr + buffers > UINT64_MAX - cached))
            bad = true;
        *bytes = fr + buffers + cached;
    } else if (!bad) {
        free(text);
        return bm_fail(err, BM_E_FORMAT, "%s: neither MemAvailable nor MemFree is there", path);
    }
    free(text);
    if (bad) {
        *bytes = 0;
        return bm_fail(err, BM_E_FORMAT, "%s: a memory figure is not 'NUMBER kB'", path);
    }
    return BM_OK;
}

bm_status bm_machine_memory_read(bm_machine_memory *m, bool gpus, bm_error *err)
{
    memset(m, 0, sizeof *m);
    bm_error why = {0};
    bm_backend *be = NULL;
    bm_backend_config cfg = {0};
    if (!gpus) {
        snprintf(m->no_gpu, sizeof m->no_gpu, "not asked for");
    } else if (bm_backend_load("cuda", &cfg, &be, &why) != BM_OK) {
        snprintf(m->no_gpu, sizeof m->no_gpu, "%s", why.msg);
    } else {
        int n = bm_backend_device_count(be);
        if (n > BM_MACHINE_MAX_GPUS)
            n = BM_MACHINE_MAX_GPUS;
        for (int i = 0; i < n; i++) {
            /* a device that fails ends the list, so that budget ids stay
             * the device ids (accelerate 1.x skips it and keeps going) */
            if (bm_backend_mem_info(be, i, &m->gpu_free[m->n_gpus], &m->gpu_total[m->n_gpus],
                                    &why) != BM_OK)
                break;
            m->n_gpus++;
        }
        if (m->n_gpus == 0)
            snprintf(m->no_gpu, sizeof m->no_gpu, "%s",
                     why.msg[0] ? why.msg : "cuda backend: no CUDA device");
        bm_backend_free(be);
    }
    return bm_meminfo_available("/proc/meminfo", &m->cpu_available, err);
}

bm_status bm_machine_budgets(const bm_machine_memory *m, bm_budgets *b, bm_error *err)
{
    for (int i = 0; i < m->n_gpus; i++) {
        uint64_t v = m->gpu_free[i] > (uint64_t)(BM_BUDGET_MAX_BITS / 8)
                         ? (uint64_t)(BM_BUDGET_MAX_BITS / 8) : m->gpu_free[i];
        bm_device d = {BM_DEV_GPU, i};
        bm_status s = bm_budgets_set(b, d, (int64_t)v * 8, err);
        if (s != BM_OK)
            return s;
    }
    uint64_t c = m->cpu_available > (uint64_t)(BM_BUDGET_MAX_BITS / 8)
                     ? (uint64_t)(BM_BUDGET_MAX_BITS / 8) : m->cpu_available;
    bm_device cpu = {BM_DEV_CPU, 0};
    return bm_budgets_set(b, cpu, (int64_t)c * 8, err);
}
