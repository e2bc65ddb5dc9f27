/*
 * wsource_ckpt.c - a checkpoint (formats/checkpoint.h) as a weight source
 * for the runtime: tensors are found by name, optionally without the
 * base-model prefix the checkpoint omits, and read with the checkpoint's
 * own mmap/pread reader. Kept apart from runtime.c so the runtime links
 * without the checkpoint reader.
 */
#include "runtime.h"

#include <stdlib.h>
#include <string.h>

typedef struct ckpt_src {
    const bm_checkpoint *ck;
    char *strip;
} ckpt_src;

static int32_t ckpt_lookup(ckpt_src *c, const char *name)
{
    size_t n = strlen(c->strip);
    if (n && strncmp(name, c->strip, n) == 0) {
        int32_t i = bm_checkpoint_find(c->ck, name + n);
        if (i != BM_NONE)
            return i;
    }
    return bm_checkpoint_find(c->ck, name);
}

static bm_status ckpt_find(void *ctx, const char *name, bm_wsource_tensor *t, bm_error *err)
{
    ckpt_src *c = ctx;
    int32_t i = ckpt_lookup(c, name);
    if (i == BM_NONE)
        return bm_fail(err, BM_E_NOTFOUND, "%s: no tensor '%s'", c->ck->path, name);
    const bm_ckpt_tensor *ct = &c->ck->tensors[i];
    t->dtype = ct->dtype;
    t->ndim = ct->ndim;
    memcpy(t->shape, ct->shape, sizeof t->shape);
    t->nbytes = ct->nbytes;
    t->data = bm_checkpoint_data(c->ck, i);
    return BM_OK;
}

static bm_status ckpt_read(void *ctx, const char *name, void *dst, uint64_t nbytes,
                           bm_error *err)
{
    ckpt_src *c = ctx;
    int32_t i = ckpt_lookup(c, name);
    if (i == BM_NONE)
        return bm_fail(err, BM_E_NOTFOUND, "%s: no tensor '%s'", c->ck->path, name);
    if (nbytes != c->ck->tensors[i].nbytes)
        return bm_fail(err, BM_E_INTERNAL, "%s: tensor '%s' is %llu bytes, not %llu",
                       c->ck->path, name, (unsigned long long)c->ck->tensors[i].nbytes,
                       (unsigned long long)nbytes);
    return bm_checkpoint_read(c->ck, i, 0, dst, (size_t)nbytes, err);
}

static void ckpt_close(void *ctx)
{
    ckpt_src *c = ctx;
    free(c->strip);
    free(c);
}

static const bm_wsource_ops ckpt_ops = {ckpt_find, ckpt_read, ckpt_close};

bm_wsource *bm_wsource_checkpoint(const bm_checkpoint *ckpt, const char *strip)
{
    ckpt_src *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->ck = ckpt;
    c->strip = strdup(strip ? strip : "");
    if (!c->strip) {
        free(c);
        return NULL;
    }
    return bm_wsource_new(&ckpt_ops, c, BM_WSOURCE_DISK, ckpt->path);
}

