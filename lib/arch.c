/*
 * arch.c - the architecture registry and what llama and gpt2 share: leaf
 * module forwards (torch.nn.Linear, GPT-2's Conv1D, Embedding, RMSNorm,
 * LayerNorm) and helpers to read hyper-parameters and check shapes. Leaf
 * forwards compute on the device their input is on: by the time a forward
 * runs, the module's hook has put the input and the weights there.
 */
#include "arch.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

static void arch_free(void *p)
{
    arch_common *a = p;
    if (!a)
        return;
    free(a->mods);
    free(a->extra_array);
    free(a->extra);
    free(a);
}

bm_status arch_state_new(bm_rt *rt, arch_common **out, bm_error *err)
{
    const bm_tree *tree = bm_rt_tree(rt);
    arch_common *a = calloc(1, sizeof *a);
    if (!a || !(a->mods = calloc((size_t)tree->n_modules + 1, sizeof *a->mods))) {
        free(a);
        return bm_fail(err, BM_E_NOMEM, "out of memory");
    }
    for (int32_t m = 0; m < tree->n_modules; m++)
        a->mods[m].layer = -1;
    bm_rt_set_arch_data(rt, a, arch_free);
    *out = a;
    return BM_OK;
}

arch_common *arch_state(bm_rt *rt) { return bm_rt_arch_data(rt); }

bm_status bm_rt_bind_arch(bm_rt *rt, const char *name, bm_error *err)
{
    const bm_tree *tree = bm_rt_tree(rt);
    if (!name)
        name = tree->arch;
    if (!name)
        return bm_fail(err, BM_E_UNSUPPORTED, "the model names no architecture (a graph file "
                       "needs 'arch', a model folder a config.json with model_type)");
    if (strcmp(name, "llama") == 0 || strcmp(name, "mistral") == 0 ||
        strcmp(name, "qwen2") == 0)
        return bm_arch_bind_llama(rt, err);
    if (strcmp(name, "gpt2") == 0)
        return bm_arch_bind_gpt2(rt, err);
    return bm_fail(err, BM_E_UNSUPPORTED, "unsupported architecture '%s' (bmplan run supports "
                   "llama, mistral, qwen2 and gpt2)", name);
}

int32_t arch_child(const bm_tree *tree, int32_t parent, const char *local)
{
    for (int32_t c = tree->modules[parent].first_child; c != BM_NONE;
         c = tree->modules[c].next_sibling)
        if (strcmp(tree->modules[c].local, local) == 0)
            return c;
    return BM_NONE;
}

bm_status arch_need_child(const bm_tree *tree, int32_t parent, const char *local,
                          int32_t *out, bm_error *err)
{
    *out = arch_child(tree, parent, local);
    if (*out == BM_NONE) {
        const char *p = tree->modules[parent].name;
        return bm_fail(err, BM_E_INVALID, "the model has no module '%s%s%s'", p, p[0] ? "." : "",
                       local);
    }
    return BM_OK;
}

static void shape_text(int ndim, const int64_t *shape, char *buf, size_t len)
{
    size_t o = (size_t)snprintf(buf, len, "[");
    for (int d = 0; d < ndim && o < len; d++)
        o += (size_t)snprintf(buf + o, len - o, "%s%lld", d ? ", " : "", (long long)shape[d]);
    if (o < len)
        snprintf(buf + o, len - o, "]");
}

bm_status arch_check_tensor(const bm_tree *tree, int32_t m, const char *local, int ndim,
                            const int64_t *shape, bool optional, bm_error *err)
{
    const bm_module *mod = &tree->modules[m];
    for (int32_t i = 0; i < mod->n_params + mod->n_buffers; i++) {
        const bm_tensor *t = &tree->tensors[mod->tensor_begin + i];
        if (strcmp(t->local, local) != 0)
            continue;
        bool ok = t->ndim == ndim;
        for (int d = 0; ok && d < ndim; d++)
            ok = t->shape[d] == shape[d];
        if (!ok) {
            char a[96], b[96];
            shape_text(t->ndim, t->shape, a, sizeof a);
            shape_text(ndim, shape, b, sizeof b);
            return bm_fail(err, BM_E_INVALID, "tensor '%s' has shape %s, the configuration "
                           "implies %s", t->name, a, b);
        }
        if (t->dtype != BM_F32 && t->dtype != BM_BF16 && t->dtype != BM_F16 &&
            t->dtype != BM_F64)
            return bm_fail(err, BM_E_UNSUPPORTED, "tensor '%s' is %s (the runner needs floating "
                           "weights)", t->name, bm_dtype_name(t->dtype));
        return BM_OK;
    }
    if (optional)
        return BM_OK;
    return bm_fail(err, BM_E_INVALID, "the model has no tensor '%s%s%s'", mod->name,
                   mod->name[0] ? "." : "", local);
}

static json_t *cfg_get(const bm_tree *tree, const char *key)
{
    json_t *cfg = tree->config;
    return json_is_object(cfg) ? json_object_get(cfg, key) : NULL;
}

bm_status arch_cfg_int(const bm_tree *tree, const char *key, bool has_def, int64_t def,
                       int64_t *out, bm_error *err)
{
    json_t *v = cfg_get(tree, key);
    if (!v || json_is_null(v)) {
        if (!has_def)
            return bm_fail(err, BM_E_INVALID, "the model's configuration has no '%s'", key);
        *out = def;
        return BM_OK;
    }
    if (!json_is_integer(v) || json_integer_value(v) < 0 ||
        json_integer_value(v) > ((int64_t)1 << 40))
        return bm_fail(err, BM_E_INVALID, "configuration '%s' must be a non-negative integer", key);
    *out = json_integer_value(v);
    return BM_OK;
}

bm_status arch_cfg_real(const bm_tree *tree, const char *key, bool has_def, double def,
                        double *out, bm_error *err)
{
    json_t *v = cfg_get(tree, key);
    if (!v || json_is_null(v)) {
        if (!has_def)
            return bm_fail(err, BM_E_INVALID, "the model's configuration has no '%s'", key);
        *out = def;
        return BM_OK;
    }
    if (!json_is_number(v))
        return bm_fail(err, BM_E_INVALID, "configuration '%s' must be a number", key);
    *out = json_number_value(v);
    if (!(*out >= 0) || *out > 1e30)
        return bm_fail(err, BM_E_INVALID, "configuration '%s' is out of range", key);
    return BM_OK;
}

int arch_cfg_bool(const bm_tree *tree, const char *key)
{
    json_t *v = cfg_get(tree, key);
    if (!json_is_boolean(v))
        return -1;
    return json_is_true(v) ? 1 : 0;
}

const char *arch_cfg_str(const bm_tree *tree, const char *key)
{
    json_t *v = cfg_get(tree, key);
    return json_is_string(v) ? json_string_value(v) : NULL;
}

bool arch_cfg_is_null_or_absent(const bm_tree *tree, const char *key)
{
    json_t *v = cfg_get(tree, key);
    return !v || json_is_null(v);
}

const bm_backend_ops *arch_ops(bm_dev *dev) { return bm_backend_get_ops(bm_dev_backend(dev)); }

bm_status arch_call1(bm_rt *rt, int32_t m, bm_value *x, bm_dev *dev, bm_value **out,
                     bm_error *err)
{
    *out = NULL;
    bm_call c = {.args = {x}, .nargs = 1};
    bm_status s = bm_module_call(rt, m, &c, err);
    if (s != BM_OK) {
        bm_value_free(rt, c.out);
        return s;
    }
    if (!c.out)
        return bm_fail(err, BM_E_INTERNAL, "module '%s' returned nothing",
                       bm_rt_tree(rt)->modules[m].name);
    if (c.out->dev != dev) {
        bm_value *moved;
        s = bm_value_copy_to(rt, c.out, dev, &moved, err);
        bm_value_free(rt, c.out);
        if (s != BM_OK)
            return s;
        c.out = moved;
    }
    *out = c.out;
    return BM_OK;
}

static bm_status need_input(bm_rt *rt, int32_t m, const bm_call *c, bm_dtype dt, bm_error *err)
{
    if (c->nargs < 1 || !c->args[0] || c->args[0]->dtype != dt)
        return bm_fail(err, BM_E_INTERNAL, "module '%s' called without its input",
                       bm_rt_tree(rt)->modules[m].name);
    return BM_OK;
}

static bool has_tensor(const bm_tree *tree, int32_t m, const char *local)
{
    const bm_module *mod = &tree->modules[m];
    for (int32_t i = 0; i < mod->n_params + mod->n_buffers; i++)
        if (strcmp(tree->tensors[mod->tensor_begin + i].local, local) == 0)
            return true;
    return false;
}

static bm_status linear_common(bm_rt *rt, int32_t m, bm_call *c, bool kn, bm_error *err)
{
    bm_status s = need_input(rt, m, c, BM_F32, err);
    if (s != BM_OK)
        return s;
    arch_common *a = arch_state(rt);
    bm_value *x = c->args[0];
    bm_dev *dev = x->dev;
    const bm_tree *tree = bm_rt_tree(rt);
    bm_weight w = {0}, b = {0};
    bool bias = has_tensor(tree, m, "bias");
    s = bm_rt_weight(rt, m, "weight", dev, &w, err);
    if (s == BM_OK && bias)
        s = bm_rt_weight(rt, m, "bias", dev, &b, err);
    if (s == BM_OK && (w.ndim != 2 || (bias && b.dtype != w.dtype)))
        s = bm_fail(err, BM_E_INVALID, "module '%s': weight is not a matrix, or its bias has "
                    "another dtype", tree->modules[m].name);
    int64_t K = kn ? w.shape[0] : w.shape[1], N = kn ? w.shape[1] : w.shape[0];
    if (s == BM_OK && x->cols != K)
        s = bm_fail(err, BM_E_INVALID, "module '%s' expects %lld input features, got %lld",
                    tree->modules[m].name, (long long)K, (long long)x->cols);
    bm_value *y = NULL;
    if (s == BM_OK)
        s = bm_value_new(rt, dev, BM_F32, x->rows, N, tree->modules[m].name, &y, err);
    if (s == BM_OK)
        s = arch_ops(dev)->linear(bm_dev_state(dev), y->data, x->data, x->rows, K, N, w.data,
                                  w.dtype, kn, bias ? b.data : NULL, a->act, err);
    bm_rt_weight_release(rt, &w);
    bm_rt_weight_release(rt, &b);
    if (s != BM_OK) {
        bm_value_free(rt, y);
        return s;
    }
    c->out = y;
    return BM_OK;
}

bm_status arch_linear_fwd(bm_rt *rt, int32_t m, bm_call *c, bm_error *err)
{
    return linear_common(rt, m, c, false, err);
}

bm_status arch_conv1d_fwd(bm_rt *rt, int32_t m, bm_call *c, bm_error *err)
{
    return linear_common(rt, m, c, true, err);
}

/* The embedding's contract (device.h): every id below V, known on the
 * host. Ids whose bound was not recorded where they were made are read
 * back and checked (nothing in the runtime makes such ids today). */
static bm_status ids_check(const bm_value *ids, int64_t V, bm_error *err)
{
    int64_t n = ids->rows * ids->cols;
    if (ids->id_end > 0) {
        if (ids->id_end <= V)
            return BM_OK;
        return bm_fail(err, BM_E_INVALID, "token id %lld out of range (vocabulary %lld)",
                       (long long)(ids->id_end - 1), (long long)V);
    }
    const int32_t *host = ids->data;
    int32_t *copy = NULL;
    if (bm_dev_id(ids->dev) != BM_DEVICE_CPU) {
        copy = malloc((size_t)(n > 0 ? n : 1) * sizeof *copy);
        if (!copy)
            return bm_fail(err, BM_E_NOMEM, "out of memory");
        bm_status s = bm_dev_download(ids->dev, copy, ids->data, (uint64_t)n * sizeof *copy, err);
        if (s != BM_OK) {
            free(copy);
            return s;
        }
        host = copy;
    }
    bm_status s = BM_OK;
    for (int64_t i = 0; i < n && s == BM_OK; i++)
        if (host[i] < 0 || host[i] >= V)
            s = bm_fail(err, BM_E_INVALID, "token id %d out of range (vocabulary %lld)", host[i],
                        (long long)V);
    free(copy);
    return s;
}

bm_status arch_embedding_fwd(bm_rt *rt, int32_t m, bm_call *c, bm_error *err)
{
    bm_status s = need_input(rt, m, c, BM_I32, err);
    if (s != BM_OK)
        return s;
    bm_value *ids = c->args[0];
    bm_dev *dev = ids->dev;
    const bm_tree *tree = bm_rt_tree(rt);
    bm_weight w;
    if ((s = bm_rt_weight(rt, m, "weight", dev, &w, err)) != BM_OK)
        return s;
    bm_value *y = NULL;
    if (w.ndim != 2)
        s = bm_fail(err, BM_E_INVALID, "embedding '%s' is not a matrix", tree->modules[m].name);
    if (s == BM_OK)
        s = ids_check(ids, w.shape[0], err);
    if (s == BM_OK)
        s = bm_value_new(rt, dev, BM_F32, ids->rows, w.shape[1], tree->modules[m].name, &y, err);
    if (s == BM_OK)
        s = arch_ops(dev)->embed(bm_dev_state(dev), y->data, ids->data, ids->rows, w.data,
                                 w.dtype, w.shape[0], w.shape[1], err);
    bm_rt_weight_release(rt, &w);
    if (s != BM_OK) {
        bm_value_free(rt, y);
        bm_error_prefix(err, "%s", tree->modules[m].name);
        return s;
    }
    c->out = y;
    return BM_OK;
}

static bm_status norm_common(bm_rt *rt, int32_t m, bm_call *c, bool layer, bm_error *err)
{
    bm_status s = need_input(rt, m, c, BM_F32, err);
    if (s != BM_OK)
        return s;
    arch_common *a = arch_state(rt);
    bm_value *x = c->args[0];
    bm_dev *dev = x->dev;
    const bm_tree *tree = bm_rt_tree(rt);
    bm_weight w = {0}, b = {0};
    s = bm_rt_weight(rt, m, "weight", dev, &w, err);
    if (s == BM_OK && layer)
        s = bm_rt_weight(rt, m, "bias", dev, &b, err);
    if (s == BM_OK && (w.ndim != 1 || w.shape[0] != x->cols || (layer && b.dtype != w.dtype)))
        s = bm_fail(err, BM_E_INVALID, "norm '%s' does not match its input",
                    tree->modules[m].name);
    bm_value *y = NULL;
    if (s == BM_OK)
        s = bm_value_new(rt, dev, BM_F32, x->rows, x->cols, tree->modules[m].name, &y, err);
    if (s == BM_OK) {
        const bm_backend_ops *ops = arch_ops(dev);
        if (layer)
            s = ops->layernorm(bm_dev_state(dev), y->data, x->data, x->rows, x->cols, w.data,
                               b.data, w.dtype, (float)a->eps, a->act, err);
        else
            s = ops->rmsnorm(bm_dev_state(dev), y->data, x->data, x->rows, x->cols, w.data,
                             w.dtype, (float)a->eps, a->act, err);
    }
    bm_rt_weight_release(rt, &w);
    bm_rt_weight_release(rt, &b);
    if (s != BM_OK) {
        bm_value_free(rt, y);
        return s;
    }
    c->out = y;
    return BM_OK;
}

bm_status arch_rmsnorm_fwd(bm_rt *rt, int32_t m, bm_call *c, bm_error *err)
{
    return norm_common(rt, m, c, false, err);
}

bm_status arch_layernorm_fwd(bm_rt *rt, int32_t m, bm_call *c, bm_error *err)
{
    return norm_common(rt, m, c, true, err);
}
