/*
 * runner.c - load_checkpoint_and_dispatch and greedy generation on top of
 * the runtime and the hooks: the library side of `bmplan run`.
 */
#include "runner.h"
#include "arch.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct bm_runner {
    const bm_model *model;
    bm_backend *be;
    bm_backend *host;      /* == be for the CPU backend */
    bm_rt *rt;
    bm_wsource *ckpt;
    double load_s;
    int max_gpu;           /* highest GPU id in use */
};

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

void bm_runner_close(bm_runner *r)
{
    if (!r)
        return;
    bm_rt_free(r->rt);
    bm_wsource_unref(r->ckpt);
    if (r->host != r->be)
        bm_backend_free(r->host);
    bm_backend_free(r->be);
    free(r);
}

bm_rt *bm_runner_rt(bm_runner *r) { return r->rt; }
double bm_runner_load_seconds(const bm_runner *r) { return r->load_s; }

/* Disk entries: every tensor they cover must be in the offload folder with
 * the right shape, before anything is loaded. */
static bm_status check_offload(const bm_tree *tree, const bm_runner_opts *o, bm_error *err)
{
    for (int32_t ti = 0; ti < tree->n_tensors; ti++) {
        const bm_tensor *t = &tree->tensors[ti];
        if (t->is_buffer && !t->persistent)
            continue;
        int e = bm_map_lookup(o->map, o->n_map, t->name);
        if (e < 0 || o->map[e].device != BM_DEVICE_DISK)
            continue;
        if (!o->offload)
            return bm_fail(err, BM_E_INVALID, "'%s' is mapped to disk: an offload folder is "
                           "needed (--offload-folder)", o->map[e].name);
        bm_wsource_tensor wt;
        bm_status s = bm_wsource_find(o->offload, t->name, &wt, NULL);
        if (s != BM_OK && t->tie_group != BM_NONE) {
            const bm_tie *g = &tree->ties[t->tie_group];
            for (int32_t i = 0; i < g->n && s != BM_OK; i++)
                s = bm_wsource_find(o->offload, tree->tensors[g->tensors[i]].name, &wt, NULL);
        }
        if (s != BM_OK && t->tie_group != BM_NONE) {
            /* a tied alias whose partner is loaded elsewhere shares it */
            const bm_tie *g = &tree->ties[t->tie_group];
            for (int32_t i = 0; i < g->n; i++) {
                int pe = bm_map_lookup(o->map, o->n_map, tree->tensors[g->tensors[i]].name);
                if (pe >= 0 && o->map[pe].device != BM_DEVICE_DISK)
                    goto next;
            }
        }
        if (s != BM_OK)
            return bm_fail(err, BM_E_NOTFOUND, "%s: tensor '%s' (mapped to disk) is missing",
                           bm_wsource_describe(o->offload), t->name);
        bool same = wt.ndim == t->ndim;
        for (int d = 0; same && d < t->ndim; d++)
            same = wt.shape[d] == t->shape[d];
        if (!same)
            return bm_fail(err, BM_E_INVALID, "%s: tensor '%s' has another shape than the model's",
                           bm_wsource_describe(o->offload), t->name);
    next:;
    }
    return BM_OK;
}

bm_status bm_runner_open(const bm_model *model, const bm_runner_opts *o, bm_runner **out,
                         bm_error *err)
{
    *out = NULL;
    const bm_tree *tree = model->tree;
    if (!model->ckpt)
        return bm_fail(err, BM_E_INVALID, "%s: no checkpoint to run (give a model folder or "
                       "--checkpoint)", model->graph_source ? model->graph_source : "model");
    if (!o->map || o->n_map <= 0)
        return bm_fail(err, BM_E_INVALID, "no device map");
    bm_runner *r = calloc(1, sizeof *r);
    if (!r)
        return bm_fail(err, BM_E_NOMEM, "out of memory");
    r->model = model;
    double t0 = now();
    bm_backend_config cfg = {.threads = o->threads};
    bm_status s = bm_backend_load(o->backend ? o->backend : "cpu", &cfg, &r->be, err);
    if (s == BM_OK && strcmp(bm_backend_name(r->be), "cpu") != 0)
        s = bm_backend_load("cpu", &cfg, &r->host, err);
    else
        r->host = r->be;
    bm_rt_opts ro = {.backend = r->be, .host = r->host, .dtype = o->dtype,
                     .prefetch = o->prefetch, .staging_bytes = o->staging_bytes};
    if (s == BM_OK)
        s = bm_rt_new(tree, &ro, &r->rt, err);
    if (s == BM_OK)
        s = bm_rt_bind_arch(r->rt, NULL, err);
    if (s == BM_OK)
        s = check_offload(tree, o, err);
    /* capacities first, so that loading is accounted against them */
    r->max_gpu = -1;
    for (int i = 0; s == BM_OK && i < o->n_map; i++)
        if (o->map[i].device >= 0 && o->map[i].device > r->max_gpu)
            r->max_gpu = o->map[i].device;
    if (o->main_device >= 0 && o->main_device > r->max_gpu)
        r->max_gpu = o->main_device;
    for (int id = 0; s == BM_OK && id <= r->max_gpu; id++)
        s = bm_rt_set_capacity(r->rt, id, id < o->n_gpu_budgets ? o->gpu_budget[id] : UINT64_MAX,
                               err);
    if (s == BM_OK)
        s = bm_rt_set_capacity(r->rt, BM_DEVICE_CPU, o->cpu_budget ? o->cpu_budget : UINT64_MAX,
                               err);
    int *device_of = NULL;
    if (s == BM_OK) {
        device_of = calloc((size_t)tree->n_tensors + 1, sizeof *device_of);
        if (!device_of)
            s = bm_fail(err, BM_E_NOMEM, "out of memory");
    }
    for (int32_t ti = 0; s == BM_OK && ti < tree->n_tensors; ti++) {
        int e = bm_map_lookup(o->map, o->n_map, tree->tensors[ti].name);
        device_of[ti] = e < 0 ? BM_DEVICE_NONE : o->map[e].device;
    }
    if (s == BM_OK) {
        r->ckpt = bm_wsource_checkpoint(model->ckpt, model->ckpt_prefix);
        if (!r->ckpt)
            s = bm_fail(err, BM_E_NOMEM, "out of memory");
    }
    /* check_device_map before loading (the dispatch repeats it) */
    if (s == BM_OK) {
        for (int32_t ti = 0; ti < tree->n_tensors; ti++) {
            const bm_tensor *t = &tree->tensors[ti];
            if ((!t->is_buffer || t->persistent) && device_of[ti] == BM_DEVICE_NONE) {
                s = bm_fail(err, BM_E_INVALID, "the device map does not give any device for "
                            "'%s'", t->name);
                break;
            }
        }
    }
    for (int i = 0; s == BM_OK && i < o->n_map; i++)
        if (o->map[i].name[0] && bm_tree_find_module(tree, o->map[i].name) == BM_NONE &&
            bm_tree_find_tensor(tree, o->map[i].name) == BM_NONE)
            s = bm_fail(err, BM_E_NOTFOUND, "device map entry '%s' is not a module or tensor "
                        "of the model", o->map[i].name);
    if (s == BM_OK)
        s = bm_rt_load(r->rt, r->ckpt, device_of, err);
    free(device_of);
    bm_dispatch_opts dopts = {.main_device = o->main_device, .offload = o->offload,
                              .offload_buffers = o->offload_buffers};
    if (s == BM_OK)
        s = bm_dispatch_model(r->rt, o->map, o->n_map, &dopts, err);
    if (s != BM_OK) {
        bm_runner_close(r);
        return s;
    }
    r->load_s = now() - t0;
    *out = r;
    return BM_OK;
}

/* The name prefix the checkpoint omits ("model.", "transformer.") or "". */
static char *guess_prefix(const bm_tree *tree, const bm_checkpoint *ck)
{
    for (int32_t ti = 0; ti < tree->n_tensors; ti++) {
        const char *name = tree->tensors[ti].name;
        if (bm_checkpoint_find(ck, name) != BM_NONE)
            return strdup("");
        const char *dot = strchr(name, '.');
        if (dot && bm_checkpoint_find(ck, dot + 1) != BM_NONE) {
            char *p = strndup(name, (size_t)(dot - name) + 1);
            return p;
        }
    }
    return strdup("");
}

bm_status bm_runner_model_open(const bm_model_opts *opts, bool allow_partial, bm_model **out,
                               bm_error *err)
{
    bm_status s = bm_model_open(opts, out, err);
    if (s == BM_OK || !allow_partial)
        return s;
    const char *ck_path = opts->checkpoint ? opts->checkpoint : opts->model;
    if (!ck_path || !bm_checkpoint_probe(ck_path))
        return s;
    bm_model_opts tree_only = *opts;
    tree_only.checkpoint = NULL;
    tree_only.need_checkpoint = false;
    tree_only.no_checkpoint = true;
    bm_model *m;
    bm_error e2 = {0};
    if (bm_model_open(&tree_only, &m, &e2) != BM_OK)
        return s;
    bm_checkpoint *ck;
    if (bm_checkpoint_open(ck_path, &ck, &e2) != BM_OK) {
        bm_model_close(m);
        return s;
    }
    m->ckpt = ck;
    free(m->ckpt_prefix);
    m->ckpt_prefix = guess_prefix(m->tree, ck);
    if (!m->ckpt_prefix) {
        bm_model_close(m);
        return bm_fail(err, BM_E_NOMEM, "out of memory");
    }
    *out = m;
    if (err)
        memset(err, 0, sizeof *err);
    return BM_OK;
}

void bm_run_result_free(bm_run_result *res)
{
    free(res->logits);
    free(res->generated);
    free(res->token_s);
    memset(res, 0, sizeof *res);
}

bm_status bm_runner_run(bm_runner *r, const int32_t *ids, int64_t n, int64_t n_new,
                        bool all_logits, bm_run_result *res, bm_error *err)
{
    memset(res, 0, sizeof *res);
    if (n <= 0)
        return bm_fail(err, BM_E_INVALID, "no input tokens");
    if (n_new < 0 || n_new > (1 << 24))
        return bm_fail(err, BM_E_INVALID, "--generate %lld is out of range", (long long)n_new);
    bm_status s = bm_rt_begin(r->rt, n + (n_new > 0 ? n_new : 0), err);
    if (s != BM_OK)
        return s;
    if (n_new > 0) {
        res->generated = calloc((size_t)n_new, sizeof *res->generated);
        res->token_s = calloc((size_t)n_new, sizeof *res->token_s);
        if (!res->generated || !res->token_s) {
            bm_run_result_free(res);
            return bm_fail(err, BM_E_NOMEM, "out of memory");
        }
    }
    double t0 = now();
    s = bm_rt_forward(r->rt, ids, n, all_logits, &res->logits, &res->rows, &res->vocab, err);
    res->prompt_s = now() - t0;
    if (s != BM_OK) {
        bm_run_result_free(res);
        return s;
    }
    if (n_new <= 0)
        return BM_OK;
    const float *last = res->logits + (res->rows - 1) * res->vocab;
    int32_t tok = bm_argmax(last, res->vocab);
    res->generated[res->n_generated++] = tok;
    while (res->n_generated < n_new) {
        float *lg;
        int64_t rows, vocab;
        t0 = now();
        s = bm_rt_forward(r->rt, &tok, 1, false, &lg, &rows, &vocab, err);
        res->token_s[res->n_token_s++] = now() - t0;
        if (s != BM_OK) {
            bm_run_result_free(res);
            return s;
        }
        tok = bm_argmax(lg, vocab);
        free(lg);
        res->generated[res->n_generated++] = tok;
    }
    return BM_OK;
}

static json_t *device_json(bm_dev *d)
{
    bm_dev_stats st;
    bm_dev_get_stats(d, &st);
    json_t *o = json_object();
    json_object_set_new(o, "device", json_string(bm_dev_name(d)));
    json_object_set_new(o, "budget", st.capacity == UINT64_MAX ? json_null()
                                                               : json_integer((json_int_t)st.capacity));
    json_object_set_new(o, "peak_bytes", json_integer((json_int_t)st.peak));
    json_object_set_new(o, "in_use_bytes", json_integer((json_int_t)st.in_use));
    json_object_set_new(o, "bytes_in", json_integer((json_int_t)st.bytes_in));
    json_object_set_new(o, "bytes_out", json_integer((json_int_t)st.bytes_out));
    json_object_set_new(o, "bytes_peer_in", json_integer((json_int_t)st.bytes_peer_in));
    return o;
}

bm_status bm_runner_report(bm_runner *r, const bm_run_result *res, char **out, bm_error *err)
{
    *out = NULL;
    json_t *root = json_object();
    json_t *devs = json_object();
    bm_dev *d;
    for (int id = 0; id <= r->max_gpu; id++)
        if (bm_rt_device(r->rt, id, &d, NULL) == BM_OK) {
            char key[16];
            snprintf(key, sizeof key, "%d", id);
            json_object_set_new(devs, key, device_json(d));
        }
    if (bm_rt_device(r->rt, BM_DEVICE_CPU, &d, NULL) == BM_OK)
        json_object_set_new(devs, "cpu", device_json(d));
    json_object_set_new(root, "backend", json_string(bm_backend_name(r->be)));
    json_object_set_new(root, "devices", devs);
    bm_rt_stats st;
    bm_rt_get_stats(r->rt, &st);
    json_t *mv = json_object();
    json_object_set_new(mv, "disk_read", json_integer((json_int_t)st.bytes_disk_read));
    json_object_set_new(mv, "host_to_device", json_integer((json_int_t)st.bytes_host_to_device));
    json_object_set_new(mv, "activations_between_devices",
                        json_integer((json_int_t)st.bytes_activations_moved));
    json_object_set_new(mv, "offloaded_weights_fetched",
                        json_integer((json_int_t)st.offload_fetch_bytes));
    json_object_set_new(root, "bytes_moved", mv);
    json_t *pf = json_object();
    uint64_t total = st.prefetch_hits + st.prefetch_waits + st.prefetch_misses;
    json_object_set_new(pf, "hits", json_integer((json_int_t)st.prefetch_hits));
    json_object_set_new(pf, "waits", json_integer((json_int_t)st.prefetch_waits));
    json_object_set_new(pf, "misses", json_integer((json_int_t)st.prefetch_misses));
    json_object_set_new(pf, "hit_rate", total ? json_real((double)(st.prefetch_hits + st.prefetch_waits) /
                                                          (double)total)
                                              : json_null());
    json_object_set_new(pf, "offloaded_fetches", json_integer((json_int_t)st.offload_fetches));
    json_object_set_new(root, "prefetch", pf);
    json_t *tm = json_object();
    json_object_set_new(tm, "load_s", json_real(r->load_s));
    if (res) {
        json_object_set_new(tm, "forward_s", json_real(res->prompt_s));
        json_t *tok = json_array();
        for (int64_t i = 0; i < res->n_token_s; i++)
            json_array_append_new(tok, json_real(res->token_s[i]));
        json_object_set_new(tm, "per_token_s", tok);
    }
    json_object_set_new(root, "time", tm);
    char *text = json_dumps(root, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    json_decref(root);
    if (!text)
        return bm_fail(err, BM_E_NOMEM, "out of memory");
    *out = text;
    return BM_OK;
}

bm_status bm_runner_headroom(const bm_tree *tree, int64_t max_tokens, bool all_logits,
                             uint64_t *bytes, bm_error *err)
{
    *bytes = 0;
    const char *arch = tree->arch ? tree->arch : "";
    int64_t D, L, H, KV, hd, I, V;
    bm_status s;
    if (strcmp(arch, "gpt2") == 0) {
        if ((s = arch_cfg_int(tree, "n_embd", false, 0, &D, err)) != BM_OK ||
            (s = arch_cfg_int(tree, "n_layer", false, 0, &L, err)) != BM_OK ||
            (s = arch_cfg_int(tree, "n_head", false, 0, &H, err)) != BM_OK ||
            (s = arch_cfg_int(tree, "vocab_size", false, 0, &V, err)) != BM_OK ||
            (s = arch_cfg_int(tree, "n_inner", true, 4 * D, &I, err)) != BM_OK)
            return s;
        KV = H;
        hd = H ? D / H : 0;
    } else {
        if ((s = arch_cfg_int(tree, "hidden_size", false, 0, &D, err)) != BM_OK ||
            (s = arch_cfg_int(tree, "num_hidden_layers", false, 0, &L, err)) != BM_OK ||
            (s = arch_cfg_int(tree, "num_attention_heads", false, 0, &H, err)) != BM_OK ||
            (s = arch_cfg_int(tree, "vocab_size", false, 0, &V, err)) != BM_OK ||
            (s = arch_cfg_int(tree, "intermediate_size", false, 0, &I, err)) != BM_OK ||
            (s = arch_cfg_int(tree, "num_key_value_heads", true, H, &KV, err)) != BM_OK ||
            (s = arch_cfg_int(tree, "head_dim", true, H ? D / H : 0, &hd, err)) != BM_OK)
            return s;
    }
    /* float32 activations: KV caches of every layer, and the largest set of
     * live activations of one layer (residual, normed input, q/k/v or the
     * two MLP projections, the output), plus the logits */
    double T = (double)max_tokens;
    double kv = (double)L * 2 * T * (double)(KV * hd) * 4;
    double width = (double)(3 * D + 3 * H * hd);
    if ((double)(2 * D + 2 * I) > width)
        width = (double)(2 * D + 2 * I);
    double act = 4 * T * (width + 2 * (double)D) + 4 * (double)V * (all_logits ? T : 1);
    double total = kv + act;
    if (!(total < 1e18))
        return bm_fail(err, BM_E_OVERFLOW, "activation memory estimate out of range");
    *bytes = (uint64_t)total;
    return BM_OK;
}
