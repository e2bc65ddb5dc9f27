/*
 * machine.h - the memory of the machine bmplan runs on, read as
 * accelerate's get_max_memory() reads it when given no max_memory: the
 * free bytes of every GPU (mem_get_info after its context is created) and
 * the host's available RAM (psutil's virtual_memory().available). This is
 * what `--max-memory auto` means.
 */
#ifndef BM_MACHINE_H
#define BM_MACHINE_H

#include "bmplan.h"

#ifdef __cplusplus
extern "C" {
#endif

#define BM_MACHINE_MAX_GPUS 64

typedef struct bm_machine_memory {
    int n_gpus;
    uint64_t gpu_free[BM_MACHINE_MAX_GPUS];
    uint64_t gpu_total[BM_MACHINE_MAX_GPUS];
    /* why there are no GPUs: the CUDA backend's one-line error ("" when it
     * answered) */
    char no_gpu[BM_ERROR_MSG];
    uint64_t cpu_available;
} bm_machine_memory;

/* Available bytes from a file in /proc/meminfo's format: MemAvailable, or
 * on kernels without it (before 3.14) MemFree + Buffers + Cached, as psutil
 * computes it. A malformed file is an error naming it. */
bm_status bm_meminfo_available(const char *path, uint64_t *bytes, bm_error *err);

/* This machine: with `gpus`, GPUs through the CUDA backend (none, with the
 * reason, when it cannot be loaded or sees no device); RAM from
 * /proc/meminfo. */
bm_status bm_machine_memory_read(bm_machine_memory *m, bool gpus, bm_error *err);

/* Add m's budgets to b in get_max_memory's order: GPU ids ascending with
 * their free bytes, then "cpu" with the available RAM. */
bm_status bm_machine_budgets(const bm_machine_memory *m, bm_budgets *b, bm_error *err);

#ifdef __cplusplus
}
#endif

#endif
