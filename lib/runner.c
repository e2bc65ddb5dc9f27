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
    bm_backend_config cfg = {.threads = o->threads, .report = o->report};
    bm_status s = o->backend_ops ? bm_backend_start(o->backend_ops, &cfg, &r->be, err)
                                 : bm_backend_load(o->backend ? o->backend : "cpu", &cfg,
                                                   &r->be, err);
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
    json_t *bj = json_object();
    json_object_set_new(bj, "name", json_string(bm_backend_name(r->be)));
    char *own = bm_backend_report_json(r->be);
    if (own) {
        json_error_t je;
        json_t *extra = json_loads(own, 0, &je);
        free(own);
        if (!json_is_object(extra)) {
            json_decref(extra);
            json_decref(bj);
            json_decref(devs);
            json_decref(root);
            return bm_fail(err, BM_E_INTERNAL, "%s backend: its report is not a JSON object",
                           bm_backend_name(r->be));
        }
        json_object_del(extra, "name"); /* ours names the backend */
        json_object_update(bj, extra);
        json_decref(extra);
    }
    json_object_set_new(root, "backend", bj);
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

bm_status bm_run_dims_for_tree(const bm_tree *tree, bm_run_dims *d, bm_error *err)
{
    memset(d, 0, sizeof *d);
    const char *arch = tree->arch ? tree->arch : "";
    bm_status s;
    if (strcmp(arch, "gpt2") == 0) {
        d->gpt2 = true;
        if ((s = arch_cfg_int(tree, "n_embd", false, 0, &d->hidden, err)) != BM_OK ||
            (s = arch_cfg_int(tree, "n_layer", false, 0, &d->layers, err)) != BM_OK ||
            (s = arch_cfg_int(tree, "n_head", false, 0, &d->heads, err)) != BM_OK ||
            (s = arch_cfg_int(tree, "vocab_size", false, 0, &d->vocab, err)) != BM_OK ||
            (s = arch_cfg_int(tree, "n_inner", true, 4 * d->hidden, &d->intermediate, err)) !=
                BM_OK)
            return s;
        d->kv_heads = d->heads;
        d->head_dim = d->heads ? d->hidden / d->heads : 0;
    } else {
        if ((s = arch_cfg_int(tree, "hidden_size", false, 0, &d->hidden, err)) != BM_OK ||
            (s = arch_cfg_int(tree, "num_hidden_layers", false, 0, &d->layers, err)) != BM_OK ||
            (s = arch_cfg_int(tree, "num_attention_heads", false, 0, &d->heads, err)) != BM_OK ||
            (s = arch_cfg_int(tree, "vocab_size", false, 0, &d->vocab, err)) != BM_OK ||
            (s = arch_cfg_int(tree, "intermediate_size", false, 0, &d->intermediate, err)) !=
                BM_OK ||
            (s = arch_cfg_int(tree, "num_key_value_heads", true, d->heads, &d->kv_heads, err)) !=
                BM_OK ||
            (s = arch_cfg_int(tree, "head_dim", true, d->heads ? d->hidden / d->heads : 0,
                              &d->head_dim, err)) != BM_OK)
            return s;
    }
    return BM_OK;
}

bm_status bm_run_rules_compute(const bm_run_dims *d, int64_t prompt_tokens, int64_t max_tokens,
                               bool all_logits, bm_run_rules *out, bm_error *err)
{
    memset(out, 0, sizeof *out);
    /* these bounds keep every product below 2^63 */
    if (d->hidden <= 0 || d->layers < 0 || d->layers > (1 << 20) || d->vocab <= 0 ||
        d->intermediate <= 0 || d->heads <= 0 || d->kv_heads <= 0 || d->head_dim <= 0 ||
        d->hidden > (1 << 24) || d->intermediate > (1 << 26) || d->vocab > (1 << 26) ||
        d->heads > (1 << 20) || d->kv_heads > (1 << 20) || d->head_dim > (1 << 20) ||
        d->kv_heads * d->head_dim > (1 << 26) || d->heads * d->head_dim > (1 << 26))
        return bm_fail(err, BM_E_INVALID, "configuration: dimensions out of range");
    int64_t M = prompt_tokens, T = max_tokens;
    if (M <= 0 || T < M || T > (1ll << 32))
        return bm_fail(err, BM_E_INVALID, "%lld prompt tokens and a context of %lld are out of "
                       "range", (long long)M, (long long)T);
    /* KV caches (bm_rt_kv): float32, [T, kv width] for K and for V;
     * activations of a layer's forward (arch_llama.c / arch_gpt2.c): the
     * residual h, the normed input, and the widest set of projections
     * alive at once */
    int64_t qd = d->heads * d->head_dim, kd = d->kv_heads * d->head_dim;
    int64_t D = d->hidden, I = d->intermediate;
    int64_t width;
    if (d->gpt2) {
        width = 6 * D;                /* h, x, qkv, attention output */
        if (4 * D + I > width)
            width = 4 * D + I;        /* h, residual, x2, c_fc, c_proj */
    } else {
        width = 2 * D + qd + 2 * kd;  /* h, x, q, k, v */
        if (2 * D + 2 * qd > width)
            width = 2 * D + 2 * qd;   /* h, x, q, attention output */
        if (3 * D + qd > width)
            width = 3 * D + qd;       /* h, x, attention output, o_proj */
        if (3 * D + 2 * I > width)
            width = 3 * D + 2 * I;    /* h, residual, x2, gate, up */
        if (4 * D + I > width)
            width = 4 * D + I;        /* h, residual, x2, gate, down */
    }
    out->layer_kv = 2 * (uint64_t)T * (uint64_t)kd * 4;
    out->layer_act = 4 * (uint64_t)M * (uint64_t)width;
    /* token ids stay on the embedding's device for the whole forward; the
     * head's device holds the final norm's input and output, then the
     * logits */
    uint64_t rows_out = all_logits ? (uint64_t)M : 1;
    out->embed_act = 4 * (uint64_t)M;
    out->head_act = 8 * (uint64_t)M * (uint64_t)D;
    if (4 * ((uint64_t)M * (uint64_t)D + rows_out * (uint64_t)d->vocab) > out->head_act)
        out->head_act = 4 * ((uint64_t)M * (uint64_t)D + rows_out * (uint64_t)d->vocab);
    /* gpt2's host position ids come after the prompt's ids have gone */
    out->host_ids = 4 * (uint64_t)M;
    /* the embedding comes before the layers and the head after them */
    out->device_act = out->layer_act + out->embed_act;
    if (out->head_act > out->device_act)
        out->device_act = out->head_act;
    return BM_OK;
}

bm_status bm_runner_headroom(const bm_tree *tree, int64_t max_tokens, bool all_logits,
                             uint64_t *bytes, bm_error *err)
{
    *bytes = 0;
    bm_run_dims rd;
    bm_run_rules r;
    bm_status s = bm_run_dims_for_tree(tree, &rd, err);
    if (s == BM_OK)
        s = bm_run_rules_compute(&rd, max_tokens, max_tokens, all_logits, &r, err);
    if (s != BM_OK)
        return s;
    uint64_t kv;
    if (__builtin_mul_overflow(r.layer_kv, (uint64_t)rd.layers, &kv) ||
        __builtin_add_overflow(kv, r.device_act, bytes))
        return bm_fail(err, BM_E_OVERFLOW, "activation memory estimate out of range");
    return BM_OK;
}

static uint64_t runtime_bytes(const bm_tensor *t, bm_dtype dtype)
{
    bm_dtype dt = t->dtype;
    if (bm_dtype_is_floating(dt))
        dt = dtype != BM_DTYPE_INVALID ? dtype : (dt == BM_F64 ? BM_F32 : dt);
    return t->numel * (bm_dtype_storage_bits(dt) / 8);
}

static int need_index(int device) { return device == BM_DEVICE_CPU ? 64 : device; }

/* The device a tensor's module runs on and whether its weights are brought
 * there per call (dispatch_model: "cpu" and "disk" run on the main device). */
static int run_device(const bm_device_needs_opts *o, int main_dev, const char *name,
                      bool *offloaded)
{
    *offloaded = false;
    int e = bm_map_lookup(o->map, o->n_map, name);
    if (e < 0)
        return BM_DEVICE_NONE;
    int d = o->map[e].device;
    if (d == BM_DEVICE_DISK || (d == BM_DEVICE_CPU && main_dev != BM_DEVICE_CPU)) {
        *offloaded = true;
        return main_dev;
    }
    return d;
}

static int cmp_u64_desc(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? 1 : x > y ? -1 : 0;
}

bm_status bm_runner_device_needs(const bm_tree *tree, const bm_device_needs_opts *o,
                                 bm_device_need *out, int *n, bm_error *err)
{
    *n = 0;
    bm_run_dims rd;
    bm_status s = bm_run_dims_for_tree(tree, &rd, err);
    if (s != BM_OK)
        return s;
    if (!o->map || o->n_map <= 0)
        return bm_fail(err, BM_E_INVALID, "no device map");
    if (o->max_tokens > (1 << 24))
        return bm_fail(err, BM_E_INVALID, "%lld prompt tokens and a context of %lld are out of "
                       "range", (long long)o->prompt_tokens, (long long)o->max_tokens);
    bm_run_rules rr;
    if ((s = bm_run_rules_compute(&rd, o->prompt_tokens, o->max_tokens, o->all_logits, &rr,
                                  err)) != BM_OK)
        return s;
    /* the main device, as bm_dispatch_model picks it */
    int main_dev = o->main_device;
    for (int i = 0; main_dev == BM_DEVICE_NONE && i < o->n_map; i++)
        if (o->map[i].device >= 0)
            main_dev = o->map[i].device;
    if (main_dev == BM_DEVICE_NONE)
        main_dev = BM_DEVICE_CPU;
    if (main_dev != BM_DEVICE_CPU && (main_dev < 0 || main_dev >= 64))
        return bm_fail(err, BM_E_INVALID, "main device %d out of range", main_dev);
    uint64_t w[65] = {0}, kv[65] = {0}, act[65] = {0}, stage[65] = {0};
    bool used[65] = {false};
    used[64] = true;
    for (int i = 0; i < o->n_map; i++) {
        int dv = o->map[i].device;
        if (dv != BM_DEVICE_CPU && (dv < 0 || dv >= 64) && dv != BM_DEVICE_DISK)
            return bm_fail(err, BM_E_INVALID, "device map entry '%s': device out of range",
                           o->map[i].name);
        if (dv >= 0)
            used[dv] = true;
    }
    used[need_index(main_dev)] = true;
    /* resident weights: one copy per device of tied tensors (bm_rt_load) */
    for (int32_t ti = 0; ti < tree->n_tensors; ti++) {
        const bm_tensor *t = &tree->tensors[ti];
        if (t->is_buffer && !t->persistent)
            continue;
        int e = bm_map_lookup(o->map, o->n_map, t->name);
        if (e < 0)
            return bm_fail(err, BM_E_INVALID, "the device map does not give any device for "
                           "'%s'", t->name);
        int dv = o->map[e].device;
        if (dv == BM_DEVICE_DISK)
            continue;
        bool shared = false;
        if (t->tie_group != BM_NONE) {
            const bm_tie *g = &tree->ties[t->tie_group];
            for (int32_t k = 0; k < g->n && !shared; k++) {
                int32_t tj = g->tensors[k];
                int ej = tj < ti ? bm_map_lookup(o->map, o->n_map, tree->tensors[tj].name) : -1;
                shared = ej >= 0 && o->map[ej].device == dv;
            }
        }
        if (!shared)
            w[need_index(dv)] += runtime_bytes(t, o->dtype);
    }
    /* KV caches on the device the layer's attention runs on */
    const char *layer_fmt = rd.gpt2 ? "h.%lld." : "layers.%lld.";
    for (int64_t l = 0; l < rd.layers; l++) {
        char want[48];
        snprintf(want, sizeof want, layer_fmt, (long long)l);
        const char *name = NULL;
        for (int32_t ti = 0; ti < tree->n_tensors && !name; ti++) {
            const char *p = strstr(tree->tensors[ti].name, want);
            if (p && (p == tree->tensors[ti].name || p[-1] == '.'))
                name = tree->tensors[ti].name;
        }
        if (!name)
            return bm_fail(err, BM_E_INVALID, "layer %lld has no tensors", (long long)l);
        bool off;
        int dv = run_device(o, main_dev, name, &off);
        if (dv == BM_DEVICE_NONE)
            return bm_fail(err, BM_E_INVALID, "the device map does not give any device for "
                           "'%s'", name);
        kv[need_index(dv)] += rr.layer_kv;
        if (act[need_index(dv)] < rr.layer_act)
            act[need_index(dv)] = rr.layer_act;
    }
    const char *embed = rd.gpt2 ? "wte.weight" : "embed_tokens.weight";
    const char *head = "lm_head.weight";
    for (int32_t ti = 0; ti < tree->n_tensors; ti++) {
        const char *nm = tree->tensors[ti].name;
        size_t ln = strlen(nm);
        bool is_embed = ln >= strlen(embed) && strcmp(nm + ln - strlen(embed), embed) == 0;
        bool is_head = strcmp(nm, head) == 0;
        if (!is_embed && !is_head)
            continue;
        bool off;
        int dv = run_device(o, main_dev, nm, &off);
        if (dv == BM_DEVICE_NONE)
            continue;
        if (is_embed)
            act[need_index(dv)] += rr.embed_act;
        if (is_head && act[need_index(dv)] < rr.head_act)
            act[need_index(dv)] = rr.head_act;
    }
    act[64] += rr.host_ids;
    /* offloaded weights come to the main device one module (that owns
     * tensors) at a call; prefetch stages up to `lookahead` more ahead */
    uint64_t *leaf = calloc((size_t)tree->n_modules + 1, sizeof *leaf);
    if (!leaf)
        return bm_fail(err, BM_E_NOMEM, "out of memory");
    int32_t n_leaf = 0;
    for (int32_t m = 0; m < tree->n_modules; m++) {
        const bm_module *mod = &tree->modules[m];
        uint64_t bytes = 0;
        for (int32_t k = 0; k < mod->n_params + mod->n_buffers; k++) {
            const bm_tensor *t = &tree->tensors[mod->tensor_begin + k];
            if (t->is_buffer && !t->persistent)
                continue;
            bool off;
            run_device(o, main_dev, t->name, &off);
            if (off)
                bytes += runtime_bytes(t, o->dtype);
        }
        if (bytes)
            leaf[n_leaf++] = bytes;
    }
    qsort(leaf, (size_t)n_leaf, sizeof *leaf, cmp_u64_desc);
    uint64_t staged = n_leaf ? leaf[0] : 0;
    if (o->prefetch && n_leaf > 1) {
        uint64_t limit = o->staging_bytes ? o->staging_bytes : 1ull << 30, ahead = 0;
        for (int32_t k = 1; k < n_leaf && k <= 4; k++)
            ahead += leaf[k];
        staged += ahead < limit ? ahead : limit;
    }
    free(leaf);
    stage[need_index(main_dev)] = staged;
    for (int i = 0; i < 65; i++) {
        if (!used[i])
            continue;
        bm_device_need *nd = &out[(*n)++];
        nd->device = i == 64 ? BM_DEVICE_CPU : i;
        nd->weights = w[i];
        nd->kv = kv[i];
        nd->activations = act[i];
        nd->staging = stage[i];
        nd->peak = w[i] + kv[i] + act[i] + stage[i];
    }
    return BM_OK;
}
