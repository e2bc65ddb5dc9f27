/*
 * hfconfig.h - build the module tree transformers builds from a Hugging Face
 * config.json, for the architectures users run most (llama, mistral,
 * mixtral, qwen2, gemma, phi, gpt2, gpt_neox, falcon, opt, bloom, t5, bert).
 *
 * The tree is the one transformers 4.38 builds (the default float32 dtype,
 * non-persistent buffers included, tied parameters as tied groups): module
 * names, order and classes are what named_modules() gives, so a device map
 * planned on it loads as is with from_pretrained(device_map=...).
 */
#ifndef BM_HFCONFIG_H
#define BM_HFCONFIG_H

#include "bmplan.h"

/* Largest config.json accepted (bytes). */
#define BM_HFCONFIG_MAX_BYTES (16u << 20)

typedef struct bm_hfconfig_opts {
    /* Build the AutoModel class (LlamaModel, GPT2Model, BertModel with its
     * pooler, T5Model, ...) instead of the class with the language-modeling
     * head: no lm_head, names without the base-model prefix. */
    bool base_model_only;
} bm_hfconfig_opts;

/* From a config.json path. The tree's arch/config metadata are set (config
 * holds the resolved hyper-parameters with transformers' defaults applied)
 * and its no_split list is the architecture's _no_split_modules. The class
 * is chosen from model_type and architectures[0]: the causal-LM (or masked-
 * LM / seq2seq) class unless architectures[0] names the bare model class.
 * Errors: BM_E_FORMAT (not JSON, not an object), BM_E_INVALID (a key of the
 * wrong type or out of range, named in the message), BM_E_UNSUPPORTED (a
 * model_type or option transformers 4.38 does not build). */
bm_status bm_hfconfig_load(const char *path, bm_tree **out, bm_error *err);
/* From a parsed json_t* object; `source` names it in messages (and gives
 * the model name when the config has no _name_or_path). */
bm_status bm_hfconfig_build(const void *config_json, const char *source,
                            bm_tree **out, bm_error *err);
/* The same with options (opts may be NULL: the defaults above). */
bm_status bm_hfconfig_load_opts(const char *path, const bm_hfconfig_opts *opts,
                                bm_tree **out, bm_error *err);
bm_status bm_hfconfig_build_opts(const void *config_json, const char *source,
                                 const bm_hfconfig_opts *opts, bm_tree **out,
                                 bm_error *err);
/* The model_type values understood, NULL-terminated. */
extern const char *const bm_hfconfig_model_types[];

#endif
