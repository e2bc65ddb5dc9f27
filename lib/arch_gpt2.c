/*
 * arch_gpt2.c - the forward pass of transformers' GPT2LMHeadModel: token
 * plus learned position embeddings, blocks of LayerNorm -> attention with a
 * fused c_attn projection (Conv1D, weights [in, out]) -> residual ->
 * LayerNorm -> MLP with gelu_new -> residual, final LayerNorm, LM head tied
 * to the token embedding.
 */
#include "arch.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct gpt2_block {
    int32_t block, ln1, attn, c_attn, a_proj, ln2, mlp, c_fc, m_proj;
} gpt2_block;

typedef struct gpt2_extra {
    int32_t transformer, wte, wpe, h, ln_f, head;
    gpt2_block *blk;
} gpt2_extra;

static gpt2_extra *X(bm_rt *rt) { return arch_state(rt)->extra; }

static bm_status lm_fwd(bm_rt *rt, int32_t m, bm_call *c, bm_error *err)
{
    (void)m;
    gpt2_extra *x = X(rt);
    bm_value *ids = c->args[0];
    bm_dev *dev = ids->dev;
    bm_value *h;
    bm_status s = arch_call1(rt, x->transformer, ids, dev, &h, err);
    if (s != BM_OK)
        return s;
    if (!bm_rt_all_logits(rt) && h->rows > 1) {
        bm_value *last;
        s = bm_value_rows(rt, h, h->rows - 1, 1, &last, err);
        bm_value_free(rt, h);
        if (s != BM_OK)
            return s;
        h = last;
    }
    s = arch_call1(rt, x->head, h, dev, &c->out, err);
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

static bm_status model_fwd(bm_rt *rt, int32_t m, bm_call *c, bm_error *err)
{
    (void)m;
    arch_common *a = arch_state(rt);
    gpt2_extra *x = X(rt);
    bm_value *ids = c->args[0];
    bm_dev *dev = ids->dev;
    int64_t M = ids->rows, pos0 = bm_rt_position(rt);
    if (pos0 + M > a->max_positions)
        return bm_fail(err, BM_E_INVALID, "%lld positions exceed the model's n_positions %lld",
                       (long long)(pos0 + M), (long long)a->max_positions);
    /* position ids are made on the host and moved where the ids are, as
     * torch.arange(..., device=input_ids.device) does */
    bm_dev *host;
    bm_value *pos_host = NULL, *pos = NULL, *h = NULL, *p = NULL;
    bm_status s = bm_rt_device(rt, BM_DEVICE_CPU, &host, err);
    if (s == BM_OK)
        s = bm_value_new(rt, host, BM_I32, M, 1, "position ids", &pos_host, err);
    if (s == BM_OK) {
        for (int64_t i = 0; i < M; i++)
            ((int32_t *)pos_host->data)[i] = (int32_t)(pos0 + i);
        pos_host->id_end = pos0 + M;
        s = bm_value_copy_to(rt, pos_host, dev, &pos, err);
    }
    bm_value_free(rt, pos_host);
    if (s == BM_OK)
        s = arch_call1(rt, x->wte, ids, dev, &h, err);
    if (s == BM_OK)
        s = arch_call1(rt, x->wpe, pos, dev, &p, err);
    bm_value_free(rt, pos);
    if (s == BM_OK)
        s = add_into(rt, h, p, err);
    bm_value_free(rt, p);
    for (int64_t l = 0; s == BM_OK && l < a->layers; l++) {
        bm_value *next;
        s = arch_call1(rt, x->blk[l].block, h, dev, &next, err);
        bm_value_free(rt, h);
        h = s == BM_OK ? next : NULL;
    }
    if (s == BM_OK)
        s = arch_call1(rt, x->ln_f, h, dev, &c->out, err);
    bm_value_free(rt, h);
    return s;
}

static bm_status block_fwd(bm_rt *rt, int32_t m, bm_call *c, bm_error *err)
{
    arch_common *a = arch_state(rt);
    const gpt2_block *B = &X(rt)->blk[a->mods[m].layer];
    bm_value *h = c->args[0];
    bm_dev *dev = h->dev;
    bm_value *x = NULL, *att = NULL, *x2 = NULL, *mlp = NULL;
    bm_status s = arch_call1(rt, B->ln1, h, dev, &x, err);
    if (s == BM_OK)
        s = arch_call1(rt, B->attn, x, dev, &att, err);
    bm_value_free(rt, x);
    if (s == BM_OK)
        s = add_into(rt, att, h, err);
    if (s == BM_OK)
        s = arch_call1(rt, B->ln2, att, dev, &x2, err);
    if (s == BM_OK)
        s = arch_call1(rt, B->mlp, x2, dev, &mlp, err);
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
    const gpt2_block *B = &X(rt)->blk[a->mods[m].layer];
    bm_value *x = c->args[0];
    bm_dev *dev = x->dev;
    const bm_backend_ops *ops = arch_ops(dev);
    void *ds = bm_dev_state(dev);
    int64_t M = x->rows, D = a->hidden, pos0 = bm_rt_position(rt);
    bm_value *qkv = NULL, *o = NULL;
    float *kc, *vc;
    bm_status s = arch_call1(rt, B->c_attn, x, dev, &qkv, err);
    if (s == BM_OK)
        s = bm_rt_kv(rt, m, dev, D, &kc, &vc, err);
    /* split q | k | v along the features; k and v go to the cache */
    if (s == BM_OK)
        s = ops->copy2d(ds, kc + pos0 * D, D, (const float *)qkv->data + D, 3 * D, M, D, err);
    if (s == BM_OK)
        s = ops->copy2d(ds, vc + pos0 * D, D, (const float *)qkv->data + 2 * D, 3 * D, M, D, err);
    if (s == BM_OK)
        s = bm_value_new(rt, dev, BM_F32, M, D, "attention output", &o, err);
    if (s == BM_OK)
        s = ops->attention(ds, o->data, qkv->data, 3 * D, M, a->heads, a->head_dim, kc, vc,
                           a->heads, pos0, (float)(1.0 / sqrt((double)a->head_dim)), a->act,
                           err);
    bm_value_free(rt, qkv);
    if (s == BM_OK)
        s = arch_call1(rt, B->a_proj, o, dev, &c->out, err);
    bm_value_free(rt, o);
    return s;
}

static bm_status mlp_fwd(bm_rt *rt, int32_t m, bm_call *c, bm_error *err)
{
    arch_common *a = arch_state(rt);
    const gpt2_block *B = &X(rt)->blk[a->mods[m].layer];
    bm_value *x = c->args[0];
    bm_dev *dev = x->dev;
    bm_value *h = NULL;
    bm_status s = arch_call1(rt, B->c_fc, x, dev, &h, err);
    if (s == BM_OK)
        s = arch_ops(dev)->gelu_tanh(bm_dev_state(dev), h->data, h->rows * h->cols, a->act,
                                     err);
    if (s == BM_OK)
        s = arch_call1(rt, B->m_proj, h, dev, &c->out, err);
    bm_value_free(rt, h);
    return s;
}

static bm_status check_conv(const bm_tree *tree, int32_t m, int64_t in, int64_t out,
                            bm_error *err)
{
    const int64_t w[2] = {in, out}, b[1] = {out};
    bm_status s = arch_check_tensor(tree, m, "weight", 2, w, false, err);
    if (s == BM_OK)
        s = arch_check_tensor(tree, m, "bias", 1, b, false, err);
    return s;
}

static bm_status check_ln(const bm_tree *tree, int32_t m, int64_t d, bm_error *err)
{
    const int64_t w[1] = {d};
    bm_status s = arch_check_tensor(tree, m, "weight", 1, w, false, err);
    if (s == BM_OK)
        s = arch_check_tensor(tree, m, "bias", 1, w, false, err);
    return s;
}

static bm_status bind_block(bm_rt *rt, arch_common *a, gpt2_extra *x, int64_t l, bm_error *err)
{
    const bm_tree *tree = bm_rt_tree(rt);
    gpt2_block *B = &x->blk[l];
    char name[32];
    snprintf(name, sizeof name, "%lld", (long long)l);
    bm_status s = arch_need_child(tree, x->h, name, &B->block, err);
    if (s == BM_OK)
        s = arch_need_child(tree, B->block, "ln_1", &B->ln1, err);
    if (s == BM_OK)
        s = arch_need_child(tree, B->block, "attn", &B->attn, err);
    if (s == BM_OK)
        s = arch_need_child(tree, B->block, "ln_2", &B->ln2, err);
    if (s == BM_OK)
        s = arch_need_child(tree, B->block, "mlp", &B->mlp, err);
    if (s == BM_OK)
        s = arch_need_child(tree, B->attn, "c_attn", &B->c_attn, err);
    if (s == BM_OK)
        s = arch_need_child(tree, B->attn, "c_proj", &B->a_proj, err);
    if (s == BM_OK)
        s = arch_need_child(tree, B->mlp, "c_fc", &B->c_fc, err);
    if (s == BM_OK)
        s = arch_need_child(tree, B->mlp, "c_proj", &B->m_proj, err);
    int64_t D = a->hidden;
    if (s == BM_OK)
        s = check_conv(tree, B->c_attn, D, 3 * D, err);
    if (s == BM_OK)
        s = check_conv(tree, B->a_proj, D, D, err);
    if (s == BM_OK)
        s = check_conv(tree, B->c_fc, D, a->inner, err);
    if (s == BM_OK)
        s = check_conv(tree, B->m_proj, a->inner, D, err);
    if (s == BM_OK)
        s = check_ln(tree, B->ln1, D, err);
    if (s == BM_OK)
        s = check_ln(tree, B->ln2, D, err);
    if (s != BM_OK)
        return s;
    bm_rt_set_forward(rt, B->block, block_fwd);
    bm_rt_set_forward(rt, B->attn, attn_fwd);
    bm_rt_set_forward(rt, B->mlp, mlp_fwd);
    bm_rt_set_forward(rt, B->ln1, arch_layernorm_fwd);
    bm_rt_set_forward(rt, B->ln2, arch_layernorm_fwd);
    bm_rt_set_forward(rt, B->c_attn, arch_conv1d_fwd);
    bm_rt_set_forward(rt, B->a_proj, arch_conv1d_fwd);
    bm_rt_set_forward(rt, B->c_fc, arch_conv1d_fwd);
    bm_rt_set_forward(rt, B->m_proj, arch_conv1d_fwd);
    int32_t mods[] = {B->block, B->ln1, B->attn, B->c_attn, B->a_proj,
                      B->ln2,   B->mlp, B->c_fc, B->m_proj};
    for (size_t i = 0; i < sizeof mods / sizeof mods[0]; i++)
        a->mods[mods[i]].layer = (int32_t)l;
    return BM_OK;
}

bm_status bm_arch_bind_gpt2(bm_rt *rt, bm_error *err)
{
    const bm_tree *tree = bm_rt_tree(rt);
    arch_common *a;
    bm_status s = arch_state_new(rt, &a, err);
    if (s != BM_OK)
        return s;
    gpt2_extra *x = calloc(1, sizeof *x);
    if (!x)
        return bm_fail(err, BM_E_NOMEM, "out of memory");
    a->extra = x;
    if ((s = arch_cfg_int(tree, "n_embd", false, 0, &a->hidden, err)) != BM_OK ||
        (s = arch_cfg_int(tree, "n_head", false, 0, &a->heads, err)) != BM_OK ||
        (s = arch_cfg_int(tree, "n_layer", false, 0, &a->layers, err)) != BM_OK ||
        (s = arch_cfg_int(tree, "vocab_size", false, 0, &a->vocab, err)) != BM_OK ||
        (s = arch_cfg_int(tree, "n_positions", false, 0, &a->max_positions, err)) != BM_OK ||
        (s = arch_cfg_real(tree, "layer_norm_epsilon", true, 1e-5, &a->eps, err)) != BM_OK)
        return s;
    if (a->heads == 0 || a->hidden % a->heads)
        return bm_fail(err, BM_E_INVALID, "configuration: n_embd %lld is not a multiple of "
                       "n_head %lld", (long long)a->hidden, (long long)a->heads);
    if ((s = arch_cfg_int(tree, "n_inner", true, 4 * a->hidden, &a->inner, err)) != BM_OK)
        return s;
    a->kv_heads = a->heads;
    a->head_dim = a->hidden / a->heads;
    const char *act = arch_cfg_str(tree, "activation_function");
    if (act && strcmp(act, "gelu_new") != 0)
        return bm_fail(err, BM_E_UNSUPPORTED, "configuration: activation_function '%s' (the "
                       "runner implements gelu_new)", act);
    if (arch_cfg_bool(tree, "scale_attn_weights") == 0 ||
        arch_cfg_bool(tree, "scale_attn_by_inverse_layer_idx") == 1 ||
        arch_cfg_bool(tree, "reorder_and_upcast_attn") == 1)
        return bm_fail(err, BM_E_UNSUPPORTED, "configuration: non-default GPT-2 attention "
                       "scaling is not supported by the runner");
    if ((s = arch_need_child(tree, 0, "transformer", &x->transformer, err)) != BM_OK ||
        (s = arch_need_child(tree, x->transformer, "wte", &x->wte, err)) != BM_OK ||
        (s = arch_need_child(tree, x->transformer, "wpe", &x->wpe, err)) != BM_OK ||
        (s = arch_need_child(tree, x->transformer, "h", &x->h, err)) != BM_OK ||
        (s = arch_need_child(tree, x->transformer, "ln_f", &x->ln_f, err)) != BM_OK ||
        (s = arch_need_child(tree, 0, "lm_head", &x->head, err)) != BM_OK)
        return s;
    if (tree->modules[x->h].n_children != a->layers)
        return bm_fail(err, BM_E_INVALID, "configuration says %lld layers, the model has %d",
                       (long long)a->layers, tree->modules[x->h].n_children);
    const int64_t se[2] = {a->vocab, a->hidden}, sp[2] = {a->max_positions, a->hidden};
    if ((s = arch_check_tensor(tree, x->wte, "weight", 2, se, false, err)) != BM_OK ||
        (s = arch_check_tensor(tree, x->wpe, "weight", 2, sp, false, err)) != BM_OK ||
        (s = arch_check_tensor(tree, x->head, "weight", 2, se, false, err)) != BM_OK ||
        (s = check_ln(tree, x->ln_f, a->hidden, err)) != BM_OK)
        return s;
    x->blk = calloc((size_t)(a->layers > 0 ? a->layers : 1), sizeof *x->blk);
    if (!x->blk)
        return bm_fail(err, BM_E_NOMEM, "out of memory");
    a->extra_array = x->blk;
    for (int64_t l = 0; l < a->layers; l++)
        if ((s = bind_block(rt, a, x, l, err)) != BM_OK)
            return s;
    a->act = bm_rt_dtype(rt);
    if (a->act == BM_DTYPE_INVALID) {
        a->act = tree->tensors[tree->modules[x->wte].tensor_begin].dtype;
        if (a->act != BM_BF16 && a->act != BM_F16)
            a->act = BM_F32;
    }
    bm_rt_set_forward(rt, 0, lm_fwd);
    bm_rt_set_forward(rt, x->transformer, model_fwd);
    bm_rt_set_forward(rt, x->wte, arch_embedding_fwd);
    bm_rt_set_forward(rt, x->wpe, arch_embedding_fwd);
    bm_rt_set_forward(rt, x->ln_f, arch_layernorm_fwd);
    bm_rt_set_forward(rt, x->head, arch_linear_fwd);

    int64_t n = 7 + 9 * a->layers;
    int32_t *order = malloc((size_t)n * sizeof *order);
    if (!order)
        return bm_fail(err, BM_E_NOMEM, "out of memory");
    int32_t k = 0;
    order[k++] = 0;
    order[k++] = x->transformer;
    order[k++] = x->wte;
    order[k++] = x->wpe;
    for (int64_t l = 0; l < a->layers; l++) {
        const gpt2_block *B = &x->blk[l];
        int32_t seq[] = {B->block, B->ln1, B->attn, B->c_attn, B->a_proj,
                         B->ln2,   B->mlp, B->c_fc, B->m_proj};
        for (size_t i = 0; i < 9; i++)
            order[k++] = seq[i];
    }
    order[k++] = x->ln_f;
    order[k++] = x->head;
    s = bm_rt_set_exec_order(rt, order, k, err);
    free(order);
    return s;
}
