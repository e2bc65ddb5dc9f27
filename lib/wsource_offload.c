/*
 * wsource_offload.c - an accelerate disk-offload folder (formats/offload.h:
 * .dat files, safetensors references, bmplan's zstd entries) as a weight
 * source for the runtime: "disk" modules read their weights from it at
 * each call, mapped when the bytes are stored raw, decoded otherwise.
 */
#include "runtime.h"

#include <stdlib.h>
#include <string.h>

#include "offload.h"

static bm_status offload_find(void *ctx, const char *name, bm_wsource_tensor *t, bm_error *err)
{
    const bm_offload *off = ctx;
    int32_t i = bm_offload_find(off, name);
    if (i == BM_NONE)
        return bm_fail(err, BM_E_NOTFOUND, "%s: no tensor '%s'", off->folder, name);
    const bm_offload_tensor *o = &off->tensors[i];
    t->dtype = o->dtype;
    t->ndim = o->ndim;
    memcpy(t->shape, o->shape, sizeof t->shape);
    t->nbytes = o->nbytes;
    t->data = bm_offload_map(off, i, NULL);
    return BM_OK;
}

static bm_status offload_read(void *ctx, const char *name, void *dst, uint64_t n, bm_error *err)
{
    const bm_offload *off = ctx;
    int32_t i = bm_offload_find(off, name);
    if (i == BM_NONE)
        return bm_fail(err, BM_E_NOTFOUND, "%s: no tensor '%s'", off->folder, name);
    return bm_offload_read(off, i, 0, dst, (size_t)n, err);
}

static void offload_close(void *ctx) { bm_offload_close(ctx); }

static const bm_wsource_ops offload_ops = {offload_find, offload_read, offload_close};

bm_status bm_wsource_offload(const char *folder, bm_wsource **out, bm_error *err)
{
    *out = NULL;
    bm_offload *off;
    bm_status s = bm_offload_open(folder, &off, err);
    if (s != BM_OK)
        return s;
    *out = bm_wsource_new(&offload_ops, off, BM_WSOURCE_DISK, folder);
    if (!*out)
        return bm_fail(err, BM_E_NOMEM, "out of memory");
    return BM_OK;
}
