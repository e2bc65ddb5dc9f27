/*
 * hfconfig.h - build the module tree transformers builds from a Hugging Face
 * config.json, for the architectures users run most (llama, mistral,
 * mixtral, qwen2, gemma, phi, gpt2, gpt_neox, falcon, opt, bloom, t5, bert).
 */
#ifndef BM_HFCONFIG_H
#define BM_HFCONFIG_H

#include "bmplan.h"

/* From a config.json path. The tree's arch/config metadata are set (config
 * holds the resolved hyper-parameters with transformers' defaults applied)
 * and its no_split list is the architecture's _no_split_modules. */
bm_status bm_hfconfig_load(const char *path, bm_tree **out, bm_error *err);
/* From a parsed json_t* object; `source` names it in messages. */
bm_status bm_hfconfig_build(const void *config_json, const char *source,
                            bm_tree **out, bm_error *err);
/* The model_type values understood, NULL-terminated. */
extern const char *const bm_hfconfig_model_types[];

#endif
