/*
 * arch_llama.c - the forward pass of transformers' LlamaForCausalLM (also
 * Mistral and Qwen2, which share its structure): token embedding, decoder
 * layers of RMSNorm -> attention with rotary embeddings (rotate_half) and
 * grouped-query KV heads -> residual -> RMSNorm -> SwiGLU MLP -> residual,
 * final RMSNorm, LM head (optionally tied to the embedding). Each module of
 * the tree is called through bm_module_call, so hooks see every call that
 * PyTorch's hooks would see.
 */
#include "arch.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct llama_ids {
    int32_t model, embed, norm, head, layers;
} llama_ids;

typedef struct llama_layer {
    int32_t layer, attn, mlp, ln1, ln2, q, k, v, o, gate, up, down;
} llama_layer;

typedef struct llama_extra {
    llama_ids ids;
    llama_layer *layer; /* per decoder layer */
} llama_extra;

static llama_extra *X(bm_rt *rt) { return arch_state(rt)->extra; }

static bm_status causal_lm_fwd(bm_rt *rt, int32_t m, bm_call *c, bm_error *err)
{
    (void)m;
    llama_extra *x = X(rt);
    bm_value *ids = c->args[0];
    bm_dev *dev = ids->dev;
    bm_value *h;
    bm_status s = arch_call1(rt, x->ids.model, ids, dev, &h, err);
    if (s != BM_OK)
        return s;
    if (!bm_rt_all_logits(rt) && h->rows > 1) {
        /* only the last position's logits are wanted: the head runs on it */
        bm_value *last;
        s = bm_value_rows(rt, h, h->rows - 1, 1, &last, err);
        bm_value_free(rt, h);
        if (s != BM_OK)
            return s;
        h = last;
    }
    s = arch_call1(rt, x->ids.head, h, dev, &c->out, err);
    bm_value_free(rt, h);
    return s;
}

static bm_status model_fwd(bm_rt *rt, int32_t m, bm_call *c, bm_error *err)
{
    (void)m;
    arch_common *a = arch_state(rt);
    llama_extra *x = X(rt);
    bm_value *ids = c->args[0];
    bm_dev *dev = ids->dev;
    bm_value *h;
    bm_status s = arch_call1(rt, x->ids.embed, ids, dev, &h, err);
    for (int64_t l = 0; s == BM_OK && l < a->layers; l++) {
        bm_value *next;
        s = arch_call1(rt, x->layer[l].layer, h, dev, &next, err);
        bm_value_free(rt, h);
        h = s == BM_OK ? next : NULL;
    }
    if (s != BM_OK)
        return s;
    s = arch_call1(rt, x->ids.norm, h, dev, &c->out, err);
    bm_value_free(rt, h);
    return s;
}

static bm_status add_into(bm_rt *rt, bm_value *acc, const bm_value *y, bm_error *err)
{
    if (acc->dev != y->dev || acc->rows != y->rows || acc->cols != y->cols)
        return bm_fail(err, BM_E_INTERNAL, "residual add of mismatched activations");
    return arch_ops(acc->dev)->add(bm_dev_state(acc->dev), acc->data, y->data,
                                   acc->rows * acc->cols, arch_state(rt)->act, err);
}

static bm_status layer_fwd(bm_rt *rt, int32_t m, bm_call *c, bm_error *err)
{
    arch_common *a = arch_state(rt);
    const llama_layer *L = &X(rt)->layer[a->mods[m].layer];
    bm_value *h = c->args[0];
    bm_dev *dev = h->dev;
    bm_value *x = NULL, *att = NULL, *x2 = NULL, *mlp = NULL;
    bm_status s = arch_call1(rt, L->ln1, h, dev, &x, err);
    if (s == BM_OK)
        s = arch_call1(rt, L->attn, x, dev, &att, err);
    bm_value_free(rt, x);
    if (s == BM_OK)
        s = add_into(rt, att, h, err); /* residual + attention */
    if (s == BM_OK)
        s = arch_call1(rt, L->ln2, att, dev, &x2, err);
    if (s == BM_OK)
        s = arch_call1(rt, L->mlp, x2, dev, &mlp, err);
    bm_value_free(rt, x2);
    if (s == BM_OK)
        s = add_into(rt, mlp, att, err);
    bm_value_free(rt, att);
    if (s != BM_OK) {
        bm_value_free(rt, mlp);
        return s;
    }
    c->out = mlp;
    return BM_OK;
}

static bm_status attn_fwd(bm_rt *rt, int32_t m, bm_call *c, bm_error *err)
{
    arch_common *a = arch_state(rt);
    const llama_layer *L = &X(rt)->layer[a->mods[m].layer];
    bm_value *x = c->args[0];
    bm_dev *dev = x->dev;
    const bm_backend_ops *ops = arch_ops(dev);
    void *ds = bm_dev_state(dev);
    int64_t M = x->rows, pos0 = bm_rt_position(rt);
    int64_t kvw = a->kv_heads * a->head_dim;
    bm_value *q = NULL, *k = NULL, *v = NULL, *o = NULL;
    float *kc, *vc;
    if (a->window > 0 && pos0 + M > a->window)
        return bm_fail(err, BM_E_UNSUPPORTED, "%lld positions exceed the model's sliding_window "
                       "%lld, which the runner does not implement", (long long)(pos0 + M),
                       (long long)a->window);
    bm_status s = arch_call1(rt, L->q, x, dev, &q, err);
    if (s == BM_OK)
        s = arch_call1(rt, L->k, x, dev, &k, err);
    if (s == BM_OK)
        s = arch_call1(rt, L->v, x, dev, &v, err);
    if (s == BM_OK)
        s = ops->rope(ds, q->data, M, a->heads, a->head_dim, pos0, (float)a->rope_theta, a->act,
                      err);
    if (s == BM_OK)
        s = ops->rope(ds, k->data, M, a->kv_heads, a->head_dim, pos0, (float)a->rope_theta,
                      a->act, err);
    if (s == BM_OK)
        s = bm_rt_kv(rt, m, dev, kvw, &kc, &vc, err);
    if (s == BM_OK)
        s = bm_dev_copy(dev, kc + pos0 * kvw, dev, k->data, k->nbytes, err);
    if (s == BM_OK)
        s = bm_dev_copy(dev, vc + pos0 * kvw, dev, v->data, v->nbytes, err);
    bm_value_free(rt, k);
    bm_value_free(rt, v);
    if (s == BM_OK)
        s = bm_value_new(rt, dev, BM_F32, M, a->heads * a->head_dim, "attention output", &o, err);
    if (s == BM_OK)
        s = ops->attention(ds, o->data, q->data, a->heads * a->head_dim, M, a->heads,
                           a->head_dim, kc, vc, a->kv_heads, pos0,
                           (float)(1.0 / sqrt((double)a->head_dim)), a->act, err);
    bm_value_free(rt, q);
    if (s == BM_OK)
        s = arch_call1(rt, L->o, o, dev, &c->out, err);
    bm_value_free(rt, o);
    return s;
}

static bm_status mlp_fwd(bm_rt *rt, int32_t m, bm_call *c, bm_error *err)
{
    arch_common *a = arch_state(rt);
    const llama_layer *L = &X(rt)->layer[a->mods[m].layer];
    bm_value *x = c->args[0];
    bm_dev *dev = x->dev;
    bm_value *g = NULL, *u = NULL;
    bm_status s = arch_call1(rt, L->gate, x, dev, &g, err);
    if (s == BM_OK)
        s = arch_call1(rt, L->up, x, dev, &u, err);
    if (s == BM_OK)
        s = arch_ops(dev)->silu_mul(bm_dev_state(dev), g->data, u->data, g->rows * g->cols,
                                    a->act, err);
    bm_value_free(rt, u);
    if (s == BM_OK)
        s = arch_call1(rt, L->down, g, dev, &c->out, err);
    bm_value_free(rt, g);
    return s;
}

static bm_status bind_layer(bm_rt *rt, arch_common *a, int32_t layers, int64_t l,
                            llama_layer *L, bool attn_bias, bool mlp_bias, bm_error *err)
{
    const bm_tree *tree = bm_rt_tree(rt);
    char name[32];
    snprintf(name, sizeof name, "%lld", (long long)l);
    bm_status s = arch_need_child(tree, layers, name, &L->layer, err);
    if (s == BM_OK)
        s = arch_need_child(tree, L->layer, "self_attn", &L->attn, err);
    if (s == BM_OK)
        s = arch_need_child(tree, L->layer, "mlp", &L->mlp, err);
    if (s == BM_OK)
        s = arch_need_child(tree, L->layer, "input_layernorm", &L->ln1, err);
    if (s == BM_OK)
        s = arch_need_child(tree, L->layer, "post_attention_layernorm", &L->ln2, err);
    if (s == BM_OK)
        s = arch_need_child(tree, L->attn, "q_proj", &L->q, err);
    if (s == BM_OK)
        s = arch_need_child(tree, L->attn, "k_proj", &L->k, err);
    if (s == BM_OK)
        s = arch_need_child(tree, L->attn, "v_proj", &L->v, err);
    if (s == BM_OK)
        s = arch_need_child(tree, L->attn, "o_proj", &L->o, err);
    if (s == BM_OK)
        s = arch_need_child(tree, L->mlp, "gate_proj", &L->gate, err);
    if (s == BM_OK)
        s = arch_need_child(tree, L->mlp, "up_proj", &L->up, err);
    if (s == BM_OK)
        s = arch_need_child(tree, L->mlp, "down_proj", &L->down, err);
    if (s != BM_OK)
        return s;
    int64_t D = a->hidden, qd = a->heads * a->head_dim, kd = a->kv_heads * a->head_dim;
    int64_t I = a->inner;
    const int64_t sq[2] = {qd, D}, sk[2] = {kd, D}, so[2] = {D, qd};
    const int64_t sg[2] = {I, D}, sd[2] = {D, I}, sn[1] = {D};
    const int64_t bq[1] = {qd}, bk[1] = {kd}, bo[1] = {D}, bi[1] = {I};
    struct {
        int32_t m;
        const int64_t *w;
        const int64_t *b;
        bool has_bias;
    } chk[] = {
        {L->q, sq, bq, attn_bias}, {L->k, sk, bk, attn_bias}, {L->v, sk, bk, attn_bias},
        {L->o, so, bo, false},     {L->gate, sg, bi, mlp_bias}, {L->up, sg, bi, mlp_bias},
        {L->down, sd, bo, mlp_bias},
    };
    for (size_t i = 0; i < sizeof chk / sizeof chk[0]; i++) {
        s = arch_check_tensor(tree, chk[i].m, "weight", 2, chk[i].w, false, err);
        if (s == BM_OK)
            s = arch_check_tensor(tree, chk[i].m, "bias", 1, chk[i].b, !chk[i].has_bias, err);
        if (s != BM_OK)
            return s;
        bm_rt_set_forward(rt, chk[i].m, arch_linear_fwd);
    }
    s = arch_check_tensor(tree, L->ln1, "weight", 1, sn, false, err);
    if (s == BM_OK)
        s = arch_check_tensor(tree, L->ln2, "weight", 1, sn, false, err);
    if (s != BM_OK)
        return s;
    bm_rt_set_forward(rt, L->ln1, arch_rmsnorm_fwd);
    bm_rt_set_forward(rt, L->ln2, arch_rmsnorm_fwd);
    bm_rt_set_forward(rt, L->layer, layer_fwd);
    bm_rt_set_forward(rt, L->attn, attn_fwd);
    bm_rt_set_forward(rt, L->mlp, mlp_fwd);
    int32_t mods[] = {L->layer, L->attn, L->mlp, L->ln1, L->ln2, L->q, L->k,
                      L->v,     L->o,    L->gate, L->up, L->down};
    for (size_t i = 0; i < sizeof mods / sizeof mods[0]; i++)
        a->mods[mods[i]].layer = (int32_t)l;
    return BM_OK;
}

static bm_dtype first_float_dtype(const bm_tree *tree, int32_t m)
{
    const bm_module *mod = &tree->modules[m];
    for (int32_t i = mod->tensor_begin; i < mod->subtree_tensor_end; i++) {
        bm_dtype dt = tree->tensors[i].dtype;
        if (dt == BM_F32 || dt == BM_BF16 || dt == BM_F16)
            return dt;
    }
    return BM_F32;
}

bm_status bm_arch_bind_llama(bm_rt *rt, bm_error *err)
{
    const bm_tree *tree = bm_rt_tree(rt);
    arch_common *a;
    bm_status s = arch_state_new(rt, &a, err);
    if (s != BM_OK)
        return s;
    llama_extra *x = calloc(1, sizeof *x);
    if (!x)
        return bm_fail(err, BM_E_NOMEM, "out of memory");
    a->extra = x;
    int64_t def_heads = 0;
    if ((s = arch_cfg_int(tree, "hidden_size", false, 0, &a->hidden, err)) != BM_OK ||
        (s = arch_cfg_int(tree, "num_attention_heads", false, 0, &a->heads, err)) != BM_OK ||
        (s = arch_cfg_int(tree, "num_hidden_layers", false, 0, &a->layers, err)) != BM_OK ||
        (s = arch_cfg_int(tree, "vocab_size", false, 0, &a->vocab, err)) != BM_OK ||
        (s = arch_cfg_int(tree, "intermediate_size", false, 0, &a->inner, err)) != BM_OK)
        return s;
    def_heads = a->heads;
    if ((s = arch_cfg_int(tree, "num_key_value_heads", true, def_heads, &a->kv_heads, err)) != BM_OK ||
        (s = arch_cfg_real(tree, "rms_norm_eps", true, 1e-6, &a->eps, err)) != BM_OK ||
        (s = arch_cfg_real(tree, "rope_theta", true, 10000.0, &a->rope_theta, err)) != BM_OK)
        return s;
    if ((s = arch_cfg_int(tree, "sliding_window", true, 0, &a->window, err)) != BM_OK)
        return s;
    if (arch_cfg_bool(tree, "use_sliding_window") == 0) /* Qwen2: off unless asked */
        a->window = 0;
    if (a->heads == 0 || a->hidden == 0 || a->kv_heads == 0 || a->heads % a->kv_heads)
        return bm_fail(err, BM_E_INVALID, "configuration: %lld attention heads and %lld key/value "
                       "heads do not fit", (long long)a->heads, (long long)a->kv_heads);
    if ((s = arch_cfg_int(tree, "head_dim", true, a->hidden / a->heads, &a->head_dim, err)) != BM_OK)
        return s;
    if (a->head_dim == 0 || a->head_dim % 2 || a->head_dim > 8192 || a->rope_theta <= 0)
        return bm_fail(err, BM_E_INVALID, "configuration: head dimension %lld / rope_theta %g",
                       (long long)a->head_dim, a->rope_theta);
    if (!arch_cfg_is_null_or_absent(tree, "rope_scaling"))
        return bm_fail(err, BM_E_UNSUPPORTED, "configuration: rope_scaling is not supported by "
                       "the runner");
    const char *act = arch_cfg_str(tree, "hidden_act");
    if (act && strcmp(act, "silu") != 0)
        return bm_fail(err, BM_E_UNSUPPORTED, "configuration: hidden_act '%s' (the runner "
                       "implements silu)", act);
    /* Qwen2 has q/k/v biases; attention_bias / mlp_bias switch them on in Llama */
    bool attn_bias = arch_cfg_bool(tree, "attention_bias") == 1;
    bool mlp_bias = arch_cfg_bool(tree, "mlp_bias") == 1;
    if (tree->arch && strcmp(tree->arch, "qwen2") == 0)
        attn_bias = true;

    int32_t root = 0;
    if ((s = arch_need_child(tree, root, "model", &x->ids.model, err)) != BM_OK ||
        (s = arch_need_child(tree, x->ids.model, "embed_tokens", &x->ids.embed, err)) != BM_OK ||
        (s = arch_need_child(tree, x->ids.model, "layers", &x->ids.layers, err)) != BM_OK ||
        (s = arch_need_child(tree, x->ids.model, "norm", &x->ids.norm, err)) != BM_OK ||
        (s = arch_need_child(tree, root, "lm_head", &x->ids.head, err)) != BM_OK)
        return s;
    if (tree->modules[x->ids.layers].n_children != a->layers)
        return bm_fail(err, BM_E_INVALID, "configuration says %lld layers, the model has %d",
                       (long long)a->layers, tree->modules[x->ids.layers].n_children);
    const int64_t se[2] = {a->vocab, a->hidden}, sn[1] = {a->hidden};
    if ((s = arch_check_tensor(tree, x->ids.embed, "weight", 2, se, false, err)) != BM_OK ||
        (s = arch_check_tensor(tree, x->ids.norm, "weight", 1, sn, false, err)) != BM_OK ||
        (s = arch_check_tensor(tree, x->ids.head, "weight", 2, se, false, err)) != BM_OK)
        return s;
    x->layer = calloc((size_t)(a->layers > 0 ? a->layers : 1), sizeof *x->layer);
    if (!x->layer)
        return bm_fail(err, BM_E_NOMEM, "out of memory");
    a->extra_array = x->layer;
    for (int64_t l = 0; l < a->layers; l++)
        if ((s = bind_layer(rt, a, x->ids.layers, l, &x->layer[l], attn_bias, mlp_bias, err)) != BM_OK)
            return s;
    a->act = bm_rt_dtype(rt) != BM_DTYPE_INVALID ? bm_rt_dtype(rt)
                                                 : first_float_dtype(tree, x->ids.embed);
    bm_rt_set_forward(rt, root, causal_lm_fwd);
    bm_rt_set_forward(rt, x->ids.model, model_fwd);
    bm_rt_set_forward(rt, x->ids.embed, arch_embedding_fwd);
    bm_rt_set_forward(rt, x->ids.norm, arch_rmsnorm_fwd);
    bm_rt_set_forward(rt, x->ids.head, arch_linear_fwd);

    /* the order modules are called in, for the prefetcher */
    int64_t n = 5 + 12 * a->layers;
    int32_t *order = malloc((size_t)n * sizeof *order);
    if (!order)
        return bm_fail(err, BM_E_NOMEM, "out of memory");
    int32_t k = 0;
    order[k++] = root;
    order[k++] = x->ids.model;
    order[k++] = x->ids.embed;
    for (int64_t l = 0; l < a->layers; l++) {
        const llama_layer *L = &x->layer[l];
        int32_t seq[] = {L->layer, L->ln1, L->attn, L->q, L->k, L->v, L->o,
                         L->ln2, L->mlp, L->gate, L->up, L->down};
        for (size_t i = 0; i < 12; i++)
            order[k++] = seq[i];
    }
    order[k++] = x->ids.norm;
    order[k++] = x->ids.head;
    s = bm_rt_set_exec_order(rt, order, k, err);
    free(order);
    return s;
}
