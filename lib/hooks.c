/*
 * hooks.c - accelerate's hooks.py and the hook-attaching parts of
 * big_modeling.py (spec §14, §15): ModelHook/SequentialHook,
 * add_hook_to_module/remove_hook_from_module, AlignDevicesHook, the three
 * attach_* walkers, CpuOffload/UserCpuOffloadHook, and dispatch_model,
 * cpu_offload and disk_offload on top of them.
 */
#include "hooks.h"

#include <stdlib.h>
#include <string.h>

bm_hook *bm_hook_new(const bm_hook_ops *ops, void *state)
{
    bm_hook *h = calloc(1, sizeof *h);
    if (!h) {
        if (ops->destroy) {
            bm_hook tmp = {ops, state};
            ops->destroy(&tmp);
        }
        return NULL;
    }
    h->ops = ops;
    h->state = state;
    return h;
}

void bm_hook_destroy(bm_hook *h)
{
    if (!h)
        return;
    if (h->ops->destroy)
        h->ops->destroy(h);
    free(h);
}

void bm_hook_describe(const bm_hook *h, char *buf, size_t len)
{
    if (h->ops->describe)
        h->ops->describe(h, buf, len);
    else
        snprintf(buf, len, "%s()", h->ops->name);
}

/* ------------------------------------------------------------------------
 * SequentialHook
 * ------------------------------------------------------------------------ */

typedef struct seq_state {
    bm_hook **h;
    int n;
} seq_state;

static bm_status seq_init(bm_hook *h, bm_rt *rt, int32_t m, bm_error *err)
{
    seq_state *s = h->state;
    for (int i = 0; i < s->n; i++)
        if (s->h[i]->ops->init) {
            bm_status st = s->h[i]->ops->init(s->h[i], rt, m, err);
            if (st != BM_OK)
                return st;
        }
    return BM_OK;
}

static bm_status seq_pre(bm_hook *h, bm_rt *rt, int32_t m, bm_call *c, bm_error *err)
{
    seq_state *s = h->state;
    for (int i = 0; i < s->n; i++)
        if (s->h[i]->ops->pre_forward) {
            bm_status st = s->h[i]->ops->pre_forward(s->h[i], rt, m, c, err);
            if (st != BM_OK)
                return st;
        }
    return BM_OK;
}

static bm_status seq_post(bm_hook *h, bm_rt *rt, int32_t m, bm_call *c, bm_error *err)
{
    seq_state *s = h->state;
    for (int i = 0; i < s->n; i++)
        if (s->h[i]->ops->post_forward) {
            bm_status st = s->h[i]->ops->post_forward(s->h[i], rt, m, c, err);
            if (st != BM_OK)
                return st;
        }
    return BM_OK;
}

static void seq_detach(bm_hook *h, bm_rt *rt, int32_t m)
{
    seq_state *s = h->state;
    for (int i = 0; i < s->n; i++)
        if (s->h[i]->ops->detach)
            s->h[i]->ops->detach(s->h[i], rt, m);
}

static void seq_destroy(bm_hook *h)
{
    seq_state *s = h->state;
    if (!s)
        return;
    for (int i = 0; i < s->n; i++)
        bm_hook_destroy(s->h[i]);
    free(s->h);
    free(s);
}

static void seq_describe(const bm_hook *h, char *buf, size_t len)
{
    seq_state *s = h->state;
    size_t o = (size_t)snprintf(buf, len, "SequentialHook(");
    for (int i = 0; i < s->n && o < len; i++) {
        if (i)
            o += (size_t)snprintf(buf + o, len - o, ", ");
        if (o < len)
            bm_hook_describe(s->h[i], buf + o, len - o);
        o = strlen(buf);
    }
    if (o < len)
        snprintf(buf + o, len - o, ")");
}

static int seq_targets(const bm_hook *h, bm_rt *rt, int32_t m, bm_fetch_target *out, int max)
{
    seq_state *s = h->state;
    int n = 0;
    for (int i = 0; i < s->n && n < max; i++)
        if (s->h[i]->ops->fetch_targets)
            n += s->h[i]->ops->fetch_targets(s->h[i], rt, m, out + n, max - n);
    return n;
}

static const bm_hook_ops seq_ops = {
    .name = "SequentialHook",
    .init = seq_init,
    .pre_forward = seq_pre,
    .post_forward = seq_post,
    .detach = seq_detach,
    .destroy = seq_destroy,
    .describe = seq_describe,
    .fetch_targets = seq_targets,
};

bm_hook *bm_hook_sequential(bm_hook *const *hooks, int n)
{
    seq_state *s = calloc(1, sizeof *s);
    if (!s || !(s->h = calloc((size_t)(n > 0 ? n : 1), sizeof *s->h))) {
        free(s);
        for (int i = 0; i < n; i++)
            bm_hook_destroy(hooks[i]);
        return NULL;
    }
    memcpy(s->h, hooks, (size_t)n * sizeof *s->h);
    s->n = n;
    return bm_hook_new(&seq_ops, s);
}

int bm_hook_children(const bm_hook *h, bm_hook *const **out)
{
    if (h->ops == &seq_ops) {
        seq_state *s = h->state;
        *out = s->h;
        return s->n;
    }
    static bm_hook *one[1];
    one[0] = (bm_hook *)h;
    *out = one;
    return 1;
}

/* ------------------------------------------------------------------------
 * add_hook_to_module / remove_hook_from_module
 * ------------------------------------------------------------------------ */

bm_status bm_hook_attach(bm_rt *rt, int32_t module, bm_hook *hook, bool append, bm_error *err)
{
    if (!hook)
        return bm_fail(err, BM_E_NOMEM, "out of memory");
    bm_hook *old = bm_rt_hook(rt, module);
    if (append && old) {
        /* the old hook is removed (detached) and chained before the new */
        if (old->ops->detach)
            old->ops->detach(old, rt, module);
        bm_rt_set_hook(rt, module, NULL);
        bm_hook *pair[2] = {old, hook};
        hook = bm_hook_sequential(pair, 2);
        if (!hook)
            return bm_fail(err, BM_E_NOMEM, "out of memory");
    } else if (old) {
        /* replace mode: the old hook is dropped without detach_hook */
        bm_rt_set_hook(rt, module, NULL);
        bm_hook_destroy(old);
    }
    if (hook->ops->init) {
        bm_status s = hook->ops->init(hook, rt, module, err);
        if (s != BM_OK) {
            bm_hook_destroy(hook);
            return s;
        }
    }
    bm_rt_set_hook(rt, module, hook);
    return BM_OK;
}

void bm_hook_remove(bm_rt *rt, int32_t module, bool recurse)
{
    const bm_tree *tree = bm_rt_tree(rt);
    int32_t end = recurse ? tree->modules[module].subtree_end : module + 1;
    for (int32_t m = module; m < end; m++) {
        bm_hook *h = bm_rt_hook(rt, m);
        if (!h)
            continue;
        if (h->ops->detach)
            h->ops->detach(h, rt, m);
        bm_rt_set_hook(rt, m, NULL);
        bm_hook_destroy(h);
    }
}

/* ------------------------------------------------------------------------
 * Moving call arguments (send_to_device for positional tensors)
 * ------------------------------------------------------------------------ */

typedef struct moved_args {
    bm_value *orig[BM_CALL_MAX_ARGS];
    bm_value *copy[BM_CALL_MAX_ARGS];
} moved_args;

static bm_status move_args(bm_rt *rt, bm_call *c, bm_dev *dev, moved_args *mv, bm_error *err)
{
    for (int i = 0; i < c->nargs; i++) {
        mv->orig[i] = mv->copy[i] = NULL;
        bm_value *a = c->args[i];
        if (!a || a->dev == dev)
            continue;
        bm_value *cp;
        bm_status s = bm_value_copy_to(rt, a, dev, &cp, err);
        if (s != BM_OK)
            return s;
        mv->orig[i] = a;
        mv->copy[i] = cp;
        c->args[i] = cp;
    }
    return BM_OK;
}

static void restore_args(bm_rt *rt, bm_call *c, moved_args *mv)
{
    for (int i = 0; i < c->nargs; i++)
        if (mv->copy[i]) {
            bm_value_free(rt, mv->copy[i]);
            c->args[i] = mv->orig[i];
            mv->copy[i] = mv->orig[i] = NULL;
        }
}

/* ------------------------------------------------------------------------
 * AlignDevicesHook
 * ------------------------------------------------------------------------ */

typedef struct align_state {
    bm_align_opts o;
    char *prefix;
    int32_t module;
    /* its tensors and the device each was on at init (NULL = meta) */
    int32_t *tensors;
    bm_dev **orig;
    int n_tensors;
    /* the offloaded ones and the names they have in weights_map */
    int32_t *off;
    char **off_names;
    int n_off;
    bool *fetched;
    bm_dev *input_dev;
    moved_args mv;
} align_state;

static void align_clear(align_state *s)
{
    for (int i = 0; i < s->n_off; i++)
        free(s->off_names[i]);
    free(s->off_names);
    free(s->off);
    free(s->fetched);
    free(s->tensors);
    free(s->orig);
    s->off_names = NULL;
    s->off = NULL;
    s->fetched = NULL;
    s->tensors = NULL;
    s->orig = NULL;
    s->n_off = s->n_tensors = 0;
}

static char *tensor_map_name(const bm_tree *tree, int32_t module, int32_t ti, const char *prefix)
{
    const char *full = tree->tensors[ti].name;
    const char *mname = tree->modules[module].name;
    size_t ml = strlen(mname);
    const char *rel = full;
    if (ml && strncmp(full, mname, ml) == 0 && full[ml] == '.')
        rel = full + ml + 1;
    size_t pl = strlen(prefix), rl = strlen(rel);
    char *out = malloc(pl + rl + 1);
    if (out) {
        memcpy(out, prefix, pl);
        memcpy(out + pl, rel, rl + 1);
    }
    return out;
}

static bm_status align_init(bm_hook *h, bm_rt *rt, int32_t m, bm_error *err)
{
    align_state *s = h->state;
    const bm_tree *tree = bm_rt_tree(rt);
    const bm_module *mod = &tree->modules[m];
    align_clear(s);
    s->module = m;
    int32_t begin = mod->tensor_begin;
    int32_t end = s->o.place_submodules ? mod->subtree_tensor_end
                                        : mod->tensor_begin + mod->n_params + mod->n_buffers;
    int n = end - begin;
    s->tensors = calloc((size_t)(n > 0 ? n : 1), sizeof *s->tensors);
    s->orig = calloc((size_t)(n > 0 ? n : 1), sizeof *s->orig);
    s->off = calloc((size_t)(n > 0 ? n : 1), sizeof *s->off);
    s->off_names = calloc((size_t)(n > 0 ? n : 1), sizeof *s->off_names);
    s->fetched = calloc((size_t)(n > 0 ? n : 1), sizeof *s->fetched);
    if (!s->tensors || !s->orig || !s->off || !s->off_names || !s->fetched)
        return bm_fail(err, BM_E_NOMEM, "out of memory");
    for (int32_t ti = begin; ti < end; ti++) {
        s->tensors[s->n_tensors] = ti;
        s->orig[s->n_tensors] = bm_rt_tensor_device(rt, ti);
        s->n_tensors++;
    }
    if (s->o.execution_device == BM_DEVICE_NONE)
        return BM_OK;
    bm_dev *exec;
    bm_status st = bm_rt_device(rt, s->o.execution_device, &exec, err);
    if (st != BM_OK)
        return st;
    if (!s->o.offload) {
        /* every tensor (buffers too) to the execution device */
        for (int i = 0; i < s->n_tensors; i++) {
            if (!bm_rt_tensor_device(rt, s->tensors[i]))
                continue;
            st = bm_rt_tensor_to(rt, s->tensors[i], exec, NULL, s->o.tied_params, err);
            if (st != BM_OK)
                return st;
        }
        return BM_OK;
    }
    /* offload: params (and persistent buffers with offload_buffers) become
     * meta and are read from weights_map at each call */
    bool *which = calloc((size_t)tree->n_tensors + 1, sizeof *which);
    if (!which)
        return bm_fail(err, BM_E_NOMEM, "out of memory");
    for (int i = 0; i < s->n_tensors; i++) {
        int32_t ti = s->tensors[i];
        const bm_tensor *t = &tree->tensors[ti];
        bool offloaded = !t->is_buffer || (s->o.offload_buffers && t->persistent);
        if (!offloaded)
            continue;
        s->off_names[s->n_off] = tensor_map_name(tree, m, ti, s->prefix ? s->prefix : "");
        if (!s->off_names[s->n_off]) {
            free(which);
            return bm_fail(err, BM_E_NOMEM, "out of memory");
        }
        s->off[s->n_off++] = ti;
        if (!s->o.weights_map && bm_rt_tensor_device(rt, ti)) {
            which[ti] = true;
        }
    }
    if (!s->o.weights_map) {
        /* no source given: keep the current values in host memory; names
         * are full names, so the prefix is this module's */
        s->o.weights_map = bm_rt_snapshot(rt, which, err);
        if (!s->o.weights_map) {
            free(which);
            return err ? err->code : BM_E_NOMEM;
        }
        for (int i = 0; i < s->n_off; i++) {
            free(s->off_names[i]);
            s->off_names[i] = strdup(tree->tensors[s->off[i]].name);
            if (!s->off_names[i]) {
                free(which);
                return bm_fail(err, BM_E_NOMEM, "out of memory");
            }
        }
    }
    free(which);
    for (int i = 0; i < s->n_off; i++)
        bm_rt_tensor_to_meta(rt, s->off[i]);
    /* buffers not offloaded stay resident on the execution device */
    for (int i = 0; i < s->n_tensors; i++) {
        int32_t ti = s->tensors[i];
        const bm_tensor *t = &tree->tensors[ti];
        if (!t->is_buffer || (s->o.offload_buffers && t->persistent))
            continue;
        if (!bm_rt_tensor_device(rt, ti))
            continue; /* non-persistent buffers are recomputed by the runner */
        st = bm_rt_tensor_to(rt, ti, exec, NULL, false, err);
        if (st != BM_OK)
            return st;
    }
    return BM_OK;
}

static bm_status align_pre(bm_hook *h, bm_rt *rt, int32_t m, bm_call *c, bm_error *err)
{
    align_state *s = h->state;
    (void)m;
    if (s->o.io_same_device) {
        s->input_dev = NULL;
        for (int i = 0; i < c->nargs && !s->input_dev; i++)
            if (c->args[i])
                s->input_dev = c->args[i]->dev;
    }
    if (s->o.execution_device == BM_DEVICE_NONE)
        return BM_OK;
    bm_dev *exec;
    bm_status st = bm_rt_device(rt, s->o.execution_device, &exec, err);
    if (st != BM_OK)
        return st;
    if (s->o.offload) {
        for (int i = 0; i < s->n_off; i++) {
            if (!s->o.weights_map)
                return bm_fail(err, BM_E_INVALID, "%s: offloaded without a weights source",
                               bm_rt_tree(rt)->tensors[s->off[i]].name);
            st = bm_rt_fetch(rt, s->off[i], exec, s->o.weights_map, s->off_names[i],
                             s->o.tied_params, err);
            if (st != BM_OK)
                return st;
            s->fetched[i] = true;
        }
    }
    return move_args(rt, c, exec, &s->mv, err);
}

static bm_status align_post(bm_hook *h, bm_rt *rt, int32_t m, bm_call *c, bm_error *err)
{
    align_state *s = h->state;
    (void)m;
    if (s->o.offload)
        for (int i = 0; i < s->n_off; i++)
            if (s->fetched[i]) {
                bm_rt_unfetch(rt, s->off[i]);
                s->fetched[i] = false;
            }
    restore_args(rt, c, &s->mv);
    if (s->o.io_same_device && s->input_dev && c->out && c->out->dev != s->input_dev) {
        bm_value *moved;
        bm_status st = bm_value_copy_to(rt, c->out, s->input_dev, &moved, err);
        if (st != BM_OK)
            return st;
        bm_value_free(rt, c->out);
        c->out = moved;
    }
    return BM_OK;
}

static void align_detach(bm_hook *h, bm_rt *rt, int32_t m)
{
    align_state *s = h->state;
    (void)m;
    if (!s->o.offload)
        return;
    /* each tensor that was somewhere at init goes back there */
    for (int i = 0; i < s->n_off; i++) {
        int32_t ti = s->off[i];
        bm_dev *dev = NULL;
        for (int j = 0; j < s->n_tensors; j++)
            if (s->tensors[j] == ti)
                dev = s->orig[j];
        if (dev && s->o.weights_map)
            (void)bm_rt_tensor_to(rt, ti, dev, s->o.weights_map, s->o.tied_params, NULL);
    }
}

static void align_destroy(bm_hook *h)
{
    align_state *s = h->state;
    if (!s)
        return;
    align_clear(s);
    bm_wsource_unref(s->o.weights_map);
    free(s->prefix);
    free(s);
}

static void dev_str(int d, char *buf, size_t len)
{
    if (d == BM_DEVICE_NONE)
        snprintf(buf, len, "None");
    else if (d == BM_DEVICE_CPU)
        snprintf(buf, len, "cpu");
    else if (d == BM_DEVICE_DISK)
        snprintf(buf, len, "disk");
    else
        snprintf(buf, len, "%d", d);
}

static void align_describe(const bm_hook *h, char *buf, size_t len)
{
    const align_state *s = h->state;
    char d[16];
    dev_str(s->o.execution_device, d, sizeof d);
#define PYB(x) ((x) ? "True" : "False")
    snprintf(buf, len,
             "AlignDevicesHook(execution_device=%s, offload=%s, io_same_device=%s, "
             "offload_buffers=%s, place_submodules=%s, skip_keys=None)",
             d, PYB(s->o.offload), PYB(s->o.io_same_device), PYB(s->o.offload_buffers),
             PYB(s->o.place_submodules));
#undef PYB
}

static int align_targets(const bm_hook *h, bm_rt *rt, int32_t m, bm_fetch_target *out, int max)
{
    const align_state *s = h->state;
    (void)m;
    if (!s->o.offload || !s->o.weights_map || s->o.execution_device == BM_DEVICE_NONE)
        return 0;
    bm_dev *exec;
    if (bm_rt_device(rt, s->o.execution_device, &exec, NULL) != BM_OK)
        return 0;
    int n = 0;
    for (int i = 0; i < s->n_off && n < max; i++) {
        out[n].tensor = s->off[i];
        out[n].dev = exec;
        out[n].src = s->o.weights_map;
        out[n].name = s->off_names[i];
        n++;
    }
    return n;
}

static const bm_hook_ops align_ops = {
    .name = "AlignDevicesHook",
    .init = align_init,
    .pre_forward = align_pre,
    .post_forward = align_post,
    .detach = align_detach,
    .destroy = align_destroy,
    .describe = align_describe,
    .fetch_targets = align_targets,
};

bm_hook *bm_hook_align_devices(const bm_align_opts *o)
{
    align_state *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->o = *o;
    s->prefix = strdup(o->prefix ? o->prefix : "");
    if (!s->prefix) {
        free(s);
        return NULL;
    }
    s->o.prefix = s->prefix;
    bm_wsource_ref(s->o.weights_map);
    return bm_hook_new(&align_ops, s);
}

bool bm_hook_is_align(const bm_hook *h) { return h && h->ops == &align_ops; }

const bm_align_opts *bm_hook_align_get(const bm_hook *h)
{
    return bm_hook_is_align(h) ? &((const align_state *)h->state)->o : NULL;
}

/* ------------------------------------------------------------------------
 * Attaching (§14.4)
 * ------------------------------------------------------------------------ */

static bool has_state(const bm_tree *tree, int32_t m)
{
    const bm_module *mod = &tree->modules[m];
    for (int32_t ti = mod->tensor_begin; ti < mod->subtree_tensor_end; ti++)
        if (!tree->tensors[ti].is_buffer || tree->tensors[ti].persistent)
            return true;
    return false;
}

bm_status bm_attach_execution_device_hook(bm_rt *rt, int32_t module, int device,
                                          char *const *preload, int n_preload, bm_error *err)
{
    const bm_tree *tree = bm_rt_tree(rt);
    if (!bm_rt_hook(rt, module) && has_state(tree, module)) {
        bm_align_opts o = {.execution_device = device, .tied_params = true};
        bm_status s = bm_hook_attach(rt, module, bm_hook_align_devices(&o), false, err);
        if (s != BM_OK)
            return s;
    }
    if (bm_class_in(tree->modules[module].cls, preload, n_preload))
        return BM_OK;
    for (int32_t c = tree->modules[module].first_child; c != BM_NONE;
         c = tree->modules[c].next_sibling) {
        bm_status s = bm_attach_execution_device_hook(rt, c, device, preload, n_preload, err);
        if (s != BM_OK)
            return s;
    }
    return BM_OK;
}

bm_status bm_attach_align_device_hook(bm_rt *rt, int32_t module, int device, bool offload,
                                      bm_wsource *weights_map, bool offload_buffers,
                                      char *const *preload, int n_preload, bm_error *err)
{
    const bm_tree *tree = bm_rt_tree(rt);
    const bm_module *mod = &tree->modules[module];
    bool directs = mod->n_params + mod->n_buffers > 0;
    bool full = offload && bm_class_in(mod->cls, preload, n_preload);
    if (directs || full) {
        /* weights_map holds full names: the prefix is the module's name */
        char *prefix = NULL;
        size_t ml = strlen(mod->name);
        if (ml) {
            prefix = malloc(ml + 2);
            if (!prefix)
                return bm_fail(err, BM_E_NOMEM, "out of memory");
            memcpy(prefix, mod->name, ml);
            prefix[ml] = '.';
            prefix[ml + 1] = 0;
        }
        bm_align_opts o = {.execution_device = device, .offload = offload,
                           .offload_buffers = offload_buffers, .place_submodules = full,
                           .weights_map = weights_map, .prefix = prefix ? prefix : "",
                           .tied_params = true};
        bm_hook *h = bm_hook_align_devices(&o);
        free(prefix);
        bm_status s = bm_hook_attach(rt, module, h, true, err);
        if (s != BM_OK)
            return s;
    }
    if (full)
        return BM_OK;
    for (int32_t c = mod->first_child; c != BM_NONE; c = tree->modules[c].next_sibling) {
        bm_status s = bm_attach_align_device_hook(rt, c, device, offload, weights_map,
                                                  offload_buffers, preload, n_preload, err);
        if (s != BM_OK)
            return s;
    }
    return BM_OK;
}

int bm_map_lookup(const bm_map_entry *map, int n, const char *name)
{
    int best = -1;
    size_t best_len = 0;
    size_t nl = strlen(name);
    for (int i = 0; i < n; i++) {
        size_t el = strlen(map[i].name);
        bool match = el == 0 || (el <= nl && strncmp(name, map[i].name, el) == 0 &&
                                 (name[el] == 0 || name[el] == '.'));
        if (match && (best < 0 || el > best_len)) {
            best = i;
            best_len = el;
        }
    }
    return best;
}

static int map_find_exact(const bm_map_entry *map, int n, const char *name)
{
    for (int i = 0; i < n; i++)
        if (strcmp(map[i].name, name) == 0)
            return i;
    return -1;
}

static bm_status on_blocks(bm_rt *rt, int32_t module, const bm_map_entry *map, int n,
                           int main_device, const bool *offloaded, bm_wsource *weights_map,
                           bool offload_buffers, char *const *preload, int n_preload,
                           bm_error *err)
{
    const bm_tree *tree = bm_rt_tree(rt);
    const char *name = tree->modules[module].name;
    int e = map_find_exact(map, n, name);
    bm_status s = BM_OK;
    if (e >= 0) {
        int exec = offloaded[e] ? main_device : map[e].device;
        if (!offloaded[e]) {
            bm_align_opts o = {.execution_device = exec, .io_same_device = name[0] == 0,
                               .place_submodules = true, .tied_params = true};
            s = bm_hook_attach(rt, module, bm_hook_align_devices(&o), false, err);
            if (s == BM_OK)
                s = bm_attach_execution_device_hook(rt, module, exec, preload, n_preload, err);
        } else {
            s = bm_attach_align_device_hook(rt, module, exec, true, weights_map, offload_buffers,
                                            preload, n_preload, err);
            if (s == BM_OK && !bm_rt_hook(rt, module)) {
                bm_align_opts o = {.execution_device = exec, .io_same_device = name[0] == 0,
                                   .tied_params = true};
                s = bm_hook_attach(rt, module, bm_hook_align_devices(&o), false, err);
            }
            if (s == BM_OK)
                s = bm_attach_execution_device_hook(rt, module, exec, preload, n_preload, err);
        }
    } else if (name[0] == 0) {
        bm_align_opts o = {.execution_device = main_device, .io_same_device = true,
                           .tied_params = true};
        s = bm_hook_attach(rt, module, bm_hook_align_devices(&o), false, err);
    }
    if (s != BM_OK)
        return s;
    for (int32_t c = tree->modules[module].first_child; c != BM_NONE;
         c = tree->modules[c].next_sibling) {
        s = on_blocks(rt, c, map, n, main_device, offloaded, weights_map, offload_buffers,
                      preload, n_preload, err);
        if (s != BM_OK)
            return s;
    }
    return BM_OK;
}

bm_status bm_attach_align_device_hook_on_blocks(bm_rt *rt, const bm_map_entry *map, int n,
                                                int main_device, const bool *offloaded,
                                                bm_wsource *weights_map, bool offload_buffers,
                                                char *const *preload, int n_preload,
                                                bm_error *err)
{
    return on_blocks(rt, 0, map, n, main_device, offloaded, weights_map, offload_buffers,
                     preload, n_preload, err);
}

/* ------------------------------------------------------------------------
 * dispatch_model, cpu_offload, disk_offload (§15)
 * ------------------------------------------------------------------------ */

static const char *map_value_str(int d, char *buf, size_t len)
{
    dev_str(d, buf, len);
    return buf;
}

/* check_device_map, made strict: every entry names a module or tensor,
 * every tensor that must be loaded is covered. */
static bm_status check_map(const bm_tree *tree, const bm_map_entry *map, int n, bm_error *err)
{
    for (int i = 0; i < n; i++) {
        if (map[i].name[0] && bm_tree_find_module(tree, map[i].name) == BM_NONE &&
            bm_tree_find_tensor(tree, map[i].name) == BM_NONE)
            return bm_fail(err, BM_E_NOTFOUND, "device map entry '%s' is not a module or "
                           "tensor of the model", map[i].name);
        if (map[i].device < BM_DEVICE_DISK || map[i].device >= 64) {
            char b[16];
            return bm_fail(err, BM_E_INVALID, "device map entry '%s': bad device %s",
                           map[i].name, map_value_str(map[i].device, b, sizeof b));
        }
        for (int j = 0; j < i; j++)
            if (strcmp(map[i].name, map[j].name) == 0)
                return bm_fail(err, BM_E_INVALID, "device map entry '%s' appears twice",
                               map[i].name);
    }
    char missing[512] = "";
    int n_missing = 0;
    for (int32_t ti = 0; ti < tree->n_tensors; ti++) {
        const bm_tensor *t = &tree->tensors[ti];
        if (t->is_buffer && !t->persistent)
            continue;
        if (bm_map_lookup(map, n, t->name) >= 0)
            continue;
        if (n_missing++ < 4) {
            size_t o = strlen(missing);
            snprintf(missing + o, sizeof missing - o, "%s%s", o ? ", " : "", t->name);
        }
    }
    if (n_missing)
        return bm_fail(err, BM_E_INVALID, "the device map does not give any device for %d "
                       "tensor%s: %s%s", n_missing, n_missing == 1 ? "" : "s", missing,
                       n_missing > 4 ? ", ..." : "");
    return BM_OK;
}

bm_status bm_dispatch_model(bm_rt *rt, const bm_map_entry *map, int n,
                            const bm_dispatch_opts *o, bm_error *err)
{
    const bm_tree *tree = bm_rt_tree(rt);
    bm_dispatch_opts def = {.main_device = BM_DEVICE_NONE};
    if (!o)
        o = &def;
    bm_status s = check_map(tree, map, n, err);
    if (s != BM_OK)
        return s;
    bool any_disk = false, any_cpu = false, any_gpu = false;
    int first_gpu = BM_DEVICE_NONE;
    for (int i = 0; i < n; i++) {
        if (map[i].device == BM_DEVICE_DISK)
            any_disk = true;
        else if (map[i].device == BM_DEVICE_CPU)
            any_cpu = true;
        else {
            if (!any_gpu)
                first_gpu = map[i].device;
            any_gpu = true;
        }
    }
    int main_device = o->main_device != BM_DEVICE_NONE ? o->main_device
                      : any_gpu                        ? first_gpu
                                                       : BM_DEVICE_CPU;
    if (any_disk && !o->offload) {
        char names[512] = "";
        for (int i = 0; i < n; i++)
            if (map[i].device == BM_DEVICE_DISK) {
                size_t l = strlen(names);
                snprintf(names + l, sizeof names - l, "%s%s", l ? ", " : "", map[i].name);
            }
        return bm_fail(err, BM_E_INVALID, "we need an offload folder to dispatch this model "
                       "according to this device map; these modules are on disk: %s", names);
    }
    bm_rt_set_main_device(rt, main_device);
    /* one device and nothing offloaded: the model is simply on it */
    int distinct = 0;
    for (int i = 0; i < n; i++) {
        bool seen = false;
        for (int j = 0; j < i; j++)
            seen |= map[j].device == map[i].device;
        distinct += !seen;
    }
    if (distinct <= 1 && !any_disk)
        return BM_OK;

    bool *offloaded = calloc((size_t)(n > 0 ? n : 1), sizeof *offloaded);
    bool *which = calloc((size_t)tree->n_tensors + 1, sizeof *which);
    if (!offloaded || !which) {
        free(offloaded);
        free(which);
        return bm_fail(err, BM_E_NOMEM, "out of memory");
    }
    bool cpu_offloaded = main_device != BM_DEVICE_CPU;
    for (int i = 0; i < n; i++)
        offloaded[i] = map[i].device == BM_DEVICE_DISK ||
                       (map[i].device == BM_DEVICE_CPU && cpu_offloaded);
    /* RAM weight source: the tensors of cpu entries, by reference */
    bm_wsource *ram = NULL;
    if (cpu_offloaded && any_cpu) {
        for (int32_t ti = 0; ti < tree->n_tensors; ti++) {
            int e = bm_map_lookup(map, n, tree->tensors[ti].name);
            which[ti] = e >= 0 && map[e].device == BM_DEVICE_CPU;
        }
        ram = bm_rt_snapshot(rt, which, err);
        if (!ram) {
            free(offloaded);
            free(which);
            return err ? err->code : BM_E_NOMEM;
        }
    }
    bm_wsource *weights = NULL;
    if (ram && any_disk && o->offload)
        weights = bm_wsource_chain(ram, o->offload);
    else if (ram)
        weights = bm_wsource_ref(ram);
    else if (any_disk && o->offload)
        weights = bm_wsource_ref(o->offload);
    bm_wsource_unref(ram);
    s = bm_attach_align_device_hook_on_blocks(rt, map, n, main_device, offloaded, weights,
                                              o->offload_buffers, o->preload, o->n_preload, err);
    bm_wsource_unref(weights);
    free(offloaded);
    free(which);
    return s;
}

bm_status bm_cpu_offload(bm_rt *rt, int execution_device, bool offload_buffers,
                         bm_wsource *state, bm_error *err)
{
    const bm_tree *tree = bm_rt_tree(rt);
    bm_wsource *src = state ? bm_wsource_ref(state) : NULL;
    if (!src) {
        bool *all = malloc((size_t)tree->n_tensors + 1);
        if (!all)
            return bm_fail(err, BM_E_NOMEM, "out of memory");
        memset(all, 1, (size_t)tree->n_tensors + 1);
        src = bm_rt_snapshot(rt, all, err);
        free(all);
        if (!src)
            return err ? err->code : BM_E_NOMEM;
    }
    bm_align_opts io = {.execution_device = BM_DEVICE_NONE, .io_same_device = true};
    bm_status s = bm_hook_attach(rt, 0, bm_hook_align_devices(&io), true, err);
    if (s == BM_OK)
        s = bm_attach_align_device_hook(rt, 0, execution_device, true, src, offload_buffers,
                                        NULL, 0, err);
    bm_wsource_unref(src);
    if (s == BM_OK)
        bm_rt_set_main_device(rt, execution_device);
    return s;
}

bm_status bm_disk_offload(bm_rt *rt, bm_wsource *folder, int execution_device,
                          bool offload_buffers, bm_error *err)
{
    if (!folder)
        return bm_fail(err, BM_E_INVALID, "disk_offload needs an offload folder");
    bm_align_opts io = {.execution_device = BM_DEVICE_NONE, .io_same_device = true};
    bm_status s = bm_hook_attach(rt, 0, bm_hook_align_devices(&io), true, err);
    if (s == BM_OK)
        s = bm_attach_align_device_hook(rt, 0, execution_device, true, folder, offload_buffers,
                                        NULL, 0, err);
    if (s == BM_OK)
        bm_rt_set_main_device(rt, execution_device);
    return s;
}

/* ------------------------------------------------------------------------
 * CpuOffload and UserCpuOffloadHook (§14.5, §15.3)
 * ------------------------------------------------------------------------ */

struct bm_user_offload_hook {
    bm_rt *rt;
    bm_hook *hook; /* the CpuOffload hook on the model's root */
    bool attached;
};

typedef struct cpu_offload_state {
    int device;
    bm_user_offload_hook *prev;
    moved_args mv;
} cpu_offload_state;

static bm_status model_to(bm_rt *rt, int id, bm_error *err)
{
    bm_dev *dev;
    bm_status s = bm_rt_device(rt, id, &dev, err);
    if (s == BM_OK)
        s = bm_rt_module_to(rt, 0, dev, true, err);
    return s;
}

static bm_status cpuoff_init(bm_hook *h, bm_rt *rt, int32_t m, bm_error *err)
{
    (void)h;
    (void)m;
    return model_to(rt, BM_DEVICE_CPU, err);
}

static bm_dev *first_param_device(bm_rt *rt)
{
    const bm_tree *tree = bm_rt_tree(rt);
    for (int32_t ti = 0; ti < tree->n_tensors; ti++)
        if (!tree->tensors[ti].is_buffer)
            return bm_rt_tensor_device(rt, ti);
    return NULL;
}

static bm_status cpuoff_pre(bm_hook *h, bm_rt *rt, int32_t m, bm_call *c, bm_error *err)
{
    cpu_offload_state *s = h->state;
    (void)m;
    bm_status st;
    if (s->prev && s->prev->attached) {
        bm_dev *pd = first_param_device(s->prev->rt);
        if (!pd || bm_dev_id(pd) != BM_DEVICE_CPU) {
            st = bm_user_offload_hook_offload(s->prev, err);
            if (st != BM_OK)
                return st;
        }
    }
    bm_dev *dev;
    if ((st = bm_rt_device(rt, s->device, &dev, err)) != BM_OK)
        return st;
    if (first_param_device(rt) != dev && (st = bm_rt_module_to(rt, 0, dev, true, err)) != BM_OK)
        return st;
    return move_args(rt, c, dev, &s->mv, err);
}

static bm_status cpuoff_post(bm_hook *h, bm_rt *rt, int32_t m, bm_call *c, bm_error *err)
{
    /* no offload after the call: the model stays on the device until the
     * next model of the pipeline runs; only our argument copies go */
    cpu_offload_state *s = h->state;
    (void)m;
    (void)err;
    restore_args(rt, c, &s->mv);
    return BM_OK;
}

static void cpuoff_destroy(bm_hook *h) { free(h->state); }

static void cpuoff_describe(const bm_hook *h, char *buf, size_t len)
{
    const cpu_offload_state *s = h->state;
    char d[16];
    dev_str(s->device, d, sizeof d);
    snprintf(buf, len, "CpuOffload(execution_device=%s)", d);
}

static const bm_hook_ops cpuoff_ops = {
    .name = "CpuOffload",
    .init = cpuoff_init,
    .pre_forward = cpuoff_pre,
    .post_forward = cpuoff_post,
    .destroy = cpuoff_destroy,
    .describe = cpuoff_describe,
};

bm_status bm_cpu_offload_with_hook(bm_rt *rt, int execution_device, bm_user_offload_hook *prev,
                                   bm_user_offload_hook **out, bm_error *err)
{
    *out = NULL;
    cpu_offload_state *s = calloc(1, sizeof *s);
    bm_user_offload_hook *u = calloc(1, sizeof *u);
    if (!s || !u) {
        free(s);
        free(u);
        return bm_fail(err, BM_E_NOMEM, "out of memory");
    }
    s->device = execution_device;
    s->prev = prev;
    bm_hook *h = bm_hook_new(&cpuoff_ops, s);
    if (!h) {
        free(u);
        return bm_fail(err, BM_E_NOMEM, "out of memory");
    }
    bm_status st = bm_hook_attach(rt, 0, h, true, err);
    if (st != BM_OK) {
        free(u);
        return st;
    }
    bm_rt_set_main_device(rt, execution_device);
    u->rt = rt;
    u->hook = h;
    u->attached = true;
    *out = u;
    return BM_OK;
}

bm_status bm_user_offload_hook_offload(bm_user_offload_hook *h, bm_error *err)
{
    if (!h->attached)
        return BM_OK;
    return model_to(h->rt, BM_DEVICE_CPU, err);
}

void bm_user_offload_hook_remove(bm_user_offload_hook *h)
{
    if (h->attached)
        bm_hook_remove(h->rt, 0, false);
    h->attached = false;
}

void bm_user_offload_hook_free(bm_user_offload_hook *h) { free(h); }
