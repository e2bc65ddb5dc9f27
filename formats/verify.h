/*
 * verify.h - `bmplan verify`: check a model folder (or checkpoint) or an
 * offload folder: its structure (everything the readers validate: headers,
 * index against files, every tensor's span), and the content digests that
 * `bmplan shard` and `bmplan offload` record.
 */
#ifndef BM_VERIFY_H
#define BM_VERIFY_H

#include "bmplan.h"
#include "offload.h"

typedef struct bm_verify_summary {
    bool offload;          /* PATH was an offload folder */
    int32_t n_tensors;
    int32_t n_files;       /* checkpoint files */
    int32_t n_verified;    /* digests recomputed and matching */
    int32_t n_unrecorded;  /* files or entries with no digest recorded */
} bm_verify_summary;

/* Check PATH; every problem found is passed to `report` (one line naming
 * the file and tensor). Returns the number of problems (0 = all good). */
int bm_verify(const char *path, bm_report_fn report, void *ctx, bm_verify_summary *sum);

#endif
