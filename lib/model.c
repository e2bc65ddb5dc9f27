/*
 * model.c - turn what the user named as MODEL (plus --graph/--checkpoint)
 * into a module tree and an optional checkpoint, and check that the two
 * agree before anything is planned, converted or run.
 */
#include "bmplan.h"

#include <stdlib.h>
#include <string.h>

#include <jansson.h>

static bool has_suffix(const char *s, const char *suffix)
{
    size_t ls = strlen(s), lx = strlen(suffix);
    return ls >= lx && strcmp(s + ls - lx, suffix) == 0;
}

/* A Hugging Face config: a file named config.json, or a JSON object with
 * a "model_type" key and no "format" key (graph files have "format"). */
static bool is_config_json(const char *path)
{
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    if (strcmp(base, "config.json") == 0)
        return true;
    if (!has_suffix(base, ".json"))
        return false;
    char *text = NULL;
    size_t len = 0;
    if (bm_read_file(path, 16u << 20, &text, &len, NULL))
        return false;
    json_t *doc = json_loadb(text, len, 0, NULL);
    free(text);
    bool cfg = json_is_object(doc) && json_object_get(doc, "model_type") &&
               !json_object_get(doc, "format");
    json_decref(doc);
    return cfg;
}

void bm_model_close(bm_model *m)
{
    if (!m)
        return;
    bm_tree_free(m->tree);
    bm_checkpoint_close(m->ckpt);
    free(m->graph_source);
    free(m->ckpt_prefix);
    free(m->ckpt_index);
    free(m);
}

int32_t bm_model_ckpt_tensor(const bm_model *m, int32_t ti)
{
    if (!m->ckpt || !m->ckpt_index || ti < 0 || ti >= m->tree->n_tensors)
        return BM_NONE;
    int32_t ci = m->ckpt_index[ti];
    if (ci == BM_NONE && m->tree->tensors[ti].alias_of != BM_NONE)
        ci = m->ckpt_index[m->tree->tensors[ti].alias_of];
    return ci;
}

/* Find a tree tensor name in the checkpoint under a candidate prefix rule:
 * mode 0: as is; mode 1: without its first component ("model.x" -> "x");
 * mode 2: with `prefix` prepended. */
static int32_t lookup(const bm_checkpoint *c, const char *name, int mode,
                      const char *prefix, char *buf, size_t cap)
{
    if (mode == 0)
        return bm_checkpoint_find(c, name);
    if (mode == 1) {
        const char *dot = strchr(name, '.');
        return dot ? bm_checkpoint_find(c, dot + 1) : BM_NONE;
    }
    if ((size_t)snprintf(buf, cap, "%s%s", prefix, name) >= cap)
        return BM_NONE;
    return bm_checkpoint_find(c, buf);
}

/* The tree's names may carry a base-model prefix the checkpoint lacks
 * ("model.", "transformer.") or the other way round; transformers accepts
 * both, so do we. The rule is decided once, on the first counted tensor
 * that is persistent, then applied to all. */
static bm_status match_checkpoint(bm_model *m, bm_error *err)
{
    bm_tree *t = m->tree;
    bm_checkpoint *c = m->ckpt;
    m->ckpt_index = malloc((size_t)(t->n_tensors ? t->n_tensors : 1) * sizeof *m->ckpt_index);
    if (!m->ckpt_index)
        return bm_fail(err, BM_E_NOMEM, "out of memory");
    char buf[4096];
    int mode = 0;
    char prefix[256] = "";
    for (int32_t i = 0; i < t->n_tensors; i++) {
        const bm_tensor *x = &t->tensors[i];
        if (!x->persistent || x->alias_of != BM_NONE)
            continue;
        if (bm_checkpoint_find(c, x->name) != BM_NONE)
            break;
        const char *dot = strchr(x->name, '.');
        if (dot && bm_checkpoint_find(c, dot + 1) != BM_NONE) {
            mode = 1;
            snprintf(prefix, sizeof prefix, "%.*s", (int)(dot - x->name + 1), x->name);
            break;
        }
        /* checkpoint has an extra leading component: find a tensor whose
         * name ends with ".<name>" */
        size_t ln = strlen(x->name);
        for (int32_t k = 0; k < c->n_tensors; k++) {
            const char *cn = c->tensors[k].name;
            size_t lc = strlen(cn);
            if (lc > ln + 1 && cn[lc - ln - 1] == '.' && strcmp(cn + lc - ln, x->name) == 0 &&
                lc - ln < sizeof prefix) {
                memcpy(prefix, cn, lc - ln);
                prefix[lc - ln] = 0;
                mode = 2;
                break;
            }
        }
        break;
    }
    m->ckpt_prefix = strdup(mode == 0 ? "" : prefix);
    if (!m->ckpt_prefix)
        return bm_fail(err, BM_E_NOMEM, "out of memory");

    char *seen = calloc((size_t)(c->n_tensors ? c->n_tensors : 1), 1);
    if (!seen)
        return bm_fail(err, BM_E_NOMEM, "out of memory");
    int32_t missing = 0;
    const char *first_missing = NULL;
    bm_status st = BM_OK;
    for (int32_t i = 0; i < t->n_tensors && !st; i++) {
        bm_tensor *x = &t->tensors[i];
        int32_t ci = lookup(c, x->name, mode, prefix, buf, sizeof buf);
        m->ckpt_index[i] = ci;
        if (ci == BM_NONE) {
            if (x->persistent && x->alias_of == BM_NONE && !missing++)
                first_missing = x->name;
            continue;
        }
        seen[ci] = 1;
        const bm_ckpt_tensor *ct = &c->tensors[ci];
        bool same = ct->ndim == x->ndim;
        for (int d = 0; same && d < x->ndim; d++)
            same = ct->shape[d] == x->shape[d];
        if (!same) {
            char a[128] = "", b[128] = "";
            size_t na = 0, nb = 0;
            for (int d = 0; d < x->ndim && na < sizeof a; d++)
                na += (size_t)snprintf(a + na, sizeof a - na, "%s%lld", d ? ", " : "", (long long)x->shape[d]);
            for (int d = 0; d < ct->ndim && nb < sizeof b; d++)
                nb += (size_t)snprintf(b + nb, sizeof b - nb, "%s%lld", d ? ", " : "", (long long)ct->shape[d]);
            st = bm_fail(err, BM_E_INVALID,
                         "%s: tensor '%.200s' has shape [%s] in the checkpoint but [%s] in %s",
                         c->path, ct->name, b, a, m->graph_source);
            break;
        }
        x->dtype = ct->dtype; /* the real dtype wins */
    }
    if (!st && missing)
        st = bm_fail(err, BM_E_INVALID,
                     "%s: %d tensor%s of %s missing from the checkpoint (first: '%.200s')",
                     c->path, missing, missing == 1 ? " is" : "s are", m->graph_source,
                     first_missing);
    if (!st)
        for (int32_t k = 0; k < c->n_tensors; k++)
            if (!seen[k] && !m->n_unexpected++)
                m->first_unexpected = c->tensors[k].name;
    free(seen);
    return st;
}

static bm_status tree_from_config(const char *folder, bm_model *m, bool *unsupported,
                                  bm_error *err)
{
    char *cfg = bm_path_join(folder, "config.json");
    if (!cfg)
        return bm_fail(err, BM_E_NOMEM, "out of memory");
    *unsupported = false;
    bm_status st = BM_E_NOTFOUND;
    if (bm_is_file(cfg)) {
        st = bm_hfconfig_load(cfg, &m->tree, err);
        if (st == BM_E_UNSUPPORTED)
            *unsupported = true;
        if (!st)
            m->graph_source = strdup(cfg);
    }
    free(cfg);
    return st;
}

bm_status bm_model_open(const bm_model_opts *o, bm_model **out, bm_error *err)
{
    *out = NULL;
    bm_model *m = calloc(1, sizeof *m);
    if (!m)
        return bm_fail(err, BM_E_NOMEM, "out of memory");
    bm_status st = BM_OK;
    const char *ckpt_path = o->checkpoint;
    const char *graph_path = o->graph;
    const char *folder = NULL;

    if (o->model) {
        if (bm_is_dir(o->model)) {
            folder = o->model;
            if (!ckpt_path && !o->no_checkpoint && bm_checkpoint_probe(o->model))
                ckpt_path = o->model;
        } else if (!bm_is_file(o->model)) {
            st = bm_fail(err, BM_E_NOTFOUND, "%s: no such file or folder", o->model);
            goto fail;
        } else if (has_suffix(o->model, ".safetensors") || has_suffix(o->model, ".bin") ||
                   has_suffix(o->model, ".index.json")) {
            if (ckpt_path) {
                st = bm_fail(err, BM_E_INVALID,
                             "%s is a checkpoint and --checkpoint names another one", o->model);
                goto fail;
            }
            ckpt_path = o->model;
        } else if (!graph_path && is_config_json(o->model)) {
            /* a Hugging Face config.json on its own: the tree it
             * describes (weights only with --checkpoint) */
            if ((st = bm_hfconfig_load(o->model, &m->tree, err)))
                goto fail;
            if (!(m->graph_source = strdup(o->model))) {
                st = bm_fail(err, BM_E_NOMEM, "out of memory");
                goto fail;
            }
        } else {
            if (graph_path) {
                st = bm_fail(err, BM_E_INVALID,
                             "%s is a graph file and --graph names another one", o->model);
                goto fail;
            }
            graph_path = o->model;
        }
    }

    if (graph_path) {
        if ((st = bm_graph_load(graph_path, &m->tree, err)))
            goto fail;
        m->graph_source = strdup(graph_path);
    } else if (folder && !m->tree) {
        bool unsupported;
        st = tree_from_config(folder, m, &unsupported, err);
        if (st && st != BM_E_NOTFOUND && !(unsupported && ckpt_path))
            goto fail;
        st = BM_OK;
    }
    if (ckpt_path && !o->no_checkpoint) {
        if ((st = bm_checkpoint_open(ckpt_path, &m->ckpt, err)))
            goto fail;
    }
    if (!m->tree) {
        if (!m->ckpt) {
            st = folder ? bm_fail(err, BM_E_NOTFOUND,
                                  "%s: no config.json and no checkpoint in this folder", folder)
                        : bm_fail(err, BM_E_INVALID,
                                  "no model given (name a graph file, a model folder or a checkpoint)");
            goto fail;
        }
        if ((st = bm_checkpoint_to_tree(m->ckpt, &m->tree, err)))
            goto fail;
        m->graph_source = strdup(m->ckpt->path);
        m->tree_from_checkpoint = true;
    }
    if (!m->graph_source) {
        st = bm_fail(err, BM_E_NOMEM, "out of memory");
        goto fail;
    }
    if (o->need_checkpoint && !m->ckpt) {
        st = bm_fail(err, BM_E_NOTFOUND,
                     "%s: no checkpoint found (give a model folder with weights or --checkpoint PATH)",
                     o->model ? o->model : m->graph_source);
        goto fail;
    }
    if (m->ckpt && (st = match_checkpoint(m, err)))
        goto fail;
    *out = m;
    return BM_OK;
fail:
    bm_model_close(m);
    return st;
}
