/*
 * model.h - resolve what a user names as MODEL into a module tree and,
 * when there is one, its checkpoint: a graph file, a Hugging Face model
 * folder (config.json + checkpoint), a checkpoint file/index/folder alone,
 * or an explicit --graph / --checkpoint pair.
 */
#ifndef BM_MODEL_H
#define BM_MODEL_H

#include "bmplan.h"

typedef struct bm_model {
    bm_tree *tree;        /* always set on success */
    bm_checkpoint *ckpt;  /* NULL when no checkpoint was found or given */
    char *graph_source;   /* what the tree came from (for messages) */
    /* name prefix the checkpoint omits relative to the tree ("model.",
     * "transformer.") or "" when names match as they are */
    char *ckpt_prefix;
    /* tree tensor -> checkpoint tensor (BM_NONE: not in the checkpoint) */
    int32_t *ckpt_index;
    /* checkpoint tensors that the tree does not have (ignored, as
     * transformers ignores unexpected keys; commands may warn) */
    int32_t n_unexpected;
    const char *first_unexpected;
    bool tree_from_checkpoint;
} bm_model;

typedef struct bm_model_opts {
    const char *model;      /* positional MODEL (may be NULL) */
    const char *graph;      /* --graph FILE (may be NULL) */
    const char *checkpoint; /* --checkpoint PATH (may be NULL) */
    bool need_checkpoint;   /* fail when no checkpoint can be found */
    bool no_checkpoint;     /* do not look for one (tree only) */
} bm_model_opts;

/*
 * Resolution:
 *   - MODEL a folder: tree from config.json when its model_type is known,
 *     else from the checkpoint's tensor names; checkpoint from the folder.
 *   - MODEL a checkpoint file or index: tree from its tensor names.
 *   - MODEL a Hugging Face config (a file named config.json, or a .json
 *     object with "model_type" and no "format"): the tree it describes.
 *   - MODEL any other file: a graph file.
 *   - --graph / --checkpoint override either part.
 * With both a tree and a checkpoint, the checkpoint must hold every
 * persistent parameter and buffer of the tree with the same shape (tied
 * aliases may be missing) and nothing else; the tree's dtypes are then
 * replaced by the checkpoint's real dtypes.
 */
bm_status bm_model_open(const bm_model_opts *opts, bm_model **out, bm_error *err);
void bm_model_close(bm_model *model);

/* The checkpoint tensor holding tree tensor `ti` (following tie aliases
 * and the name prefix), or BM_NONE. */
int32_t bm_model_ckpt_tensor(const bm_model *model, int32_t ti);

#endif
