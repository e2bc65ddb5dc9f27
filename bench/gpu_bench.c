/*
 * gpu_bench.c - times the runner (what `bmrun` does) on one model for
 * bench/gpu.sh: a prompt's forward pass (prefill) and greedy decoding with
 * the first K decoder layers on GPU 0 and the rest, the final norm and the
 * LM head in host memory ("cpu", streamed to the GPU at every token), or
 * everything on GPU 0. Prints one JSON object of figures on stdout.
 *
 *   gpu_bench MODEL_DIR [--backend cuda|cpu] [--gpu-layers K] [--prompt N]
 *             [--generate N] [--budget BYTES] [--dtype bfloat16] [--warmup]
 *             [--report FILE]
 *
 * --gpu-layers -1 (the default) places the whole model on GPU 0. With
 * --warmup, a whole run comes first (prefill_cold_s is its prefill), then
 * three prefills alone, whose median is prefill_s, then the timed run.
 */
#include "bmplan.h"

#include <stdlib.h>
#include <string.h>

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static int usage(void)
{
    fprintf(stderr, "usage: gpu_bench MODEL_DIR [--backend cuda|cpu] [--gpu-layers K] "
                    "[--prompt N] [--generate N] [--budget BYTES] [--dtype D] [--warmup] "
                    "[--report FILE]\n");
    return 2;
}

int main(int argc, char **argv)
{
    if (argc < 2 || argv[1][0] == '-')
        return usage();
    const char *dir = argv[1], *backend = "cuda", *report = NULL;
    long gpu_layers = -1, prompt = 512, generate = 32;
    unsigned long long budget = 0;
    bool warmup = false;
    bm_dtype dtype = BM_DTYPE_INVALID;
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--warmup") == 0) {
            warmup = true;
            continue;
        }
        if (!v)
            return usage();
        i++;
        if (strcmp(a, "--backend") == 0)
            backend = v;
        else if (strcmp(a, "--gpu-layers") == 0)
            gpu_layers = strtol(v, NULL, 10);
        else if (strcmp(a, "--prompt") == 0)
            prompt = strtol(v, NULL, 10);
        else if (strcmp(a, "--generate") == 0)
            generate = strtol(v, NULL, 10);
        else if (strcmp(a, "--budget") == 0)
            budget = strtoull(v, NULL, 10);
        else if (strcmp(a, "--dtype") == 0)
            dtype = bm_dtype_parse(v);
        else if (strcmp(a, "--report") == 0)
            report = v;
        else
            return usage();
    }
    if (prompt < 1 || prompt > 100000 || generate < 0 || generate > 100000)
        return usage();

    bm_error err = {0};
    bm_model_opts mo = {.model = dir, .need_checkpoint = true};
    bm_model *model;
    if (bm_model_open(&mo, &model, &err) != BM_OK) {
        fprintf(stderr, "gpu_bench: %s\n", err.msg);
        return 1;
    }
    const bm_tree *tree = model->tree;
    /* the map: model.embed_tokens and layers < K on GPU 0, the rest on cpu */
    int32_t layers = bm_tree_find_module(tree, "model.layers");
    int n_layers = layers == BM_NONE ? 0 : tree->modules[layers].n_children;
    int cap = n_layers + 4;
    bm_map_entry *map = calloc((size_t)cap, sizeof *map);
    char **names = calloc((size_t)cap, sizeof *names);
    int n_map = 0;
    if (!map || !names)
        return 1;
    if (gpu_layers < 0) {
        map[n_map++] = (bm_map_entry){"", 0};
    } else {
        map[n_map++] = (bm_map_entry){"model.embed_tokens", 0};
        for (int l = 0; l < n_layers; l++) {
            names[l] = malloc(32);
            snprintf(names[l], 32, "model.layers.%d", l);
            map[n_map++] = (bm_map_entry){names[l], l < gpu_layers ? 0 : BM_DEVICE_CPU};
        }
        map[n_map++] = (bm_map_entry){"model.norm", BM_DEVICE_CPU};
        map[n_map++] = (bm_map_entry){"lm_head", BM_DEVICE_CPU};
    }
    /* bytes that stream to the GPU at every token: the cpu entries' weights
     * in the compute dtype */
    uint64_t offloaded = 0;
    for (int32_t t = 0; t < tree->n_tensors; t++) {
        int e = bm_map_lookup(map, n_map, tree->tensors[t].name);
        if (e >= 0 && map[e].device == BM_DEVICE_CPU && !tree->tensors[t].is_buffer &&
            tree->tensors[t].alias_of == BM_NONE) {
            bm_dtype dt = dtype != BM_DTYPE_INVALID ? dtype : tree->tensors[t].dtype;
            offloaded += tree->tensors[t].numel * bm_dtype_storage_bits(dt) / 8;
        }
    }
    uint64_t budgets[1] = {budget ? budget : UINT64_MAX};
    bm_runner_opts o = {.backend = backend, .dtype = dtype, .map = map, .n_map = n_map,
                        .main_device = BM_DEVICE_NONE, .gpu_budget = budgets,
                        .n_gpu_budgets = 1, .prefetch = true, .staging_bytes = 4ull << 30};
    bm_runner *r;
    if (bm_runner_open(model, &o, &r, &err) != BM_OK) {
        fprintf(stderr, "gpu_bench: %s\n", err.msg);
        return 1;
    }
    int64_t vocab = 32000;
    if (tree->config && bm_tree_find_module(tree, "lm_head") != BM_NONE) {
        int32_t h = bm_tree_find_tensor(tree, "lm_head.weight");
        if (h != BM_NONE)
            vocab = tree->tensors[h].shape[0];
    }
    int32_t *ids = malloc((size_t)prompt * sizeof *ids);
    uint32_t x = 12345;
    for (long i = 0; i < prompt; i++) {
        x = x * 1103515245u + 12345u;
        ids[i] = (int32_t)(1 + (x >> 8) % (uint32_t)(vocab - 1));
    }
    bm_run_result res;
    /* --warmup: one whole run first (its prefill is the cold one: cuBLAS,
     * the memory pool and the KV caches warm up), then the prefill alone
     * three times (the median is reported, as the PyTorch baseline does),
     * then the timed run */
    double cold = -1, reps[3] = {0, 0, 0};
    int n_reps = 0;
    if (warmup) {
        if (bm_runner_run(r, ids, prompt, generate, false, &res, &err) != BM_OK) {
            fprintf(stderr, "gpu_bench: %s\n", err.msg);
            return 1;
        }
        cold = res.prompt_s;
        bm_run_result_free(&res);
        for (; n_reps < 3; n_reps++) {
            if (bm_runner_run(r, ids, prompt, 0, false, &res, &err) != BM_OK) {
                fprintf(stderr, "gpu_bench: %s\n", err.msg);
                return 1;
            }
            reps[n_reps] = res.prompt_s;
            bm_run_result_free(&res);
        }
        qsort(reps, 3, sizeof reps[0], cmp_double);
    }
    if (bm_runner_run(r, ids, prompt, generate, false, &res, &err) != BM_OK) {
        fprintf(stderr, "gpu_bench: %s\n", err.msg);
        return 1;
    }
    double median = 0, mean = 0;
    if (res.n_token_s > 0) {
        double *t = malloc((size_t)res.n_token_s * sizeof *t);
        memcpy(t, res.token_s, (size_t)res.n_token_s * sizeof *t);
        qsort(t, (size_t)res.n_token_s, sizeof *t, cmp_double);
        median = t[res.n_token_s / 2];
        for (int64_t i = 0; i < res.n_token_s; i++)
            mean += t[i];
        mean /= (double)res.n_token_s;
        free(t);
    }
    printf("{\"backend\": \"%s\", \"gpu_layers\": %ld, \"layers\": %d, \"prompt_tokens\": %ld, "
           "\"decode_steps\": %lld, \"load_s\": %.3f, \"prefill_s\": %.6f, "
           "\"prefill_cold_s\": %.6f, \"prefill_last_s\": %.6f, "
           "\"decode_median_s\": %.6f, \"decode_mean_s\": %.6f, "
           "\"offloaded_bytes_per_token\": %llu, \"effective_GBps\": %.3f, "
           "\"generated\": [",
           backend, gpu_layers, n_layers, prompt, (long long)res.n_token_s,
           bm_runner_load_seconds(r), n_reps ? reps[1] : res.prompt_s, cold, res.prompt_s,
           median, mean, (unsigned long long)offloaded,
           median > 0 ? (double)offloaded / median / 1e9 : 0.0);
    for (int64_t i = 0; i < res.n_generated; i++)
        printf("%s%d", i ? ", " : "", res.generated[i]);
    printf("]}\n");
    if (report) {
        char *json;
        if (bm_runner_report(r, &res, &json, &err) == BM_OK) {
            bm_status s = bm_write_file_atomic(report, json, strlen(json), &err);
            free(json);
            if (s != BM_OK)
                fprintf(stderr, "gpu_bench: %s\n", err.msg);
        }
    }
    bm_run_result_free(&res);
    free(ids);
    bm_runner_close(r);
    bm_model_close(model);
    for (int i = 0; i < cap; i++)
        free(names[i]);
    free(names);
    free(map);
    return 0;
}
