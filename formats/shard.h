/*
 * shard.h - re-writing a checkpoint: as a Hugging Face sharded safetensors
 * model (what `bmplan shard` writes) and into an offload folder (what
 * `bmplan offload` writes), converting float dtypes on the way.
 *
 * Everything streams: tensors are copied file to file (copy_file_range when
 * no conversion is needed) or converted in small chunks, so memory stays
 * bounded whatever the checkpoint's size. With several jobs each output
 * file is still written by one thread from start to end, so the bytes do
 * not depend on the number of jobs.
 */
#ifndef BM_SHARD_H
#define BM_SHARD_H

#include "bmplan.h"
#include "offload.h"

/*
 * Hugging Face hub's split_state_dict_into_shards rule: walk the sizes in
 * order; a size larger than `limit` becomes a shard of its own at once
 * (numbered before the shard still open); otherwise it joins the open
 * shard unless that would pass the limit, in which case the open shard is
 * closed (never empty) and a new one started. shard_of[i] gets the 0-based
 * shard of item i; *n_shards at least 1 (one empty shard for no items).
 */
bm_status bm_shard_split(const uint64_t *sizes, int32_t n, uint64_t limit, int32_t *shard_of,
                         int32_t *n_shards, bm_error *err);

/* "model.safetensors" for one shard, else "model-00001-of-00003.safetensors". */
void bm_shard_file_name(int32_t shard, int32_t n_shards, char *buf, size_t len);

/* Does dotted name `name` fall under `prefix` (equal, or prefix + "." starts it)? */
bool bm_name_has_prefix(const char *name, const char *prefix);

/* The dtype a tensor is written in: `target` (BM_DTYPE_INVALID = keep) for
 * floating tensors, float32 for floating tensors under a keep_fp32 prefix
 * (only when a target is given), integer and bool tensors unchanged. */
bm_dtype bm_shard_target_dtype(bm_dtype src, const char *name, bm_dtype target,
                               const char *const *keep_fp32, int n_keep_fp32);

typedef struct bm_rewrite_opts {
    bm_dtype dtype;                /* target for floating tensors, INVALID = keep */
    const char *const *keep_fp32;  /* dotted prefixes kept in float32 */
    int n_keep_fp32;
    int jobs;                      /* threads (<= 1: one) */
    /* shard only */
    uint64_t max_shard_size;       /* bytes (hub's rule, see bm_shard_split) */
    /* per checkpoint tensor: true = write it to `offload` instead of a
     * shard (bm_shard_write) / write it at all (bm_offload_checkpoint);
     * NULL = every tensor */
    const bool *select;
    bm_offload_writer *offload;    /* shard: where selected tensors go */
    /* per checkpoint tensor: its name in the offload folder (NULL = the
     * checkpoint's names) */
    const char *const *offload_names;
    /* offload only: index entries pointing into the source safetensors
     * files instead of copies (casts recorded in the entry) */
    bool by_reference;
    /* bytes written so far, updated atomically (may be NULL) */
    uint64_t *progress;
    /* one-line warnings (float16 overflow), naming the tensor */
    void (*warn)(void *ctx, const char *message);
    void *warn_ctx;
} bm_rewrite_opts;

typedef struct bm_shard_result {
    int32_t n_shards;
    int32_t n_tensors;    /* written to shards */
    int32_t n_offloaded;  /* written to the offload folder */
    uint64_t total_size;  /* bytes of tensor data in the shards */
    uint64_t converted;   /* tensors whose dtype changed */
} bm_shard_result;

/*
 * Write checkpoint `ck` as shards into the existing empty folder `dir`:
 * model.safetensors, or model-0000i-of-0000N.safetensors plus
 * model.safetensors.index.json (json.dumps(indent=2, sort_keys=True) +
 * "\n", as transformers writes it: {"metadata": {"total_size": N,
 * "bmplan": {"digest": "xxh64", "files": {FILE: HEX}}}, "weight_map":
 * {NAME: FILE}}). Tensor names are the checkpoint's; each shard is laid
 * out as the reference safetensors writer lays it out, with
 * {"format": "pt"} metadata; a single file also carries
 * "bmplan_digest": XXH64 of its data region. A shard file's digest in the
 * index is XXH64 of the whole file.
 */
bm_status bm_shard_write(const bm_checkpoint *ck, const char *dir, const bm_rewrite_opts *opts,
                         bm_shard_result *res, bm_error *err);

/* Write the selected tensors of `ck` into `w` (names from
 * opts->offload_names), converted to opts->dtype where it applies. With
 * by_reference (safetensors sources only) nothing is copied. */
bm_status bm_offload_checkpoint(const bm_checkpoint *ck, bm_offload_writer *w,
                                const bm_rewrite_opts *opts, int32_t *n_written, bm_error *err);

/*
 * Which tensors a device map sends to `device` ("disk"), by accelerate's
 * load-time rule (load_checkpoint_in_model): a tensor's device is the value
 * of the longest map key equal to its name or a dotted prefix of it ("" is
 * the whole model); a tensor no key covers is an error ("NAME doesn't have
 * any device set."). Tensors are named as the model names them (model's
 * tree, e.g. with the "model." prefix a checkpoint may omit). Fills, per
 * tensor of `ck` (a checkpoint opened on the same files as model->ckpt),
 * select[i] and names[i] (the model name; strings live as long as model).
 * The map file is accelerate's JSON object; values are GPU indices, "cpu",
 * "disk" or device strings.
 */
bm_status bm_devmap_select_file(const bm_model *model, const bm_checkpoint *ck, const char *path,
                                bm_device_kind kind, bool *select, const char **names,
                                int32_t *n_selected, bm_error *err);
/* The same for a loaded map (planner/planner.h); map NULL selects every
 * tensor. `source` names the map in messages. */
bm_status bm_devmap_select(const bm_model *model, const bm_checkpoint *ck, const bm_devmap *map,
                           const char *source, bm_device_kind kind, bool *select,
                           const char **names, int32_t *n_selected, bm_error *err);

/*
 * Copy the other files of a model folder (config.json, tokenizer files,
 * ...) into `dst`: every top-level regular file that is not a weight file
 * (*.safetensors, *.bin, *.pt, *.pth, *.ckpt, *.h5, *.msgpack, their
 * *.index.json) and not hidden. With `dtype` set, config.json's
 * "torch_dtype" (and "dtype", newer transformers) value is replaced by its
 * name in place, every other byte kept; a config without either key gets
 * "torch_dtype" added before its closing brace.
 */
bm_status bm_model_folder_copy_files(const char *src, const char *dst, bm_dtype dtype,
                                     int *n_copied, bm_error *err);

/* The config.json edit alone, on text in memory (malloc'ed result). */
bm_status bm_config_set_dtype(const char *text, size_t len, bm_dtype dtype, char **out,
                              size_t *out_len, bm_error *err);

#endif
